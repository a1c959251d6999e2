package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

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
	addr := freeAddr(t)
	url := "nats://" + addr
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Add(1)
	upCode := -1
	var upErr string
	go func() {
		defer wg.Done()
		upCode, _, upErr = kiln(t, ctx, "up", "--listen", addr, "--data", t.TempDir(), "--models", models, "--lib", lib,
			"--name", "shelf-card0", "--grace", "1s")
	}()
	defer func() {
		cancel()
		wg.Wait()
		if upCode != 0 {
			t.Errorf("kiln up exited %d: %s", upCode, upErr)
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, out, _ := kiln(t, t.Context(), "status", "--json", "--nats", url)
		var status struct {
			Workers []struct {
				State  string
				Models []struct{ Name, Kind string }
			}
		}
		if code == 0 && json.Unmarshal([]byte(out), &status) == nil && len(status.Workers) == 1 &&
			status.Workers[0].State == "ready" && len(status.Workers[0].Models) == 1 {
			if m := status.Workers[0].Models[0]; m.Name != "sd15-lcm" || m.Kind != "image" {
				t.Fatalf("served model %+v", m)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the worker never served sd15-lcm: %q", out)
		}
		time.Sleep(100 * time.Millisecond)
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
