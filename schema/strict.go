package schema

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// CodecForBody picks the codec of a job body: a body whose first
// non-blank byte is '{' is JSON whatever the Content-Type says (people
// publish JSON with `nats pub` and forget the header; no msgpack job starts
// with that byte), anything else follows the header as CodecFor does.
func CodecForBody(contentType string, body []byte) (Codec, error) {
	if t := bytes.TrimLeft(body, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		return JSON, nil
	}
	return CodecFor(contentType)
}

// DecodeJob decodes a job body strictly: besides the shape bounds of
// Unmarshal, a field the job type does not have is an error
// (CodeUnknownField naming it: a typo such as "temprature" must never pass
// as success), and a value of the wrong type names its field
// ("messages[1].content"). v is a *ChatJob, *ImageJob or another wire type.
func (c Codec) DecodeJob(data []byte, v any) error {
	if err := c.checkShape(data); err != nil {
		return err
	}
	var err error
	if c == JSON {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err = dec.Decode(v); err == nil && dec.More() {
			return &Error{Code: CodeBadJSON, Message: "body has data after the JSON value"}
		}
	} else {
		dec := msgpack.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields(true)
		err = dec.Decode(v)
	}
	if err == nil {
		return nil
	}
	return c.explain(data, v, err)
}

// explain turns a strict decoder's error into an *Error that names the
// field, by walking the body as generic values beside the Go type.
func (c Codec) explain(data []byte, v any, cause error) error {
	code := CodeBadMsgpack
	if c == JSON {
		code = CodeBadJSON
	}
	var generic any
	var gerr error
	if c == JSON {
		gerr = json.Unmarshal(data, &generic)
	} else {
		gerr = msgpack.Unmarshal(data, &generic)
	}
	if gerr == nil {
		if e := checkValue(reflect.TypeOf(v), generic, ""); e != nil {
			if e.Code == "" {
				e.Code = code
			}
			return e
		}
	}
	kind := "msgpack"
	if c == JSON {
		kind = "JSON"
	}
	return &Error{Code: code, Message: fmt.Sprintf("body is not valid %s for this message type: %v", kind, cause)}
}

var (
	timeType  = reflect.TypeFor[time.Time]()
	bytesType = reflect.TypeFor[[]byte]()
)

// checkValue reports the first place where generic (a value decoded
// without a type: maps, slices, strings, numbers, bools, byte slices,
// times) does not fit t: an unknown field (CodeUnknownField) or a value of
// the wrong type (Code left empty: the caller's codec decides it).
func checkValue(t reflect.Type, generic any, path string) *Error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if generic == nil {
		return nil // nil fits any field: it leaves the zero value
	}
	want := ""
	switch {
	case t == timeType:
		switch generic.(type) {
		case time.Time, string:
			return nil
		}
		want = "a time (RFC 3339)"
	case t == bytesType:
		switch generic.(type) {
		case []byte, string: // JSON carries bytes as base64
			return nil
		}
		want = "bytes"
	case t.Kind() == reflect.Struct:
		m, ok := generic.(map[string]any)
		if !ok {
			want = "an object"
			break
		}
		fields := wireFields(t)
		for _, key := range sortedKeys(m) {
			val := m[key]
			ft, ok := fields[key]
			if !ok {
				return &Error{Code: CodeUnknownField, Field: join(path, key),
					Message: fmt.Sprintf("unknown field %q; the fields are %s", key, strings.Join(sortedKeys(fields), ", "))}
			}
			if e := checkValue(ft, val, join(path, key)); e != nil {
				return e
			}
		}
		return nil
	case t.Kind() == reflect.Slice:
		s, ok := generic.([]any)
		if !ok {
			want = "a list"
			break
		}
		for i, el := range s {
			if e := checkValue(t.Elem(), el, fmt.Sprintf("%s[%d]", path, i)); e != nil {
				return e
			}
		}
		return nil
	case t.Kind() == reflect.Map:
		m, ok := generic.(map[string]any)
		if !ok {
			want = "an object of " + t.Elem().Kind().String() + " values"
			break
		}
		for _, key := range sortedKeys(m) {
			if e := checkValue(t.Elem(), m[key], join(path, key)); e != nil {
				return e
			}
		}
		return nil
	case t.Kind() == reflect.String:
		if _, ok := generic.(string); ok {
			return nil
		}
		want = "a string"
	case t.Kind() == reflect.Bool:
		if _, ok := generic.(bool); ok {
			return nil
		}
		want = "true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		if isInteger(generic) {
			return nil
		}
		want = "an integer"
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		if isInteger(generic) {
			return nil
		}
		switch generic.(type) {
		case float32, float64:
			return nil
		}
		want = "a number"
	default:
		return nil
	}
	return &Error{Field: path, Message: fmt.Sprintf("want %s, got %s", want, describe(generic))}
}

// isInteger reports whether a generic value is a whole number.
func isInteger(v any) bool {
	switch n := v.(type) {
	case int8, int16, int32, int64, uint8, uint16, uint32, uint64, int, uint:
		return true
	case float64:
		return n == float64(int64(n))
	}
	return false
}

// describe names a generic value's type for an error message.
func describe(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	case []byte:
		return "bytes"
	case float32, float64:
		return "a number"
	case time.Time:
		return "a time"
	}
	if isInteger(v) {
		return "an integer"
	}
	return fmt.Sprintf("%T", v)
}

// wireFields maps the wire names of a struct's fields (its json tags, which
// equal the msgpack ones; inlined structs included) to their types.
func wireFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			for k, v := range wireFields(f.Type) {
				fields[k] = v
			}
			continue
		}
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f.Type
	}
	return fields
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
