package llm

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
)

// TestReadSmolVLMPackage: a folder laid out as SmolVLM-256M-Instruct.axera
// publishes it is read from its own files: the llama layers (prefill chunk
// 320), llama_post, the *_vision_nhwc encoder, Hugging Face's image_token_id
// and the SmolVLM chat template; without image_token_id the tokenizer's
// <image> is the placeholder; two encoders are refused by name.
func TestReadSmolVLMPackage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "SmolVLM-256M-Instruct-AX650")
	if err := cardsim.WriteLLMPackage(dir, cardsim.TinySmolVLM()); err != nil {
		t.Fatal(err)
	}
	if !Detect(dir) {
		t.Fatal("Detect: not an LLM package")
	}
	p, err := ReadPackage(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Layers) != 2 || filepath.Base(p.Layers[1]) != "llama_p320_l1_together.axmodel" || filepath.Base(p.Post) != "llama_post.axmodel" ||
		filepath.Base(p.Vision) != "SmolVLM-256M-Instruct_vision_nhwc.axmodel" || p.VisionInput != "nhwc_uint8" ||
		p.ImageTokenID != 49190 || p.TokenizerType != "SmolVLM" || p.Tokenizer != dir {
		t.Fatalf("package %+v", p)
	}

	// config.json without image_token_id: the model takes <image>'s id from the tokenizer.
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"model_type":"idefics3"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := Load(context.Background(), openDevice(t), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(context.Background()) })
	if v, ok := m.Vision(); !ok || v.ImageTokenID != 49190 || v.Tokens != 64 || v.Width != 512 {
		t.Fatalf("vision %+v (%v)", v, ok)
	}

	raw, _ := json.Marshal(map[string]any{"model_type": "idefics3", "image_token_id": 49190})
	if err := os.WriteFile(filepath.Join(dir, "config.json"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "Other_vision_nhwc.axmodel"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadPackage(dir); err == nil || !strings.Contains(err.Error(), "several vision encoders") {
		t.Fatalf("two encoders: %v", err)
	}
}
