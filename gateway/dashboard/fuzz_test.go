package dashboard

import (
	"strings"
	"testing"

	"github.com/kiln-project/kiln/schema"
)

// The dashboard's request bodies come from any browser: every body either
// decodes into a request whose check names a field or passes with valid
// ids, or is refused; none panics, and none past the bound is read whole.
func FuzzRequestBodies(f *testing.F) {
	for _, seed := range []string{
		`{"id":"01J","client":"room-1"}`, `{"id":"01J"}`, `{"id":"a.b","client":""}`, `{"id":"x","clnt":"y"}`,
		`{"model":"qwen3-4b","prompt":"hi","max_tokens":16}`, `{"model":"sd15-lcm","prompt":"a kiln","steps":4}`,
		`{"model":"*","prompt":" "}`, `{"model":"m","prompt":"p","max_tokens":-1}`, `{"id":1}`, `{"id":"a"} {"id":"b"}`,
		`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[`, `{"prompt":"` + strings.Repeat("é", 1000) + `"}`, "", "null", `{"id":null}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var c cancelRequest
		if err := decodeBody(strings.NewReader(string(body)), &c); err == nil {
			if param, _ := c.check(); param == "" && (!schema.ValidToken(c.ID) || (c.Client != "" && !schema.ValidToken(c.Client))) {
				t.Fatalf("cancel %+v passed its check", c)
			}
		} else if len(body) > maxRequestBody && !strings.Contains(err.Error(), "over") {
			t.Fatalf("a %d-byte body refused for %v, not its size", len(body), err)
		}
		var p playRequest
		if decodeBody(strings.NewReader(string(body)), &p) == nil {
			if param, _ := p.check(); param == "" && (!schema.ValidToken(p.Model) || strings.TrimSpace(p.Prompt) == "" || len(p.Prompt) > maxPrompt) {
				t.Fatalf("play %+v passed its check", p)
			}
		}
	})
}
