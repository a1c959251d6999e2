package llm

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/tokenize"
)

// What Load checks of a package, apart from the card: the folder and its
// tokenizer before the card is touched (openPackage), then the tensors the
// models describe once they are on it. Each check is a function of what was
// read, so the refusals are tested without a device (validate_test.go).

// openPackage is everything Load checks before it touches the card: the
// package folder (ReadPackage: config.json, the files it names, the size of
// the embedding table, post_config.json) and its tokenizer.
func openPackage(dir string) (*Package, *tokenize.BPE, error) {
	pkg, err := ReadPackage(dir)
	if err != nil {
		return nil, nil, err
	}
	tok, err := tokenize.LoadDir(pkg.Tokenizer)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: tokenizer of %s: %w", ErrPackage, dir, err)
	}
	return pkg, tok, nil
}

// layerShape derives the model's shape from the shape groups of its first
// layer model (deriveShape) and checks it against config.json.
func (p *Package) layerShape(layer0 []axcl.ShapeGroup) (Shape, bufferSizes, []layerIO, error) {
	shape, sizes, ios, err := deriveShape(p.Layers[0], layer0)
	if err != nil {
		return Shape{}, bufferSizes{}, nil, err
	}
	shape.Layers = len(p.Layers)
	if p.Hidden > 0 && p.Hidden != shape.Hidden {
		return Shape{}, bufferSizes{}, nil, pkgErr("config.json says tokens_embed_size %d, %s takes hidden %d", p.Hidden, p.Layers[0], shape.Hidden)
	}
	return shape, sizes, ios, nil
}

// postLogits checks the shape groups of the post model at path against
// the layers' hidden size and returns its logits tensor: the output called
// "output", else the first.
func postLogits(path string, groups []axcl.ShapeGroup, hidden int) (*axcl.Tensor, error) {
	if len(groups) < 1 || len(groups[0].Inputs) != 1 || len(groups[0].Outputs) < 1 {
		return nil, pkgErr("%s: post model wants one input and an output", path)
	}
	in, out := &groups[0].Inputs[0], tensor(groups[0].Outputs, "output")
	if out == nil {
		out = &groups[0].Outputs[0]
	}
	if in.DataType != axcl.TypeBF16 || elems(in) != hidden {
		return nil, pkgErr("%s: post model input is %s × %d, want bf16 × hidden %d", path, in.DataType, elems(in), hidden)
	}
	if out.DataType != axcl.TypeBF16 && out.DataType != axcl.TypeFP32 {
		return nil, pkgErr("%s: post model output is %s, want bf16 or fp32 logits", path, out.DataType)
	}
	return out, nil
}

// checkVocab checks the post model's logits count against config.json.
func (p *Package) checkVocab(vocab int) error {
	if p.Vocab > 0 && p.Vocab != vocab {
		return pkgErr("config.json says tokens_embed_num %d, %s writes %d logits", p.Vocab, p.Post, vocab)
	}
	return nil
}

// visionInput checks the shape groups of the vision encoder against the
// model's shape and config.json's placeholder token, and returns what an
// image takes and the encoder's output tensor.
func (p *Package) visionInput(groups []axcl.ShapeGroup, shape *Shape) (Vision, *axcl.Tensor, error) {
	if len(groups) < 1 || len(groups[0].Inputs) != 1 || len(groups[0].Outputs) < 1 {
		return Vision{}, nil, pkgErr("%s: the vision encoder wants one input and an output", p.Vision)
	}
	in, out := &groups[0].Inputs[0], &groups[0].Outputs[0]
	if in.DataType != axcl.TypeUint8 || len(in.Dims) != 4 || in.Dims[0] != 1 || in.Dims[3] != 3 {
		return Vision{}, nil, pkgErr("%s: vision input is %s %v, want uint8 [1,H,W,3]", p.Vision, in.DataType, in.Dims)
	}
	if out.DataType != axcl.TypeBF16 && out.DataType != axcl.TypeFP32 {
		return Vision{}, nil, pkgErr("%s: vision output is %s, want bf16 or fp32", p.Vision, out.DataType)
	}
	n := elems(out)
	if n%shape.Hidden != 0 || n == 0 {
		return Vision{}, nil, pkgErr("%s: vision output of %d values is not rows of hidden %d", p.Vision, n, shape.Hidden)
	}
	if p.ImageTokenID >= shape.Vocab {
		return Vision{}, nil, pkgErr("config.json vision_image_token_id %d is outside the vocabulary of %d", p.ImageTokenID, shape.Vocab)
	}
	return Vision{Width: in.Dims[2], Height: in.Dims[1], Tokens: n / shape.Hidden, ImageTokenID: p.ImageTokenID}, out, nil
}

