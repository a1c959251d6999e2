package tokenize

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// jsonScanner reads the two big parts of a tokenizer file, the vocab object
// and the merges array, without building an interface{} tree. encoding/json
// takes several times longer on the 11 MB Qwen3 file.
type jsonScanner struct {
	b   []byte
	i   int
	buf []byte // unescaped string scratch
}

func (s *jsonScanner) errorf(format string, args ...any) error {
	return fmt.Errorf("offset %d: %s", s.i, fmt.Sprintf(format, args...))
}

func (s *jsonScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *jsonScanner) peek() byte {
	s.ws()
	if s.i >= len(s.b) {
		return 0
	}
	return s.b[s.i]
}

func (s *jsonScanner) expect(c byte) error {
	if s.peek() != c {
		if s.i >= len(s.b) {
			return s.errorf("want %q, got end of input", c)
		}
		return s.errorf("want %q, got %q", c, s.b[s.i])
	}
	s.i++
	return nil
}

// str reads a JSON string. The result aliases the input or s.buf and is only
// valid until the next call.
func (s *jsonScanner) str() ([]byte, error) {
	if err := s.expect('"'); err != nil {
		return nil, err
	}
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		if c == '"' {
			out := s.b[start:s.i]
			s.i++
			return out, nil
		}
		if c == '\\' {
			break
		}
		if c < 0x20 {
			return nil, s.errorf("control character in string")
		}
		s.i++
	}
	s.buf = append(s.buf[:0], s.b[start:s.i]...)
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return s.buf, nil
		case c < 0x20:
			return nil, s.errorf("control character in string")
		case c != '\\':
			s.buf = append(s.buf, c)
			s.i++
			continue
		}
		if s.i+1 >= len(s.b) {
			break
		}
		e := s.b[s.i+1]
		s.i += 2
		switch e {
		case '"', '\\', '/':
			s.buf = append(s.buf, e)
		case 'b':
			s.buf = append(s.buf, '\b')
		case 'f':
			s.buf = append(s.buf, '\f')
		case 'n':
			s.buf = append(s.buf, '\n')
		case 'r':
			s.buf = append(s.buf, '\r')
		case 't':
			s.buf = append(s.buf, '\t')
		case 'u':
			r, ok := s.hex4()
			if !ok {
				return nil, s.errorf("bad \\u escape")
			}
			if utf16.IsSurrogate(r) {
				r2 := rune(-1)
				if s.i+1 < len(s.b) && s.b[s.i] == '\\' && s.b[s.i+1] == 'u' {
					s.i += 2
					if r2, ok = s.hex4(); !ok {
						return nil, s.errorf("bad \\u escape")
					}
				}
				r = utf16.DecodeRune(r, r2)
			}
			s.buf = utf8.AppendRune(s.buf, r)
		default:
			return nil, s.errorf("bad escape \\%c", e)
		}
	}
	return nil, s.errorf("unterminated string")
}

func (s *jsonScanner) hex4() (rune, bool) {
	if s.i+4 > len(s.b) {
		return 0, false
	}
	v, err := strconv.ParseUint(string(s.b[s.i:s.i+4]), 16, 16)
	if err != nil {
		return 0, false
	}
	s.i += 4
	return rune(v), true
}

// integer reads a non-negative JSON integer that fits an int32.
func (s *jsonScanner) integer() (int32, error) {
	s.ws()
	start := s.i
	var v int64
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		v = v*10 + int64(s.b[s.i]-'0')
		if v > 1<<31-1 {
			return 0, s.errorf("number too large")
		}
		s.i++
	}
	if s.i == start {
		return 0, s.errorf("want a non-negative integer")
	}
	if s.i < len(s.b) && (s.b[s.i] == '.' || s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		return 0, s.errorf("want an integer")
	}
	return int32(v), nil
}

// objectStringInt reads {"key": int, ...}, calling fn for each pair.
func (s *jsonScanner) objectStringInt(fn func(key []byte, v int32) error) error {
	return s.objectKeys(func(k []byte) error {
		v, err := s.integer()
		if err != nil {
			return err
		}
		return fn(k, v)
	})
}

