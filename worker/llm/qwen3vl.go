package llm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/kiln-project/kiln/worker/npu"
)

// Qwen3-VL (AXERA-TECH/Qwen3-VL.AXERA, python/infer_image.py, python/preprocess.py,
// python/utils.py) differs from the classic encoder pattern in three ways, all here:
//
//   - the host cuts the image into patches (PatchLayout.Patchify) and the encoder takes them
//     as uint8 [1, N, temporal·patch², 3];
//   - the encoder has 3 more outputs, the deepstack features, which are added to the hidden
//     states at the image rows after decoder layers 0, 1 and 2 during the prefill
//     (addDeepstack);
//   - the layers' prefill indices are 3 rows (t, h, w) of positions from Hugging Face's
//     get_rope_index (mropePositions), and decode positions continue from the largest
//     prefill position + 1 while the KV row keeps counting tokens (decodePos).

// PatchLayout is how Qwen3-VL's processor cuts an image (Hugging Face vision_config:
// patch_size, temporal_patch_size, spatial_merge_size; 16, 2, 2 in Qwen3-VL-2B/4B).
type PatchLayout struct {
	Patch    int // pixels per patch side
	Temporal int // frames per patch: a still image is repeated this many times
	Merge    int // patches per merged token side
}

// PatchBytes is the size of one patch row of the encoder input: Temporal × Patch² × 3.
func (l PatchLayout) PatchBytes() int { return l.Temporal * l.Patch * l.Patch * 3 }

// maxSide bounds the image side and patch sizes Patchify takes (no product overflows).
const maxSide = 1 << 14

// Patchify writes the w×h RGB image img into dst in the order of Qwen3-VL.AXERA's
// Qwen2VLImageProcessorExport._preprocess (python/preprocess.py) with do_rescale and
// do_normalize off: the patches grouped by merge window — window row, window column, then
// the Merge×Merge patches inside it row by row — each patch as [Temporal][Patch][Patch][3]
// uint8, the image repeated in time (the processor pads one frame to temporal_patch_size by
// repeating it). That is the reshape (grid_t, T, C, gh/M, M, P, gw/M, M, P) transposed by
// (0, 3, 6, 4, 7, 1, 5, 8, 2). dst must hold w·h·Temporal·3 bytes; w and h must be multiples
// of Patch·Merge. It allocates nothing.
func (l PatchLayout) Patchify(dst, img []byte, w, h int) error {
	ps, m := l.Patch, l.Merge
	if ps < 1 || m < 1 || l.Temporal < 1 || ps > maxSide || m > maxSide || l.Temporal > 16 || w < 1 || h < 1 || w > maxSide || h > maxSide ||
		w%(ps*m) != 0 || h%(ps*m) != 0 {
		return fmt.Errorf("llm: patchify: %d×%d is not made of %d-pixel patches merged %d×%d", w, h, ps, m, m)
	}
	if len(img) != w*h*3 || len(dst) != w*h*3*l.Temporal {
		return fmt.Errorf("llm: patchify: image of %d bytes into %d; want %d into %d", len(img), len(dst), w*h*3, w*h*3*l.Temporal)
	}
	line := ps * 3
	o := 0
	for by := 0; by < h/(ps*m); by++ {
		for bx := 0; bx < w/(ps*m); bx++ {
			for mh := 0; mh < m; mh++ {
				for mw := 0; mw < m; mw++ {
					y0, x0 := (by*m+mh)*ps, (bx*m+mw)*ps
					for range l.Temporal {
						for yy := 0; yy < ps; yy++ {
							src := ((y0+yy)*w + x0) * 3
							copy(dst[o:o+line], img[src:src+line])
							o += line
						}
					}
				}
			}
		}
	}
	return nil
}

// mropePositions fills pos (three rows of at least len(prompt)) with the mRoPE positions of
// Hugging Face's get_rope_index (Qwen3-VL.AXERA python/utils.py) for prompt, whose images
// start at the positions in starts and take gridH × gridW rows each: text tokens count on
// from the largest position so far + 1 in all three rows; an image's row k takes t = s,
// h = s + k / gridW, w = s + k % gridW, where s is the next text position. It returns the
// decode shift: the largest position + 1 − len(prompt), ≤ 0, added to a token's KV row to
// get its position after the prompt.
func mropePositions(pos *[3][]uint32, prompt []int, starts []int, gridH, gridW int) int {
	next, img := 0, 0
	for i := 0; i < len(prompt); {
		if img < len(starts) && i == starts[img] && gridH > 0 && gridW > 0 && i+gridH*gridW <= len(prompt) {
			for k := 0; k < gridH*gridW; k++ {
				pos[0][i+k] = uint32(next)
				pos[1][i+k] = uint32(next + k/gridW)
				pos[2][i+k] = uint32(next + k%gridW)
			}
			next += max(gridH, gridW)
			i += gridH * gridW
			img++
			continue
		}
		pos[0][i], pos[1][i], pos[2][i] = uint32(next), uint32(next), uint32(next)
		next++
		i++
	}
	return next - len(prompt)
}

