package dashboard

import (
	"strings"
	"testing"

	"github.com/kiln-project/kiln/schema"
)

// The dashboard's cancel bodies come from any browser: every body either
// decodes into a request whose check names a field or passes with valid
// ids, or is refused; none panics, and none past the bound is read whole.
func FuzzRequestBodies(f *testing.F) {
	for _, seed := range []string{
		`{"id":"01J","client":"room-1"}`, `{"id":"01J"}`, `{"id":"a.b","client":""}`, `{"id":"x","clnt":"y"}`,
		`{"id":1}`, `{"id":"a"} {"id":"b"}`, `{"id":"` + strings.Repeat("é", 1000) + `"}`, `{"client":"a b","id":"x"}`,
		`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[`, "", "null", `{"id":null}`,
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
	})
}
