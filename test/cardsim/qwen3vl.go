package cardsim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// LayoutQwen3VL is the layout of a Qwen3-VL-2B/4B package as AXERA-TECH/Qwen3-VL.AXERA builds
// and runs it (python/infer_image.py, model_convert/build_llm.sh, model_convert/export.py):
// the model folder <ModelDir> holds qwen3_vl_text_p128_l<i>_together.axmodel,
// qwen3_vl_text_post.axmodel, Qwen3-VL-2B-Instruct_vision.axmodel and
// model.embed_tokens.weight.bfloat16.bin (tools/embed_process.sh); the package folder holds
// Hugging Face's config.json (model_type qwen3_vl) and tokenizer files, which the demo reads
// with AutoConfig/AutoTokenizer. No axllm keys.
const LayoutQwen3VL = "qwen3vl"

// LayoutQwen3VLM5Stack is the layout of M5Stack's Qwen3-VL-2B-Instruct-axmodel for the LLM-8850
// (docs.m5stack.com m5_llm_8850_qwen3_vl_2b): the model folder Qwen3-VL-2B-Instruct-ax8850/
// with the same model files, post_config.json and a qwen3-vl-tokenizer/ folder beside it, and
// no config.json (the runner is given the sizes on its command line).
const LayoutQwen3VLM5Stack = "qwen3vl-m5stack"

// TinyQwen3VLM5Stack is TinyQwen3VLVendor laid out as M5Stack publishes it (LayoutQwen3VLM5Stack).
func TinyQwen3VLM5Stack() LLMSpec {
	s := TinyQwen3VLVendor()
	s.Name, s.ModelDir, s.Layout = "qwen3-vl-2b-m5stack-tiny", "Qwen3-VL-2B-Instruct-ax8850", LayoutQwen3VLM5Stack
	return s
}

// Qwen3-VL special tokens at the ids of the Qwen3 tokenizer (Qwen3-VL.AXERA
// python/infer_image.py: 151652 <|vision_start|>, 151655 <|image_pad|>, 151656 <|video_pad|>).
var qwen3VLSpecials = map[int]string{
	151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>",
	151652: "<|vision_start|>", 151653: "<|vision_end|>", 151654: "<|vision_pad|>",
	151655: "<|image_pad|>", 151656: "<|video_pad|>",
}

// Qwen3VLImagePad is <|image_pad|>, the placeholder whose rows Qwen3-VL's encoder replaces.
const Qwen3VLImagePad = 151655

// TinyQwen3VLVendor is a small package laid out as Qwen3-VL.AXERA publishes Qwen3-VL-2B
// (LayoutQwen3VL): 4 layers of hidden 64 instead of 28 of 2048, the vendor's file and tensor
// names, context 1023 with prefill groups every 128 rows of history up to 768 (the vendor:
// kv_cache_len 2047, up to 1024), prefill indices [3, 128] uint32 (mRoPE), and the vision
// encoder Qwen3-VL-2B-Instruct_vision.axmodel: hidden_states uint8 [1, 576, 512, 3] (384×384,
// patch 16, temporal patch 2) → hidden_states_out and deepstack_feature_0..2, [144, hidden]
// fp32 each (merge 2).
func TinyQwen3VLVendor() LLMSpec {
	return LLMSpec{
		Name: "qwen3-vl-2b-tiny", Arch: "qwen3_vl_text", ModelDir: "Qwen3-VL-2B-Instruct-AX650-c128_p896",
		Layers: 4, Hidden: 64, KVDim: 32, Vocab: 151936, MaxCtx: 1023, Prefill: 128,
		Histories: []int{0, 128, 256, 384, 512, 640, 768}, Seed: 0x71766c32,
		PostRank: 16, LayerWeightBytes: 2 << 20, PostWeightBytes: 8 << 20, EmbedValues: true,
		MRoPE: true, Layout: LayoutQwen3VL,
		Vision: &VisionSpec{File: "Qwen3-VL-2B-Instruct_vision.axmodel", Width: 384, Height: 384,
			Patch: 16, TemporalPatch: 2, Merge: 2, OutFP32: true, WeightBytes: 8 << 20, ImageTokenID: Qwen3VLImagePad,
			InputName: "hidden_states", OutputName: "hidden_states_out",
			DeepstackNames: []string{"deepstack_feature_0", "deepstack_feature_1", "deepstack_feature_2"}},
	}
}