// ErrImageRange is matched by an *ImageRangeError.
var ErrImageRange = errors.New("llm: image outside the prefill range")

// ImageRangeError refuses an image whose rows lie past the prompt tokens the prefill groups
// can take: Qwen3-VL's 3-row positions and deepstack additions exist only in the prefill, so
// a model with them encodes images only within its first Limit prompt tokens.
type ImageRangeError struct {
	Image int // 0-based, in prompt order
	End   int // prompt position after the image's last row
	Limit int
}

func (e *ImageRangeError) Error() string {
	return fmt.Sprintf("llm: image %d ends at prompt token %d; this model takes images only within its first %d prompt tokens (its prefill groups)",
		e.Image, e.End, e.Limit)
}

// Is matches ErrImageRange and ErrImage.
func (e *ImageRangeError) Is(target error) bool { return target == ErrImageRange || target == ErrImage }

// imageLimit is the prompt length within which every image row goes through a prefill
// group whatever rows are reused: a chunk containing row e−1 starts at or before it, so
// e − 1 must not pass the largest history.
func (s *Shape) imageLimit() int {
	h := 0
	for _, g := range s.Prefill {
		h = max(h, g.History)
	}
	return h + 1
}

// prepareMRoPE computes the request's positions and decode shift (mRoPE models only) and
// refuses images past the prefill range. st.runs holds the image starts.
func (m *Model) prepareMRoPE(prompt []int) error {
	st, v := m.st, m.vision
	st.ropeShift = 0
	if !m.shape.MRoPE || len(st.runs) == 0 {
		return nil
	}
	limit := m.shape.imageLimit()
	for k, r := range st.runs {
		if end := r + v.info.Tokens; end > limit {
			return &ImageRangeError{Image: k, End: end, Limit: limit}
		}
	}
	st.ropeShift = mropePositions(&st.mpos, prompt, st.runs, v.gridH, v.gridW)
	return nil
}

// decodePos is the position of the token at KV row p run through the decode group.
func (m *Model) decodePos(p int) int {
	if len(m.st.runs) == 0 {
		return p
	}
	return p + m.st.ropeShift
}

// stageIndices writes the indices of the staged chunk (n tokens at st.pos): one row of
// absolute positions, or for mRoPE three rows (t, h, w) of Chunk each — a request's image
// positions, else the absolute position in all three. Padding is 0.
func (m *Model) stageIndices(n int) {
	st, s := m.st, &m.shape
	rows := 1
	if s.MRoPE {
		rows = 3
	}
	for r := range rows {
		out := st.chunkIdx[r*s.Chunk*4 : (r+1)*s.Chunk*4]
		for i := range s.Chunk {
			v := uint32(0)
			switch {
			case i >= n:
			case s.MRoPE && len(st.runs) > 0:
				v = st.mpos[r][st.pos+i]
			default:
				v = uint32(st.pos + i)
			}
			binary.LittleEndian.PutUint32(out[4*i:], v)
		}
	}
}

// addDeepstack adds deepstack feature layer (of the request's images) to the output rows of
// decoder layer `layer` that hold image rows of the staged chunk (device thread): read, add
// in float32, round to bf16, write back — infer_image.py's
// data[visual_pos_masks] += deepstack_visual_embeds[i] after layer i.
func (m *Model) addDeepstack(t *npu.Thread, layer int) error {
	st, v := m.st, m.vision
	if v == nil || layer >= v.info.Deepstack || len(st.runs) == 0 {
		return nil
	}
	d := m.shape.Hidden
	out := m.hid[(layer+1)%2]
	for k, r := range st.runs {
		a, b := max(r, st.pos), min(r+v.info.Tokens, st.pos+st.chunkN)
		if a >= b {
			continue
		}
		buf := st.dsBuf[:(b-a)*d*2]
		off := uint64((a-st.pos)*d) * 2
		if err := t.Read(buf, out, off); err != nil {
			return err
		}
		addBF16(buf, st.deep[((k*v.info.Deepstack+layer)*v.info.Tokens+a-r)*d*4:])
		if err := t.Write(out, off, buf); err != nil {
			return err
		}
	}
	return nil
}

// addBF16 adds the little-endian fp32 value i of add to the bf16 value i of rows in
// float32 and rounds the sum to bf16.
func addBF16(rows, add []byte) {
	n := len(rows) / 2
	add = add[:4*n]
	for i := 0; i < n; i++ {
		h := math.Float32frombits(uint32(binary.LittleEndian.Uint16(rows[2*i:])) << 16)
		binary.LittleEndian.PutUint16(rows[2*i:], bf16(h+math.Float32frombits(binary.LittleEndian.Uint32(add[4*i:]))))
	}
}
