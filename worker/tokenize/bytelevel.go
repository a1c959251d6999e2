package tokenize

import "unicode/utf8"

// byteToRune is GPT-2's bytes_to_unicode table: every byte maps to one
// printable code point. Bytes 0x21–0x7E, 0xA1–0xAC and 0xAE–0xFF map to
// themselves; the other 68 map to U+0100 and up, in increasing byte order.
var byteToRune [256]rune

// byteUTF8 is the UTF-8 encoding of byteToRune, byteUTF8Len its length.
var (
	byteUTF8    [256][2]byte
	byteUTF8Len [256]uint8
)

// runeToByte is the inverse of byteToRune, indexed by code point (all mapped
// code points are below 0x144). Entries for code points that no byte maps to
// are -1.
var runeToByte [0x144]int16

func init() {
	for i := range runeToByte {
		runeToByte[i] = -1
	}
	n := rune(0)
	for b := 0; b < 256; b++ {
		if (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff) {
			byteToRune[b] = rune(b)
		} else {
			byteToRune[b] = 256 + n
			n++
		}
		runeToByte[byteToRune[b]] = int16(b)
		n := utf8.EncodeRune(byteUTF8[b][:], byteToRune[b])
		byteUTF8Len[b] = uint8(n)
	}
}

// byteLevelDecode maps a vocabulary token written in the byte-level alphabet
// back to the bytes it stands for. ok is false if the token holds a code point
// outside the alphabet.
func byteLevelDecode(tok string) (out []byte, ok bool) {
	out = make([]byte, 0, len(tok))
	for _, r := range tok {
		if r < 0 || int(r) >= len(runeToByte) || runeToByte[r] < 0 {
			return nil, false
		}
		out = append(out, byte(runeToByte[r]))
	}
	return out, true
}
