package llm

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// ErrPackage is matched by every error about a package folder: a missing,
// unreadable or inconsistent file.
var ErrPackage = errors.New("llm: bad model package")

// EmbedFile is the name of the embedding table in Axera packages.
const EmbedFile = "model.embed_tokens.weight.bfloat16.bin"

// Package is a model package folder as found on disk, before anything is
// loaded on the card: the files and the settings the vendor packages carry.
type Package struct {
	Dir string
	// Name is config.json's model_name, else the folder name.
	Name string
	// Layers are the decoder layer files in layer order.
	Layers []string
	// Post is the post model (final norm + lm_head).
	Post string
	// Embed is the bf16 embedding table (vocab × hidden).
	Embed string
	// Vocab and Hidden are config.json's tokens_embed_num and
	// tokens_embed_size, 0 when the package does not say (the mid-2025
	// packages ship an empty config.json); Load takes them from the models.
	Vocab, Hidden int
	// Tokenizer is the folder of the tokenizer (tokenizer.json(.gz)).
	Tokenizer string
	// TokenizerType is config.json's tokenizer_type ("Qwen3", ...), "" if
	// not given.
	TokenizerType string
	// Vision is the vision encoder model file, "" if the package has none.
	Vision string
	// ImageTokenID is the placeholder token whose prompt rows the vision
	// encoder's output replaces (config.json vision_image_token_id), 0 if
	// not given.
	ImageTokenID int
	// VisionInput is how the encoder takes an image (vision_input):
	// "nhwc_uint8" (RGB bytes, normalised inside the model) or
	// VisionPatches (Qwen3-VL: the host cuts the image into Patches).
	VisionInput string
	// Patches is Qwen3-VL's patch layout (Hugging Face vision_config), nil
	// for other encoders.
	Patches *PatchLayout
	// Defaults are the sampling defaults of post_config.json.
	Defaults Sampling
}

// packageConfig is the part of config.json (the 2026 axllm format) kiln reads.
type packageConfig struct {
	ModelName     string `json:"model_name"`
	TokenizerType string `json:"tokenizer_type"`
	Tokenizer     string `json:"url_tokenizer_model"`
	Template      string `json:"template_filename_axmodel"`
	Layers        int    `json:"axmodel_num"`
	Post          string `json:"filename_post_axmodel"`
	Embed         string `json:"filename_tokens_embed"`
	EmbedNum      int    `json:"tokens_embed_num"`
	EmbedSize     int    `json:"tokens_embed_size"`
	PostConfig    string `json:"post_config_path"`
	Vision        string `json:"filename_image_encoder_axmodel"`
	ImageTokenID  int    `json:"vision_image_token_id"`
	VisionInput   string `json:"vision_input"`
	VLMType       string `json:"vlm_type"`
	VLMTypeAlias  string `json:"VLM_TYPE"`
	// Hugging Face's keys, in the config.json the SmolVLM-256M package
	// ships (python/infer_axmodel.py reads it with AutoConfig).
	ModelType      string `json:"model_type"`
	HFImageTokenID int    `json:"image_token_id"`
	// and in Qwen3-VL's (Qwen3-VL.AXERA python/infer_image.py reads it with
	// AutoConfig; python/utils.py get_rope_index uses spatial_merge_size).
	VisionConfig visionConfig `json:"vision_config"`
}

// visionConfig is the part of Hugging Face's vision_config of Qwen3-VL kiln reads.
type visionConfig struct {
	Patch         int `json:"patch_size"`
	TemporalPatch int `json:"temporal_patch_size"`
	Merge         int `json:"spatial_merge_size"`
}

// VisionPatches is the VisionInput of Qwen3-VL's encoder: uint8 patches
// [1, N, temporal·patch², 3] the host cuts from the image (PatchLayout).
const VisionPatches = "patches_uint8"

// Qwen3VLModelType is Hugging Face's model_type of Qwen3-VL.
const Qwen3VLModelType = "qwen3_vl"

// SmolVLMImageToken is the placeholder text of SmolVLM's image rows; its id
// is config.json's image_token_id (49190 in SmolVLM-256M-Instruct).
const SmolVLMImageToken = "<image>"

// Qwen3VLImageToken is the placeholder text of Qwen3-VL's image rows
// (151655); without config.json its id comes from the tokenizer.
const Qwen3VLImageToken = "<|image_pad|>"

// visionFile matches the vision encoders the vendor publishes:
// SmolVLM-256M-Instruct.axera's <name>_vision_nhwc.axmodel, uint8 NHWC RGB
// in (model_convert/build_VE.sh, python/infer_axmodel.py), and
// Qwen3-VL.AXERA's <name>_vision.axmodel, uint8 patches in
// (model_convert/build_VE.sh, python/infer_image.py).
var visionFile = regexp.MustCompile(`^.+_vision(_nhwc)?\.axmodel$`)

