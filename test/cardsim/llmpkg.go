package cardsim

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// LLMSpec describes a simulated Qwen3-style chat package (research/llm-runtime.md §1–§3).
type LLMSpec struct {
	// Name is the package folder name and config.json model_name, e.g. "qwen3-tiny".
	Name string
	// Arch is the file-name prefix: <Arch>_p<Prefill>_l<i>_together.axmodel, <Arch>_post.axmodel.
	Arch string
	// ModelDir is the sub-folder holding the model files, e.g. "qwen3-tiny-ax650".
	ModelDir string
	Layers   int
	Hidden   int // tokens_embed_size
	KVDim    int // kv heads × head dim
	Vocab    int // tokens_embed_num (151936 for Qwen3)
	// MaxCtx is the decode context (pulsar2 --kv_cache_len): the decode mask has MaxCtx+1
	// elements and K_cache has MaxCtx rows.
	MaxCtx int
	// DecodeContexts, when set, makes several decode groups, as 2026 ax-llm packages may carry
	// (2k/4k/8k contexts; ax-llm src/runner/LLM_init.cpp): groups 0..len-1 decode with these
	// contexts, in this order; the largest must be MaxCtx. Unset: one decode group, group 0.
	DecodeContexts []int
	// Prefill is the prefill chunk (128).
	Prefill int
	// Histories lists the history capacity of each prefill group, in group order (group i+1).
	// 0 is the no-history group, whose K_cache/V_cache have the dummy shape [1,1,Hidden].
	Histories []int
	// Seed derives every weight: layer i uses Seed+1+i, the post model Seed+0x10000, the
	// embedding table Seed^0x454d42, the vision encoder Seed+0x20000.
	Seed uint64
	// PostRank is the rank of the post model's projection (default 16).
	PostRank int
	// PostFP32 makes the post model output fp32 logits instead of bf16.
	PostFP32 bool
	// LayerWeightBytes and PostWeightBytes are the CMM each model claims when loaded.
	LayerWeightBytes int64
	PostWeightBytes  int64
	// EmbedValues writes the embedding table's values. When false the table is a sparse
	// file of zeros of the right size (for the full-size shapes: no disk use).
	EmbedValues bool
	// TokenizerDir, when set, is a folder whose files are copied into TokenizerSubdir.
	TokenizerDir    string
	TokenizerSubdir string // default "<Arch>_tokenizer"
	// Vision adds a vision encoder to the package.
	Vision *VisionSpec
	// ConfigExtra adds keys to the axllm config.json (the 2026 binary's loading and serving
	// settings, ax-llm docs/configuration.md).
	ConfigExtra map[string]any
	// Layout is how the package folder is laid out: "" is the axllm layout (a config.json
	// naming every file); LayoutSmolVLM is SmolVLM-256M-Instruct.axera's, LayoutQwen3VL is
	// Qwen3-VL.AXERA's (see WriteLLMPackage).
	Layout string
	// MRoPE gives the prefill groups 3-row indices [3, Prefill] (t, h, w positions), as
	// Qwen3-VL's layers take them; the decode group keeps one position.
	MRoPE bool
}

// LayoutSmolVLM is the layout of AXERA-TECH/SmolVLM-256M-Instruct.axera's package: every file
// in one folder, Hugging Face's Idefics3 config.json (image_token_id) and tokenizer files, the
// vendor's file names, no axllm keys (python/infer_axmodel.py, ax-llm scripts/run_smolvlm.sh).
const LayoutSmolVLM = "smolvlm"

