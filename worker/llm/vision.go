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
}

// ErrImage is matched by errors about a request's images: a count or size
// that does not fit the prompt's placeholders or the encoder.
var ErrImage = errors.New("llm: images do not fit")

// visionModel is the encoder resident on the card.
type visionModel struct {
	info   Vision
	model  *npu.Model
	in     *npu.Buffer
	out    *npu.Buffer
	fp32   bool
	raw    []byte // encoder output as read
	pixels []byte // the image being encoded
}

// loadVision loads the package's vision encoder when kiln can drive it: an
// NHWC uint8 input and a placeholder token id in config.json.
func (m *Model) loadVision(ctx context.Context) error {
	p := m.pkg
	if p.Vision == "" {
		return nil
	}
	if p.ImageTokenID <= 0 && p.VisionInput == "nhwc_uint8" {
		// A SmolVLM package whose config.json has no image_token_id: the
		// tokenizer's <image> is the placeholder.
		if id, ok := m.tok.TokenID(SmolVLMImageToken); ok {
			p.ImageTokenID = id
		}
	}
	if p.VisionInput != "nhwc_uint8" || p.ImageTokenID <= 0 {
		m.log.Warn("llm: vision encoder not loaded: kiln drives encoders that take NHWC uint8 images and name their placeholder token",
			"vision_input", p.VisionInput, "vision_image_token_id", p.ImageTokenID)
		return nil
	}
	vm, err := m.dev.LoadModel(ctx, p.Vision, &npu.LoadOptions{Name: p.Name + "/vision"})
	if err != nil {
		return fmt.Errorf("llm: %s: vision encoder: %w", p.Name, err)
	}
	m.vision = &visionModel{model: vm}
	return nil
}

// checkVision checks the vision encoder loaded by loadVision against the
// model's shape (known once the post model is loaded) and binds its
// buffers.
func (m *Model) checkVision() error {
	p, v := m.pkg, m.vision
	if v == nil {
		return nil
	}
	vm := v.model
	info, out, err := p.visionInput(vm.Describe(), &m.shape)
	if err != nil {
		return err
	}
	v.info, v.fp32 = info, out.DataType == axcl.TypeFP32
	if v.in, err = vm.BufferAt(0, axcl.Input, 0); err != nil {
		return err
	}
	if v.out, err = vm.BufferAt(0, axcl.Output, 0); err != nil {
		return err
	}
	v.raw = make([]byte, out.Size)
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
	if err := t.Write(v.in, 0, v.pixels); err != nil {
		return err
	}
	if err := t.Execute(v.model, 0); err != nil {
		return err
	}
	return t.Read(v.raw, v.out, 0)
}

// prepareImages checks req's images against the prompt's placeholder runs,
// encodes them on the card and keeps their rows for the prefill. It returns
// the position of the first placeholder, or len(prompt) without images.
func (m *Model) prepareImages(ctx context.Context, req *Request) (int, error) {
	st := &m.st
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
	rowBytes := m.shape.Hidden * 2
	need := len(req.Images) * v.info.Tokens * rowBytes
	if cap(st.imgRows) < need {
		st.imgRows = make([]byte, need)
	}
	st.imgRows = st.imgRows[:need]
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
		rows := st.imgRows[k*v.info.Tokens*rowBytes : (k+1)*v.info.Tokens*rowBytes]
		if !v.fp32 {
			copy(rows, v.raw)
			continue
		}
		for i := 0; i < len(rows)/2; i++ {
			h := bf16(math.Float32frombits(binary.LittleEndian.Uint32(v.raw[4*i:])))
			binary.LittleEndian.PutUint16(rows[2*i:], h)
		}
	}
	return st.runs[0], nil
}

// imageRow is the encoder's row for prompt position pos, or nil when pos
// holds no image.
func (m *Model) imageRow(pos int) []byte {
	st := &m.st
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
