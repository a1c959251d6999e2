package llm

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/axcl"
)

// TestPatchify: the patches are Qwen3-VL.AXERA's preprocess.py layout, computed here the
// way numpy does it — the index of every output byte in the reshaped, transposed array
// (grid_t, T, C, gh/M, M, P, gw/M, M, P) → (0, 3, 6, 4, 7, 1, 5, 8, 2) — from the image
// repeated T times in channel-first layout.
func TestPatchify(t *testing.T) {
	l := PatchLayout{Patch: 4, Temporal: 2, Merge: 2}
	w, h := 24, 16
	img := make([]byte, w*h*3)
	for i := range img {
		img[i] = byte(rand.IntN(256))
	}
	got := make([]byte, len(img)*l.Temporal)
	if err := l.Patchify(got, img, w, h); err != nil {
		t.Fatal(err)
	}
	P, M, T := l.Patch, l.Merge, l.Temporal
	gh, gw := h/P, w/P
	// patches[t][c][y][x] of the (T, C, H, W) stack of the repeated frame.
	src := func(c, y, x int) byte { return img[(y*w+x)*3+c] }
	want := make([]byte, 0, len(got))
	for bh := 0; bh < gh/M; bh++ { // axis 3
		for bw := 0; bw < gw/M; bw++ { // axis 6
			for mh := 0; mh < M; mh++ { // axis 4
				for mw := 0; mw < M; mw++ { // axis 7
					for range T { // axis 1
						for py := 0; py < P; py++ { // axis 5
							for px := 0; px < P; px++ { // axis 8
								for c := 0; c < 3; c++ { // axis 2
									want = append(want, src(c, (bh*M+mh)*P+py, (bw*M+mw)*P+px))
								}
							}
						}
					}
				}
			}
		}
	}
	if !slices.Equal(got, want) {
		t.Fatal("patches differ from the vendor's transpose")
	}
	if err := l.Patchify(got, img, 20, h); err == nil {
		t.Fatal("a width that is not a multiple of patch × merge was accepted")
	}
	if err := l.Patchify(got[:10], img, w, h); err == nil {
		t.Fatal("a short destination was accepted")
	}
	if a := testing.AllocsPerRun(10, func() { l.Patchify(got, img, w, h) }); a != 0 {
		t.Fatalf("Patchify allocates %v times", a)
	}
}

// TestMRoPEPositions: Hugging Face's get_rope_index worked by hand for two text tokens,
// <|vision_start|>, a 2×3 image, <|vision_end|> and one more token.
func TestMRoPEPositions(t *testing.T) {
	const img = 9
	prompt := []int{1, 2, 3, img, img, img, img, img, img, 4, 5}
	var pos [3][]uint32
	for r := range pos {
		pos[r] = make([]uint32, len(prompt))
	}
	shift := mropePositions(&pos, prompt, []int{3}, 2, 3)
	want := [3][]uint32{
		{0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7},
		{0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7},
		{0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7},
	}
	for r := range pos {
		if !slices.Equal(pos[r], want[r]) {
			t.Fatalf("row %d = %v, want %v", r, pos[r], want[r])
		}
	}
	if shift != 8-len(prompt) {
		t.Fatalf("shift %d, want %d (largest position 7 + 1 − 11 tokens)", shift, 8-len(prompt))
	}
	// The simulator's reference computes them on its own: same rows.
	ref := cardsim.Qwen3VLPositions(prompt, img, 2, 3)
	for r := range pos {
		if !slices.Equal(pos[r], ref[r]) {
			t.Fatalf("row %d = %v, reference %v", r, pos[r], ref[r])
		}
	}
}

var qwenVLPkg oncePackage

// loadQwen3VL loads the vendor-shaped tiny Qwen3-VL package (cardsim.TinyQwen3VLVendor).
func loadQwen3VL(t *testing.T) (*Model, *cardsim.Reference) { return loadQwen3VLWith(t, nil) }

// loadQwen3VLWith is loadQwen3VL with options.
func loadQwen3VLWith(t *testing.T, opts *Options) (*Model, *cardsim.Reference) {
	t.Helper()
	dir, ref := qwenVLPkg.get(t, "qwen3-vl-2b-tiny", cardsim.TinyQwen3VLVendor)
	m, err := Load(context.Background(), openDevice(t), dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(context.Background()) })
	return m, ref
}

