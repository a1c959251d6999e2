package tokenize

import (
	"slices"
	"testing"

	"golang.org/x/text/unicode/norm"
)

// TestIsNFCShortcut checks the fact isNFC relies on: every character below
// U+0300 is NFC on its own, with combining class 0, so any sequence of them
// is NFC.
func TestIsNFCShortcut(t *testing.T) {
	for r := rune(0); r < 0x300; r++ {
		s := string(r)
		if p := norm.NFC.PropertiesString(s); !norm.NFC.IsNormalString(s) || p.CCC() != 0 || !p.BoundaryBefore() {
			t.Fatalf("U+%04X is not a stable NFC starter", r)
		}
	}
	for _, s := range []string{"abc", "café", "e\u0301", "\xc3", "\xc3A", "ǅ", "中"} {
		if isNFC(s) != norm.NFC.IsNormalString(s) {
			t.Errorf("isNFC(%q) = %v", s, isNFC(s))
		}
	}
}

// TestMergeHeapMatchesScan runs both merge loops on every pre-token of the
// Qwen3 cases and on random byte strings: the heap (used above shortWord
// bytes) must merge exactly like the scan.
func TestMergeHeapMatchesScan(t *testing.T) {
	t.Parallel()
	tok := qwen3(t)
	var words []string
	for _, c := range readCases(t, "testdata/qwen3/cases.json") {
		for i := 0; i < len(c.Text); {
			j := qwenNext(c.Text, i)
			words = append(words, c.Text[i:j])
			i = j
		}
		words = append(words, c.Text)
	}
	rnd := uint32(1)
	for range 500 {
		b := make([]byte, 1+rnd%80)
		for k := range b {
			rnd = rnd*1664525 + 1013904223
			const alphabet = "aaabeginnthe rst\n\t{}()"
			b[k] = alphabet[rnd>>24%uint32(len(alphabet))]
		}
		words = append(words, string(b))
	}
	sc := new(scratch)
	for _, w := range words {
		syms := func() []int32 {
			s := make([]int32, len(w))
			for i := range len(w) {
				s[i] = tok.byteID[w[i]]
			}
			return s
		}
		a := tok.merges.merge(syms(), sc)
		if len(w) > shortWord {
			continue // merge used the heap already
		}
		b := tok.merges.mergeHeap(syms(), sc)
		if !slices.Equal(a, b) {
			t.Fatalf("%q: scan %v heap %v", w, a, b)
		}
	}
}
