package schema

import (
	"encoding/binary"
	"fmt"
)

// Bounds on the shape of outside bytes, checked by [Codec.Unmarshal] before
// a decoder allocates anything. kiln's own wire types nest four levels deep
// and hold a few hundred elements at most (DefaultLimits); these bounds sit
// well above that, so a valid body never meets them, while a hostile one (a
// 100-byte body declaring a four-billion-element array, a few megabytes of
// nested arrays) is refused in one pass over its bytes.
const (
	// MaxDepth is the deepest nesting of arrays and maps (objects) a body
	// may have.
	MaxDepth = 16
	// MaxContainerElements is the most elements one array or map may hold.
	MaxContainerElements = 4096
	// MaxBodyElements is the most elements all arrays and maps of one body
	// may hold together.
	MaxBodyElements = 1 << 16
)

// checkShape refuses a body whose structure is past the bounds above or
// whose declared lengths run past its end, before any decoder sees it.
func (c Codec) checkShape(data []byte) error {
	var err error
	if c == JSON {
		err = checkJSONShape(data)
	} else {
		err = checkMsgpackShape(data)
	}
	if err != nil {
		code := CodeBadMsgpack
		if c == JSON {
			code = CodeBadJSON
		}
		return &Error{Code: code, Message: "body refused before decoding: " + err.Error()}
	}
	return nil
}

// shapeCounter tracks the nesting and element bounds while a body is
// scanned.
type shapeCounter struct {
	depth    int
	elements int
}

// open accounts for a container of n elements starting at offset at.
func (s *shapeCounter) open(n uint64, at int) error {
	if s.depth >= MaxDepth {
		return fmt.Errorf("nesting at byte %d is deeper than %d levels", at, MaxDepth)
	}
	if n > MaxContainerElements {
		return fmt.Errorf("a container at byte %d declares %d elements; at most %d", at, n, MaxContainerElements)
	}
	s.elements += int(n)
	if s.elements > MaxBodyElements {
		return fmt.Errorf("the body holds more than %d elements in all", MaxBodyElements)
	}
	s.depth++
	return nil
}

// checkMsgpackShape walks one msgpack value without decoding it: every
// declared length must fit in the bytes that follow, every container within
// the bounds, and nothing may follow the value.
func checkMsgpackShape(b []byte) error {
	var (
		s       shapeCounter
		pending [MaxDepth + 1]uint64 // values still to read in each open container
		i       int
	)
	pending[0] = 1 // the body is one value
	for {
		for pending[s.depth] == 0 {
			if s.depth == 0 {
				if i != len(b) {
					return fmt.Errorf("%d bytes after the msgpack value", len(b)-i)
				}
				return nil
			}
			s.depth--
		}
		if i >= len(b) {
			return fmt.Errorf("body ends at byte %d inside a value", i)
		}
		at, c := i, b[i]
		i++
		pending[s.depth]--
		var skip, lenBytes int // payload to skip; or bytes of a big-endian length that follows
		var extra int          // bytes between the length and the payload (ext type)
		elements, mapPairs := -1, false
		switch {
		case c <= 0x7f, c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3:
		case c&0xf0 == 0x80:
			elements, mapPairs = int(c&0x0f), true
		case c&0xf0 == 0x90:
			elements = int(c & 0x0f)
		case c&0xe0 == 0xa0:
			skip = int(c & 0x1f)
		case c == 0xc4, c == 0xd9:
			lenBytes = 1
		case c == 0xc5, c == 0xda:
			lenBytes = 2
		case c == 0xc6, c == 0xdb:
			lenBytes = 4
		case c == 0xc7:
			lenBytes, extra = 1, 1
		case c == 0xc8:
			lenBytes, extra = 2, 1
		case c == 0xc9:
			lenBytes, extra = 4, 1
		case c == 0xca, c == 0xce, c == 0xd2:
			skip = 4
		case c == 0xcb, c == 0xcf, c == 0xd3:
			skip = 8
		case c == 0xcc, c == 0xd0:
			skip = 1
		case c == 0xcd, c == 0xd1:
			skip = 2
		case c >= 0xd4 && c <= 0xd8:
			skip = 1 + 1<<(c-0xd4)
		case c == 0xdc, c == 0xde:
			lenBytes, elements, mapPairs = 2, 0, c == 0xde
		case c == 0xdd, c == 0xdf:
			lenBytes, elements, mapPairs = 4, 0, c == 0xdf
		default: // 0xc1: never used
			return fmt.Errorf("byte %d: 0x%02x is not a msgpack type", at, c)
		}
		var n uint64
		if lenBytes > 0 {
			if len(b)-i < lenBytes {
				return fmt.Errorf("body ends at byte %d inside a length", len(b))
			}
			switch lenBytes {
			case 1:
				n = uint64(b[i])
			case 2:
				n = uint64(binary.BigEndian.Uint16(b[i:]))
			case 4:
				n = uint64(binary.BigEndian.Uint32(b[i:]))
			}
			i += lenBytes
		}
		if elements < 0 { // a scalar, string, binary or extension
			size := uint64(skip)
			if lenBytes > 0 {
				size = uint64(extra) + n
			}
			if uint64(len(b)-i) < size {
				return fmt.Errorf("a value at byte %d declares %d bytes; %d remain", at, size, len(b)-i)
			}
			i += int(size)
			continue
		}
		if lenBytes == 0 {
			n = uint64(elements)
		}
		values := n
		if mapPairs {
			values = 2 * n
		}
		if values > uint64(len(b)-i) { // every value takes at least one byte
			return fmt.Errorf("a container at byte %d declares %d values; only %d bytes remain", at, values, len(b)-i)
		}
		if values == 0 {
			continue
		}
		if err := s.open(n, at); err != nil {
			return err
		}
		pending[s.depth] = values
	}
}

// checkJSONShape counts the nesting and elements of a JSON body (an
// element per comma, plus one for each container); the JSON decoder checks
// the syntax itself.
func checkJSONShape(b []byte) error {
	var (
		s     shapeCounter
		count [MaxDepth + 1]uint64 // elements of each open container so far
	)
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '"':
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					i++
				}
			}
		case '[', '{':
			if err := s.open(1, i); err != nil {
				return err
			}
			count[s.depth] = 1
		case ']', '}':
			if s.depth > 0 {
				s.depth--
			}
		case ',':
			if s.depth == 0 {
				continue
			}
			count[s.depth]++
			s.elements++
			if count[s.depth] > MaxContainerElements {
				return fmt.Errorf("a container holds more than %d elements (byte %d)", MaxContainerElements, i)
			}
			if s.elements > MaxBodyElements {
				return fmt.Errorf("the body holds more than %d elements in all", MaxBodyElements)
			}
		}
	}
	return nil
}