// qwenImage is a 384×384 RGB test image made from seed.
func qwenImage(seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	px := make([]byte, 384*384*3)
	for y := range 384 {
		for x := range 384 {
			o := (y*384 + x) * 3
			px[o], px[o+1], px[o+2] = byte(x*(1+int(seed%3))/3+r.IntN(16)), byte(y/2+r.IntN(32)), byte((x^y)+r.IntN(8))
		}
	}
	return px
}

// qwenPrompt is <|im_start|> and text, then per image <|vision_start|> 144 × <|image_pad|>
// <|vision_end|> followed by text, as token ids.
func qwenPrompt(text []int, images int, between []int) []int {
	p := append([]int{151644}, text...)
	for range images {
		p = append(p, 151652)
		for range 144 {
			p = append(p, cardsim.Qwen3VLImagePad)
		}
		p = append(p, 151653)
		p = append(p, between...)
	}
	return append(p, 151645, 151644, 77, 10)
}

func greedyIDs(t *testing.T, m *Model, req Request) ([]int, *Result) {
	t.Helper()
	req.StopIDs = []int{}
	var got []int
	res, err := m.Generate(context.Background(), req, func(tok Token) error { got = append(got, tok.ID); return nil })
	if err != nil {
		t.Fatal(err)
	}
	return got, res
}

// TestQwen3VLPackageAsPublished: the vendor-shaped Qwen3-VL package is found by its own
// files (qwen3_vl_text layers with [3, 128] prefill indices, *_vision.axmodel with the
// embeddings and three deepstack outputs, Hugging Face's config.json) and answers as the
// cacheless reference with the image rows, the grid positions and the deepstack additions;
// a reference without deepstack or with 1-D positions answers otherwise, so leaving either
// out fails this test. Text-only requests match the text reference; an image is never part
// of a reused or cached prefix.
func TestQwen3VLPackageAsPublished(t *testing.T) {
	m, ref := loadQwen3VL(t)
	p := m.Package()
	if p.TokenizerType != "Qwen3-VL" || p.VisionInput != VisionPatches || *p.Patches != (PatchLayout{16, 2, 2}) ||
		filepath.Base(p.Post) != "qwen3_vl_text_post.axmodel" || filepath.Base(p.Vision) != "Qwen3-VL-2B-Instruct_vision.axmodel" {
		t.Fatalf("package %+v", p)
	}
	if v, ok := m.Vision(); !ok || v != (Vision{Width: 384, Height: 384, Tokens: 144, ImageTokenID: 151655, Deepstack: 3}) {
		t.Fatalf("vision %+v (%v)", v, ok)
	}
	if s := m.Shape(); !s.MRoPE || s.Chunk != 128 || s.Context != 1023 {
		t.Fatalf("shape %+v", s)
	}
	const n = 6
	text := []int{72, 101, 108, 108, 111, 32, 119, 104, 97, 116}
	img := qwenImage(1)
	prompt := qwenPrompt(text, 1, []int{68, 101, 115, 99})
	got, _ := greedyIDs(t, m, Request{Prompt: prompt, MaxTokens: n, Images: [][]byte{img}})
	want, err := ref.GreedyQwen3VL(prompt, [][]byte{img}, n, cardsim.Qwen3VLOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("image reply %v, reference %v", got, want)
	}
	for _, broken := range []cardsim.Qwen3VLOptions{{NoDeepstack: true}, {Positions1D: true}} {
		other, err := ref.GreedyQwen3VL(prompt, [][]byte{img}, n, broken)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Equal(other, want) {
			t.Fatalf("a reference with %+v answers %v too: the test could not tell", broken, other)
		}
	}

	// Two images across chunk boundaries (rows 0..127, 128..255, ...), text between.
	img2 := qwenImage(2)
	prompt2 := qwenPrompt(text, 2, []int{65, 110, 100})
	got, res := greedyIDs(t, m, Request{Prompt: prompt2, MaxTokens: n, Images: [][]byte{img2, img}})
	if want, err = ref.GreedyQwen3VL(prompt2, [][]byte{img2, img}, n, cardsim.Qwen3VLOptions{}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("two-image reply %v, reference %v", got, want)
	}
	first := 1 + len(text) + 1 // after <|im_start|>, the text and <|vision_start|>
	if res.CachedTokens > first {
		t.Fatalf("%d prompt tokens reused; the first image starts at %d", res.CachedTokens, first)
	}

	// The same prompt with the images swapped: nothing at or past an image is reused.
	got, res = greedyIDs(t, m, Request{Prompt: prompt2, MaxTokens: n, Images: [][]byte{img, img2}, CachePrefix: len(prompt2)})
	if want, err = ref.GreedyQwen3VL(prompt2, [][]byte{img, img2}, n, cardsim.Qwen3VLOptions{}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) || res.CachedTokens > first {
		t.Fatalf("swapped images: reply %v (cached %d), reference %v", got, res.CachedTokens, want)
	}
	if _, n := m.prefixes.lookup(prompt2, len(prompt2)); n > first {
		t.Fatalf("the prefix cache holds %d rows of the prompt; the first image starts at %d", n, first)
	}

	// Text only: the text reference (all three position rows equal).
	textPrompt := qwenPrompt(text, 0, nil)
	got, _ = greedyIDs(t, m, Request{Prompt: textPrompt, MaxTokens: n})
	if want, err = ref.Greedy(textPrompt, n); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("text reply %v, reference %v", got, want)
	}
}

