package sd

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
)

// TestBindByShape: a package whose tensors have other names than the
// vendor's, with the UNet inputs in another order, is bound by shape and
// makes the reference pixels.
func TestBindByShape(t *testing.T) {
	t.Parallel()
	spec := cardsim.SD15LCM()
	spec.Width, spec.Height, spec.VAEEncoder = 64, 48, false
	spec.Edit = func(file string, m *cardsim.ModelSpec) {
		if file == "unet.axmodel" { // sample, time row, text: kiln's simulator before issue 13
			m.Inputs[1], m.Inputs[2] = m.Inputs[2], m.Inputs[1]
		}
		if m.Kind == cardsim.KindSDText {
			return // the simulated text encoder itself needs the names
		}
		for i := range m.Inputs {
			m.Inputs[i].Name = fmt.Sprintf("in.%d", i)
		}
		for i := range m.Outputs {
			m.Outputs[i].Name = fmt.Sprintf("out.%d", i)
		}
	}
	p := openPipeline(t, spec)
	if len(p.byShape) != 4 { // the UNet's three inputs and the VAE decoder's input (outputs are bound by shape anyway)
		t.Errorf("bound by shape: %q", p.byShape)
	}
	req := &Request{Prompt: "a lighthouse at dusk", Seed: 3}
	res, err := p.Generate(t.Context(), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	img := decodePNG(t, res.PNG, 64, 48)
	if !bytes.Equal(planarRGB(img), reference(t, spec, req.Prompt, 3, res.Timesteps, nil)) {
		t.Fatal("the image differs from the Go reference pipeline")
	}
}

// TestBindRefuses: a UNet input that is found neither by the vendor's name
// nor by shape refuses the package with ErrPackage, naming the input and
// listing the tensors found.
func TestBindRefuses(t *testing.T) {
	t.Parallel()
	spec := cardsim.SD15LCM()
	spec.Width, spec.Height, spec.VAEEncoder = 32, 32, false
	spec.Edit = func(file string, m *cardsim.ModelSpec) {
		if file == "unet.axmodel" {
			m.Inputs[1] = cardsim.Tensor{Name: "text", DType: cardsim.FP32, Dims: [][]int{{1, 64, 768}}}
		}
	}
	_, err := Open(t.Context(), openDevice(t), writePackage(t, spec), Config{Logger: quiet})
	if !errors.Is(err, ErrPackage) {
		t.Fatalf("Open: %v, want ErrPackage", err)
	}
	t.Log(err)
	for _, s := range []string{"encoder_hidden_states", `"text" [1 64 768]`, `"sample"`, UNetTimeInput} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %s", err, s)
		}
	}
}

// TestSize: a package makes the size of its VAE decoder's output (the
// vendor's 1024×768 variant is 768 wide, 1024 high); a request for another
// size is refused naming the field and the size the package makes.
func TestSize(t *testing.T) {
	t.Parallel()
	spec := cardsim.SD15LCM1024x768()
	spec.Width, spec.Height = 48, 64 // the same aspect, small
	p := openPipeline(t, spec)
	if w, h := p.Size(); w != 48 || h != 64 || p.Img2Img() {
		t.Fatalf("size %dx%d, img2img %v", w, h, p.Img2Img())
	}
	req := &Request{Prompt: "a tall tower", Seed: 5, Width: 48, Height: 64}
	res, err := p.Generate(t.Context(), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(planarRGB(decodePNG(t, res.PNG, 48, 64)), reference(t, spec, req.Prompt, 5, res.Timesteps, nil)) {
		t.Fatal("the image differs from the Go reference pipeline")
	}
	for _, tc := range []struct {
		req   Request
		field string
	}{
		{Request{Width: 64, Height: 48}, "width"},
		{Request{Height: 512}, "height"},
		{Request{Width: 512, Height: 64}, "width"},
	} {
		err := p.Check(&tc.req)
		var re *RequestError
		if !errors.As(err, &re) || re.Field != tc.field || !errors.Is(err, ErrOutOfRange) || !strings.Contains(re.Msg, "48×64") {
			t.Errorf("%+v: %v, want an out-of-range %s error naming 48×64", tc.req, err, tc.field)
		}
	}
}
