package sd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ErrNPY is matched by every error of ReadNPY.
var ErrNPY = errors.New("sd: bad .npy file")

// maxNPYValues bounds what ReadNPY accepts (the time tables hold 5120).
const maxNPYValues = 1 << 24

// ReadNPY decodes a NumPy .npy file (format 1.x, 2.x or 3.x) holding little
// endian float32 values ('<f4') in C order, and returns its shape and values.
func ReadNPY(b []byte) (shape []int, values []float32, err error) {
	const magic = "\x93NUMPY"
	if len(b) < 10 || string(b[:6]) != magic {
		return nil, nil, fmt.Errorf("%w: no \\x93NUMPY magic", ErrNPY)
	}
	var hlen, start int
	switch b[6] {
	case 1:
		hlen, start = int(binary.LittleEndian.Uint16(b[8:10])), 10
	case 2, 3:
		if len(b) < 12 {
			return nil, nil, fmt.Errorf("%w: truncated header", ErrNPY)
		}
		h := binary.LittleEndian.Uint32(b[8:12])
		if h > 1<<20 {
			return nil, nil, fmt.Errorf("%w: header of %d bytes", ErrNPY, h)
		}
		hlen, start = int(h), 12
	default:
		return nil, nil, fmt.Errorf("%w: format version %d.%d", ErrNPY, b[6], b[7])
	}
	if len(b) < start+hlen {
		return nil, nil, fmt.Errorf("%w: truncated header", ErrNPY)
	}
	hdr := string(b[start : start+hlen])
	descr, ok := npyField(hdr, "descr")
	if !ok {
		return nil, nil, fmt.Errorf("%w: header has no descr", ErrNPY)
	}
	if d := strings.Trim(descr, `'"`); d != "<f4" {
		return nil, nil, fmt.Errorf("%w: dtype %s, want '<f4' (little-endian float32)", ErrNPY, descr)
	}
	if fo, ok := npyField(hdr, "fortran_order"); !ok || fo != "False" {
		return nil, nil, fmt.Errorf("%w: fortran_order must be False", ErrNPY)
	}
	sh, ok := npyField(hdr, "shape")
	if !ok || len(sh) < 2 || sh[0] != '(' || sh[len(sh)-1] != ')' {
		return nil, nil, fmt.Errorf("%w: header has no shape tuple", ErrNPY)
	}
	n := 1
	for _, f := range strings.Split(sh[1:len(sh)-1], ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		d, err := strconv.Atoi(f)
		if err != nil || d < 0 || d > maxNPYValues {
			return nil, nil, fmt.Errorf("%w: shape %s", ErrNPY, sh)
		}
		shape = append(shape, d)
		if n *= d; n > maxNPYValues {
			return nil, nil, fmt.Errorf("%w: shape %s holds more than %d values", ErrNPY, sh, maxNPYValues)
		}
	}
	data := b[start+hlen:]
	if len(data) != 4*n {
		return nil, nil, fmt.Errorf("%w: shape %s needs %d data bytes, file has %d", ErrNPY, sh, 4*n, len(data))
	}
	values = make([]float32, n)
	for i := range values {
		values[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
	}
	return shape, values, nil
}

// npyField finds 'key': value in the header dict; value ends at the next
// top-level comma or closing brace.
func npyField(hdr, key string) (string, bool) {
	i := strings.Index(hdr, "'"+key+"'")
	if i < 0 {
		return "", false
	}
	rest := strings.TrimLeft(hdr[i+len(key)+2:], " ")
	if !strings.HasPrefix(rest, ":") {
		return "", false
	}
	rest = strings.TrimLeft(rest[1:], " ")
	depth := 0
	for j := 0; j < len(rest); j++ {
		switch rest[j] {
		case '(':
			depth++
		case ')':
			depth--
		case ',', '}':
			if depth == 0 {
				return strings.TrimSpace(rest[:j]), true
			}
		}
	}
	return "", false
}
