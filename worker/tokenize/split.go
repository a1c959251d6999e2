package tokenize

import (
	"strings"
	"time"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
)

// splitStep is one pre-tokenizer step: it cuts a piece of text into smaller
// contiguous pieces. Hand-written steps set next; the regexp2 fallback for
// patterns without a hand-written matcher sets split.
type splitStep struct {
	name  string
	next  func(s string, i int) int // end of the piece starting at i < len(s)
	split func(s string, fn func(piece string))
}

func (st *splitStep) each(s string, fn func(piece string)) {
	if st.next != nil {
		for i := 0; i < len(s); {
			j := st.next(s, i)
			fn(s[i:j])
			i = j
		}
		return
	}
	st.split(s, fn)
}

// literalStep splits on every occurrence of lit, keeping it as its own piece
// (Split with a String pattern and behavior Isolated).
func literalStep(lit string) splitStep {
	return splitStep{name: "literal", next: func(s string, i int) int {
		if strings.HasPrefix(s[i:], lit) {
			return i + len(lit)
		}
		if k := strings.Index(s[i:], lit); k >= 0 {
			return i + k
		}
		return len(s)
	}}
}

// regexMatchTimeout bounds one regexp2 search, so that a pattern with
// catastrophic backtracking cannot hang an encode.
const regexMatchTimeout = 2 * time.Second

// regexStep compiles a Split regex that has no hand-written matcher with
// regexp2 (which has the lookarounds RE2 lacks). Matches and, with keepGaps,
// the text between them each become a piece (behavior Isolated; without
// keepGaps, Removed with invert). If a search fails (timeout), the rest of
// the text stays one piece.
func regexStep(pattern string, keepGaps bool) (splitStep, error) {
	re, err := regexp2.Compile(pattern, regexp2.None)
	if err != nil {
		return splitStep{}, formatErr("pre_tokenizer Split regex %q: %v", pattern, err)
	}
	re.MatchTimeout = regexMatchTimeout
	return splitStep{name: "regex", split: func(s string, fn func(string)) {
		runes := []rune(s)
		// byteAt[k] is the byte offset of runes[k]. Invalid bytes decode to
		// one RuneError each, so the offsets stay exact.
		byteAt := make([]int, len(runes)+1)
		k := 0
		for i := 0; i < len(s); {
			_, w := utf8.DecodeRuneInString(s[i:])
			byteAt[k] = i
			k++
			i += w
		}
		byteAt[len(runes)] = len(s)
		last := 0
		m, err := re.FindRunesMatch(runes)
		for err == nil && m != nil {
			start, end := byteAt[m.Index], byteAt[m.Index+m.Length]
			if start > last && keepGaps {
				fn(s[last:start])
			}
			if end > start {
				fn(s[start:end])
			}
			last = end
			m, err = re.FindNextMatch(m)
		}
		if last < len(s) && (keepGaps || err != nil) {
			fn(s[last:])
		}
	}}, nil
}
