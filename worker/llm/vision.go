package llm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/npu"
	"github.com/kiln-project/kiln/worker/tokenize"
)

// Vision describes a model's image input: the "classic" encoder pattern
// (research/llm-runtime.md §7.1) — an RGB image in, one embedding row per
// placeholder token out, written over those rows of the prompt.
type Vision struct {
	// Width and Height are the encoder's image size; an image is Width ×
	// Height × 3 bytes, RGB, row by row.
	Width, Height int
	// Tokens is how many placeholder tokens (prompt rows) one image takes.
	Tokens int
	// ImageTokenID is the placeholder token.
	ImageTokenID int
	// Deepstack is the number of deepstack features the encoder also
	// writes (Qwen3-VL: 3), added to the image rows after the first
	// Deepstack decoder layers; 0 for the classic pattern.
	Deepstack int
}

// ErrImage is matched by errors about a request's images: a count or size
// that does not fit the prompt's placeholders or the encoder.
var ErrImage = errors.New("llm: images do not fit")

// visionModel is the encoder resident on the card.
type visionModel struct {
	info    Vision
	model   *npu.Model
	in      *npu.Buffer
	outs    []*npu.Buffer // embeddings, then the deepstack features
	fp32    []bool
	raws    [][]byte     // encoder outputs as read
	pixels  []byte       // the image being encoded
	patches []byte       // Qwen3-VL: the image cut into patches (PatchLayout)
	layout  *PatchLayout // nil: the encoder takes the image itself
	gridH   int          // merged tokens per image column (Qwen3-VL)
	gridW   int          // merged tokens per image row
}

// loadVision loads the package's vision encoder when kiln can drive it:
// NHWC uint8 images (SmolVLM) or Qwen3-VL's uint8 patches, and a
// placeholder token id. Its tensors are bound by name (visionInput).
func (m *Model) loadVision(ctx context.Context) error {
	p := m.pkg
	if p.Vision == "" {
		return nil
	}
	if p.ImageTokenID <= 0 {
		// A SmolVLM or Qwen3-VL package whose config.json has no
		// image_token_id: the tokenizer's <image> or <|image_pad|> is the
		// placeholder.
		name := SmolVLMImageToken
		if p.VisionInput == VisionPatches {
			name = Qwen3VLImageToken
		}
		if id, ok := m.tok.TokenID(name); ok && p.VisionInput != "" {
			p.ImageTokenID = id
		}
	}
	if (p.VisionInput != "nhwc_uint8" && p.VisionInput != VisionPatches) || p.ImageTokenID <= 0 {
		m.log.Warn("llm: vision encoder not loaded: kiln drives encoders that take NHWC uint8 images or Qwen3-VL's patches and name their placeholder token",
			"vision_input", p.VisionInput, "vision_image_token_id", p.ImageTokenID)
		return nil
	}
	vm, err := m.dev.LoadModel(ctx, p.Vision, &npu.LoadOptions{Name: p.Name + "/vision"})
	if err != nil {
		return fmt.Errorf("llm: %s: vision encoder: %w", p.Name, err)
	}
	v := &visionModel{model: vm}
	m.vision = v
	info, bind, err := p.visionInput(vm.Describe(), &m.shape)
	if err != nil {
		return err
	}
	if info.Deepstack > 0 && info.Deepstack > len(m.pkg.Layers) {
		return pkgErr("%s: %d deepstack features for %d decoder layers", p.Vision, info.Deepstack, len(m.pkg.Layers))
	}
	p.recordVision(m.opts.Bindings, vm.Describe(), bind)
	v.info = info
	if v.in, err = vm.BufferAt(0, axcl.Input, bind.in); err != nil {
		return err
	}
	for _, i := range append([]int{bind.out}, bind.deep...) {
		t := &vm.Describe()[0].Outputs[i]
		b, err := vm.BufferAt(0, axcl.Output, i)
		if err != nil {
			return err
		}
		v.outs, v.fp32, v.raws = append(v.outs, b), append(v.fp32, t.DataType == axcl.TypeFP32), append(v.raws, make([]byte, t.Size))
	}
	switch {
	case p.Patches != nil:
		v.layout = p.Patches
		v.patches = make([]byte, info.Width*info.Height*3*p.Patches.Temporal)
		v.gridH, v.gridW = info.Height/p.Patches.Patch/p.Patches.Merge, info.Width/p.Patches.Patch/p.Patches.Merge
	case m.shape.MRoPE:
		// mRoPE layers with a classic encoder: its rows taken as a square grid.
		side := int(math.Sqrt(float64(info.Tokens)))
		if side*side != info.Tokens {
			return pkgErr("%s: %d rows per image are no square grid for the 3-row positions of %s", p.Vision, info.Tokens, p.Layers[0])
		}
		v.gridH, v.gridW = side, side
	}
	return nil
}

