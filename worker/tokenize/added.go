package tokenize

import (
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// addedToken is a token matched as a whole in the text before
// pre-tokenization (<|im_start|>, <think>, ...).
type addedToken struct {
	content        string
	id             int32
	lstrip, rstrip bool // the match swallows white space on that side
}

// addedMatcher finds added tokens in text, leftmost first and, among tokens
// that start at the same place, longest first (the aho-corasick
// LeftmostLongest rule of Hugging Face tokenizers).
type addedMatcher struct {
	tokens []addedToken
	// byFirst[c] lists the tokens starting with byte c, longest first.
	byFirst [256][]addedToken
	first   [256]bool
	// single is the one first byte all tokens share, or -1.
	single int
}

func newAddedMatcher(tokens []addedToken) addedMatcher {
	m := addedMatcher{tokens: tokens, single: -1}
	for _, t := range tokens {
		c := t.content[0]
		m.byFirst[c] = append(m.byFirst[c], t)
		m.first[c] = true
	}
	n := 0
	for c := range m.byFirst {
		if l := m.byFirst[c]; len(l) > 0 {
			n++
			m.single = c
			slices.SortStableFunc(l, func(a, b addedToken) int { return len(b.content) - len(a.content) })
		}
	}
	if n != 1 {
		m.single = -1
	}
	return m
}

// next finds the first added token in s at or after from. It returns its
// span, widened over white space for lstrip/rstrip tokens (never before
// from), and its id, or (len(s), len(s), -1) if there is none.
func (m *addedMatcher) next(s string, from int) (start, end int, id int32) {
	i := from
	if len(m.tokens) == 0 {
		return len(s), len(s), -1
	}
	for i < len(s) {
		if m.single >= 0 {
			k := strings.IndexByte(s[i:], byte(m.single))
			if k < 0 {
				break
			}
			i += k
		} else if !m.first[s[i]] {
			i++
			continue
		}
		for _, t := range m.byFirst[s[i]] {
			if strings.HasPrefix(s[i:], t.content) {
				start, end = i, i+len(t.content)
				for t.lstrip && start > from {
					r, w := utf8.DecodeLastRuneInString(s[from:start])
					if !unicode.IsSpace(r) {
						break
					}
					start -= w
				}
				for t.rstrip && end < len(s) {
					r, w := utf8.DecodeRuneInString(s[end:])
					if !unicode.IsSpace(r) {
						break
					}
					end += w
				}
				return start, end, t.id
			}
		}
		i++
	}
	return len(s), len(s), -1
}
