package llm

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"sort"
	"strings"
)

// The config.json of the 2026 axllm binary: every key it reads
// (AXERA-TECH/ax-llm docs/configuration.md; src/runner/LLM.hpp LLMAttrType)
// and what kiln does with it. A key kiln does not know, or a value that
// asks for something kiln does not compute the way the vendor does
// (hybrid attention, per-layer embeddings, an embedding-only or an
// image-generation runner), refuses the package naming the key: serving
// it anyway would give other answers than the vendor's runner.

// keyUse is what kiln does with one config.json key.
type keyUse int

const (
	keyUsed    keyUse = iota // read (packageConfig)
	keyIgnored               // how the vendor's binary loads or serves; no effect on kiln's answers
	keyOff                   // a feature kiln does not run: must be absent or its zero/off value
)

// axllmKeys are the keys of the 2026 config.json, and kiln's own keys
// (vision_image_token_id, vision_input, vision_tokens: docs/llm.md).
var axllmKeys = map[string]keyUse{
	// required by axllm
	"model_name": keyUsed, "tokenizer_type": keyUsed, "url_tokenizer_model": keyUsed,
	"template_filename_axmodel": keyUsed, "axmodel_num": keyUsed, "filename_post_axmodel": keyUsed,
	"filename_tokens_embed": keyUsed, "tokens_embed_num": keyUsed, "tokens_embed_size": keyUsed,
	// general: kiln's jobs carry their own messages and thinking switch, the
	// tokenizer's template decides BOS/EOS
	"post_config_path": keyUsed, "system_prompt": keyIgnored, "bos": keyIgnored, "eos": keyIgnored,
	"pad_token_id": keyIgnored, "thinking_mode": keyIgnored, "enable_thinking": keyIgnored,
	// loading and memory: kiln maps the embedding table, loads every layer
	// and checks its own CMM budget
	"use_mmap_load_embed": keyIgnored, "b_use_mmap_load_embed": keyIgnored, "use_mmap_load_layer": keyIgnored,
	"b_use_mmap_load_layer": keyIgnored, "dynamic_load_enable": keyIgnored, "dynamic_load_pool_size": keyIgnored,
	"mem_guard_enable": keyIgnored, "mem_guard_floor_mb": keyIgnored, "mem_guard_on_unsafe": keyIgnored,
	// attention variants (Qwen3.5, Gemma): not run by kiln
	"full_attention_interval": keyOff, "layer_types": keyOff, "sliding_window": keyOff, "num_kv_shared_layers": keyOff,
	// multi-slot prefix KV cache: kiln has its own prefix cache
	"kv_cache_slots": keyIgnored, "kv_cache_slot_location": keyIgnored,
	// VLM
	"vlm_type": keyUsed, "VLM_TYPE": keyUsed, "filename_image_encoder_axmodel": keyUsed,
	"vision_width": keyIgnored, "vision_height": keyIgnored, // kiln reads the encoder's input shape
	"vision_patch_size": keyIgnored, "vision_temporal_patch_size": keyIgnored, "vision_spatial_merge_size": keyIgnored,
	"vision_cache_dir": keyIgnored, "vision_fps": keyIgnored, "vision_tokens_per_second": keyIgnored,
	"vision_num_frames": keyIgnored, "vision_do_sample_frames": keyIgnored, "video_processor": keyIgnored,
	"filename_audio_encoder_axmodel_5s": keyOff, "filename_audio_encoder_axmodel_30s": keyOff,
	// embedding mode, Gemma4 per-layer projections, image generation
	"is_embedding": keyOff, "embedding": keyOff, "embedding_type": keyOff,
	"hidden_size_per_layer_input": keyOff, "rms_norm_eps": keyIgnored, "filename_tokens_embed_per_layer": keyOff,
	"filename_per_layer_model_projection": keyOff, "filename_per_layer_projection_norm": keyOff,
	"task_type": keyOff, "is_image_generation": keyOff, "image_model_dir": keyOff,
	// serve and AXCL devices: kiln's worker serves and picks the card
	"port": keyIgnored, "server_timeout_ms": keyIgnored, "server_default_max_tokens": keyIgnored,
	"server_max_output_tokens": keyIgnored, "server_forced_prompt_text": keyOff, "devices": keyIgnored,
	// kiln's own (docs/llm.md)
	"vision_image_token_id": keyUsed, "vision_input": keyUsed, "vision_tokens": keyIgnored,
	// Hugging Face's model_type, which the SmolVLM package's config.json
	// carries; in an axllm config only model_type "image_generation" means
	// something, and kiln refuses it below.
	"model_type": keyUsed,
}

