package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"slices"
	"strings"

	"github.com/kiln-project/kiln/schema"
)

// readBody reads a request body of at most limit bytes.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, *apiError) {
	b, err := io.ReadAll(limitBody(w, r, limit))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		e := invalid(schema.CodeOverLimit, "", "the request body is larger than %d bytes", limit)
		e.Status = http.StatusRequestEntityTooLarge
		return nil, e
	}
	if err != nil {
		return nil, invalid(schema.CodeBadJSON, "", "reading the request body: %v", err)
	}
	return b, nil
}

// object is a JSON object whose fields are decoded one by one, so that an
// error names the field by its path (messages[0].content[1].image_url.url)
// and a field no one asked for is refused (unknown).
type object struct {
	path   string
	fields map[string]json.RawMessage
	used   map[string]bool
}

// parseObject reads raw as a JSON object at path ("" for the body).
func parseObject(raw []byte, path string) (*object, *apiError) {
	var fields map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&fields); err != nil || fields == nil {
		what := "the body"
		if path != "" {
			what = path
		}
		if err == nil {
			err = errors.New("null")
		}
		return nil, invalid(schema.CodeBadJSON, path, "%s is not a JSON object: %v", what, err)
	}
	if dec.More() {
		return nil, invalid(schema.CodeBadJSON, path, "data after the JSON object")
	}
	return &object{path: path, fields: fields, used: map[string]bool{}}, nil
}

// field is the path of a field of o.
func (o *object) field(name string) string {
	if o.path == "" {
		return name
	}
	return o.path + "." + name
}

// raw returns the field's bytes, nil when it is absent or null, and marks
// it used.
func (o *object) raw(name string) json.RawMessage {
	o.used[name] = true
	v, ok := o.fields[name]
	if !ok || string(bytes.TrimSpace(v)) == "null" {
		return nil
	}
	return v
}

func (o *object) decode(name string, v any, want string) (bool, *apiError) {
	raw := o.raw(name)
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, invalid(schema.CodeBadJSON, o.field(name), "want %s, got %s", want, describeJSON(raw))
	}
	return true, nil
}

func (o *object) str(name string) (string, bool, *apiError) {
	var s string
	ok, err := o.decode(name, &s, "a string")
	return s, ok, err
}

func (o *object) boolean(name string) (bool, bool, *apiError) {
	var b bool
	ok, err := o.decode(name, &b, "true or false")
	return b, ok, err
}

func (o *object) number(name string) (float64, bool, *apiError) {
	var f float64
	ok, err := o.decode(name, &f, "a number")
	return f, ok, err
}

// integer reads a whole number within int64.
func (o *object) integer(name string) (int64, bool, *apiError) {
	f, ok, err := o.number(name)
	if err != nil || !ok {
		return 0, ok, err
	}
	if f != math.Trunc(f) || f < math.MinInt64 || f >= math.MaxInt64 {
		return 0, false, invalid(schema.CodeBadJSON, o.field(name), "want an integer, got %g", f)
	}
	return int64(f), true, nil
}

// list reads an array field as its elements, undecoded.
func (o *object) list(name string) ([]json.RawMessage, bool, *apiError) {
	var l []json.RawMessage
	ok, err := o.decode(name, &l, "a list")
	return l, ok, err
}

// sub reads an object field.
func (o *object) sub(name string) (*object, *apiError) {
	raw := o.raw(name)
	if raw == nil {
		return nil, nil
	}
	return parseObject(raw, o.field(name))
}

// unknown refuses the first field of o that no one read.
func (o *object) unknown() *apiError {
	var left []string
	for k := range o.fields {
		if !o.used[k] {
			left = append(left, k)
		}
	}
	if len(left) == 0 {
		return nil
	}
	slices.Sort(left)
	known := make([]string, 0, len(o.used))
	for k := range o.used {
		known = append(known, k)
	}
	slices.Sort(known)
	return invalid(schema.CodeUnknownField, o.field(left[0]), "unknown field %q; kiln's gateway takes %s (docs/gateway.md)",
		clip(left[0]), strings.Join(known, ", "))
}

// refuseUnlessDefault marks fields kiln cannot honour: each may be absent,
// null or its default value (given as JSON, compared after compacting);
// anything else is refused naming the field.
func (o *object) refuseUnlessDefault(why string, defaults map[string][]string) *apiError {
	names := make([]string, 0, len(defaults))
	for n := range defaults {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		raw := o.raw(n)
		if raw == nil {
			continue
		}
		var got bytes.Buffer
		if err := json.Compact(&got, raw); err != nil {
			return invalid(schema.CodeBadJSON, o.field(n), "not valid JSON")
		}
		switch {
		case len(defaults[n]) == 0:
			return unsupported(o.field(n), "kiln %s: leave %s out (or null)", why, n)
		case !slices.Contains(defaults[n], got.String()):
			return unsupported(o.field(n), "kiln %s, so %s can only be %s (or left out)", why, n, strings.Join(defaults[n], " or "))
		}
	}
	return nil
}

// describeJSON names the JSON type of raw for an error message.
func describeJSON(raw []byte) string {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 {
		return "nothing"
	}
	switch t[0] {
	case '"':
		return "a string"
	case '{':
		return "an object"
	case '[':
		return "a list"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return clip(string(t))
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) <= 40 {
		return s
	}
	return s[:37] + "..."
}
