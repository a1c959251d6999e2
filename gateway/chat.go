package gateway

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strings"

	"github.com/kiln-project/kiln/schema"
)

// maxChatBody bounds a chat request: a job travels as one queue message
// (8 MiB by default), and images grow by a third in base64.
const maxChatBody = 12 << 20

// chatRequest is a decoded POST /v1/chat/completions.
type chatRequest struct {
	job          schema.ChatJob
	stream       bool
	includeUsage bool
}

// decodeChat reads an OpenAI chat completion request into a kiln chat
// job. It refuses, naming the field, anything kiln cannot honour:
// docs/gateway.md has the table.
func decodeChat(body []byte) (*chatRequest, *apiError) {
	o, err := parseObject(body, "")
	if err != nil {
		return nil, err
	}
	req := &chatRequest{}
	j := &req.job
	var ok bool
	if j.Model, ok, err = o.str("model"); err != nil {
		return nil, err
	} else if !ok || j.Model == "" {
		return nil, invalid(schema.CodeMissingField, "model", "name the model (GET /v1/models lists what the fleet serves)")
	}
	msgs, ok, err := o.list("messages")
	if err != nil {
		return nil, err
	}
	if !ok || len(msgs) == 0 {
		return nil, invalid(schema.CodeMissingField, "messages", "a chat needs at least one message")
	}
	if len(msgs) > schema.DefaultLimits.MaxMessages {
		return nil, invalid(schema.CodeOverLimit, "messages", "%d messages, at most %d allowed", len(msgs), schema.DefaultLimits.MaxMessages)
	}
	for i, raw := range msgs {
		m, err := decodeMessage(raw, fmt.Sprintf("messages[%d]", i))
		if err != nil {
			return nil, err
		}
		j.Messages = append(j.Messages, m)
	}
	if req.stream, _, err = o.boolean("stream"); err != nil {
		return nil, err
	}
	if so, err := o.sub("stream_options"); err != nil {
		return nil, err
	} else if so != nil {
		if req.includeUsage, _, err = so.boolean("include_usage"); err != nil {
			return nil, err
		}
		if _, _, err = so.boolean("include_obfuscation"); err != nil { // kiln pads nothing: accepted, no effect
			return nil, err
		}
		if err := so.unknown(); err != nil {
			return nil, err
		}
	}
	if err := decodeMaxTokens(o, j); err != nil {
		return nil, err
	}
	for name, dst := range map[string]**float64{"temperature": &j.Temperature, "top_p": &j.TopP, "repetition_penalty": &j.RepetitionPenalty} {
		if v, ok, err := o.number(name); err != nil {
			return nil, err
		} else if ok {
			*dst = &v
		}
	}
	if v, ok, err := o.integer("top_k"); err != nil {
		return nil, err
	} else if ok {
		if v < 0 || v > math.MaxInt32 {
			return nil, invalid(schema.CodeOutOfRange, "top_k", "%d is outside 0..1000", v)
		}
		j.TopK = int(v)
	}
	if j.Think, _, err = o.boolean("think"); err != nil {
		return nil, err
	}
	if j.Seed, err = decodeSeed(o); err != nil {
		return nil, err
	}
	if j.Stop, err = decodeStop(o); err != nil {
		return nil, err
	}
	if n, ok, err := o.integer("n"); err != nil {
		return nil, err
	} else if ok && n != 1 {
		return nil, unsupported("n", "kiln answers one choice per request: n must be 1 (send n requests instead; they run in parallel across the cards)")
	}
	if err := decodeMetadata(o, &j.JobHeader); err != nil {
		return nil, err
	}
	// Fields clients send at their defaults; any other value is refused.
	if err := o.refuseUnlessDefault("samples without them", map[string][]string{
		"frequency_penalty": {"0"}, "presence_penalty": {"0"}, "logit_bias": {"{}"},
		"logprobs": {"false"}, "top_logprobs": {"0"},
	}); err != nil {
		return nil, err
	}
	if err := o.refuseUnlessDefault("answers in plain text only", map[string][]string{
		"response_format": {`{"type":"text"}`}, "modalities": {`["text"]`}, "tools": {"[]"}, "functions": {"[]"},
		"tool_choice": {`"none"`, `"auto"`}, "function_call": {`"none"`, `"auto"`}, "audio": {}, "prediction": {},
		"web_search_options": {}, "reasoning_effort": {}, "verbosity": {},
	}); err != nil {
		return nil, err
	}
	if err := o.refuseUnlessDefault("keeps results for an hour by itself and has one service tier", map[string][]string{
		"store": {"false"}, "service_tier": {`"auto"`, `"default"`},
	}); err != nil {
		return nil, err
	}
	// Accepted and without effect: hints for OpenAI's own service.
	for _, name := range []string{"parallel_tool_calls", "prompt_cache_key", "prompt_cache_retention", "safety_identifier"} {
		o.raw(name)
	}
	if err := o.unknown(); err != nil {
		return nil, err
	}
	return req, nil
}

