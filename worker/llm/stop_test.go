package llm

import (
	"strings"
	"testing"
)

func TestStopMatcherHoldsBackPartialStops(t *testing.T) {
	for _, tc := range []struct {
		stops  []string
		pieces []string
		want   string
		hit    bool
	}{
		{nil, []string{"a", "b"}, "ab", false},
		{[]string{"END"}, []string{"hello E", "N", "D more"}, "hello ", true},
		{[]string{"END"}, []string{"hello E", "N", "x"}, "hello ENx", false},
		{[]string{"END"}, []string{"hello E", "N"}, "hello EN", false},
		{[]string{"éé", "x"}, []string{"aé", "é"}, "a", true},
		{[]string{"ab", "b"}, []string{"xa", "b"}, "x", true},
		{[]string{"bc", "c"}, []string{"ab", "c"}, "a", true},
		{[]string{"\n\n"}, []string{"one\n", "two\n", "\nthree"}, "one\ntwo", true},
	} {
		m := NewStopMatcher(tc.stops)
		var out strings.Builder
		hit := false
		for _, p := range tc.pieces {
			piece, h := m.Feed(p)
			if strings.Contains(out.String()+piece, "END") {
				t.Errorf("stop string passed on")
			}
			out.WriteString(piece)
			if h {
				hit = true
				break
			}
		}
		if !hit {
			out.WriteString(m.Flush(""))
		}
		if out.String() != tc.want || hit != tc.hit || m.Hit() != tc.hit {
			t.Errorf("stops %q pieces %q: %q (hit %v), want %q (hit %v)", tc.stops, tc.pieces, out.String(), hit, tc.want, tc.hit)
		}
	}
}
