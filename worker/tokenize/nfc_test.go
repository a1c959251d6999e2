package tokenize

import (
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