// vlmTypes are the vlm_type values kiln serves: none, the simulator's
// "classic" encoder, and Qwen3-VL (whose layers kiln checks for mRoPE).
var vlmTypes = map[string]bool{"": true, "None": true, "kilnsim": true, "Qwen3VL": true}

// checkAxllmConfig checks every key of an axllm config.json (raw) against
// axllmKeys and the values kiln serves.
func checkAxllmConfig(path string, raw []byte, cfg *packageConfig) error {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(raw, &keys); err != nil {
		return pkgErr("%s: %v", path, err)
	}
	names := make([]string, 0, len(keys))
	for k := range keys {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		use, ok := axllmKeys[k]
		switch {
		case !ok:
			return pkgErr("%s: key %q is neither in the 2026 axllm format (ax-llm docs/configuration.md) nor one of kiln's (docs/llm.md)", path, k)
		case use == keyOff && !zeroJSON(keys[k]):
			return pkgErr("%s: key %q is %s: kiln does not run %s", path, k, short(keys[k]), offWhat(k))
		}
	}
	if cfg.ModelType == "image_generation" {
		return pkgErr("%s: key \"model_type\" is \"image_generation\": an axllm image runner; kiln serves SD packages by their own files (docs/sd.md)", path)
	}
	vlm := cfg.VLMType
	if vlm == "" {
		vlm = cfg.VLMTypeAlias
	}
	if !vlmTypes[vlm] {
		return pkgErr("%s: key \"vlm_type\" is %q: kiln serves %s", path, vlm, "None, Qwen3VL (docs/llm.md) and the simulator's kilnsim")
	}
	if t := strings.ToLower(cfg.TokenizerType); t != "" && !strings.HasPrefix(t, "qwen") && !strings.HasPrefix(t, "smol") {
		return pkgErr("%s: key \"tokenizer_type\" is %q: kiln has the chat templates of Qwen3, Qwen2.5 and SmolLM2/SmolVLM", path, cfg.TokenizerType)
	}
	if strings.Contains(cfg.Tokenizer, "://") {
		return pkgErr("%s: key \"url_tokenizer_model\" is %q: kiln reads a local tokenizer.json (the 2026 axllm binary dropped HTTP tokenizers too)", path, cfg.Tokenizer)
	}
	return nil
}

// zeroJSON reports whether v is null, false, 0, "", [] or {}.
func zeroJSON(v json.RawMessage) bool {
	switch s := string(bytes.TrimSpace(v)); s {
	case "null", "false", "0", `""`, "[]", "{}", "0.0":
		return true
	}
	var list []string
	if json.Unmarshal(v, &list) == nil { // layer_types: all full attention is plain attention
		for _, t := range list {
			if t != "full_attention" {
				return false
			}
		}
		return true
	}
	return false
}

func short(v json.RawMessage) string {
	s := string(bytes.TrimSpace(v))
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return s
}

// offWhat says what the keyOff key k asks for.
func offWhat(k string) string {
	switch {
	case k == "full_attention_interval" || k == "layer_types" || k == "sliding_window" || k == "num_kv_shared_layers":
		return "hybrid, sliding-window or shared-KV attention (Qwen3.5, Gemma)"
	case strings.Contains(k, "per_layer"):
		return "Gemma4 per-layer embeddings"
	case strings.HasPrefix(k, "filename_audio"):
		return "audio encoders"
	case strings.Contains(k, "embedding"):
		return "embedding-only models"
	case k == "server_forced_prompt_text":
		return "forced prompt text (its chat jobs carry their own messages)"
	}
	return "image generation from an axllm config (SD packages are served by their own files, docs/sd.md)"
}

// tokenizerNamed checks that url_tokenizer_model, when config.json gives
// one, led tokenizerDir to a Hugging Face tokenizer.json.
func tokenizerNamed(dir, named, found string) error {
	if named == "" || hasTokenizerJSON(found) {
		return nil
	}
	return pkgErr("%s: key \"url_tokenizer_model\" is %q and no tokenizer.json is found there, in <arch>_tokenizer/ or in the package folder: kiln reads Hugging Face tokenizer.json files",
		filepath.Join(dir, "config.json"), named)
}