func decodeMaxTokens(o *object, j *schema.ChatJob) *apiError {
	var got []int64
	for _, name := range []string{"max_completion_tokens", "max_tokens"} {
		v, ok, err := o.integer(name)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		if v < 1 || v > int64(schema.DefaultLimits.MaxTokens) {
			return invalid(schema.CodeOutOfRange, name, "%d is outside 1..%d", v, schema.DefaultLimits.MaxTokens)
		}
		got = append(got, v)
	}
	if len(got) == 2 && got[0] != got[1] {
		return invalid(schema.CodeBadValue, "max_tokens", "max_tokens (%d) and max_completion_tokens (%d) disagree: send one", got[1], got[0])
	}
	if len(got) > 0 {
		j.MaxTokens = int(got[0])
	}
	return nil
}

// decodeSeed reads "seed": kiln's seeds are unsigned 64-bit.
func decodeSeed(o *object) (*uint64, *apiError) {
	raw := o.raw("seed")
	if raw == nil {
		return nil, nil
	}
	var seed uint64
	if err := json.Unmarshal(raw, &seed); err != nil {
		return nil, invalid(schema.CodeOutOfRange, "seed", "want a whole number in 0..2^64-1, got %s", clip(string(raw)))
	}
	return &seed, nil
}

// decodeStop reads "stop": a string or a list of strings.
func decodeStop(o *object) ([]string, *apiError) {
	raw := o.raw("stop")
	if raw == nil {
		return nil, nil
	}
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, invalid(schema.CodeBadJSON, "stop", "want a string or a list of strings, got %s", describeJSON(raw))
	}
	if len(many) > schema.DefaultLimits.MaxStop {
		return nil, invalid(schema.CodeOverLimit, "stop", "%d stop strings, at most %d allowed", len(many), schema.DefaultLimits.MaxStop)
	}
	return many, nil
}

// decodeMetadata carries "user" and "metadata" into the job's metadata
// (kiln logs it and passes it to handlers; schema's limits apply).
func decodeMetadata(o *object, h *schema.JobHeader) *apiError {
	md, err := o.sub("metadata")
	if err != nil {
		return err
	}
	if md != nil {
		if len(md.fields) > schema.DefaultLimits.MaxMetadata {
			return invalid(schema.CodeOverLimit, "metadata", "%d entries, at most %d allowed", len(md.fields), schema.DefaultLimits.MaxMetadata)
		}
		h.Metadata = map[string]string{}
		for k := range md.fields {
			v, _, err := md.str(k)
			if err != nil {
				return err
			}
			h.Metadata[k] = v
		}
	}
	user, ok, err := o.str("user")
	if err != nil {
		return err
	}
	if ok && user != "" {
		if h.Metadata == nil {
			h.Metadata = map[string]string{}
		}
		h.Metadata["user"] = user
	}
	return nil
}

// decodeMessage reads one chat message: its role and its content, a
// string or a list of parts (text, image_url with a data: URI).
func decodeMessage(raw json.RawMessage, path string) (schema.Message, *apiError) {
	o, err := parseObject(raw, path)
	if err != nil {
		return schema.Message{}, err
	}
	var m schema.Message
	role, ok, err := o.str("role")
	if err != nil {
		return m, err
	}
	switch role {
	case "system", "user", "assistant":
		m.Role = role
	case "developer": // OpenAI's newer name for system
		m.Role = "system"
	case "":
		if !ok {
			return m, invalid(schema.CodeMissingField, o.field("role"), "every message needs a role: system, developer, user or assistant")
		}
		fallthrough
	default:
		return m, unsupported(o.field("role"), "role %q: kiln takes system, developer, user and assistant messages (no tools)", clip(role))
	}
	content := o.raw("content")
	switch {
	case content == nil:
		return m, invalid(schema.CodeMissingField, o.field("content"), "every message needs content")
	case content[0] == '"':
		if err := json.Unmarshal(content, &m.Content); err != nil {
			return m, invalid(schema.CodeBadJSON, o.field("content"), "not a valid JSON string")
		}
	default:
		if err := decodeParts(content, o.field("content"), &m); err != nil {
			return m, err
		}
	}
	o.raw("name") // a participant's name: accepted, not passed to the model
	if err := o.refuseUnlessDefault("runs no tools", map[string][]string{
		"tool_calls": {"[]"}, "function_call": {}, "tool_call_id": {}, "audio": {}, "refusal": {},
	}); err != nil {
		return m, err
	}
	return m, o.unknown()
}

