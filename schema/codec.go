package schema

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/vmihailenco/msgpack/v5"
)

// Content types kiln speaks.
const (
	ContentMsgpack = "application/msgpack"
	ContentJSON    = "application/json"
)

// Codec encodes and decodes kiln's wire types. Replies use the codec of the
// job they answer, so a job sent as JSON with `nats pub` gets JSON back.
type Codec int

const (
	// Msgpack is the default codec: compact, with binary image bytes.
	Msgpack Codec = iota
	// JSON is for people and tools: `nats pub`/`nats sub` show it as is.
	JSON
)

// CodecFor picks the codec for a Content-Type header value. An empty value
// means msgpack; an unknown one is an error.
func CodecFor(contentType string) (Codec, error) {
	ct := strings.TrimSpace(strings.ToLower(contentType))
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = strings.TrimSpace(ct[:i])
	}
	switch ct {
	case "", ContentMsgpack, "application/x-msgpack", "application/vnd.msgpack":
		return Msgpack, nil
	case ContentJSON, "text/json":
		return JSON, nil
	}
	return Msgpack, &Error{Code: CodeBadContentType, Field: HeaderContentType,
		Message: fmt.Sprintf("unsupported %s %q: use %s or %s", HeaderContentType, contentType, ContentMsgpack, ContentJSON)}
}

// ContentType is the header value of c.
func (c Codec) ContentType() string {
	if c == JSON {
		return ContentJSON
	}
	return ContentMsgpack
}

func (c Codec) String() string {
	if c == JSON {
		return "json"
	}
	return "msgpack"
}

// Marshal encodes v.
func (c Codec) Marshal(v any) ([]byte, error) {
	if c == JSON {
		return json.Marshal(v)
	}
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Unmarshal decodes data into v. A decoding failure is an *Error with
// CodeBadMsgpack or CodeBadJSON that says where decoding stopped. The body's
// shape is checked first (MaxDepth, MaxContainerElements, MaxBodyElements,
// declared lengths within the body), so hostile bytes are refused before a
// decoder allocates for them.
func (c Codec) Unmarshal(data []byte, v any) error {
	if err := c.checkShape(data); err != nil {
		return err
	}
	if c == JSON {
		dec := json.NewDecoder(bytes.NewReader(data))
		if err := dec.Decode(v); err != nil {
			return &Error{Code: CodeBadJSON, Message: "body is not valid JSON for this message type: " + err.Error()}
		}
		if dec.More() {
			return &Error{Code: CodeBadJSON, Message: "body has data after the JSON value"}
		}
		return nil
	}
	dec := msgpack.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return &Error{Code: CodeBadMsgpack, Message: "body is not valid msgpack for this message type: " + err.Error()}
	}
	return nil
}
