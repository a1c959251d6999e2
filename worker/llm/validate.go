package llm

import (
	"fmt"
	"math"
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

// Tensor names of the vendors' vision encoders, tried in order before the shapes:
// Qwen3-VL.AXERA model_convert/export.py (hidden_states → hidden_states_out,
// deepstack_feature_0..2), SmolVLM-256M-Instruct.axera (pixel_values → last_hidden_state),
// and the plain input/output of other exports.
var (
	visionInputNames  = []string{"hidden_states", "pixel_values", "input"}
	visionOutputNames = []string{"hidden_states_out", "last_hidden_state", "output"}
	deepstackNames    = []string{"deepstack_feature_0", "deepstack_feature_1", "deepstack_feature_2"}
)

// visionBinding is which encoder tensors kiln feeds and reads (indices into group 0).
type visionBinding struct {
	in, out int
	deep    []int // deepstack outputs, in layer order
}

// visionInput checks the shape groups of the vision encoder against the model's shape and
// the package's placeholder token and patch layout, binds its tensors by name (else by
// shape), and returns what an image takes and the binding. An NHWC encoder takes uint8
// [1,H,W,3]; with p.Patches (Qwen3-VL) the input is the patches [1, N, Temporal·Patch², 3]
// and every output but the embeddings with the same rows is a deepstack feature.
func (p *Package) visionInput(groups []axcl.ShapeGroup, shape *Shape) (Vision, visionBinding, error) {
	var b visionBinding
	if len(groups) < 1 || len(groups[0].Inputs) < 1 || len(groups[0].Outputs) < 1 {
		return Vision{}, b, pkgErr("%s: the vision encoder wants an input and an output", p.Vision)
	}
	ins, outs := groups[0].Inputs, groups[0].Outputs
	b.in = byName(ins, visionInputNames)
	if b.in < 0 {
		for i := range ins {
			if ins[i].DataType == axcl.TypeUint8 && len(ins[i].Dims) == 4 {
				if b.in >= 0 {
					b.in = -1
					break
				}
				b.in = i
			}
		}
	}
	if b.in < 0 {
		return Vision{}, b, pkgErr("%s: no vision input named %s and no single uint8 4-dimensional input; inputs: %s",
			p.Vision, strings.Join(visionInputNames, ", "), listTensors(ins))
	}
	in := &ins[b.in]
	if in.DataType != axcl.TypeUint8 || len(in.Dims) != 4 || in.Dims[0] != 1 || in.Dims[3] != 3 {
		return Vision{}, b, pkgErr("%s: vision input %s is %s %v, want uint8 [1,H,W,3]", p.Vision, in.Name, in.DataType, in.Dims)
	}
	b.out = byName(outs, visionOutputNames)
	if b.out < 0 {
		for i := range outs {
			if n := elems(&outs[i]); n > 0 && n%shape.Hidden == 0 && !slices.Contains(deepstackNames, outs[i].Name) {
				b.out = i
				break
			}
		}
	}
	if b.out < 0 {
		b.out = 0
	}
	out := &outs[b.out]
	if out.DataType != axcl.TypeBF16 && out.DataType != axcl.TypeFP32 {
		return Vision{}, b, pkgErr("%s: vision output %s is %s, want bf16 or fp32", p.Vision, out.Name, out.DataType)
	}
	n := elems(out)
	if n%shape.Hidden != 0 || n == 0 {
		return Vision{}, b, pkgErr("%s: vision output %s of %d values is not rows of hidden %d; outputs: %s", p.Vision, out.Name, n, shape.Hidden, listTensors(outs))
	}
	if p.ImageTokenID >= shape.Vocab {
		return Vision{}, b, pkgErr("config.json vision_image_token_id %d is outside the vocabulary of %d", p.ImageTokenID, shape.Vocab)
	}
	v := Vision{Width: in.Dims[2], Height: in.Dims[1], Tokens: n / shape.Hidden, ImageTokenID: p.ImageTokenID}
	if p.Patches == nil {
		return v, b, nil
	}
	// Qwen3-VL: the deepstack outputs by name, else every other output of the same size.
	l := *p.Patches
	for _, name := range deepstackNames {
		if i := byName(outs, []string{name}); i >= 0 {
			b.deep = append(b.deep, i)
		}
	}
	if len(b.deep) == 0 {
		for i := range outs {
			if i != b.out && elems(&outs[i]) == n {
				b.deep = append(b.deep, i)
			}
		}
	}
	for _, i := range b.deep {
		if t := &outs[i]; elems(t) != n || (t.DataType != axcl.TypeBF16 && t.DataType != axcl.TypeFP32) {
			return Vision{}, b, pkgErr("%s: deepstack output %s is %s %v, want bf16 or fp32 like %s %v", p.Vision, t.Name, t.DataType, t.Dims, out.Name, out.Dims)
		}
	}
	side := int(math.Sqrt(float64(in.Dims[1])))
	if in.Dims[2]*3 != l.PatchBytes() || side*side != in.Dims[1] || side%l.Merge != 0 || n/shape.Hidden*l.Merge*l.Merge != in.Dims[1] {
		return Vision{}, b, pkgErr("%s: vision input %s %v and output %s of %d rows do not fit patch %d, temporal patch %d, merge %d (config.json vision_config): want [1, N, %d, 3] with N a square and N/%d rows",
			p.Vision, in.Name, in.Dims, out.Name, n/shape.Hidden, l.Patch, l.Temporal, l.Merge, l.PatchBytes()/3, l.Merge*l.Merge)
	}
	v.Width, v.Height, v.Deepstack = side*l.Patch, side*l.Patch, len(b.deep)
	return v, b, nil
}

// byName is the index of the first tensor called one of names (in names' order), or -1.
func byName(list []axcl.Tensor, names []string) int {
	for _, n := range names {
		for i := range list {
			if list[i].Name == n {
				return i
			}
		}
	}
	return -1
}

// listTensors names the tensors for an error: "name dtype [dims], ...".
func listTensors(list []axcl.Tensor) string {
	parts := make([]string, len(list))
	for i := range list {
		parts[i] = fmt.Sprintf("%s %s %v", list[i].Name, list[i].DataType, list[i].Dims)
	}
	return strings.Join(parts, ", ")
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
		// Qwen3-VL's prefill indices are [3, chunk]: t, h, w positions (mRoPE).
		idx := x.idx()
		mrope := len(idx.Dims) == 2 && idx.Dims[0] == 3 && elems(x.in()) == idx.Dims[1]*s.Hidden
		if len(s.Prefill) > 0 && mrope != s.MRoPE {
			return s, z, nil, pkgErr("%s: prefill group %d has %v indices, other groups not", path, g, idx.Dims)
		}
		s.MRoPE = mrope
		t := elems(idx)
		if mrope {
			t /= 3
		}
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
