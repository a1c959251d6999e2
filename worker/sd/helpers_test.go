package sd

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/npu"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const clipDir = "../tokenize/testdata/clip"

// The simulated card, shared by the package's tests: one card per process,
// as in kiln (two devices on the same simulated card would reset each other).
var shared struct {
	once sync.Once
	dev  *npu.Device
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.dev != nil {
		if err := shared.dev.Close(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "close device:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// openDevice returns the simulated card.
func openDevice(t testing.TB) *npu.Device {
	t.Helper()
	lib := cardsim.Library(t)
	shared.once.Do(func() {
		shared.dev, shared.err = npu.Open(context.Background(), npu.Config{Library: lib, Logger: quiet, SampleInterval: -1})
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.dev
}

// writePackage writes a simulated SD package and returns its folder.
func writePackage(t testing.TB, spec cardsim.SDSpec) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), spec.Name)
	spec.TokenizerDir = clipDir
	if err := cardsim.WriteSDPackage(dir, spec); err != nil {
		t.Fatal(err)
	}
	return dir
}

// openPipeline opens spec's package on a fresh simulated card.
func openPipeline(t testing.TB, spec cardsim.SDSpec) *Pipeline {
	t.Helper()
	dev := openDevice(t)
	p, err := Open(context.Background(), dev, writePackage(t, spec), Config{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(context.Background()); err != nil {
			t.Errorf("close pipeline: %v", err)
		}
	})
	return p
}

// decodePNG decodes a PNG and fails the test if it is not one of w×h.
func decodePNG(t testing.TB, b []byte, w, h int) image.Image {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("result is not a PNG: %v", err)
	}
	if got := img.Bounds(); got.Dx() != w || got.Dy() != h {
		t.Fatalf("PNG is %dx%d, want %dx%d", got.Dx(), got.Dy(), w, h)
	}
	return img
}

// testImage is a w×h PNG with a colour gradient.
func testImage(t testing.TB, w, h int) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.NRGBA{uint8(255 * x / w), uint8(255 * y / h), uint8((x * y) % 256), 255})
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