// VisionSpec describes a simulated vision encoder (kind vision): an NHWC uint8 image in, one
// embedding row of the LLM's hidden size per image token out.
type VisionSpec struct {
	File          string // file name inside ModelDir, e.g. "vision_model.axmodel"
	Width, Height int    // input image size
	Grid          int    // Grid×Grid output tokens
	OutFP32       bool   // fp32 output instead of bf16
	WeightBytes   int64
	ImageTokenID  int // placeholder token id recorded in config.json (vision_image_token_id)
	// InputName and OutputName are the tensor names (default "input" and "output").
	InputName, OutputName string
	// Patch, TemporalPatch and Merge, when Merge > 0, make it Qwen3-VL's encoder: the input
	// is the host's patches [1, (H/Patch)·(W/Patch), TemporalPatch·Patch², 3] uint8 in
	// merge-window order, and the outputs are the embeddings (OutputName) followed by
	// DeepstackNames, (H/Patch/Merge)·(W/Patch/Merge) rows each; Grid is then unused.
	Patch, TemporalPatch, Merge int
	DeepstackNames              []string
}

// TinyQwen3 is a small Qwen3-shaped chat package: 4 layers, hidden 64, kv_dim 32, the real
// vocabulary size, context 1023, prefill chunk 128, prefill groups with history 0, 128, 256,
// 512 and 768. Executes take well under a millisecond per layer.
func TinyQwen3() LLMSpec {
	return LLMSpec{
		Name: "qwen3-tiny", Arch: "qwen3", ModelDir: "qwen3-tiny-ax650",
		Layers: 4, Hidden: 64, KVDim: 32, Vocab: 151936, MaxCtx: 1023, Prefill: 128,
		Histories: []int{0, 128, 256, 512, 768}, Seed: 0x6b696c6e,
		PostRank: 16, LayerWeightBytes: 4 << 20, PostWeightBytes: 24 << 20, EmbedValues: true,
	}
}

// TinyQwen3VL is TinyQwen3 with a simulated vision encoder ("vision_model.axmodel"): a
// 384×384 NHWC uint8 image in (normalisation inside the model, the "classic" encoder pattern),
// 12×12 = 144 bf16 embedding rows out, one per <|image_pad|> (151655) placeholder token.
func TinyQwen3VL() LLMSpec {
	s := TinyQwen3()
	s.Name, s.ModelDir = "qwen3-vl-tiny", "qwen3-vl-tiny-ax650"
	s.Vision = &VisionSpec{File: "vision_model.axmodel", Width: 384, Height: 384, Grid: 12, WeightBytes: 16 << 20, ImageTokenID: 151655}
	return s
}

// TinySmolVLM is a small package laid out as AXERA-TECH/SmolVLM-256M-Instruct.axera
// publishes it (LayoutSmolVLM): llama_p320_l<i>_together.axmodel (prefill chunk 320, one
// prefill group without history, kv_cache_len 1023), llama_post.axmodel,
// SmolVLM-256M-Instruct_vision_nhwc.axmodel (pixel_values uint8 [1,512,512,3] →
// last_hidden_state [1,64,hidden] fp32), the vendor's vocabulary size 49280 and special token
// ids (<image> 49190). Hidden 64 and 2 layers instead of 576 and 30.
func TinySmolVLM() LLMSpec {
	return LLMSpec{
		Name: "SmolVLM-256M-Instruct-AX650", Arch: "llama", ModelDir: ".",
		Layers: 2, Hidden: 64, KVDim: 32, Vocab: 49280, MaxCtx: 1023, Prefill: 320,
		Histories: []int{0}, Seed: 0x536d6f6c,
		PostRank: 16, LayerWeightBytes: 1 << 20, PostWeightBytes: 4 << 20, EmbedValues: true,
		Vision: &VisionSpec{File: "SmolVLM-256M-Instruct_vision_nhwc.axmodel", Width: 512, Height: 512, Grid: 8,
			OutFP32: true, WeightBytes: 4 << 20, ImageTokenID: 49190, InputName: "pixel_values", OutputName: "last_hidden_state"},
		Layout: LayoutSmolVLM,
	}
}