// TestQwen3VLImagePastPrefill: an image whose rows would reach past the prefill groups
// (history 768 + 1 rows here) is refused before anything runs, naming the image and the
// limit; the next request is served.
func TestQwen3VLImagePastPrefill(t *testing.T) {
	m, _ := loadQwen3VL(t)
	filler := make([]int, 700)
	for i := range filler {
		filler[i] = 97 + i%26
	}
	prompt := qwenPrompt(filler, 1, nil)
	_, err := m.Generate(context.Background(), Request{Prompt: prompt, MaxTokens: 2, Images: [][]byte{qwenImage(3)}}, nil)
	var ie *ImageRangeError
	if !errors.As(err, &ie) || !errors.Is(err, ErrImage) || ie.Image != 0 || ie.Limit != 769 || ie.End != 1+700+1+144 {
		t.Fatalf("err = %v, want an ImageRangeError for image 0 ending at %d, limit 769", err, 1+700+1+144)
	}
	if _, err := m.Generate(context.Background(), Request{Prompt: qwenPrompt(filler[:10], 1, nil), MaxTokens: 2, Images: [][]byte{qwenImage(3)}}, nil); err != nil {
		t.Fatalf("the next request: %v", err)
	}
}

// TestVisionInputQwen3VL: Qwen3-VL's encoder is bound by the vendor's tensor names
// (hidden_states → hidden_states_out, deepstack_feature_0..2) in whatever order the model
// lists them, by shape when the names are others, and refused — naming what it has — when
// neither tells the tensors apart or the shapes do not fit config.json's patch layout.
func TestVisionInputQwen3VL(t *testing.T) {
	s := cardsim.TinyQwen3VLVendor()
	shape := &Shape{Hidden: s.Hidden, Vocab: s.Vocab}
	pkg := &Package{Vision: "v.axmodel", ImageTokenID: 151655, Patches: &PatchLayout{Patch: 16, Temporal: 2, Merge: 2}}
	wantV := Vision{Width: 384, Height: 384, Tokens: 144, ImageTokenID: 151655, Deepstack: 3}
	check := func(name string, g []axcl.ShapeGroup, p *Package, in, out int, deep []int) {
		t.Helper()
		v, b, err := p.visionInput(g, shape)
		if err != nil || v != wantV || b.in != in || b.out != out || !slices.Equal(b.deep, deep) {
			t.Fatalf("%s: vision %+v, binding %+v (%v); want in %d, out %d, deepstack %v", name, v, b, err, in, out, deep)
		}
	}
	check("as exported", groupsOf(s.VisionModelSpec()), pkg, 0, 0, []int{1, 2, 3})

	g := groupsOf(s.VisionModelSpec())
	o := g[0].Outputs
	g[0].Outputs = []axcl.Tensor{o[3], o[1], o[0], o[2]} // deepstack_2, _0, embeddings, _1
	check("outputs in another order", g, pkg, 0, 2, []int{1, 3, 0})

	g = groupsOf(s.VisionModelSpec())
	g[0].Inputs[0].Name = "img"
	for i := range g[0].Outputs {
		g[0].Outputs[i].Name = fmt.Sprintf("out%d", i)
	}
	check("other names: by shape", g, pkg, 0, 0, []int{1, 2, 3})

	for _, c := range []struct {
		name   string
		edit   func(g []axcl.ShapeGroup, p *Package)
		reason string
	}{
		{"two unnamed uint8 inputs", func(g []axcl.ShapeGroup, _ *Package) {
			g[0].Inputs[0].Name = "a"
			g[0].Inputs = append(g[0].Inputs, g[0].Inputs[0])
			g[0].Inputs[1].Name = "b"
		}, "no vision input named hidden_states, pixel_values, input and no single uint8 4-dimensional input; inputs: a uint8 [1 576 512 3], b uint8 [1 576 512 3]"},
		{"another patch size", func(_ []axcl.ShapeGroup, p *Package) { p.Patches = &PatchLayout{Patch: 14, Temporal: 2, Merge: 2} },
			"do not fit patch 14, temporal patch 2, merge 2 (config.json vision_config)"},
		{"rows for another merge", func(_ []axcl.ShapeGroup, p *Package) { p.Patches = &PatchLayout{Patch: 16, Temporal: 2, Merge: 4} },
			"do not fit patch 16, temporal patch 2, merge 4"},
		{"a deepstack output of another size", func(g []axcl.ShapeGroup, _ *Package) { resize(named(t, g[0].Outputs, "deepstack_feature_1"), 72, 64) },
			"deepstack output deepstack_feature_1 is fp32 [72 64], want bf16 or fp32 like hidden_states_out [144 64]"},
	} {
		g, p := groupsOf(s.VisionModelSpec()), *pkg
		c.edit(g, &p)
		if _, _, err := p.visionInput(g, shape); !errors.Is(err, ErrPackage) || !strings.Contains(err.Error(), c.reason) {
			t.Fatalf("%s: err = %v, want ErrPackage saying %q", c.name, err, c.reason)
		}
	}
}

