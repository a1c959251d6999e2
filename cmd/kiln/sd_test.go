package main

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
)

// kiln up on the simulated card serves the SD package under --models, and
// kiln image writes its PNG: the same seed the same bytes, img2img from the
// first one, a bad step count refused with the limit.
func TestUpServesImages(t *testing.T) {
	lib := cardsim.Library(t)
	models := t.TempDir()
	spec := cardsim.SD15LCM()
	spec.TokenizerDir = "../../worker/tokenize/testdata/clip"
	if err := cardsim.WriteSDPackage(filepath.Join(models, "sd15-lcm"), spec); err != nil {
		t.Fatal(err)
	}
	url := startUp(t, "--models", models, "--lib", lib, "--name", "shelf-card0").url
	st := waitStatus(t, url, oneReadyWorker(1))
	if m := st.Workers[0].Models[0]; m.Name != "sd15-lcm" || m.Kind != "image" {
		t.Fatalf("served model %+v", m)
	}

	dir := t.TempDir()
	image := func(args ...string) []byte {
		t.Helper()
		out := filepath.Join(dir, "out.png")
		code, stdout, stderr := kiln(t, t.Context(), append([]string{"image", "--nats", url}, append(args, "-o", out)...)...)
		if code != 0 || !strings.Contains(stdout, "wrote "+out) {
			t.Fatalf("kiln image %v: %d %q %q", args, code, stdout, stderr)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(bytes.NewReader(b))
		if err != nil || img.Bounds().Dx() != 512 || img.Bounds().Dy() != 512 {
			t.Fatalf("kiln image %v wrote no 512×512 PNG (%v)", args, err)
		}
		return b
	}
	a := image("a red fox", "--seed", "7")
	if b := image("--seed", "7", "a red fox"); !bytes.Equal(a, b) {
		t.Fatal("the same seed gave other bytes")
	}
	if b := image("--seed", "8", "a red fox"); bytes.Equal(a, b) {
		t.Fatal("another seed gave the same bytes")
	}
	init := filepath.Join(dir, "init.png")
	if err := os.WriteFile(init, a, 0o644); err != nil {
		t.Fatal(err)
	}
	if b := image("--init", init, "--seed", "7", "an oil painting"); bytes.Equal(a, b) {
		t.Fatal("img2img gave its init image back")
	}
	code, _, stderr := kiln(t, t.Context(), "image", "--nats", url, "--steps", "3", "a red fox", "-o", filepath.Join(dir, "x.png"))
	if code != 1 || !strings.Contains(stderr, "out_of_range") || !strings.Contains(stderr, "use 1, 2 or 4") {
		t.Fatalf("steps 3: %d %q", code, stderr)
	}
}
