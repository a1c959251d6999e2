package llm

import (
	"fmt"
	"math"
	"slices"
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
func (p *Package) layerShape(layer0 []axcl.ShapeGroup) (Shape, bufferSizes, error) {
	shape, sizes, err := deriveShape(p.Layers[0], layer0)
	if err != nil {
		return Shape{}, bufferSizes{}, err
	}
	shape.Layers = len(p.Layers)
	if p.Hidden > 0 && p.Hidden != shape.Hidden {
		return Shape{}, bufferSizes{}, pkgErr("config.json says tokens_embed_size %d, %s takes hidden %d", p.Hidden, p.Layers[0], shape.Hidden)
	}
	return shape, sizes, nil
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

// bufferSizes are the largest sizes, over all groups, of the layer tensors.
type bufferSizes struct {
	input, output, indices, mask, cache, kOut uint64
}

// deriveShape reads context, chunk, groups and sizes from a layer model's
// shape groups (research/llm-runtime.md §2.4): the decode group is the one
// whose indices hold one element.
func deriveShape(path string, groups []axcl.ShapeGroup) (Shape, bufferSizes, error) {
	var s Shape
	var z bufferSizes
	s.Decode = -1
	type io struct{ in, idx, mask, k, v, ko, vo, out *axcl.Tensor }
	get := func(g int) (io, error) {
		sg := groups[g]
		x := io{tensor(sg.Inputs, "input"), tensor(sg.Inputs, "indices"), tensor(sg.Inputs, "mask"),
			tensor(sg.Inputs, "K_cache"), tensor(sg.Inputs, "V_cache"),
			tensor(sg.Outputs, "K_cache_out"), tensor(sg.Outputs, "V_cache_out"), tensor(sg.Outputs, "output")}
		for name, t := range map[string]*axcl.Tensor{"input": x.in, "indices": x.idx, "mask": x.mask, "K_cache": x.k,
			"V_cache": x.v, "K_cache_out": x.ko, "V_cache_out": x.vo, "output": x.out} {
			if t == nil {
				return x, pkgErr("%s has no tensor %q: not an Axera LLM layer", path, name)
			}
		}
		for _, t := range []*axcl.Tensor{x.in, x.mask, x.k, x.v, x.ko, x.vo, x.out} {
			if t.DataType != axcl.TypeBF16 {
				return x, pkgErr("%s: tensor %s is %s, kiln runs bf16 layers", path, t.Name, t.DataType)
			}
		}
		if x.idx.DataType != axcl.TypeUint32 && x.idx.DataType != axcl.TypeInt32 {
			return x, pkgErr("%s: indices are %s, want uint32", path, x.idx.DataType)
		}
		return x, nil
	}
	for g := range groups {
		x, err := get(g)
		if err != nil {
			return s, z, err
		}
		z.input, z.output = max(z.input, x.in.Size), max(z.output, x.out.Size)
		z.indices, z.mask = max(z.indices, x.idx.Size), max(z.mask, x.mask.Size)
		z.cache, z.kOut = max(z.cache, x.k.Size, x.v.Size), max(z.kOut, x.ko.Size, x.vo.Size)
		if elems(x.idx) == 1 {
			if s.Decode >= 0 {
				return s, z, pkgErr("%s has two decode shape groups (%d and %d)", path, s.Decode, g)
			}
			s.Decode = g
			s.Hidden, s.KVDim, s.Context = elems(x.in), elems(x.ko), elems(x.mask)-1
			if s.Context < 1 || elems(x.k) < s.Context*s.KVDim {
				return s, z, pkgErr("%s: decode K_cache holds %d elements, context %d × kv_dim %d needs more", path, elems(x.k), s.Context, s.KVDim)
			}
		}
	}
	if s.Decode < 0 {
		return s, z, pkgErr("%s has no decode shape group (one whose indices hold one element)", path)
	}
	for g := range groups {
		if g == s.Decode {
			continue
		}
		x, _ := get(g)
		// Qwen3-VL's prefill indices are [3, chunk]: t, h, w positions (mRoPE).
		mrope := len(x.idx.Dims) == 2 && x.idx.Dims[0] == 3 && elems(x.in) == x.idx.Dims[1]*s.Hidden
		if len(s.Prefill) > 0 && mrope != s.MRoPE {
			return s, z, pkgErr("%s: prefill group %d has %v indices, other groups not", path, g, x.idx.Dims)
		}
		s.MRoPE = mrope
		t := elems(x.idx)
		if mrope {
			t /= 3
		}
		if s.Chunk == 0 {
			s.Chunk = t
		}
		if t != s.Chunk || elems(x.in) != t*s.Hidden || elems(x.ko) != t*s.KVDim || elems(x.out) != t*s.Hidden || elems(x.mask)%t != 0 {
			return s, z, pkgErr("%s: prefill group %d does not fit chunk %d, hidden %d, kv_dim %d", path, g, s.Chunk, s.Hidden, s.KVDim)
		}
		h := elems(x.mask)/t - t
		if h < 0 || h > s.Context-t+1 {
			return s, z, pkgErr("%s: prefill group %d has history %d, outside context %d", path, g, h, s.Context)
		}
		s.Prefill = append(s.Prefill, Group{Index: g, History: h})
	}
	slices.SortStableFunc(s.Prefill, func(a, b Group) int { return a.History - b.History })
	if z.cache < uint64(s.Context*s.KVDim*2) {
		z.cache = uint64(s.Context * s.KVDim * 2)
	}
	return s, z, nil
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