// postConfig is post_config.json.
type postConfig struct {
	EnableTemperature       bool    `json:"enable_temperature"`
	Temperature             float64 `json:"temperature"`
	EnableRepetitionPenalty bool    `json:"enable_repetition_penalty"`
	RepetitionPenalty       float64 `json:"repetition_penalty"`
	PenaltyWindow           int     `json:"penalty_window"`
	EnableTopP              bool    `json:"enable_top_p_sampling"`
	TopP                    float64 `json:"top_p"`
	EnableTopK              bool    `json:"enable_top_k_sampling"`
	TopK                    int     `json:"top_k"`
}

func pkgErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrPackage, fmt.Sprintf(format, args...))
}

// maxLayers bounds axmodel_num (the largest vendor package has 36).
const maxLayers = 1024

var layerFile = regexp.MustCompile(`^(.+)_p(\d+)_l(\d+)_together\.axmodel$`)

// Detect reports whether dir looks like an LLM package: a config.json that
// names layer files (template_filename_axmodel), or a folder holding an
// <arch>_p<N>_l0_together.axmodel. It does not check the rest: ReadPackage
// and Load say what is missing.
func Detect(dir string) bool {
	if raw, err := os.ReadFile(filepath.Join(dir, "config.json")); err == nil && len(strings.TrimSpace(string(raw))) > 0 {
		var cfg packageConfig
		if json.Unmarshal(raw, &cfg) == nil && cfg.Template != "" {
			return true
		}
	}
	p := &Package{Dir: dir}
	err := discover(p)
	return err == nil || strings.Contains(err.Error(), "several layer-0 models")
}

// ReadPackage reads the package folder dir: config.json (the axllm format)
// when it has content, else the files found by their vendor names
// (<arch>_p128_l<i>_together.axmodel, <arch>_post.axmodel, the embedding
// table, a *tokenizer folder); and post_config.json. Every file it names
// must exist; an error wrapping ErrPackage says which one does not.
func ReadPackage(dir string) (*Package, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, pkgErr("%v", err)
	}
	if !st.IsDir() {
		return nil, pkgErr("%s is not a folder", dir)
	}
	p := &Package{Dir: dir, Name: filepath.Base(dir)}
	var cfg packageConfig
	raw, err := readSmall(filepath.Join(dir, "config.json"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, pkgErr("%v", err)
	}
	if err == nil && len(strings.TrimSpace(string(raw))) > 0 {
		if err := json.Unmarshal(raw, &cfg); err != nil {
			return nil, pkgErr("%s: %v", filepath.Join(dir, "config.json"), err)
		}
		if cfg.Template != "" {
			if err := checkAxllmConfig(filepath.Join(dir, "config.json"), raw, &cfg); err != nil {
				return nil, err
			}
		}
	}
	if cfg.ModelName != "" {
		p.Name = cfg.ModelName
	}
	p.TokenizerType = cfg.TokenizerType
	p.Vocab, p.Hidden = cfg.EmbedNum, cfg.EmbedSize
	if cfg.Template != "" {
		if cfg.Layers < 1 || cfg.Layers > maxLayers {
			return nil, pkgErr("%s: axmodel_num %d is not a layer count (1..%d)", filepath.Join(dir, "config.json"), cfg.Layers, maxLayers)
		}
		if strings.Count(cfg.Template, "%d") != 1 {
			return nil, pkgErr("%s: template_filename_axmodel %q must hold one %%d", filepath.Join(dir, "config.json"), cfg.Template)
		}
		for i := range cfg.Layers {
			p.Layers = append(p.Layers, filepath.Join(dir, strings.Replace(cfg.Template, "%d", strconv.Itoa(i), 1)))
		}
		if cfg.Post == "" {
			return nil, pkgErr("%s: no filename_post_axmodel", filepath.Join(dir, "config.json"))
		}
		p.Post = filepath.Join(dir, cfg.Post)
		if cfg.Embed == "" {
			cfg.Embed = filepath.Join(filepath.Dir(strings.Replace(cfg.Template, "%d", "0", 1)), EmbedFile)
		}
		p.Embed = filepath.Join(dir, cfg.Embed)
	} else if err := discover(p); err != nil {
		return nil, err
	}
	if cfg.Vision != "" {
		p.Vision = filepath.Join(dir, cfg.Vision)
		p.ImageTokenID, p.VisionInput = cfg.ImageTokenID, cfg.VisionInput
	} else if err := findVision(p, &cfg); err != nil {
		return nil, err
	}
	for _, f := range append(append([]string{p.Post, p.Embed}, p.Layers...), p.Vision) {
		if f == "" {
			continue
		}
		if st, err := os.Stat(f); err != nil || st.IsDir() {
			return nil, pkgErr("model file %s is missing", f)
		}
	}
	if p.Vocab > 0 && p.Hidden > 0 {
		st, _ := os.Stat(p.Embed)
		if want := int64(p.Vocab) * int64(p.Hidden) * 2; st.Size() != want {
			return nil, pkgErr("%s has %d bytes; tokens_embed_num %d × tokens_embed_size %d × 2 is %d",
				p.Embed, st.Size(), p.Vocab, p.Hidden, want)
		}
	}
	arch := ""
	if m := layerFile.FindStringSubmatch(filepath.Base(p.Layers[0])); m != nil {
		arch = m[1]
	}
	p.Tokenizer = tokenizerDir(dir, cfg.Tokenizer, arch)
	if cfg.Template != "" {
		if err := tokenizerNamed(dir, cfg.Tokenizer, p.Tokenizer); err != nil {
			return nil, err
		}
	}
	postPath := filepath.Join(dir, "post_config.json")
	if cfg.PostConfig != "" {
		postPath = filepath.Join(dir, cfg.PostConfig)
	}
	p.Defaults = Sampling{TopP: 1}
	if raw, err := readSmall(postPath); err == nil {
		var pc postConfig
		if err := json.Unmarshal(raw, &pc); err != nil {
			return nil, pkgErr("%s: %v", postPath, err)
		}
		p.Defaults = pc.sampling()
	} else if cfg.PostConfig != "" || !errors.Is(err, os.ErrNotExist) {
		return nil, pkgErr("post config %s: %v", postPath, err)
	}
	return p, nil
}