// TinyAxllm2026 is TinyQwen3 shaped as a 2026 ax-llm package may be (research/llm-runtime.md
// §1.3, §2.2; ax-llm src/runner/LLM_init.cpp): three decode groups of contexts 255, 1023 and
// 511 (the largest not first), then the prefill groups, and a config.json carrying the 2026
// binary's loading and serving keys besides the required ones. The tensor names are one per
// index, as the card runtime reports them (axcl_rt_engine.h has no per-group name).
func TinyAxllm2026() LLMSpec {
	s := TinyQwen3()
	s.Name, s.ModelDir = "qwen3-axllm-tiny", "qwen3-axllm-tiny-ax650"
	s.DecodeContexts = []int{255, 1023, 511}
	s.ConfigExtra = map[string]any{
		"use_mmap_load_layer": true, "dynamic_load_enable": false, "mem_guard_enable": true, "mem_guard_floor_mb": 128,
		"mem_guard_on_unsafe": "abort", "kv_cache_slots": 1, "kv_cache_slot_location": "device",
		"port": 8000, "server_timeout_ms": 300000, "vlm_type": "None",
	}
	return s
}

// Qwen3_4B has the full shapes of the AXERA-TECH Qwen3-4B package for the LLM-8850: 36 layers,
// hidden 2560, kv_dim 1024, context 2559, prefill groups with history 0, 256, 512, 1024, 1536,
// 2048, and realistic CMM claims (112 MiB per layer, 371 MiB post). Meant for benchmarks with
// KILN_SIM_NOCOMPUTE=1: files stay small (the embedding table is sparse).
func Qwen3_4B() LLMSpec {
	return LLMSpec{
		Name: "qwen3-4b", Arch: "qwen3", ModelDir: "qwen3-4b-ax650",
		Layers: 36, Hidden: 2560, KVDim: 1024, Vocab: 151936, MaxCtx: 2559, Prefill: 128,
		Histories: []int{0, 256, 512, 1024, 1536, 2048}, Seed: 0x34623451,
		PostRank: 16, LayerWeightBytes: 112 << 20, PostWeightBytes: 371 << 20,
	}
}

// Qwen3_0_6B is the full Qwen3-0.6B shape of the LLM-8850 package (28 layers, hidden 1024,
// kv_dim 1024 = 8 KV heads × 128, context 2559, prefill groups with history 0, 512, 1024,
// 1536, 2048; research/llm-runtime.md §2.1, §2.2), for no-compute benchmarks. The CMM sizes
// are w8a16 estimates: ~15 M weights per layer, a 151936 × 1024 int8 post.
func Qwen3_0_6B() LLMSpec {
	return LLMSpec{
		Name: "qwen3-0.6b", Arch: "qwen3", ModelDir: "qwen3-0.6b-ax650",
		Layers: 28, Hidden: 1024, KVDim: 1024, Vocab: 151936, MaxCtx: 2559, Prefill: 128,
		Histories: []int{0, 512, 1024, 1536, 2048}, Seed: 0x30364231,
		PostRank: 16, LayerWeightBytes: 16 << 20, PostWeightBytes: 149 << 20,
	}
}

func (s *LLMSpec) validate() error {
	if s.Name == "" || s.Arch == "" || s.ModelDir == "" {
		return errors.New("cardsim: LLMSpec needs Name, Arch and ModelDir")
	}
	if s.Layers < 1 || s.Hidden < 1 || s.KVDim < 1 || s.Vocab < 1 || s.Prefill < 1 || s.MaxCtx < 1 {
		return errors.New("cardsim: LLMSpec sizes must be positive")
	}
	if len(s.Histories)+len(s.decodeContexts()) > 16 {
		return errors.New("cardsim: at most 16 shape groups")
	}
	if len(s.DecodeContexts) > 0 && slices.Max(s.DecodeContexts) != s.MaxCtx || slices.Min(s.decodeContexts()) < 1 {
		return fmt.Errorf("cardsim: decode contexts %v must be positive with MaxCtx %d the largest", s.DecodeContexts, s.MaxCtx)
	}
	for _, h := range s.Histories {
		if h < 0 || h+s.Prefill > s.MaxCtx+1 {
			return fmt.Errorf("cardsim: prefill history %d does not fit context %d", h, s.MaxCtx)
		}
	}
	if s.Vision != nil && s.Vision.Merge > 0 {
		v := s.Vision
		if v.Patch < 1 || v.TemporalPatch < 1 || v.File == "" || v.Width%(v.Patch*v.Merge) != 0 || v.Height%(v.Patch*v.Merge) != 0 {
			return errors.New("cardsim: a patch VisionSpec needs File, Patch, TemporalPatch and Width, Height divisible by Patch×Merge")
		}
	} else if s.Vision != nil && (s.Vision.Grid < 1 || s.Vision.Width%s.Vision.Grid != 0 || s.Vision.Height%s.Vision.Grid != 0 || s.Vision.File == "") {
		return errors.New("cardsim: VisionSpec needs File and Width, Height divisible by Grid")
	}
	return nil
}

