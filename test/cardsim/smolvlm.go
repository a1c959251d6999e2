package cardsim

import (
	"fmt"
	"path/filepath"
)

// SmolVLM special tokens at the ids of the vendor's tokenizer (ax-llm
// scripts/smolvlm_tokenizer/added_tokens.json; <|endoftext|>, <|im_start|> and
// <|im_end|> are SmolLM's ids 0, 1 and 2).
var smolVLMSpecials = map[int]string{
	0: "<|endoftext|>", 1: "<|im_start|>", 2: "<|im_end|>",
	49152: "<global-img>", 49189: "<fake_token_around_image>", 49190: "<image>", 49279: "<end_of_utterance>",
}

// writeSmolVLMFiles writes what LayoutSmolVLM adds to the model files: config.json as Hugging
// Face ships it for Idefics3 (only the keys a runner reads) and the tokenizer files.
func writeSmolVLMFiles(dir string, s *LLMSpec) error {
	if s.Vision == nil || s.Vocab <= 49279 {
		return fmt.Errorf("cardsim: a SmolVLM-layout package needs Vision and a vocabulary of at least 49280 tokens")
	}
	heads := 9
	cfg := map[string]any{
		"architectures":  []string{"Idefics3ForConditionalGeneration"},
		"model_type":     "idefics3",
		"image_token_id": s.Vision.ImageTokenID,
		"scale_factor":   4,
		"text_config": map[string]any{
			"model_type": "llama", "hidden_size": s.Hidden, "num_hidden_layers": s.Layers,
			"num_attention_heads": heads, "num_key_value_heads": heads * s.KVDim / s.Hidden,
			"vocab_size": s.Vocab, "bos_token_id": 1, "eos_token_id": 2,
		},
		"vision_config": map[string]any{"image_size": s.Vision.Width, "patch_size": 16},
	}
	if err := writeJSON(filepath.Join(dir, "config.json"), cfg); err != nil {
		return err
	}
	return writeByteLevelTokenizer(dir, s.Vocab, smolVLMSpecials,
		map[string]any{"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>"})
}

// writeByteLevelTokenizer writes tokenizer.json and tokenizer_config.json: a byte-level BPE
// without merges (one token per byte) of vocab ids, the specials at their ids (in the
// vocabulary and as added tokens, as Hugging Face writes them) and filler tokens elsewhere.
func writeByteLevelTokenizer(dir string, vocab int, specials map[int]string, config map[string]any) error {
	byteRunes := gpt2ByteRunes()
	v := make(map[string]int, vocab)
	next := 0
	free := func() int {
		for specials[next] != "" {
			next++
		}
		next++
		return next - 1
	}
	for _, r := range byteRunes {
		v[string(r)] = free()
	}
	for id, tok := range specials {
		v[tok] = id
	}
	for len(v) < vocab {
		v[fmt.Sprintf("sim%d", len(v))] = free()
	}
	var added []map[string]any
	for id := 0; id < vocab; id++ {
		if tok := specials[id]; tok != "" {
			added = append(added, map[string]any{"id": id, "content": tok, "single_word": false, "lstrip": false,
				"rstrip": false, "normalized": false, "special": true})
		}
	}
	tj := map[string]any{
		"version":        "1.0",
		"added_tokens":   added,
		"normalizer":     nil,
		"pre_tokenizer":  map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
		"post_processor": nil,
		"decoder":        map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
		"model": map[string]any{"type": "BPE", "dropout": nil, "unk_token": nil, "continuing_subword_prefix": nil,
			"end_of_word_suffix": nil, "fuse_unk": false, "byte_fallback": false, "vocab": v, "merges": []string{}},
	}
	if err := writeJSON(filepath.Join(dir, "tokenizer.json"), tj); err != nil {
		return err
	}
	return writeJSON(filepath.Join(dir, "tokenizer_config.json"), config)
}

// gpt2ByteRunes is GPT-2's bytes_to_unicode table, byte by byte.
func gpt2ByteRunes() [256]rune {
	var out [256]rune
	n := 0
	for b := 0; b < 256; b++ {
		if (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff) {
			out[b] = rune(b)
			continue
		}
		out[b] = rune(256 + n)
		n++
	}
	return out
}