// readSmall reads a regular file of at most 1 MiB (the JSON files of a
// package are a few hundred bytes).
func readSmall(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() || st.Size() > 1<<20 {
		return nil, fmt.Errorf("%s is not a regular file of at most 1 MiB", path)
	}
	return os.ReadFile(path)
}

// sampling turns post_config.json into Sampling: a disabled setting is off.
func (pc postConfig) sampling() Sampling {
	s := Sampling{TopP: 1}
	if pc.EnableTemperature && pc.Temperature > 0 {
		s.Temperature = pc.Temperature
	}
	if pc.EnableRepetitionPenalty && pc.RepetitionPenalty > 0 {
		s.RepetitionPenalty = pc.RepetitionPenalty
		s.PenaltyWindow = pc.PenaltyWindow
	}
	if pc.EnableTopP && pc.TopP > 0 && pc.TopP <= 1 {
		s.TopP = pc.TopP
	}
	// The vendor runner makes top-k and top-p exclusive; top-p wins.
	if pc.EnableTopK && pc.TopK > 0 && !(pc.EnableTopP && s.TopP < 1) {
		s.TopK = pc.TopK
	}
	return s
}

// findVision finds a vendor-named vision encoder (*_vision_nhwc.axmodel)
// beside the layer files of a package whose config.json names none: the
// SmolVLM-256M package. Its placeholder is Hugging Face's image_token_id
// (else the tokenizer's <image>, looked up when the model loads), and its
// chat template is SmolVLM's (model_type idefics3).
func findVision(p *Package, cfg *packageConfig) error {
	entries, err := os.ReadDir(filepath.Dir(p.Layers[0]))
	if err != nil {
		return pkgErr("%v", err)
	}
	var found []string
	for _, e := range entries {
		if !e.IsDir() && visionFile.MatchString(e.Name()) {
			found = append(found, filepath.Join(filepath.Dir(p.Layers[0]), e.Name()))
		}
	}
	switch {
	case len(found) > 1:
		return pkgErr("%s holds several vision encoders (%s)", p.Dir, strings.Join(found, ", "))
	case len(found) == 0:
		return nil
	}
	p.Vision, p.VisionInput = found[0], "nhwc_uint8"
	p.ImageTokenID = cfg.HFImageTokenID
	arch := ""
	if m := layerFile.FindStringSubmatch(filepath.Base(p.Layers[0])); m != nil {
		arch = m[1]
	}
	// Qwen3-VL: Hugging Face's config.json says so (Qwen3-VL.AXERA's python demo), or the
	// layers' own name does — M5Stack's Qwen3-VL-2B-Instruct-axmodel for the LLM-8850 ships
	// no config.json, only qwen3_vl_text_* layers, a *_vision.axmodel, post_config.json and a
	// qwen3-vl-tokenizer folder (docs.m5stack.com m5_llm_8850_qwen3_vl_2b).
	if cfg.ModelType == Qwen3VLModelType || (cfg.ModelType == "" && strings.HasPrefix(arch, "qwen3_vl") && strings.HasSuffix(found[0], "_vision.axmodel")) {
		vc := cfg.VisionConfig
		if vc == (visionConfig{}) {
			// The vendor's runner is told patch 16 (run_*_axcl_*.sh --patch_size 16); the
			// processor's temporal patch and merge are 2 (python/infer_image.py).
			vc = visionConfig{Patch: 16, TemporalPatch: 2, Merge: 2}
		}
		if vc.Patch < 1 || vc.TemporalPatch < 1 || vc.Merge < 1 || vc.Patch > 1024 || vc.TemporalPatch > 16 || vc.Merge > 16 {
			return pkgErr("%s: vision_config patch_size %d, temporal_patch_size %d, spatial_merge_size %d: want positive patch sizes",
				filepath.Join(p.Dir, "config.json"), vc.Patch, vc.TemporalPatch, vc.Merge)
		}
		p.VisionInput, p.Patches = VisionPatches, &PatchLayout{Patch: vc.Patch, Temporal: vc.TemporalPatch, Merge: vc.Merge}
		if p.TokenizerType == "" {
			p.TokenizerType = "Qwen3-VL"
		}
		return nil
	}
	if !strings.HasSuffix(found[0], "_vision_nhwc.axmodel") {
		p.VisionInput = "" // an encoder kiln does not know how to feed: loadVision says so
	}
	if cfg.ImageTokenID > 0 {
		p.ImageTokenID = cfg.ImageTokenID
	}
	if p.TokenizerType == "" && (cfg.ModelType == "idefics3" || strings.HasPrefix(strings.ToLower(filepath.Base(found[0])), "smolvlm")) {
		p.TokenizerType = "SmolVLM"
	}
	return nil
}

