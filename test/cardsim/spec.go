package cardsim

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Magic starts every simulated model file. The simulator rejects files without it (such as
// real .axmodel files), and the real runtime rejects files with it.
const Magic = "KILNSIM1\n"

// DType is an axclrtEngineDataType value.
type DType int32

// The data types the simulated models use (axclrtEngineDataType values).
const (
	Int8   DType = 3
	Uint8  DType = 4
	Int16  DType = 5
	Uint16 DType = 6
	Int32  DType = 7
	Uint32 DType = 8
	Int64  DType = 9
	Uint64 DType = 10
	FP16   DType = 13
	BF16   DType = 14
	FP32   DType = 15
	FP64   DType = 16
)

var dtypeNames = map[DType]string{
	Int8: "int8", Uint8: "uint8", Int16: "int16", Uint16: "uint16", Int32: "int32", Uint32: "uint32",
	Int64: "int64", Uint64: "uint64", FP16: "fp16", BF16: "bf16", FP32: "fp32", FP64: "fp64",
}

// String returns the name used in model files ("bf16", "uint32", …).
func (d DType) String() string {
	if s, ok := dtypeNames[d]; ok {
		return s
	}
	return fmt.Sprintf("dtype(%d)", int32(d))
}

// Size returns the element size in bytes, 0 for an unknown type.
func (d DType) Size() int {
	switch d {
	case Int8, Uint8:
		return 1
	case Int16, Uint16, FP16, BF16:
		return 2
	case Int32, Uint32, FP32:
		return 4
	case Int64, Uint64, FP64:
		return 8
	}
	return 0
}

// Model kinds (the op a simulated model computes).
const (
	KindLLMLayer     = "llm_layer"
	KindLLMPost      = "llm_post"
	KindVision       = "vision"
	KindSDText       = "sd_text_encoder"
	KindSDUNet       = "sd_unet"
	KindSDVAEDecoder = "sd_vae_decoder"
	KindSDVAEEncoder = "sd_vae_encoder"
)

var kinds = map[string]bool{KindLLMLayer: true, KindLLMPost: true, KindVision: true, KindSDText: true,
	KindSDUNet: true, KindSDVAEDecoder: true, KindSDVAEEncoder: true}

// Tensor is one input or output of a model: a name, a type and its dims in every shape group.
type Tensor struct {
	Name  string
	DType DType
	Dims  [][]int // Dims[group]
}

// Elems returns the number of elements in group g.
func (t Tensor) Elems(g int) int {
	n := 1
	for _, d := range t.Dims[g] {
		n *= d
	}
	return n
}

// Param is a named integer parameter of an op (seed, hidden, kv_dim, …).
type Param struct {
	Name  string
	Value int64
}

// ModelSpec is the content of a simulated model file.
type ModelSpec struct {
	Kind        string
	Name        string
	Compiler    string
	WeightBytes int64 // CMM the model claims when loaded
	Groups      int
	Params      []Param
	Inputs      []Tensor
	Outputs     []Tensor
}

// Param returns the value of the named parameter.
func (s *ModelSpec) Param(name string) (int64, bool) {
	for _, p := range s.Params {
		if p.Name == name {
			return p.Value, true
		}
	}
	return 0, false
}

// Input returns the input tensor with that name.
func (s *ModelSpec) Input(name string) (Tensor, bool) {
	for _, t := range s.Inputs {
		if t.Name == name {
			return t, true
		}
	}
	return Tensor{}, false
}

// Output returns the output tensor with that name.
func (s *ModelSpec) Output(name string) (Tensor, bool) {
	for _, t := range s.Outputs {
		if t.Name == name {
			return t, true
		}
	}
	return Tensor{}, false
}

// Marshal encodes the spec as a model file.
func (s *ModelSpec) Marshal() ([]byte, error) {
	if !kinds[s.Kind] {
		return nil, fmt.Errorf("cardsim: unknown model kind %q", s.Kind)
	}
	if s.Groups < 1 || s.Groups > 16 {
		return nil, fmt.Errorf("cardsim: %d shape groups (1..16)", s.Groups)
	}
	var b bytes.Buffer
	b.WriteString(Magic)
	fmt.Fprintf(&b, "kind %s\n", s.Kind)
	word := func(key, v string) error {
		if v == "" {
			return nil
		}
		if strings.ContainsAny(v, " \t\r\n") || len(v) > 63 {
			return fmt.Errorf("cardsim: bad %s %q", key, v)
		}
		fmt.Fprintf(&b, "%s %s\n", key, v)
		return nil
	}
	if err := word("name", s.Name); err != nil {
		return nil, err
	}
	if err := word("compiler", s.Compiler); err != nil {
		return nil, err
	}
	fmt.Fprintf(&b, "weight_bytes %d\ngroups %d\n", s.WeightBytes, s.Groups)
	for _, p := range s.Params {
		if err := word("param", p.Name); err != nil {
			return nil, err
		}
		b.Truncate(b.Len() - 1)
		fmt.Fprintf(&b, " %d\n", p.Value)
	}
	for io, ts := range [][]Tensor{s.Inputs, s.Outputs} {
		for _, t := range ts {
			if len(t.Dims) != s.Groups {
				return nil, fmt.Errorf("cardsim: tensor %s has dims for %d groups, want %d", t.Name, len(t.Dims), s.Groups)
			}
			if t.DType.Size() == 0 {
				return nil, fmt.Errorf("cardsim: tensor %s: %v", t.Name, t.DType)
			}
			if err := word([]string{"input", "output"}[io], t.Name); err != nil {
				return nil, err
			}
			b.Truncate(b.Len() - 1)
			fmt.Fprintf(&b, " %s", t.DType)
			for _, d := range t.Dims {
				ds := make([]string, len(d))
				for i, v := range d {
					ds[i] = strconv.Itoa(v)
				}
				fmt.Fprintf(&b, " %s", strings.Join(ds, "x"))
			}
			b.WriteByte('\n')
		}
	}
	b.WriteString("end\n")
	return b.Bytes(), nil
}

// ErrNotSim is returned by [ParseModelSpec] for data without the [Magic] header.
var ErrNotSim = errors.New("cardsim: not a simulated model (no KILNSIM1 header)")

// ParseModelSpec decodes a model file. It accepts what the C parser accepts (comments,
// blank lines, anything after "end"), but does not check the op's shape rules.
func ParseModelSpec(data []byte) (*ModelSpec, error) {
	if !bytes.HasPrefix(data, []byte(Magic)) {
		return nil, ErrNotSim
	}
	s := &ModelSpec{}
	lines := strings.Split(string(data[len(Magic):]), "\n")
	ended := false
	for i, l := range lines {
		if ended {
			break
		}
		lineErr := func(msg string) error { return fmt.Errorf("cardsim: model line %d: %s", i+2, msg) }
		if len(l) >= 4096 {
			return nil, lineErr("line too long")
		}
		if strings.IndexByte(l, 0) >= 0 {
			return nil, lineErr("NUL byte")
		}
		f := strings.FieldsFunc(l, func(r rune) bool { return r == ' ' || r == '\t' || r == '\r' })
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		one := func() (string, error) {
			if len(f) < 2 || len(f[1]) > 63 {
				return "", lineErr("bad " + f[0])
			}
			return f[1], nil
		}
		var err error
		switch f[0] {
		case "end":
			ended = true
		case "kind":
			if s.Kind, err = one(); err != nil || !kinds[s.Kind] {
				return nil, lineErr("unknown kind")
			}
		case "name":
			if s.Name, err = one(); err != nil {
				return nil, err
			}
		case "compiler":
			if s.Compiler, err = one(); err != nil {
				return nil, err
			}
		case "weight_bytes":
			v, err := one()
			if err != nil {
				return nil, err
			}
			if s.WeightBytes, err = strconv.ParseInt(v, 10, 64); err != nil || s.WeightBytes < 0 {
				return nil, lineErr("bad weight_bytes")
			}
		case "groups":
			v, err := one()
			if err != nil {
				return nil, err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 16 || s.Groups != 0 {
				return nil, lineErr("bad groups")
			}
			s.Groups = n
		case "param":
			if len(f) < 3 || len(f[1]) > 31 || len(s.Params) >= 16 {
				return nil, lineErr("bad param")
			}
			v, err := strconv.ParseInt(f[2], 0, 64)
			if err != nil {
				return nil, lineErr("bad param")
			}
			s.Params = append(s.Params, Param{f[1], v})
		case "input", "output":
			if s.Groups == 0 {
				return nil, lineErr("tensor before groups")
			}
			list := &s.Inputs
			if f[0] == "output" {
				list = &s.Outputs
			}
			if len(*list) >= 8 || len(f) < 3 || len(f[1]) > 63 {
				return nil, lineErr("bad tensor")
			}
			for _, t := range *list {
				if t.Name == f[1] {
					return nil, lineErr("duplicate tensor")
				}
			}
			t := Tensor{Name: f[1]}
			for d, n := range dtypeNames {
				if n == f[2] {
					t.DType = d
				}
			}
			if t.DType == 0 {
				return nil, lineErr("unknown dtype")
			}
			if len(f) != 3+s.Groups {
				return nil, lineErr("dims do not match groups")
			}
			for _, ds := range f[3:] {
				parts := strings.Split(ds, "x")
				if len(parts) > 6 {
					return nil, lineErr("bad dims")
				}
				dims := make([]int, len(parts))
				elems := uint64(1)
				for k, p := range parts {
					v, err := strconv.Atoi(p)
					if err != nil || v < 1 || v > 1<<30 {
						return nil, lineErr("bad dims")
					}
					dims[k] = v
					elems *= uint64(v)
					if elems > 1<<34 {
						return nil, lineErr("bad dims")
					}
				}
				t.Dims = append(t.Dims, dims)
			}
			*list = append(*list, t)
		default:
			return nil, lineErr("unknown keyword")
		}
	}
	if !ended {
		return nil, errors.New("cardsim: model: missing end")
	}
	if s.Kind == "" || len(s.Inputs) == 0 || len(s.Outputs) == 0 {
		return nil, errors.New("cardsim: model: missing kind, inputs or outputs")
	}
	return s, nil
}