// TestQwen3VLM5StackLayout: M5Stack's Qwen3-VL-2B package for the LLM-8850 has no
// config.json — kiln knows it from its own files (qwen3_vl_text layers beside a
// *_vision.axmodel), takes the vendor runner's patch 16, temporal patch and merge 2, the
// placeholder id from the tokenizer in qwen3-vl-tokenizer/, the sampling of post_config.json,
// and answers an image prompt as the reference does.
func TestQwen3VLM5StackLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "Qwen3-VL-2B-Instruct-axmodel")
	if err := cardsim.WriteLLMPackage(dir, cardsim.TinyQwen3VLM5Stack()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "config.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the layout has a config.json: %v", err)
	}
	if !Detect(dir) {
		t.Fatal("Detect: not an LLM package")
	}
	p, err := ReadPackage(dir)
	if err != nil {
		t.Fatal(err)
	}
	if p.TokenizerType != "Qwen3-VL" || p.VisionInput != VisionPatches || p.Patches == nil || *p.Patches != (PatchLayout{16, 2, 2}) ||
		p.ImageTokenID != 0 || !p.Defaults.Greedy() || filepath.Base(filepath.Dir(p.Layers[0])) != "Qwen3-VL-2B-Instruct-ax8850" {
		t.Fatalf("package %+v", p)
	}
	ref, err := cardsim.LoadReference(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Load(context.Background(), openDevice(t), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(context.Background()) })
	if v, ok := m.Vision(); !ok || v != (Vision{Width: 384, Height: 384, Tokens: 144, ImageTokenID: 151655, Deepstack: 3}) {
		t.Fatalf("vision %+v (%v)", v, ok)
	}
	img := qwenImage(4)
	prompt := qwenPrompt([]int{87, 104, 121}, 1, []int{63})
	got, _ := greedyIDs(t, m, Request{Prompt: prompt, MaxTokens: 4, Images: [][]byte{img}})
	want, err := ref.GreedyQwen3VL(prompt, [][]byte{img}, 4, cardsim.Qwen3VLOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("image reply %v, reference %v", got, want)
	}
}