// LayerFile returns the file name of layer i, e.g. "qwen3_p128_l0_together.axmodel".
func (s *LLMSpec) LayerFile(i int) string {
	return fmt.Sprintf("%s_p%d_l%d_together.axmodel", s.Arch, s.Prefill, i)
}

// PostFile returns the post model's file name, e.g. "qwen3_post.axmodel".
func (s *LLMSpec) PostFile() string { return s.Arch + "_post.axmodel" }

// EmbedFile is the embedding table's file name.
const EmbedFile = "model.embed_tokens.weight.bfloat16.bin"

// LayerSpec returns the model spec of layer i.
func (s *LLMSpec) LayerSpec(i int) *ModelSpec {
	d, k, p := s.Hidden, s.KVDim, s.Prefill
	g := len(s.decodeContexts()) + len(s.Histories)
	params := []Param{{"seed", int64(s.Seed + 1 + uint64(i))}, {"hidden", int64(d)}, {"kv_dim", int64(k)}}
	if s.MRoPE {
		params = append(params, Param{"mrope", 1})
	}
	dims := func(dec func(ctx int) []int, pre func(h int) []int) [][]int {
		var out [][]int
		for _, c := range s.decodeContexts() {
			out = append(out, dec(c))
		}
		for _, h := range s.Histories {
			out = append(out, pre(h))
		}
		return out
	}
	cache := dims(func(c int) []int { return []int{1, c, k} }, func(h int) []int {
		if h == 0 {
			return []int{1, 1, d}
		}
		return []int{1, h, k}
	})
	return &ModelSpec{
		Kind: KindLLMLayer, Name: fmt.Sprintf("%s_p%d_l%d_together", s.Arch, p, i), Compiler: "5.1-kilnsim",
		WeightBytes: s.LayerWeightBytes, Groups: g,
		Params: params,
		Inputs: []Tensor{
			{"input", BF16, dims(fixed(1, 1, d), func(int) []int { return []int{1, p, d} })},
			{"indices", Uint32, dims(fixed(1, 1), func(int) []int {
				if s.MRoPE {
					return []int{3, p}
				}
				return []int{1, p}
			})},
			{"mask", BF16, dims(func(c int) []int { return []int{1, 1, c + 1} }, func(h int) []int { return []int{1, p, h + p} })},
			{"K_cache", BF16, cache},
			{"V_cache", BF16, cache},
		},
		Outputs: []Tensor{
			{"K_cache_out", BF16, dims(fixed(1, 1, k), func(int) []int { return []int{1, p, k} })},
			{"V_cache_out", BF16, dims(fixed(1, 1, k), func(int) []int { return []int{1, p, k} })},
			{"output", BF16, dims(fixed(1, 1, d), func(int) []int { return []int{1, p, d} })},
		},
	}
}

// decodeContexts are the contexts of the decode groups, in group order.
func (s *LLMSpec) decodeContexts() []int {
	if len(s.DecodeContexts) > 0 {
		return s.DecodeContexts
	}
	return []int{s.MaxCtx}
}

// fixed is dims that do not depend on the decode group's context.
func fixed(dims ...int) func(int) []int { return func(int) []int { return dims } }