// visionPatchesSpec is Qwen3-VL's encoder (kind vision with param merge): see VisionSpec.
func (s *LLMSpec) visionPatchesSpec(in, out string, dt DType) *ModelSpec {
	v := s.Vision
	n := (v.Height / v.Patch) * (v.Width / v.Patch)
	rows := n / (v.Merge * v.Merge)
	outs := []Tensor{{out, dt, [][]int{{rows, s.Hidden}}}}
	for _, name := range v.DeepstackNames {
		outs = append(outs, Tensor{name, dt, [][]int{{rows, s.Hidden}}})
	}
	return &ModelSpec{
		Kind: KindVision, Name: "vision", Compiler: "5.1-kilnsim", WeightBytes: v.WeightBytes, Groups: 1,
		Params:  []Param{{"seed", int64(s.Seed + 0x20000)}, {"hidden", int64(s.Hidden)}, {"merge", int64(v.Merge)}},
		Inputs:  []Tensor{{in, Uint8, [][]int{{1, n, v.TemporalPatch * v.Patch * v.Patch, 3}}}},
		Outputs: outs,
	}
}

// writeQwen3VLFiles writes what LayoutQwen3VL adds to the model files: Hugging Face's
// config.json of Qwen3-VL (only the keys a runner reads, the 2B's vision settings) and a
// byte-level tokenizer with Qwen's special tokens at their ids.
func writeQwen3VLFiles(dir string, s *LLMSpec) error {
	v := s.Vision
	if v == nil || v.Merge == 0 || !s.MRoPE || s.Vocab <= 151656 {
		return errors.New("cardsim: a Qwen3-VL-layout package needs a patch Vision, MRoPE and a vocabulary of at least 151657 tokens")
	}
	tokCfg := map[string]any{"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
	if s.Layout == LayoutQwen3VLM5Stack {
		post := map[string]any{
			"enable_temperature": false, "temperature": 0.7,
			"enable_repetition_penalty": false, "repetition_penalty": 1.0, "penalty_window": 30,
			"enable_top_p_sampling": false, "top_p": 0.8,
			"enable_top_k_sampling": true, "top_k": 1,
		}
		if err := writeJSON(filepath.Join(dir, "post_config.json"), post); err != nil {
			return err
		}
		tok := filepath.Join(dir, "qwen3-vl-tokenizer")
		if err := os.MkdirAll(tok, 0o755); err != nil {
			return fmt.Errorf("cardsim: %w", err)
		}
		return writeByteLevelTokenizer(tok, s.Vocab, qwen3VLSpecials, tokCfg)
	}
	heads := 16
	cfg := map[string]any{
		"architectures":         []string{"Qwen3VLForConditionalGeneration"},
		"model_type":            "qwen3_vl",
		"image_token_id":        v.ImageTokenID,
		"video_token_id":        151656,
		"vision_start_token_id": 151652,
		"vision_end_token_id":   151653,
		"text_config": map[string]any{
			"model_type": "qwen3_vl_text", "hidden_size": s.Hidden, "num_hidden_layers": s.Layers,
			"num_attention_heads": heads, "num_key_value_heads": heads * s.KVDim / s.Hidden, "head_dim": s.Hidden / heads,
			"vocab_size": s.Vocab, "bos_token_id": 151643, "eos_token_id": 151645,
			"rope_scaling": map[string]any{"mrope_interleaved": true, "mrope_section": []int{24, 20, 20}, "rope_type": "default"},
		},
		"vision_config": map[string]any{
			"model_type": "qwen3_vl", "patch_size": v.Patch, "temporal_patch_size": v.TemporalPatch,
			"spatial_merge_size": v.Merge, "out_hidden_size": s.Hidden, "deepstack_visual_indexes": []int{5, 11, 17},
		},
	}
	if err := writeJSON(filepath.Join(dir, "config.json"), cfg); err != nil {
		return err
	}
	return writeByteLevelTokenizer(dir, s.Vocab, qwen3VLSpecials, tokCfg)
}

// qwenVision is the reference of Qwen3-VL's simulated encoder (csrc/ops.c
// run_vision_patches), computed from the RGB image itself: merged token (by, bx) covers the
// Merge×Merge patches below and right of patch (Merge·by, Merge·bx), each patch the Patch×Patch
// pixels at its place, twice (the image repeated to fill the temporal patch).
type qwenVision struct {
	seed          uint64
	hidden        int
	width, height int
	patch, tp, m  int
	outputs       int
}

// encode returns the encoder's outputs (embeddings, then the deepstack features) as float32
// rows, or nil when px is not width × height × 3 bytes.
func (q *qwenVision) encode(px []byte) [][]float32 {
	if len(px) != q.width*q.height*3 {
		return nil
	}
	d, m, ps := q.hidden, q.m, q.patch
	w := m * m
	nf := 6 * w
	p := q.tp * ps * ps
	gw := q.width / ps / m
	nt := (q.height / ps / m) * gw
	outs := make([][]float32, q.outputs)
	for o := range outs {
		outs[o] = make([]float32, nt*d)
	}
	feat := make([]float32, nf)
	for k := 0; k < nt; k++ {
		by, bx := k/gw, k%gw
		for j := 0; j < w; j++ {
			y0, x0 := (by*m+j/m)*ps, (bx*m+j%m)*ps
			for c := 0; c < 3; c++ {
				var sum uint32
				var wsum float32
				for i := 0; i < p; i++ {
					yy, xx := (i%(ps*ps))/ps, i%ps // i = t·ps² + yy·ps + xx
					v := px[((y0+yy)*q.width+x0+xx)*3+c]
					sum += uint32(v)
					wsum += float32(Unit(q.seed^peSalt, uint64(i)) * float32(v))
				}
				feat[(j*3+c)*2] = float32(sum) / float32(p*255)
				feat[(j*3+c)*2+1] = wsum / float32(p*255)
			}
		}
		for o := range outs {
			so := q.seed + uint64(o)*0x1000
			for i := 0; i < d; i++ {
				acc := float32(Unit(so, uint64(nf*d+k*d+i)) * 0.5)
				for f := 0; f < nf; f++ {
					acc += float32(Unit(so, uint64(i*nf+f)) * feat[f])
				}
				outs[o][k*d+i] = softsign4(acc)
			}
		}
	}
	return outs
}

// Qwen3VLOptions leave out parts of Qwen3-VL's computation on purpose: a reference computed
// with one of them set is what a runtime that forgot that part would answer.
type Qwen3VLOptions struct {
	// NoDeepstack does not add the deepstack features after the first decoder layers.
	NoDeepstack bool
	// Positions1D gives every token its index as position (no mRoPE grid positions).
	Positions1D bool
}

// Qwen3VLPositions is Hugging Face's get_rope_index for Qwen3-VL (Qwen3-VL.AXERA
// python/utils.py) over ids with images of gridH × gridW merged tokens: text runs count on from
// the previous maximum + 1 in all three rows; an image's tokens take t = 0, h = row, w = column
// added to the position where the image starts. It returns the t, h and w rows.
func Qwen3VLPositions(ids []int, imageID, gridH, gridW int) [3][]uint32 {
	var pos [3][]uint32
	for r := range pos {
		pos[r] = make([]uint32, len(ids))
	}
	next := 0 // st_idx: max of the previous positions + 1
	for i := 0; i < len(ids); {
		if ids[i] == imageID && i+gridH*gridW <= len(ids) {
			for k := 0; k < gridH*gridW; k++ {
				pos[0][i+k] = uint32(next)
				pos[1][i+k] = uint32(next + k/gridW)
				pos[2][i+k] = uint32(next + k%gridW)
			}
			next += max(gridH, gridW)
			i += gridH * gridW
			continue
		}
		for r := range pos {
			pos[r][i] = uint32(next)
		}
		next++
		i++
	}
	return pos
}

// GreedyQwen3VL is Greedy for a Qwen3-VL package with images: each run of <|image_pad|> in
// prompt takes the rows of one image per 144 placeholders (the encoder's embeddings, bf16),
// positions are Qwen3VLPositions, and the deepstack features are added (float32 sum, bf16
// rounding) to the image rows of the hidden states after layers 0, 1 and 2.
func (r *Reference) GreedyQwen3VL(prompt []int, images [][]byte, n int, o Qwen3VLOptions) ([]int, error) {
	q := r.qwen
	if q == nil {
		return nil, errors.New("cardsim: the package has no Qwen3-VL vision encoder")
	}
	gh, gw := q.height/q.patch/q.m, q.width/q.patch/q.m
	per, d := gh*gw, r.Hidden
	starts, err := imageStarts(prompt, Qwen3VLImagePad, per, len(images))
	if err != nil {
		return nil, err
	}
	rows := map[int][]uint16{}
	deep := map[int][][]float32{}
	for k, px := range images {
		outs := q.encode(px)
		if outs == nil {
			return nil, fmt.Errorf("cardsim: image %d has %d bytes, want %d×%d×3", k, len(px), q.width, q.height)
		}
		for t := 0; t < per; t++ {
			row := make([]uint16, d)
			for i := range row {
				row[i] = FloatToBF16(outs[0][t*d+i])
			}
			rows[starts[k]+t] = row
			if o.NoDeepstack {
				continue
			}
			for _, ds := range outs[1:] {
				deep[starts[k]+t] = append(deep[starts[k]+t], ds[t*d:(t+1)*d])
			}
		}
	}
	return greedyWith(prompt, n, func(toks []int) ([]float32, error) {
		pos := Qwen3VLPositions(toks, Qwen3VLImagePad, gh, gw)
		if o.Positions1D {
			for r := range pos {
				for j := range pos[r] {
					pos[r][j] = uint32(j)
				}
			}
		}
		return r.logitsAt(toks, rows, pos, deep)
	})
}
