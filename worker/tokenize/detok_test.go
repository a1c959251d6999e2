package tokenize

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestDetokenizerHoldsSplitCharacters streams every Qwen3 case and checks that
// characters split over several tokens come out whole, and that the stream
// adds up to Decode.
func TestDetokenizerHoldsSplitCharacters(t *testing.T) {
	t.Parallel()
	tok := qwen3(t)
	held := 0
	for _, c := range readCases(t, "testdata/qwen3/cases.json") {
		d := tok.NewDetokenizer()
		var sb strings.Builder
		for _, id := range c.IDs {
			piece := d.Add(id)
			if !utf8.ValidString(piece) {
				t.Fatalf("%q: piece %q is not whole UTF-8", c.Text, piece)
			}
			if d.Pending() > 0 {
				held++
			}
			sb.WriteString(piece)
		}
		sb.WriteString(d.Flush())
		if got, want := sb.String(), tok.Decode(c.IDs); got != want {
			t.Fatalf("stream %q != decode %q", got, want)
		}
	}
	if held == 0 {
		t.Fatal("no case split a character over tokens; the test checks nothing")
	}
}

func TestDetokenizerEmoji(t *testing.T) {
	t.Parallel()
	tok := qwen3(t)
	const text = "family 👨\u200d👩\u200d👧 ok"
	ids := tok.Encode(text)
	d := tok.NewDetokenizer()
	var pieces []string
	for _, id := range ids {
		if p := d.Add(id); p != "" {
			pieces = append(pieces, p)
		}
	}
	if rest := d.Flush(); rest != "" {
		t.Fatalf("flush returned %q after a complete text", rest)
	}
	if got := strings.Join(pieces, ""); got != text {
		t.Fatalf("got %q", got)
	}
	if len(pieces) >= len(ids) {
		t.Fatalf("%d pieces for %d ids: nothing was held back", len(pieces), len(ids))
	}
}

func TestDetokenizerIncompleteAtEnd(t *testing.T) {
	t.Parallel()
	tok := qwen3(t)
	lead, ok := tok.TokenID(string(byteToRune[0xe4])) // first byte of a 3-byte character
	if !ok {
		t.Fatal("no token for byte 0xe4")
	}
	hi, _ := tok.TokenID("hi")
	d := tok.NewDetokenizer()
	if got := d.Add(hi); got != "hi" {
		t.Fatalf("Add(hi) = %q", got)
	}
	if got := d.Add(lead); got != "" || d.Pending() != 1 {
		t.Fatalf("lead byte: %q, pending %d", got, d.Pending())
	}
	// The character never completes: Flush gives U+FFFD, as Decode does.
	if got := d.Flush(); got != "\uFFFD" {
		t.Fatalf("Flush = %q", got)
	}
	if got := tok.Decode([]int{hi, lead}); got != "hi\uFFFD" {
		t.Fatalf("Decode = %q", got)
	}
	// A lead byte followed by text: the held byte is replaced, the text kept.
	d.Reset()
	d.Add(lead)
	if got := d.Add(hi); got != "\uFFFDhi" {
		t.Fatalf("lead then text: %q", got)
	}
}

func TestAppendLossyMatchesRust(t *testing.T) {
	t.Parallel()
	// Expected values follow Rust's String::from_utf8_lossy (one U+FFFD per
	// maximal subpart, Unicode §3.9 Table 3-8).
	cases := []struct{ in, want string }{
		{"abc", "abc"},
		{"\xe2\x82\xac", "€"},
		{"\xe2\x82", "\uFFFD"},
		{"\xe2\x82a", "\uFFFDa"},
		{"\xf0\x80\x80", "\uFFFD\uFFFD\uFFFD"},
		{"\xed\xa0\x80", "\uFFFD\uFFFD\uFFFD"},
		{"\xf4\x90\x80\x80", "\uFFFD\uFFFD\uFFFD\uFFFD"},
		{"\xf0\x9f\x98", "\uFFFD"},
		{"\xc0\xaf", "\uFFFD\uFFFD"},
		{"\x80\xbf", "\uFFFD\uFFFD"},
		{"a\xffb", "a\uFFFDb"},
		{"\uFFFD", "\uFFFD"},
	}
	for _, c := range cases {
		if got := string(appendLossy(nil, []byte(c.in))); got != c.want {
			t.Errorf("%q: got %q want %q", c.in, got, c.want)
		}
	}
}