// PostSpec returns the post model's spec.
func (s *LLMSpec) PostSpec() *ModelSpec {
	rank := s.PostRank
	if rank == 0 {
		rank = 16
	}
	dt := BF16
	if s.PostFP32 {
		dt = FP32
	}
	return &ModelSpec{
		Kind: KindLLMPost, Name: s.Arch + "_post", Compiler: "5.1-kilnsim", WeightBytes: s.PostWeightBytes, Groups: 1,
		Params:  []Param{{"seed", int64(s.Seed + 0x10000)}, {"hidden", int64(s.Hidden)}, {"vocab", int64(s.Vocab)}, {"rank", int64(rank)}},
		Inputs:  []Tensor{{"input", BF16, [][]int{{1, 1, s.Hidden}}}},
		Outputs: []Tensor{{"output", dt, [][]int{{1, 1, s.Vocab}}}},
	}
}

// VisionModelSpec returns the vision encoder's spec (nil without Vision).
func (s *LLMSpec) VisionModelSpec() *ModelSpec {
	v := s.Vision
	if v == nil {
		return nil
	}
	dt := BF16
	if v.OutFP32 {
		dt = FP32
	}
	in, out := v.InputName, v.OutputName
	if in == "" {
		in = "input"
	}
	if out == "" {
		out = "output"
	}
	if v.Merge > 0 {
		return s.visionPatchesSpec(in, out, dt)
	}
	return &ModelSpec{
		Kind: KindVision, Name: "vision", Compiler: "5.1-kilnsim", WeightBytes: v.WeightBytes, Groups: 1,
		Params:  []Param{{"seed", int64(s.Seed + 0x20000)}, {"hidden", int64(s.Hidden)}, {"grid", int64(v.Grid)}},
		Inputs:  []Tensor{{in, Uint8, [][]int{{1, v.Height, v.Width, 3}}}},
		Outputs: []Tensor{{out, dt, [][]int{{1, v.Grid * v.Grid, s.Hidden}}}},
	}
}

// EmbedRow returns the bf16 embedding row the generator writes for token id (when
// EmbedValues is set): FloatToBF16(Unit(Seed^0x454d42, id*Hidden+i)).
func (s *LLMSpec) EmbedRow(id int) []uint16 {
	row := make([]uint16, s.Hidden)
	for i := range row {
		row[i] = FloatToBF16(Unit(s.Seed^0x454d42, uint64(id*s.Hidden+i)))
	}
	return row
}

