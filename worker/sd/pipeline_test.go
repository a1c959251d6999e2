package sd

import (
	"bytes"
	"context"
	"errors"
	"image"
	"slices"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/tokenize"
)

// reference is the simulator's Go pipeline (cardsim.SDSpec.Image) with the
// prompt's CLIP ids and this package's noise and scheduler table.
func reference(t *testing.T, spec cardsim.SDSpec, prompt string, seed uint64, steps []int, init []float32) []uint8 {
	t.Helper()
	tok, err := tokenize.LoadCLIP(clipDir)
	if err != nil {
		t.Fatal(err)
	}
	ids := tok.Encode77(prompt)
	px, err := spec.Image(ids[:], steps, AlphasCumprod()[:], Noise(seed), init)
	if err != nil {
		t.Fatal(err)
	}
	return px
}

// planarRGB returns the pixels of img as planar RGB.
func planarRGB(img image.Image) []uint8 {
	b := img.Bounds()
	n := b.Dx() * b.Dy()
	out := make([]uint8, 3*n)
	for y := 0; y < b.Dy(); y++ {
		for x := 0; x < b.Dx(); x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			o := y*b.Dx() + x
			out[o], out[n+o], out[2*n+o] = uint8(r>>8), uint8(g>>8), uint8(bl>>8)
		}
	}
	return out
}

