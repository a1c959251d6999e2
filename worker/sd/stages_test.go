package sd

import (
	"math"
	"slices"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/npu"
	"github.com/kiln-project/kiln/worker/tokenize"
)

// The stages of Generate, each run alone on the simulated card and checked
// against the simulator's Go op twins.

// TestTextEncoderStage: encodeText writes the prompt's ids, and the encoder
// output it stages for the UNet is the op's, bit for bit.
func TestTextEncoderStage(t *testing.T) {
	t.Parallel()
	spec := cardsim.SD15LCM()
	spec.Width, spec.Height = 64, 64
	p := openPipeline(t, spec)
	var tm Timings
	tokens, err := p.encodeText(t.Context(), "a red fox in the snow", &tm)
	if err != nil {
		t.Fatal(err)
	}
	if tokens != 8 { // <start> a red fox in the snow <end>
		t.Errorf("tokens = %d", tokens)
	}
	tok, err := tokenize.LoadCLIP(clipDir)
	if err != nil {
		t.Fatal(err)
	}
	ids := tok.Encode77("a red fox in the snow")
	want, err := spec.TextEncode(ids[:])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.ehs, want) {
		t.Fatal("the text encoder output differs from the op")
	}
	staged := make([]float32, len(want))
	p.uEHS.decode(staged)
	if !slices.Equal(staged, want) {
		t.Fatal("encoder_hidden_states are not staged for the UNet")
	}
	if tm.Device <= 0 || tm.TextEncoder < tm.Device {
		t.Errorf("timings %+v", tm)
	}
}

// TestUNetStages: the first step writes encoder_hidden_states and the later
// steps find them still on the card; each step's noise prediction is the
// op's for the latent it was given.
func TestUNetStages(t *testing.T) {
	t.Parallel()
	spec := cardsim.SD15LCM()
	spec.Width, spec.Height = 64, 64
	p := openPipeline(t, spec)
	ctx := t.Context()
	var tm Timings
	if _, err := p.encodeText(ctx, "a lighthouse", &tm); err != nil {
		t.Fatal(err)
	}
	pl, err := p.plan(&Request{Prompt: "a lighthouse"})
	if err != nil {
		t.Fatal(err)
	}
	p.rng.seed(7)
	p.rng.randn(p.x)
	for i, ts := range pl.steps {
		x := slices.Clone(p.x)
		if err := p.step(ctx, pl, i, &tm); err != nil {
			t.Fatal(err)
		}
		if want := spec.UNet(x, spec.TimeEmbedding(ts), p.ehs); !slices.Equal(p.eps, want) {
			t.Fatalf("step %d (t=%d): the noise prediction differs from the op", i+1, ts)
		}
		if slices.Equal(p.x, x) {
			t.Fatalf("step %d did not move the latent", i+1)
		}
	}
}

// TestDecodeStage: decode scales the latent for the VAE decoder and turns
// its output into 8-bit pixels.
func TestDecodeStage(t *testing.T) {
	t.Parallel()
	spec := cardsim.SD15LCM()
	spec.Width, spec.Height = 64, 48
	p := openPipeline(t, spec)
	var g noiseSource
	g.seed(3)
	g.randn(p.x)
	z := make([]float32, len(p.x))
	for i, v := range p.x {
		z[i] = v / 0.18215
	}
	var tm Timings
	b, err := p.decode(t.Context(), &tm)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]uint8, 3*64*48)
	for i, v := range spec.VAEDecode(z) {
		v = float32(v/2) + 0.5
		v = min(max(v, 0), 1)
		want[i] = uint8(math.RoundToEven(float64(float32(v * 255))))
	}
	if !slices.Equal(planarRGB(decodePNG(t, b, 64, 48)), want) {
		t.Fatal("the decoded image differs from the op")
	}
	if tm.Device <= 0 || tm.VAEDecoder < tm.Device || tm.Image <= 0 {
		t.Errorf("timings %+v", tm)
	}
}

// TestModelCallsAddNoAllocation: run hands a call to the device thread
// without allocating; what a call allocates is the runtime's copies alone
// (the same writes, execute and read made from a function value built
// beforehand).
func TestModelCallsAddNoAllocation(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under the race detector")
	}
	spec := cardsim.SD15LCM()
	spec.Width, spec.Height = 64, 64
	p := openPipeline(t, spec)
	ctx := t.Context()
	c := &p.unetFirst
	direct := func(th *npu.Thread) error {
		for _, in := range c.inputs {
			if err := th.Write(in.buf, 0, in.bytes); err != nil {
				return err
			}
		}
		if err := th.Execute(c.model, 0); err != nil {
			return err
		}
		return th.Read(c.output.bytes, c.output.buf, 0)
	}
	copies := testing.AllocsPerRun(10, func() {
		if err := p.dev.Do(ctx, direct); err != nil {
			t.Fatal(err)
		}
	})
	var tm Timings
	calls := testing.AllocsPerRun(10, func() {
		if err := p.run(ctx, c, &tm); err != nil {
			t.Fatal(err)
		}
	})
	if calls > copies {
		t.Errorf("a UNet call allocates %v times, its copies alone %v", calls, copies)
	}
}