// layerRole is a tensor of a decoder layer, by the name the vendor's runner
// looks it up by (research/llm-runtime.md §2.1).
type layerRole struct {
	dir  axcl.Direction
	name string
}

// layerRoles are every tensor kiln binds in a decoder layer, in layerIO's
// order.
var layerRoles = [8]layerRole{{axcl.Input, "input"}, {axcl.Input, "indices"}, {axcl.Input, "mask"},
	{axcl.Input, "K_cache"}, {axcl.Input, "V_cache"},
	{axcl.Output, "K_cache_out"}, {axcl.Output, "V_cache_out"}, {axcl.Output, "output"}}

// layerIO is the tensors of layerRoles in one shape group.
type layerIO [8]*axcl.Tensor

func (x *layerIO) in() *axcl.Tensor   { return x[0] }
func (x *layerIO) idx() *axcl.Tensor  { return x[1] }
func (x *layerIO) mask() *axcl.Tensor { return x[2] }
func (x *layerIO) k() *axcl.Tensor    { return x[3] }
func (x *layerIO) v() *axcl.Tensor    { return x[4] }
func (x *layerIO) ko() *axcl.Tensor   { return x[5] }
func (x *layerIO) vo() *axcl.Tensor   { return x[6] }
func (x *layerIO) out() *axcl.Tensor  { return x[7] }

// groupTensor finds the tensor of role r in shape group g as the vendor's
// runner does: the tensor called r.name, else, in a group other than 0,
// the one called r.name_<g> (the per-group names of llm_build2 engines;
// ax-llm src/runner/LLMImpl.hpp try_get_group_input_tensor and
// try_get_group_output_tensor). nil when neither exists.
func groupTensor(sg *axcl.ShapeGroup, g int, r layerRole) *axcl.Tensor {
	list := sg.Inputs
	if r.dir == axcl.Output {
		list = sg.Outputs
	}
	if t := tensor(list, r.name); t != nil || g == 0 {
		return t
	}
	return tensor(list, r.name+"_"+strconv.Itoa(g))
}

// resolveLayer finds every role of layerRoles in every shape group. kiln
// binds a role's buffer by the tensor's index (the runtime's names and
// dtypes are per index, not per group: axcl_rt_engine.h
// axclrtEngineGetInputNameByIndex), so a role must sit at the same index in
// every group.
func resolveLayer(path string, groups []axcl.ShapeGroup) ([]layerIO, error) {
	ios := make([]layerIO, len(groups))
	for g := range groups {
		for i, r := range layerRoles {
			t := groupTensor(&groups[g], g, r)
			if t == nil {
				want := fmt.Sprintf("%q", r.name)
				if g > 0 {
					want += fmt.Sprintf(" nor %q", r.name+"_"+strconv.Itoa(g))
				}
				return nil, pkgErr("%s: shape group %d has no %s %s, not an Axera LLM layer; %ss found: %s",
					path, g, r.dir, want, r.dir, tensorNames(&groups[g], r.dir))
			}
			if g > 0 && t.Index != ios[0][i].Index {
				return nil, pkgErr("%s: %s %q is %s %d in shape group 0 but %q is %d in group %d; kiln binds a tensor at one index in every group",
					path, r.dir, ios[0][i].Name, r.dir, ios[0][i].Index, t.Name, t.Index, g)
			}
			ios[g][i] = t
		}
	}
	return ios, nil
}

