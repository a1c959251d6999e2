package main

import (
	"bytes"
	"encoding/json"
	"image"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/cardsim"
)

// kiln up on the simulated card serves the chat package under --models (an
// SD-less folder beside a broken package that no runtime claims), and kiln
// chat streams its reply: greedy by default, so the same prompt gives the
// same text, streamed and as JSON.
func TestUpServesChat(t *testing.T) {
	lib := cardsim.Library(t)
	models := chatPackage(t)
	if err := os.MkdirAll(filepath.Join(models, "notes"), 0o755); err != nil {
		t.Fatal(err)
	}
	url := startUp(t, "--models", models, "--lib", lib, "--name", "shelf-card0").url
	st := waitStatus(t, url, oneReadyWorker(1))
	if m := st.Workers[0].Models[0]; m.Name != "qwen3-tiny" || m.Kind != "chat" {
		t.Fatalf("served model %+v", m)
	}

	code, streamed, stderr := kiln(t, t.Context(), "chat", "--nats", url, "--max-tokens", "10", "hi")
	if code != 0 || strings.TrimSpace(streamed) == "" {
		t.Fatalf("kiln chat: %d %q %q", code, streamed, stderr)
	}
	code, out, stderr := kiln(t, t.Context(), "chat", "--nats", url, "--json", "--max-tokens", "10", "hi")
	var res schema.Result
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil {
		t.Fatalf("kiln chat --json: %d %q %q", code, out, stderr)
	}
	if res.Status != schema.StatusOK || res.Text+"\n" != streamed || res.Usage.PromptTokens == 0 || res.Usage.CompletionTokens == 0 {
		t.Fatalf("result %+v, streamed %q", res, streamed)
	}
	if res.FinishReason != schema.FinishLength && res.FinishReason != schema.FinishStop {
		t.Fatalf("finish reason %q", res.FinishReason)
	}
}