// merges reads the merges array in either form, ["a b", ...] or
// [["a", "b"], ...], calling fn with the two parts of each merge.
func (s *jsonScanner) merges(fn func(a, b []byte) error) error {
	if err := s.expect('['); err != nil {
		return err
	}
	if s.peek() == ']' {
		s.i++
		return nil
	}
	var a []byte
	for n := 0; ; n++ {
		switch s.peek() {
		case '"':
			line, err := s.str()
			if err != nil {
				return err
			}
			sp := -1
			for k, c := range line {
				if c == ' ' {
					if sp >= 0 {
						sp = -2
						break
					}
					sp = k
				}
			}
			if sp < 0 {
				return s.errorf("merge %d %q is not two tokens separated by one space", n, line)
			}
			if err := fn(line[:sp], line[sp+1:]); err != nil {
				return err
			}
		case '[':
			s.i++
			x, err := s.str()
			if err != nil {
				return err
			}
			a = append(a[:0], x...)
			if err := s.expect(','); err != nil {
				return err
			}
			b, err := s.str()
			if err != nil {
				return err
			}
			if err := s.expect(']'); err != nil {
				return fmt.Errorf("merge %d is not a pair: %w", n, err)
			}
			if err := fn(a, b); err != nil {
				return err
			}
		default:
			return s.errorf("merge %d: want a string or a pair of strings", n)
		}
		switch s.peek() {
		case ',':
			s.i++
		case ']':
			s.i++
			return nil
		default:
			return s.errorf("want ',' or ']'")
		}
	}
}

// maxDepth bounds the nesting skipValue accepts.
const maxDepth = 512

// skipValue moves past one JSON value of any kind and returns its bytes.
func (s *jsonScanner) skipValue() ([]byte, error) {
	s.ws()
	start := s.i
	if err := s.skip(0); err != nil {
		return nil, err
	}
	return s.b[start:s.i], nil
}

func (s *jsonScanner) skip(depth int) error {
	if depth > maxDepth {
		return s.errorf("nested too deeply")
	}
	switch c := s.peek(); {
	case c == '"':
		s.i++
		for {
			k := bytes.IndexAny(s.b[s.i:], "\"\\")
			if k < 0 {
				s.i = len(s.b)
				return s.errorf("unterminated string")
			}
			s.i += k
			if s.b[s.i] == '"' {
				s.i++
				return nil
			}
			s.i += 2 // the backslash and the escaped byte
			if s.i > len(s.b) {
				s.i = len(s.b)
				return s.errorf("unterminated string")
			}
		}
	case c == '{' || c == '[':
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		s.i++
		if s.peek() == end {
			s.i++
			return nil
		}
		for {
			if c == '{' {
				if s.peek() != '"' {
					return s.errorf("want an object key")
				}
				if err := s.skip(depth + 1); err != nil {
					return err
				}
				if err := s.expect(':'); err != nil {
					return err
				}
			}
			if err := s.skip(depth + 1); err != nil {
				return err
			}
			switch s.peek() {
			case ',':
				s.i++
			case end:
				s.i++
				return nil
			default:
				return s.errorf("want ',' or %q", end)
			}
		}
	case c == '-' || (c >= '0' && c <= '9'):
		start := s.i
		for s.i < len(s.b) && strings.IndexByte("+-.0123456789eE", s.b[s.i]) >= 0 {
			s.i++
		}
		if _, err := strconv.ParseFloat(string(s.b[start:s.i]), 64); err != nil {
			return s.errorf("bad number")
		}
		return nil
	default:
		for _, lit := range []string{"true", "false", "null"} {
			if bytes.HasPrefix(s.b[s.i:], []byte(lit)) {
				s.i += len(lit)
				return nil
			}
		}
		if s.i >= len(s.b) {
			return s.errorf("want a value, got end of input")
		}
		return s.errorf("want a value, got %q", s.b[s.i])
	}
}

// objectFields walks a JSON object and calls fn with each key and the
// scanner positioned at its value; fn must consume the value.
func (s *jsonScanner) objectFields(fn func(key string) error) error {
	return s.objectKeys(func(k []byte) error { return fn(string(k)) })
}

// objectKeys walks a JSON object and calls fn with each key (valid only
// during the call) and the scanner positioned at its value; fn must
// consume the value.
func (s *jsonScanner) objectKeys(fn func(key []byte) error) error {
	if err := s.expect('{'); err != nil {
		return err
	}
	if s.peek() == '}' {
		s.i++
		return nil
	}
	for {
		k, err := s.str()
		if err != nil {
			return err
		}
		if err := s.expect(':'); err != nil {
			return err
		}
		if err := fn(k); err != nil {
			return err
		}
		switch s.peek() {
		case ',':
			s.i++
		case '}':
			s.i++
			return nil
		default:
			return s.errorf("want ',' or '}'")
		}
	}
}

// appendField appends "key":raw to a JSON object being built in dst.
func appendField(dst []byte, key string, raw []byte) []byte {
	if len(dst) > 1 {
		dst = append(dst, ',')
	}
	kq, _ := json.Marshal(key) // cannot fail for a string
	dst = append(dst, kq...)
	dst = append(dst, ':')
	return append(dst, raw...)
}