func tensorNames(sg *axcl.ShapeGroup, dir axcl.Direction) string {
	list := sg.Inputs
	if dir == axcl.Output {
		list = sg.Outputs
	}
	names := make([]string, len(list))
	for i, t := range list {
		names[i] = fmt.Sprintf("%d %q", t.Index, t.Name)
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// bufferSizes are the largest sizes, over all groups, of the layer tensors.
type bufferSizes struct {
	input, output, indices, mask, cache, kOut uint64
}

// deriveShape reads context, chunk, groups and sizes from a layer model's
// shape groups (research/llm-runtime.md §2.4) and returns the tensors of
// every group. A decode group is one whose indices hold one element
// (ax-llm src/runner/LLM_init.cpp init_groups_from_model); a 2026 package
// may have several (2k/4k/8k contexts), and kiln decodes in the one with
// the largest context, the group the vendor's runner defaults to
// (decode_grpid = decode_grpids_.back(), max_token_len = the largest
// capacity). The others stay bound to the same buffers and unused (the
// vendor's decode loop switches to the smallest that holds the rows so far,
// src/runner/LLM_decode.cpp; kiln does not, docs/llm.md).
func deriveShape(path string, groups []axcl.ShapeGroup) (Shape, bufferSizes, []layerIO, error) {
	var s Shape
	var z bufferSizes
	s.Decode = -1
	ios, err := resolveLayer(path, groups)
	if err != nil {
		return s, z, nil, err
	}
	for g := range groups {
		x := &ios[g]
		for i, t := range x {
			if i == 1 {
				if t.DataType != axcl.TypeUint32 && t.DataType != axcl.TypeInt32 {
					return s, z, nil, pkgErr("%s: indices %q are %s, want uint32", path, t.Name, t.DataType)
				}
				continue
			}
			if t.DataType != axcl.TypeBF16 {
				return s, z, nil, pkgErr("%s: tensor %s is %s, kiln runs bf16 layers", path, t.Name, t.DataType)
			}
		}
		z.input, z.output = max(z.input, x.in().Size), max(z.output, x.out().Size)
		z.indices, z.mask = max(z.indices, x.idx().Size), max(z.mask, x.mask().Size)
		z.cache, z.kOut = max(z.cache, x.k().Size, x.v().Size), max(z.kOut, x.ko().Size, x.vo().Size)
		if elems(x.idx()) != 1 {
			continue
		}
		ctx := elems(x.mask()) - 1
		if ctx < 1 || elems(x.k()) < ctx*elems(x.ko()) {
			return s, z, nil, pkgErr("%s: decode group %d: K_cache holds %d elements, context %d × kv_dim %d needs more", path, g, elems(x.k()), ctx, elems(x.ko()))
		}
		if s.Decode >= 0 && (elems(x.in()) != s.Hidden || elems(x.ko()) != s.KVDim) {
			return s, z, nil, pkgErr("%s: decode groups %d and %d differ in hidden or kv_dim", path, s.Decode, g)
		}
		if s.Decode < 0 || ctx > s.Context {
			s.Decode = g
			s.Hidden, s.KVDim, s.Context = elems(x.in()), elems(x.ko()), ctx
		}
	}
	if s.Decode < 0 {
		return s, z, nil, pkgErr("%s has no decode shape group (one whose indices hold one element)", path)
	}
	for g := range groups {
		x := &ios[g]
		if elems(x.idx()) == 1 {
			s.UnusedDecode = appendIf(s.UnusedDecode, g, g != s.Decode)
			continue
		}
		if len(x.idx().Dims) > 1 && x.idx().Dims[0] == 3 {
			return s, z, nil, pkgErr("%s uses 3-row (mRoPE) positions, which kiln does not build yet", path)
		}
		t := elems(x.idx())
		if s.Chunk == 0 {
			s.Chunk = t
		}
		if t != s.Chunk || elems(x.in()) != t*s.Hidden || elems(x.ko()) != t*s.KVDim || elems(x.out()) != t*s.Hidden || elems(x.mask())%t != 0 {
			return s, z, nil, pkgErr("%s: prefill group %d does not fit chunk %d, hidden %d, kv_dim %d", path, g, s.Chunk, s.Hidden, s.KVDim)
		}
		h := elems(x.mask())/t - t
		if h < 0 || h > s.Context-t+1 {
			return s, z, nil, pkgErr("%s: prefill group %d has history %d, outside context %d", path, g, h, s.Context)
		}
		s.Prefill = append(s.Prefill, Group{Index: g, History: h})
	}
	slices.SortStableFunc(s.Prefill, func(a, b Group) int { return a.History - b.History })
	if z.cache < uint64(s.Context*s.KVDim*2) {
		z.cache = uint64(s.Context * s.KVDim * 2)
	}
	return s, z, ios, nil
}

func appendIf(list []int, v int, ok bool) []int {
	if ok {
		return append(list, v)
	}
	return list
}

func sameShapes(a, b []axcl.ShapeGroup) bool {
	if len(a) != len(b) {
		return false
	}
	same := func(x, y []axcl.Tensor) bool {
		if len(x) != len(y) {
			return false
		}
		for i := range x {
			if x[i].Name != y[i].Name || x[i].Size != y[i].Size || x[i].DataType != y[i].DataType {
				return false
			}
		}
		return true
	}
	for g := range a {
		if !same(a[g].Inputs, b[g].Inputs) || !same(a[g].Outputs, b[g].Outputs) {
			return false
		}
	}
	return true
}