func TestTxt2Img(t *testing.T) {
	t.Parallel()
	spec := cardsim.SD15LCM()
	p := openPipeline(t, spec)
	ctx := t.Context()
	var steps []int
	req := &Request{Prompt: "a red fox in the snow", Seed: 1}
	res, err := p.Generate(ctx, req, func(step, n int) error {
		if n != 4 {
			t.Errorf("progress says %d steps", n)
		}
		steps = append(steps, step)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(steps, []int{1, 2, 3, 4}) || !slices.Equal(res.Timesteps, []int{999, 759, 499, 259}) {
		t.Fatalf("progress %v, timesteps %v", steps, res.Timesteps)
	}
	if res.Tokens != 8 { // <start> a red fox in the snow <end>
		t.Errorf("tokens = %d", res.Tokens)
	}
	img := decodePNG(t, res.PNG, 512, 512)
	if got, want := planarRGB(img), reference(t, spec, req.Prompt, 1, res.Timesteps, nil); !bytes.Equal(got, want) {
		t.Fatal("the image differs from the Go reference pipeline")
	}
	if res.Timings.Total <= 0 || res.Timings.Device <= 0 || res.Timings.Device > res.Timings.Total {
		t.Errorf("timings %+v", res.Timings)
	}

	again, err := p.Generate(ctx, req, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.PNG, res.PNG) {
		t.Fatal("the same request gave other bytes")
	}
	other, err := p.Generate(ctx, &Request{Prompt: req.Prompt, Seed: 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(other.PNG, res.PNG) {
		t.Fatal("another seed gave the same image")
	}
	prompt, err := p.Generate(ctx, &Request{Prompt: "a blue whale", Seed: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(prompt.PNG, res.PNG) {
		t.Fatal("another prompt gave the same image")
	}
	// Two steps: t = 999, 499.
	two, err := p.Generate(ctx, &Request{Prompt: req.Prompt, Seed: 1, Steps: 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(two.Timesteps, []int{999, 499}) {
		t.Fatalf("2 steps ran %v", two.Timesteps)
	}
	if got, want := planarRGB(decodePNG(t, two.PNG, 512, 512)), reference(t, spec, req.Prompt, 1, two.Timesteps, nil); !bytes.Equal(got, want) {
		t.Fatal("the 2-step image differs from the Go reference pipeline")
	}
}

func TestImg2Img(t *testing.T) {
	t.Parallel()
	spec := cardsim.SD15LCM()
	spec.Width, spec.Height = 128, 96 // a small non-square package keeps the test fast
	p := openPipeline(t, spec)
	ctx := t.Context()
	initPNG := testImage(t, 300, 200)
	var steps []int
	req := &Request{Prompt: "an oil painting", Seed: 5, InitImage: initPNG}
	res, err := p.Generate(ctx, req, func(step, n int) error {
		if n != 2 {
			t.Errorf("progress says %d steps", n)
		}
		steps = append(steps, step)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(steps, []int{1, 2}) || !slices.Equal(res.Timesteps, []int{499, 259}) {
		t.Fatalf("progress %v, timesteps %v", steps, res.Timesteps)
	}
	img := decodePNG(t, res.PNG, 128, 96)
	init := make([]float32, 3*128*96)
	if err := decodeInit(initPNG, 128, 96, ImageLimits{}, init); err != nil {
		t.Fatal(err)
	}
	if got, want := planarRGB(img), reference(t, spec, req.Prompt, 5, res.Timesteps, init); !bytes.Equal(got, want) {
		t.Fatal("the img2img image differs from the Go reference pipeline")
	}
	again, err := p.Generate(ctx, req, nil)
	if err != nil || !bytes.Equal(again.PNG, res.PNG) {
		t.Fatalf("the same img2img request gave other bytes (%v)", err)
	}
	// Another init image changes the result; strength 1 runs all 4 steps.
	other, err := p.Generate(ctx, &Request{Prompt: req.Prompt, Seed: 5, InitImage: testImage(t, 64, 64)}, nil)
	if err != nil || bytes.Equal(other.PNG, res.PNG) {
		t.Fatalf("another init image gave the same image (%v)", err)
	}
	full, err := p.Generate(ctx, &Request{Prompt: req.Prompt, Seed: 5, InitImage: initPNG, Strength: 1}, nil)
	if err != nil || !slices.Equal(full.Timesteps, Timesteps[:]) {
		t.Fatalf("strength 1: %v %v", full.Timesteps, err)
	}
	quarter, err := p.Generate(ctx, &Request{Prompt: req.Prompt, Seed: 5, InitImage: initPNG, Strength: 0.25}, nil)
	if err != nil || !slices.Equal(quarter.Timesteps, []int{259}) {
		t.Fatalf("strength 0.25: %v %v", quarter.Timesteps, err)
	}
}

func TestCancelBetweenSteps(t *testing.T) {
	t.Parallel()
	spec := cardsim.SD15LCM()
	spec.Width, spec.Height = 64, 64
	p := openPipeline(t, spec)
	ctx, cancel := context.WithCancel(t.Context())
	var steps []int
	_, err := p.Generate(ctx, &Request{Prompt: "x", Seed: 1}, func(step, _ int) error {
		steps = append(steps, step)
		if step == 2 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) || !slices.Equal(steps, []int{1, 2}) {
		t.Fatalf("err %v after steps %v", err, steps)
	}
	stop := errors.New("stop")
	steps = nil
	_, err = p.Generate(t.Context(), &Request{Prompt: "x", Seed: 1}, func(step, _ int) error {
		steps = append(steps, step)
		return stop
	})
	if !errors.Is(err, stop) || !slices.Equal(steps, []int{1}) {
		t.Fatalf("err %v after steps %v", err, steps)
	}
	// The pipeline is fine afterwards.
	if _, err := p.Generate(t.Context(), &Request{Prompt: "x", Seed: 1}, nil); err != nil {
		t.Fatal(err)
	}
}

func TestRequestErrors(t *testing.T) {
	t.Parallel()
	spec := cardsim.SD15LCM()
	spec.Width, spec.Height = 64, 64
	p := openPipeline(t, spec)
	p.cfg.Images = ImageLimits{MaxPixels: 1000 * 1000}
	noEnc := spec
	noEnc.VAEEncoder = false
	q := openPipeline(t, noEnc)
	jpegish := append([]byte{0xff, 0xd8, 0xff, 0xe0}, make([]byte, 40)...)
	for _, c := range []struct {
		name  string
		p     *Pipeline
		req   Request
		kind  error
		field string
		msg   string
	}{
		{"steps 3", p, Request{Prompt: "x", Steps: 3}, ErrOutOfRange, "steps", "use 1, 2 or 4"},
		{"steps 8", p, Request{Prompt: "x", Steps: 8}, ErrOutOfRange, "steps", "use 1, 2 or 4"},
		{"strength small", p, Request{InitImage: testImage(t, 8, 8), Strength: 0.2}, ErrOutOfRange, "strength", "at least 0.25"},
		{"strength >1", p, Request{InitImage: testImage(t, 8, 8), Strength: 1.5}, ErrOutOfRange, "strength", "(0, 1]"},
		{"strength txt2img", p, Request{Prompt: "x", Strength: 0.5}, ErrOutOfRange, "strength", "init image"},
		{"not an image", p, Request{InitImage: []byte("hello, I am text")}, ErrBadImage, "init_image", "PNG or JPEG"},
		{"broken jpeg", p, Request{InitImage: jpegish}, ErrBadImage, "init_image", ""},
		{"truncated png", p, Request{InitImage: testImage(t, 40, 40)[:60]}, ErrBadImage, "init_image", ""},
		{"too many pixels", p, Request{InitImage: testImage(t, 1100, 1000)}, ErrOverLimit, "init_image", "at most 1000000 pixels"},
		{"ratio", p, Request{InitImage: testImage(t, 500, 100)}, ErrOutOfRange, "init_image", "at most 4:1"},
		{"no encoder", q, Request{Prompt: "x", InitImage: testImage(t, 8, 8)}, ErrUnsupported, "init_image", "no VAE encoder"},
	} {
		_, err := c.p.Generate(t.Context(), &c.req, func(int, int) error {
			t.Errorf("%s: a step ran", c.name)
			return nil
		})
		var re *RequestError
		if !errors.As(err, &re) || !errors.Is(err, c.kind) || re.Field != c.field || !strings.Contains(re.Msg, c.msg) {
			t.Errorf("%s: err = %v", c.name, err)
		}
	}
	if q.Img2Img() || !p.Img2Img() {
		t.Error("Img2Img() is wrong")
	}
	// txt2img still works without an encoder.
	if _, err := q.Generate(t.Context(), &Request{Prompt: "x"}, nil); err != nil {
		t.Fatal(err)
	}
}

func TestOpenErrors(t *testing.T) { // not parallel: it checks the CMM account
	dev := openDevice(t)
	spec := cardsim.SD15LCM()
	spec.Width, spec.Height = 64, 64
	dir := writePackage(t, spec)
	if !Detect(dir) || Detect(t.TempDir()) {
		t.Fatal("Detect is wrong")
	}
	// Without a tokenizer the package does not open, and nothing stays loaded.
	bare := t.TempDir()
	spec.TokenizerDir = ""
	if err := cardsim.WriteSDPackage(bare, spec); err != nil {
		t.Fatal(err)
	}
	before, _ := dev.CMMUsed(t.Context())
	if _, err := Open(t.Context(), dev, bare, Config{Logger: quiet}); err == nil || !strings.Contains(err.Error(), "tokenizer") {
		t.Fatalf("no tokenizer: %v", err)
	}
	p, err := Open(t.Context(), dev, dir, Config{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if p.CMMBytes() < (235+1650+95+65)<<20 {
		t.Errorf("CMM %d MiB", p.CMMBytes()>>20)
	}
	if err := p.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if after, _ := dev.CMMUsed(t.Context()); after != before {
		t.Errorf("CMM used %d after close, %d before", after, before)
	}
	if _, err := p.Generate(t.Context(), &Request{Prompt: "x"}, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
}