// Vision describes the model's image input; false when it takes text only.
func (m *Model) Vision() (Vision, bool) {
	if m.vision == nil {
		return Vision{}, false
	}
	return m.vision.info, true
}

// encodeStep runs the encoder on vision.pixels (device thread).
func (m *Model) encodeStep(t *npu.Thread) error {
	v := m.vision
	in := v.pixels
	if v.layout != nil {
		if err := v.layout.Patchify(v.patches, v.pixels, v.info.Width, v.info.Height); err != nil {
			return err
		}
		in = v.patches
	}
	if err := t.Write(v.in, 0, in); err != nil {
		return err
	}
	if err := t.Execute(v.model, 0); err != nil {
		return err
	}
	for i, b := range v.outs {
		if err := t.Read(v.raws[i], b, 0); err != nil {
			return err
		}
	}
	return nil
}

// prepareImages checks req's images against the prompt's placeholder runs,
// encodes them on the card and keeps their rows for the prefill. It returns
// the position of the first placeholder, or len(prompt) without images.
func (m *Model) prepareImages(ctx context.Context, req *Request) (int, error) {
	st := m.st
	st.runs = st.runs[:0]
	if len(req.Images) == 0 {
		return len(req.Prompt), nil
	}
	v := m.vision
	if v == nil {
		return 0, fmt.Errorf("%w: the model takes text only", ErrImage)
	}
	for _, r := range tokenize.ImageRuns(req.Prompt, v.info.ImageTokenID) {
		n := r[1] - r[0]
		if n%v.info.Tokens != 0 {
			return 0, fmt.Errorf("%w: a run of %d placeholder tokens at position %d; one image takes %d", ErrImage, n, r[0], v.info.Tokens)
		}
		for k := r[0]; k < r[1]; k += v.info.Tokens {
			st.runs = append(st.runs, k)
		}
	}
	if len(st.runs) != len(req.Images) {
		return 0, fmt.Errorf("%w: %d images for %d placeholder runs", ErrImage, len(req.Images), len(st.runs))
	}
	if err := m.prepareMRoPE(req.Prompt); err != nil {
		return 0, err
	}
	rowBytes := m.shape.Hidden * 2
	need := len(req.Images) * v.info.Tokens * rowBytes
	if cap(st.imgRows) < need {
		st.imgRows = make([]byte, need)
	}
	st.imgRows = st.imgRows[:need]
	per := v.info.Tokens * m.shape.Hidden * 4 // fp32 bytes per image and deepstack feature
	if need := len(req.Images) * v.info.Deepstack * per; cap(st.deep) < need {
		st.deep = make([]byte, need)
	}
	st.deep = st.deep[:len(req.Images)*v.info.Deepstack*per]
	for k, px := range req.Images {
		if len(px) != v.info.Width*v.info.Height*3 {
			return 0, fmt.Errorf("%w: image %d has %d bytes; the encoder takes %d×%d×3", ErrImage, k, len(px), v.info.Width, v.info.Height)
		}
		v.pixels = px
		err := m.do(ctx, m.encodeStep)
		v.pixels = nil
		if err != nil {
			return 0, fmt.Errorf("llm: encode image %d: %w", k, err)
		}
		toBF16(st.imgRows[k*v.info.Tokens*rowBytes:(k+1)*v.info.Tokens*rowBytes], v.raws[0], v.fp32[0])
		for l := 0; l < v.info.Deepstack; l++ {
			toFP32(st.deep[(k*v.info.Deepstack+l)*per:(k*v.info.Deepstack+l+1)*per], v.raws[1+l], v.fp32[1+l])
		}
	}
	return st.runs[0], nil
}

// toBF16 writes the encoder output raw (fp32 or bf16 values) into dst as bf16.
func toBF16(dst, raw []byte, fp32 bool) {
	if !fp32 {
		copy(dst, raw)
		return
	}
	for i := 0; i < len(dst)/2; i++ {
		binary.LittleEndian.PutUint16(dst[2*i:], bf16(math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))))
	}
}

// toFP32 writes the encoder output raw (fp32 or bf16 values) into dst as
// little-endian fp32.
func toFP32(dst, raw []byte, fp32 bool) {
	if fp32 {
		copy(dst, raw)
		return
	}
	for i := 0; i < len(dst)/4; i++ {
		binary.LittleEndian.PutUint32(dst[4*i:], uint32(binary.LittleEndian.Uint16(raw[2*i:]))<<16)
	}
}

// imageRow is the encoder's row for prompt position pos, or nil when pos
// holds no image.
func (m *Model) imageRow(pos int) []byte {
	st := m.st
	if len(st.runs) == 0 {
		return nil
	}
	n, rowBytes := m.vision.info.Tokens, m.shape.Hidden*2
	for k, r := range st.runs {
		if pos >= r && pos < r+n {
			off := (k*n + pos - r) * rowBytes
			return st.imgRows[off : off+rowBytes]
		}
	}
	return nil
}

// bf16 rounds to nearest even (NaN stays NaN).
func bf16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}
