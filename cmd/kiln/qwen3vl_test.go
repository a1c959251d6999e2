package main

import (
	"bytes"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/tokenize"
)

// kiln up finds a package laid out as Qwen3-VL.AXERA builds Qwen3-VL-2B by its own files,
// and kiln chat --image on it answers what the cacheless reference answers for Qwen3-VL's
// prompt with that image (its rows, grid positions and deepstack features).
func TestChatQwen3VLAsPublished(t *testing.T) {
	lib := cardsim.Library(t)
	models := t.TempDir()
	pkg := filepath.Join(models, "qwen3-vl-2b")
	if err := cardsim.WriteLLMPackage(pkg, cardsim.TinyQwen3VLVendor()); err != nil {
		t.Fatal(err)
	}
	ref, err := cardsim.LoadReference(pkg)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenize.LoadDir(pkg)
	if err != nil {
		t.Fatal(err)
	}
	img := image.NewRGBA(image.Rect(0, 0, 384, 384))
	px := make([]byte, 0, 384*384*3)
	for y := range 384 {
		for x := range 384 {
			c := [3]byte{byte(x / 2), byte(255 - y/2), byte(x * y / 600)}
			img.SetRGBA(x, y, color.RGBA{c[0], c[1], c[2], 255})
			px = append(px, c[:]...)
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "glaze.png")
	if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	url := startUp(t, "--models", models, "--lib", lib, "--name", "shelf-card0").url
	waitStatus(t, url, oneReadyWorker(1))
	code, out, stderr := kiln(t, t.Context(), "chat", "--nats", url, "--model", "qwen3-vl-2b", "--json", "--max-tokens", "6",
		"--image", file, "what glaze is this?")
	var res schema.Result
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || res.Status != schema.StatusOK {
		t.Fatalf("kiln chat --image: %d %q %q", code, out, stderr)
	}
	prompt := tok.Encode("<|im_start|>user\n<|vision_start|>" + strings.Repeat("<|image_pad|>", 144) +
		"<|vision_end|>what glaze is this?<|im_end|>\n<|im_start|>assistant\n")
	ids, err := ref.GreedyQwen3VL(prompt, [][]byte{px}, 6, cardsim.Qwen3VLOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(ids, func(id int) bool { return slices.Contains(tok.StopIDs(), id) }); i >= 0 {
		ids = ids[:i]
	}
	if want := tok.Decode(ids); res.Text != want || res.Usage.PromptTokens != len(prompt) {
		t.Fatalf("reply %q (%d prompt tokens), reference %q (%d)", res.Text, res.Usage.PromptTokens, want, len(prompt))
	}
}