// decodeParts reads a content list: text parts joined by newlines, images
// as bytes.
func decodeParts(raw json.RawMessage, path string, m *schema.Message) *apiError {
	var parts []json.RawMessage
	if err := json.Unmarshal(raw, &parts); err != nil {
		return invalid(schema.CodeBadJSON, path, "want a string or a list of content parts, got %s", describeJSON(raw))
	}
	var texts []string
	for i, p := range parts {
		pp := fmt.Sprintf("%s[%d]", path, i)
		o, err := parseObject(p, pp)
		if err != nil {
			return err
		}
		typ, _, err := o.str("type")
		if err != nil {
			return err
		}
		switch typ {
		case "text":
			t, ok, err := o.str("text")
			if err != nil {
				return err
			}
			if !ok {
				return invalid(schema.CodeMissingField, o.field("text"), "a text part needs its text")
			}
			texts = append(texts, t)
		case "image_url":
			if m.Role != "user" {
				return unsupported(o.field("type"), "images go on user messages")
			}
			iu, err := o.sub("image_url")
			if err != nil {
				return err
			}
			if iu == nil {
				return invalid(schema.CodeMissingField, o.field("image_url"), "an image_url part needs image_url.url")
			}
			url, _, err := iu.str("url")
			if err != nil {
				return err
			}
			img, err := decodeDataURI(url, iu.field("url"))
			if err != nil {
				return err
			}
			if _, _, err := iu.str("detail"); err != nil { // auto, low, high: kiln's encoder has one size
				return err
			}
			if err := iu.unknown(); err != nil {
				return err
			}
			if len(m.Images) >= schema.DefaultLimits.MaxImages {
				return invalid(schema.CodeOverLimit, pp, "more than %d images", schema.DefaultLimits.MaxImages)
			}
			m.Images = append(m.Images, img)
		case "":
			return invalid(schema.CodeMissingField, o.field("type"), "every content part has a type: text or image_url")
		default:
			return unsupported(o.field("type"), "content part %q: kiln takes text and image_url parts", clip(typ))
		}
		if err := o.unknown(); err != nil {
			return err
		}
	}
	m.Content = strings.Join(texts, "\n")
	return nil
}

// decodeDataURI reads a data: URI of a PNG or JPEG image. The gateway
// fetches nothing from the network: an installation is often offline, and
// a URL fetched on a client's behalf is a way into the local network.
func decodeDataURI(uri, path string) ([]byte, *apiError) {
	rest, ok := strings.CutPrefix(uri, "data:")
	if !ok {
		return nil, unsupported(path, "kiln fetches no URLs: send the image inline as a data:image/png;base64,… or data:image/jpeg;base64,… URI")
	}
	meta, data, ok := strings.Cut(rest, ",")
	mime, isBase64 := strings.CutSuffix(meta, ";base64")
	if !ok || !isBase64 {
		return nil, invalid(schema.CodeBadValue, path, "a data URI of an image must be base64: data:image/png;base64,…")
	}
	switch strings.ToLower(mime) {
	case "image/png", "image/jpeg", "image/jpg":
	default:
		return nil, unsupported(path, "%q images: kiln takes image/png and image/jpeg", clip(mime))
	}
	if n := base64.StdEncoding.DecodedLen(len(data)); n > schema.DefaultLimits.MaxImageBytes+3 {
		return nil, invalid(schema.CodeOverLimit, path, "the image is about %d bytes, at most %d allowed", n, schema.DefaultLimits.MaxImageBytes)
	}
	img, err := base64.StdEncoding.DecodeString(data)
	if err != nil {
		return nil, invalid(schema.CodeBadValue, path, "the data URI is not valid base64: %v", err)
	}
	if len(img) == 0 {
		return nil, invalid(schema.CodeMissingField, path, "the image is empty")
	}
	if len(img) > schema.DefaultLimits.MaxImageBytes {
		return nil, invalid(schema.CodeOverLimit, path, "the image is %d bytes, at most %d allowed", len(img), schema.DefaultLimits.MaxImageBytes)
	}
	return img, nil
}
