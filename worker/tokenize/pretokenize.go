package tokenize

import (
	"unicode"
	"unicode/utf8"
)

// Character classes used by the pre-tokenizer regexes: \p{L}, \p{N}, \s
// (Unicode White_Space, as Oniguruma and Go's unicode.IsSpace define it) and
// everything else.
const (
	clOther = iota
	clLetter
	clNumber
	clSpace
)

var asciiClass [utf8.RuneSelf]uint8

func init() {
	for c := 0; c < utf8.RuneSelf; c++ {
		r := rune(c)
		switch {
		case unicode.IsLetter(r):
			asciiClass[c] = clLetter
		case unicode.IsNumber(r):
			asciiClass[c] = clNumber
		case unicode.IsSpace(r):
			asciiClass[c] = clSpace
		}
	}
}

// classAt decodes the rune at s[i] and returns its class and width. An
// invalid byte counts as one character of class clOther (the regexes never
// see one, since Rust strings are valid UTF-8; this keeps Go strings with
// stray bytes from panicking and round-trips them byte for byte).
func classAt(s string, i int) (cl uint8, r rune, w int) {
	c := s[i]
	if c < utf8.RuneSelf {
		return asciiClass[c], rune(c), 1
	}
	r, w = utf8.DecodeRuneInString(s[i:])
	switch {
	case unicode.IsLetter(r):
		return clLetter, r, w
	case unicode.IsNumber(r):
		return clNumber, r, w
	case unicode.IsSpace(r):
		return clSpace, r, w
	}
	return clOther, r, w
}

// runEnd returns the end of the run of characters of class cl that starts at
// i.
func runEnd(s string, i int, cl uint8) int {
	for i < len(s) {
		c, _, w := classAt(s, i)
		if c != cl {
			break
		}
		i += w
	}
	return i
}

// contraction returns the length of the English contraction suffix ('s 't
// 're 've 'm 'll 'd) at s[i], where s[i] is the apostrophe, or 0. With fold
// the letters match either ASCII case, as the Qwen regex's (?i:...) group does
// in Oniguruma (which does not fold U+017F ſ to s there: checked against the
// reference).
func contraction(s string, i int, fold bool) int {
	lower := func(c byte) byte {
		if fold && c >= 'A' && c <= 'Z' {
			return c + 'a' - 'A'
		}
		return c
	}
	if i+1 >= len(s) {
		return 0
	}
	switch lower(s[i+1]) {
	case 's', 't', 'm', 'd':
		return 2
	case 'r', 'v':
		if i+2 < len(s) && lower(s[i+2]) == 'e' {
			return 3
		}
	case 'l':
		if i+2 < len(s) && lower(s[i+2]) == 'l' {
			return 3
		}
	}
	return 0
}

// qwenPattern is the Split regex of the Qwen2/Qwen3 tokenizer.json (the same
// as GPT-4's cl100k except for single digits). qwenNext implements it by hand.
const qwenPattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// qwenNext returns the end of the pre-token that starts at s[i], i < len(s),
// exactly as leftmost-first matching of qwenPattern would find it.
func qwenNext(s string, i int) int {
	cl, r, w := classAt(s, i)
	// (?i:'s|'t|'re|'ve|'m|'ll|'d)
	if r == '\'' {
		if n := contraction(s, i, true); n > 0 {
			return i + n
		}
	}
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if cl == clLetter {
		return runEnd(s, i+w, clLetter)
	}
	if cl != clNumber && r != '\r' && r != '\n' && i+w < len(s) {
		if cl2, _, w2 := classAt(s, i+w); cl2 == clLetter {
			return runEnd(s, i+w+w2, clLetter)
		}
	}
	// \p{N}
	if cl == clNumber {
		return i + w
	}
	// ` ?[^\s\p{L}\p{N}]+[\r\n]*`
	j := i
	if r == ' ' {
		j++
	}
	if k := runEnd(s, j, clOther); k > j {
		for k < len(s) && (s[k] == '\r' || s[k] == '\n') {
			k++
		}
		return k
	}
	// Only whitespace is left: cl == clSpace.
	end := runEnd(s, i, clSpace)
	// \s*[\r\n]+ : up to and including the last CR or LF of the run.
	for k := end - 1; k >= i; k-- {
		if s[k] == '\r' || s[k] == '\n' {
			return k + 1
		}
	}
	// \s+(?!\S) : the whole run at the end of the text, else all of it but
	// its last character, if that leaves something.
	if end == len(s) {
		return end
	}
	_, last := utf8.DecodeLastRuneInString(s[i:end])
	if end-last > i {
		return end - last
	}
	// \s+
	return end
}

// gpt2Next implements the GPT-2 regex that the ByteLevel pre-tokenizer uses
// with use_regex true:
// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
func gpt2Next(s string, i int) int {
	cl, r, _ := classAt(s, i)
	if r == '\'' {
		if n := contraction(s, i, false); n > 0 {
			return i + n
		}
	}
	j := i
	if r == ' ' && i+1 < len(s) {
		j = i + 1
		cl, _, _ = classAt(s, j)
		if cl == clSpace {
			j = i // a space before whitespace is whitespace
			cl = clSpace
		}
	}
	if cl != clSpace {
		return runEnd(s, j, cl)
	}
	end := runEnd(s, i, clSpace)
	if end == len(s) {
		return end
	}
	_, last := utf8.DecodeLastRuneInString(s[i:end])
	if end-last > i {
		return end - last
	}
	return end
}

// digitsNext implements the Digits pre-tokenizer: numbers (\p{N}) split from
// the rest, one per piece if individual.
func digitsNext(individual bool) func(s string, i int) int {
	return func(s string, i int) int {
		cl, _, w := classAt(s, i)
		if cl == clNumber {
			if individual {
				return i + w
			}
			return runEnd(s, i, clNumber)
		}
		for i < len(s) {
			c, _, w := classAt(s, i)
			if c == clNumber {
				break
			}
			i += w
		}
		return i
	}
}