// discover finds the model files of a package without a config.json.
func discover(p *Package) error {
	var found []string
	err := filepath.WalkDir(p.Dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && path != p.Dir && strings.Count(strings.TrimPrefix(path, p.Dir), string(filepath.Separator)) > 2 {
			return filepath.SkipDir
		}
		if !d.IsDir() && layerFile.MatchString(d.Name()) {
			if m := layerFile.FindStringSubmatch(d.Name()); m[3] == "0" {
				found = append(found, path)
			}
		}
		return nil
	})
	if err != nil {
		return pkgErr("%v", err)
	}
	if len(found) == 0 {
		return pkgErr("%s has neither a config.json naming its models nor a *_p128_l0_together.axmodel", p.Dir)
	}
	if len(found) > 1 {
		sort.Strings(found)
		return pkgErr("%s holds several layer-0 models (%s); add a config.json that names one", p.Dir, strings.Join(found, ", "))
	}
	m := layerFile.FindStringSubmatch(filepath.Base(found[0]))
	arch, chunk, mdir := m[1], m[2], filepath.Dir(found[0])
	for i := 0; i < maxLayers; i++ {
		f := filepath.Join(mdir, fmt.Sprintf("%s_p%s_l%d_together.axmodel", arch, chunk, i))
		if _, err := os.Stat(f); err != nil {
			break
		}
		p.Layers = append(p.Layers, f)
	}
	// The vendor names the Qwen3-VL text post model after its layers
	// (qwen3_vl_text_post.axmodel); others are <arch>_post.axmodel.
	p.Post = filepath.Join(mdir, arch+"_post.axmodel")
	p.Embed = filepath.Join(mdir, EmbedFile)
	return nil
}

// hasTokenizerJSON reports whether folder d holds tokenizer.json(.gz).
func hasTokenizerJSON(d string) bool {
	for _, f := range []string{"tokenizer.json", "tokenizer.json.gz"} {
		if _, err := os.Stat(filepath.Join(d, f)); err == nil {
			return true
		}
	}
	return false
}

// tokenizerDir finds the tokenizer folder: the one config.json names (when
// it is a tokenizer.json or a folder holding one), else <arch>_tokenizer
// (the Qwen3 packages also ship a qwen2.5_tokenizer for the chat template of
// their Python helper), else dir itself (tokenize.LoadDir then looks for
// tokenizer.json there or in its one *tokenizer subfolder).
func tokenizerDir(dir, named, arch string) string {
	has := hasTokenizerJSON
	if named != "" && !strings.Contains(named, "://") {
		p := filepath.Join(dir, named)
		if st, err := os.Stat(p); err == nil && st.IsDir() && has(p) {
			return p
		}
		if has(filepath.Dir(p)) && strings.HasPrefix(filepath.Base(p), "tokenizer.json") {
			return filepath.Dir(p)
		}
	}
	if arch != "" && has(filepath.Join(dir, arch+"_tokenizer")) {
		return filepath.Join(dir, arch+"_tokenizer")
	}
	return dir
}
