package sd

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/npu"
)

// elemKind is how a float tensor is stored on the card. It is detected from
// the tensor's byte size against the element count the graph implies
// (4 bytes: fp32; 2 bytes: fp16, or bf16 when the runtime says so), as the
// published runtimes do (research/sd-lcm.md §1).
type elemKind uint8

const (
	kindF32 elemKind = iota
	kindF16
	kindBF16
)

func (k elemKind) String() string { return [...]string{"fp32", "fp16", "bf16"}[k] }

func (k elemKind) size() int {
	if k == kindF32 {
		return 4
	}
	return 2
}

// port is one input or output tensor of a model, found by index, with the
// element count the pipeline expects of it.
type port struct {
	name  string
	kind  elemKind
	elems int
	buf   *npu.Buffer
	bytes []byte // host staging buffer, reused
}

// bindPort looks up tensor index of dir in m, checks it holds elems values of
// 4 or 2 bytes, and gives it a staging buffer.
func bindPort(m *npu.Model, dir axcl.Direction, index, elems int) (*port, error) {
	g := m.Describe()
	if len(g) == 0 {
		return nil, fmt.Errorf("sd: %s has no shape group", m.Name())
	}
	var list []axcl.Tensor
	if dir == axcl.Input {
		list = g[0].Inputs
	} else {
		list = g[0].Outputs
	}
	what := "input"
	if dir != axcl.Input {
		what = "output"
	}
	if index >= len(list) {
		return nil, fmt.Errorf("sd: %s has %d %ss, want at least %d", m.Name(), len(list), what, index+1)
	}
	t := list[index]
	p := &port{name: t.Name, elems: elems}
	switch t.Size {
	case uint64(4 * elems):
		p.kind = kindF32
	case uint64(2 * elems):
		p.kind = kindF16
		if t.DataType == axcl.TypeBF16 {
			p.kind = kindBF16
		}
	default:
		return nil, fmt.Errorf("sd: %s %s %d (%s, dims %v) is %d bytes; %d values of 4 or 2 bytes expected",
			m.Name(), what, index, t.Name, t.Dims, t.Size, elems)
	}
	buf, err := m.BufferAt(0, dir, index)
	if err != nil {
		return nil, fmt.Errorf("sd: %s %s %s: %w", m.Name(), what, t.Name, err)
	}
	p.buf = buf
	p.bytes = make([]byte, elems*p.kind.size())
	return p, nil
}

// encode stores v in the staging buffer in the port's element type.
func (p *port) encode(v []float32) {
	b := p.bytes
	switch p.kind {
	case kindF32:
		for i, x := range v {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
		}
	case kindF16:
		for i, x := range v {
			binary.LittleEndian.PutUint16(b[2*i:], f32ToF16(x))
		}
	case kindBF16:
		for i, x := range v {
			binary.LittleEndian.PutUint16(b[2*i:], f32ToBF16(x))
		}
	}
}

// decode reads the staging buffer into v.
func (p *port) decode(v []float32) {
	b := p.bytes
	switch p.kind {
	case kindF32:
		for i := range v {
			v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	case kindF16:
		for i := range v {
			v[i] = f16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	case kindBF16:
		for i := range v {
			v[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*i:])) << 16)
		}
	}
}

// f32ToBF16 rounds to nearest even; NaN stays a (quiet) NaN.
func f32ToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

// f32ToF16 converts to IEEE half precision, rounding to nearest even.
func f32ToF16(f float32) uint16 {
	u := math.Float32bits(f)
	sign := uint16(u>>16) & 0x8000
	exp := int(u>>23) & 0xff
	man := u & 0x7fffff
	switch {
	case exp == 0xff: // Inf, NaN
		if man != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	case exp > 127+15: // overflow
		return sign | 0x7c00
	case exp >= 127-14: // normal
		e := uint32(exp-127+15) << 10
		m := man >> 13
		h := e | m
		rem := man & 0x1fff
		if rem > 0x1000 || rem == 0x1000 && h&1 == 1 {
			h++ // may carry into the exponent, which is right (up to Inf)
		}
		return sign | uint16(h)
	case exp >= 127-25: // subnormal
		man |= 0x800000
		shift := uint(126 - exp) // 14 .. 24
		h := man >> shift
		rem := man & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || rem == half && h&1 == 1 {
			h++
		}
		return sign | uint16(h)
	default:
		return sign
	}
}

// f16ToF32 converts IEEE half precision exactly.
func f16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	man := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	case exp != 0:
		return math.Float32frombits(sign | (exp+127-15)<<23 | man<<13)
	case man == 0:
		return math.Float32frombits(sign)
	default: // subnormal: man · 2⁻²⁴, exact in float32
		v := float32(man) * (1.0 / (1 << 24))
		if sign != 0 {
			v = -v
		}
		return v
	}
}
