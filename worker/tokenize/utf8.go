package tokenize

import "unicode/utf8"

// seqLen is the length of the UTF-8 sequence that lead byte c starts, or 0 if
// c cannot start a sequence.
func seqLen(c byte) int {
	switch {
	case c < 0x80:
		return 1
	case c >= 0xc2 && c <= 0xdf:
		return 2
	case c >= 0xe0 && c <= 0xef:
		return 3
	case c >= 0xf0 && c <= 0xf4:
		return 4
	}
	return 0
}

// validPrefix returns how many bytes at the start of b belong to one UTF-8
// sequence that is valid as far as it goes (the "maximal subpart" of Unicode
// §3.9, which Rust's String::from_utf8_lossy replaces with one U+FFFD). It is
// at least 1 for a non-empty b.
func validPrefix(b []byte) int {
	c := b[0]
	lo, hi := byte(0x80), byte(0xbf)
	switch c {
	case 0xe0:
		lo = 0xa0
	case 0xed:
		hi = 0x9f
	case 0xf0:
		lo = 0x90
	case 0xf4:
		hi = 0x8f
	}
	need := seqLen(c)
	if need <= 1 {
		return 1
	}
	n := 1
	for k := 1; k < need; k++ {
		if k >= len(b) {
			return n
		}
		x := b[k]
		if k == 1 {
			if x < lo || x > hi {
				return n
			}
		} else if x < 0x80 || x > 0xbf {
			return n
		}
		n++
	}
	return n
}

// appendLossy appends src to dst, replacing every maximal invalid subpart with
// U+FFFD, the way Rust's String::from_utf8_lossy (and so the Hugging Face
// ByteLevel decoder) does.
func appendLossy(dst, src []byte) []byte {
	for i := 0; i < len(src); {
		c := src[i]
		if c < utf8.RuneSelf {
			dst = append(dst, c)
			i++
			continue
		}
		r, w := utf8.DecodeRune(src[i:])
		if r != utf8.RuneError || w > 1 {
			dst = append(dst, src[i:i+w]...)
			i += w
			continue
		}
		dst = append(dst, "\uFFFD"...)
		i += validPrefix(src[i:])
	}
	return dst
}

// incompleteTail returns the length of the trailing bytes of b that start a
// valid UTF-8 sequence which is not finished yet (0 to 3 bytes). More bytes
// may complete it, so a streaming decoder holds them back.
func incompleteTail(b []byte) int {
	for p := len(b) - 1; p >= 0 && p >= len(b)-3; p-- {
		c := b[p]
		if c < 0x80 {
			return 0
		}
		if c <= 0xbf {
			continue // continuation byte: look further back for the lead
		}
		n := validPrefix(b[p:])
		if n == len(b)-p && n < seqLen(c) {
			return n
		}
		return 0
	}
	return 0
}