// WriteLLMPackage writes the package into dir (created if needed):
//
//	config.json                      axllm-style config (model files, sizes, tokenizer)
//	post_config.json                 sampling defaults of the Qwen3 packages (greedy)
//	<ModelDir>/<Arch>_p128_l<i>_together.axmodel, <Arch>_post.axmodel
//	<ModelDir>/model.embed_tokens.weight.bfloat16.bin   Vocab × Hidden bf16, little endian
//	<ModelDir>/<Vision.File>         when Vision is set
//	<TokenizerSubdir>/…              copies of TokenizerDir's files, when set
//
// With Layout LayoutSmolVLM it writes the vendor's layout instead: Hugging Face's config.json
// (Idefics3: image_token_id, text_config), the model files and embedding table in ModelDir,
// and a generated byte-level tokenizer.json with the vendor's special tokens at their ids
// (tokenizer_config.json: eos <end_of_utterance>), no post_config.json.
func WriteLLMPackage(dir string, s LLMSpec) error {
	if err := s.validate(); err != nil {
		return err
	}
	md := filepath.Join(dir, s.ModelDir)
	if err := os.MkdirAll(md, 0o755); err != nil {
		return fmt.Errorf("cardsim: %w", err)
	}
	write := func(name string, m *ModelSpec) error {
		b, err := m.Marshal()
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(md, name), b, 0o644); err != nil {
			return fmt.Errorf("cardsim: %w", err)
		}
		return nil
	}
	for i := 0; i < s.Layers; i++ {
		if err := write(s.LayerFile(i), s.LayerSpec(i)); err != nil {
			return err
		}
	}
	if err := write(s.PostFile(), s.PostSpec()); err != nil {
		return err
	}
	if s.Vision != nil {
		if err := write(s.Vision.File, s.VisionModelSpec()); err != nil {
			return err
		}
	}
	if err := writeEmbed(filepath.Join(md, EmbedFile), &s); err != nil {
		return err
	}
	switch s.Layout {
	case LayoutSmolVLM:
		return writeSmolVLMFiles(dir, &s)
	case LayoutQwen3VL, LayoutQwen3VLM5Stack:
		return writeQwen3VLFiles(dir, &s)
	}
	tokSub := s.TokenizerSubdir
	if tokSub == "" {
		tokSub = s.Arch + "_tokenizer"
	}
	if s.TokenizerDir != "" {
		if err := copyDir(s.TokenizerDir, filepath.Join(dir, tokSub)); err != nil {
			return err
		}
	}
	cfg := map[string]any{
		"model_name":                s.Name,
		"tokenizer_type":            "Qwen3",
		"url_tokenizer_model":       tokSub + "/tokenizer.json",
		"template_filename_axmodel": s.ModelDir + "/" + fmt.Sprintf("%s_p%d_l%%d_together.axmodel", s.Arch, s.Prefill),
		"axmodel_num":               s.Layers,
		"filename_post_axmodel":     s.ModelDir + "/" + s.PostFile(),
		"filename_tokens_embed":     s.ModelDir + "/" + EmbedFile,
		"tokens_embed_num":          s.Vocab,
		"tokens_embed_size":         s.Hidden,
		"use_mmap_load_embed":       true,
		"post_config_path":          "post_config.json",
		"bos":                       false,
		"eos":                       false,
		"devices":                   []int{0},
	}
	for k, v := range s.ConfigExtra {
		cfg[k] = v
	}
	if s.Vision != nil {
		cfg["filename_image_encoder_axmodel"] = s.ModelDir + "/" + s.Vision.File
		cfg["vision_width"] = s.Vision.Width
		cfg["vision_height"] = s.Vision.Height
		cfg["vision_image_token_id"] = s.Vision.ImageTokenID
		cfg["vision_tokens"] = s.Vision.Grid * s.Vision.Grid
		cfg["vlm_type"] = "kilnsim"
		cfg["vision_input"] = "nhwc_uint8"
	}
	if err := writeJSON(filepath.Join(dir, "config.json"), cfg); err != nil {
		return err
	}
	post := map[string]any{
		"enable_temperature": false, "temperature": 0.9,
		"enable_repetition_penalty": false, "repetition_penalty": 1.2, "penalty_window": 20,
		"enable_top_p_sampling": false, "top_p": 0.8,
		"enable_top_k_sampling": true, "top_k": 1,
	}
	return writeJSON(filepath.Join(dir, "post_config.json"), post)
}

func writeEmbed(path string, s *LLMSpec) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("cardsim: %w", err)
	}
	size := int64(s.Vocab) * int64(s.Hidden) * 2
	if !s.EmbedValues {
		if err := f.Truncate(size); err != nil {
			f.Close()
			return fmt.Errorf("cardsim: %w", err)
		}
		return closeErr(f)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	seed := s.Seed ^ 0x454d42
	var buf [2]byte
	for i := int64(0); i < int64(s.Vocab)*int64(s.Hidden); i++ {
		h := FloatToBF16(Unit(seed, uint64(i)))
		buf[0], buf[1] = byte(h), byte(h>>8)
		w.Write(buf[:])
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("cardsim: %w", err)
	}
	return closeErr(f)
}

func closeErr(f *os.File) error {
	if err := f.Close(); err != nil {
		return fmt.Errorf("cardsim: %w", err)
	}
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("cardsim: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("cardsim: %w", err)
	}
	return nil
}

// copyDir copies the regular files of src (recursively) into dst.
func copyDir(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("cardsim: %w", err)
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return fmt.Errorf("cardsim: %w", err)
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		in, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("cardsim: %w", err)
		}
		defer in.Close()
		out, err := os.Create(target)
		if err != nil {
			return fmt.Errorf("cardsim: %w", err)
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return fmt.Errorf("cardsim: %w", err)
		}
		return closeErr(out)
	})
}