// One broken package never takes the card down: in a models folder with a
// chat package missing a layer file beside a good chat and a good image
// package, kiln up serves the two good ones (a chat and an image job
// succeed), and kiln status names the broken one as failed with the file.
func TestUpServesBesideABrokenPackage(t *testing.T) {
	lib := cardsim.Library(t)
	models := t.TempDir()
	spec := cardsim.TinyQwen3()
	spec.Layers, spec.TokenizerDir = 2, "../../worker/tokenize/testdata/qwen3"
	for _, name := range []string{"qwen3-tiny", "qwen3-broken"} {
		if err := cardsim.WriteLLMPackage(filepath.Join(models, name), spec); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(filepath.Join(models, "qwen3-broken", spec.ModelDir, spec.LayerFile(1))); err != nil {
		t.Fatal(err)
	}
	sdSpec := cardsim.SD15LCM()
	sdSpec.TokenizerDir = "../../worker/tokenize/testdata/clip"
	if err := cardsim.WriteSDPackage(filepath.Join(models, "sd15-lcm"), sdSpec); err != nil {
		t.Fatal(err)
	}
	url := startUp(t, "--models", models, "--lib", lib, "--name", "shelf-card0").url
	st := waitStatus(t, url, func(st *fleetStatus) bool {
		if !oneReadyWorker(3)(st) {
			return false
		}
		for _, m := range st.Workers[0].Models {
			if m.State == "" || m.State == schema.ModelLoading {
				return false
			}
		}
		return true
	})
	for _, m := range st.Workers[0].Models {
		wantState := schema.ModelReady
		if m.Name == "qwen3-broken" {
			wantState = schema.ModelFailed
			if !strings.Contains(m.Error, "qwen3_p128_l1_together.axmodel is missing") {
				t.Errorf("failed model's error %q does not name the missing file", m.Error)
			}
		}
		if m.State != wantState {
			t.Errorf("model %s: state %q, want %q", m.Name, m.State, wantState)
		}
	}

	code, out, stderr := kiln(t, t.Context(), "chat", "--nats", url, "--model", "qwen3-tiny", "--max-tokens", "5", "hi")
	if code != 0 || strings.TrimSpace(out) == "" {
		t.Fatalf("kiln chat on the good chat package: %d %q %q", code, out, stderr)
	}
	// No live worker serves the broken package: the job is refused, not taken.
	code, out, stderr = kiln(t, t.Context(), "chat", "--nats", url, "--model", "qwen3-broken", "--max-tokens", "5", "hi")
	if code == 0 || !strings.Contains(stderr, "no_worker") && !strings.Contains(stderr, "no live worker") {
		t.Fatalf("kiln chat on the broken package: %d %q %q", code, out, stderr)
	}
	png := filepath.Join(t.TempDir(), "out.png")
	code, out, stderr = kiln(t, t.Context(), "image", "--nats", url, "--steps", "1", "a red fox", "-o", png)
	if code != 0 || !strings.Contains(out, "wrote "+png) {
		t.Fatalf("kiln image on the good image package: %d %q %q", code, out, stderr)
	}
	code, out, stderr = kiln(t, t.Context(), "status", "--nats", url)
	if code != 0 || !strings.Contains(out, "chat/qwen3-broken (failed)") ||
		!regexp.MustCompile(`shelf-card0 +chat/qwen3-broken +.*qwen3_p128_l1_together\.axmodel is missing`).MatchString(out) {
		t.Fatalf("kiln status does not name the broken package and why: %d %q %q", code, out, stderr)
	}
}

// kiln chat --image attaches PNG and JPEG files to the prompt: on the
// simulated vision package each image adds its placeholder rows to the
// prompt (144 on qwen3-vl-tiny), and a file that is neither is refused
// before anything is sent.
func TestChatSendsImages(t *testing.T) {
	lib := cardsim.Library(t)
	models := t.TempDir()
	spec := cardsim.TinyQwen3VL()
	spec.Layers = 2
	spec.TokenizerDir = "../../worker/tokenize/testdata/qwen3"
	if err := cardsim.WriteLLMPackage(filepath.Join(models, "qwen3-vl-tiny"), spec); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	img := image.NewRGBA(image.Rect(0, 0, 40, 30))
	for i := range img.Pix {
		img.Pix[i] = byte(i * 7)
	}
	var pngBytes, jpegBytes bytes.Buffer
	if err := png.Encode(&pngBytes, img); err != nil {
		t.Fatal(err)
	}
	if err := jpeg.Encode(&jpegBytes, img, nil); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"a.png": pngBytes.Bytes(), "b.jpg": jpegBytes.Bytes(), "notes.txt": []byte("not a picture")}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	url := startUp(t, "--models", models, "--lib", lib, "--name", "shelf-card0").url
	waitStatus(t, url, oneReadyWorker(1))

	chat := func(args ...string) schema.Result {
		t.Helper()
		args = append([]string{"chat", "--nats", url, "--json", "--max-tokens", "4"}, args...)
		code, out, stderr := kiln(t, t.Context(), args...)
		var res schema.Result
		if code != 0 || json.Unmarshal([]byte(out), &res) != nil || res.Status != schema.StatusOK {
			t.Fatalf("kiln %v: %d %q %q", args, code, out, stderr)
		}
		return res
	}
	text := chat("describe it")
	one := chat("--image", filepath.Join(dir, "a.png"), "describe it")
	two := chat("--image", filepath.Join(dir, "a.png"), "--image", filepath.Join(dir, "b.jpg"), "describe it")
	rows := spec.Vision.Grid * spec.Vision.Grid
	if one.Usage.PromptTokens < text.Usage.PromptTokens+rows || two.Usage.PromptTokens < one.Usage.PromptTokens+rows {
		t.Fatalf("prompt tokens: text %d, one image %d, two images %d; want each image to add at least %d",
			text.Usage.PromptTokens, one.Usage.PromptTokens, two.Usage.PromptTokens, rows)
	}

	code, _, stderr := kiln(t, t.Context(), "chat", "--nats", url, "--image", filepath.Join(dir, "notes.txt"), "describe it")
	if code == 0 || !strings.Contains(stderr, "notes.txt: not a PNG or JPEG file") {
		t.Fatalf("a text file as --image: %d %q", code, stderr)
	}
}
