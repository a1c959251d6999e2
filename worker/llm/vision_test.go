package llm

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
)

// visionSpec is the test package with a small simulated vision encoder:
// 64×48 RGB in, 4×4 = 16 rows out per image, placeholder <|image_pad|>.
func visionSpec() cardsim.LLMSpec {
	s := testSpec()
	s.Name, s.ModelDir = "qwen3-vl-test", "qwen3-vl-test-ax650"
	s.Vision = &cardsim.VisionSpec{File: "vision_model.axmodel", Width: 64, Height: 48, Grid: 4, WeightBytes: 1 << 20, ImageTokenID: 151655}
	return s
}

var visionPkg oncePackage

func loadVisionTest(t *testing.T) (*Model, *cardsim.Reference) {
	t.Helper()
	dir, ref := visionPkg.get(t, "qwen3-vl-test", visionSpec)
	dev := openDevice(t)
	m, err := Load(context.Background(), dev, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(context.Background()) })
	return m, ref
}

// refImageLogits is the cacheless reference with the rows of the
// placeholder runs replaced by the encoder's (bf16) output.
func refImageLogits(t *testing.T, ref *cardsim.Reference, spec cardsim.LLMSpec, tokens []int, starts []int, images [][]byte) []float32 {
	t.Helper()
	n, d := len(tokens), ref.Hidden
	x := make([]uint16, n*d)
	for i, tok := range tokens {
		copy(x[i*d:], ref.Embed[tok*d:(tok+1)*d])
	}
	for k, px := range images {
		for i, v := range spec.VisionEncode(px) {
			x[starts[k]*d+i] = cardsim.FloatToBF16(v)
		}
	}
	idx := make([]uint32, n)
	mask := make([]uint16, n*n)
	for i := range n {
		idx[i] = uint32(i)
		for j := i + 1; j < n; j++ {
			mask[i*n+j] = cardsim.MaskHidden
		}
	}
	for _, l := range ref.Layers {
		_, _, out, err := l.Run(x, idx, mask, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		x = out
	}
	lg := ref.Post.Logits(x[(n-1)*d:])
	for i, v := range lg {
		lg[i] = cardsim.BF16ToFloat(cardsim.FloatToBF16(v))
	}
	return lg
}

func randomImage(r *rand.Rand, n int) []byte {
	px := make([]byte, n)
	for i := range px {
		px[i] = byte(r.IntN(256))
	}
	return px
}

// TestImagesReplacePlaceholderRows: the encoder's rows replace the
// placeholders' (one run straddling a chunk boundary), and the logits and
// greedy tokens are the reference's; another image gives other logits, and
// rows of an earlier image are never reused.
func TestImagesReplacePlaceholderRows(t *testing.T) {
	m, ref := loadVisionTest(t)
	spec := visionSpec()
	v, ok := m.Vision()
	if !ok || v.Width != 64 || v.Height != 48 || v.Tokens != 16 || v.ImageTokenID != 151655 {
		t.Fatalf("vision %+v %v", v, ok)
	}
	r := rand.New(rand.NewPCG(21, 22))
	pad := slices.Repeat([]int{v.ImageTokenID}, v.Tokens)
	prompt := slices.Concat(randomPrompt(r, 120), pad, randomPrompt(r, 10), pad, randomPrompt(r, 5))
	starts := []int{120, 146}
	a := [][]byte{randomImage(r, 64*48*3), randomImage(r, 64*48*3)}
	b := [][]byte{a[0], randomImage(r, 64*48*3)}
	var firstA []float32
	for i, images := range [][][]byte{a, b, a} {
		toks, res := generate(t, m, Request{Prompt: prompt, MaxTokens: 1, StopIDs: []int{}, Images: images})
		want := refImageLogits(t, ref, spec, prompt, starts, images)
		m.loadLogits()
		for j := range want {
			if m.st.samp.logits[j] != want[j] {
				t.Fatalf("run %d: logit %d = %v, reference %v", i, j, m.st.samp.logits[j], want[j])
			}
		}
		if toks[0] != argmax(want) {
			t.Fatalf("run %d: token %d, reference %d", i, toks[0], argmax(want))
		}
		if res.CachedTokens > 120 {
			t.Fatalf("run %d kept %d rows, past the first image", i, res.CachedTokens)
		}
		if i == 0 {
			firstA = slices.Clone(want)
		} else if i == 1 && slices.Equal(want, firstA) {
			t.Fatal("another image gave the same logits")
		}
	}

	// Images that do not fit the placeholders or the encoder.
	for _, req := range []Request{
		{Prompt: prompt, Images: a[:1]},
		{Prompt: prompt, Images: [][]byte{a[0], a[1][:100]}},
		{Prompt: slices.Concat([]int{1}, pad[:5], []int{2}), Images: a[:1]},
	} {
		if _, err := m.Generate(bg, req, nil); !errors.Is(err, ErrImage) {
			t.Fatalf("err = %v, want ErrImage", err)
		}
	}
	text, _, _ := loadTest(t, nil)
	if _, ok := text.Vision(); ok {
		t.Fatal("a text package reports vision")
	}
	if _, err := text.Generate(bg, Request{Prompt: prompt, Images: a}, nil); !errors.Is(err, ErrImage) {
		t.Fatalf("images to a text model: %v", err)
	}
}
