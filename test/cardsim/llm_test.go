package cardsim

import (
	"bytes"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
)

// smallLLM is TinyQwen3 with a small vocabulary and context, so tests stay fast.
func smallLLM() LLMSpec {
	s := TinyQwen3()
	s.Name = "qwen3-test"
	s.Layers = 2
	s.Vocab = 1000
	s.MaxCtx = 511
	s.Histories = []int{0, 128, 256}
	return s
}

// layerIO is one layer on the card with the group buffers of model plus a shared K/V buffer
// per layer, as the 2026 runner aliases them.
type layerIO struct {
	*model
	k, v uintptr
}

func (c *card) loadLayer(dir string, s LLMSpec, i int) *layerIO {
	c.t.Helper()
	m := c.load(filepath.Join(dir, s.ModelDir, s.LayerFile(i)), s.LayerSpec(i))
	l := &layerIO{model: m}
	size := uint64(s.MaxCtx * s.KVDim * 2)
	l.k, l.v = c.malloc(int(size)), c.malloc(int(size))
	for g := range m.io {
		c.ok("bind K", c.SetInput(m.io[g], 3, l.k, size))
		c.ok("bind V", c.SetInput(m.io[g], 4, l.v, size))
	}
	return l
}

// step runs group g of the layer with the given inputs and returns K_cache_out, V_cache_out and
// output.
func (c *card) step(l *layerIO, g int, input []uint16, idx []uint32, mask []uint16) (k, v, out []uint16) {
	c.t.Helper()
	c.put(l.in[g][0], u16bytes(input))
	c.put(l.in[g][1], u32bytes(idx))
	c.put(l.in[g][2], u16bytes(mask))
	c.ok("execute", c.Execute(l.id, l.ctx, uint32(g), l.io[g]))
	sp := l.spec
	k = bytesU16(c.get(l.out[g][0], sp.Outputs[0].Elems(g)*2))
	v = bytesU16(c.get(l.out[g][1], sp.Outputs[1].Elems(g)*2))
	out = bytesU16(c.get(l.out[g][2], sp.Outputs[2].Elems(g)*2))
	return k, v, out
}

func randBF16(r *rand.Rand, n int) []uint16 {
	v := make([]uint16, n)
	for i := range v {
		v[i] = FloatToBF16(float32(r.NormFloat64()))
	}
	return v
}

// TestLayerMatchesReference runs the C op and the Go reference on random inputs (random
// history, random visible columns, random positions) for the decode and every prefill group.
func TestLayerMatchesReference(t *testing.T) {
	c := openCard(t, "")
	dir := t.TempDir()
	s := smallLLM()
	if err := WriteLLMPackage(dir, s); err != nil {
		t.Fatal(err)
	}
	l := c.loadLayer(dir, s, 1)
	ref := &Layer{Seed: s.Seed + 2, Hidden: s.Hidden, KVDim: s.KVDim}
	r := rand.New(rand.NewPCG(1, 2))
	kc, vc := randBF16(r, s.MaxCtx*s.KVDim), randBF16(r, s.MaxCtx*s.KVDim)
	c.put(l.k, u16bytes(kc))
	c.put(l.v, u16bytes(vc))
	for g := 0; g <= len(s.Histories); g++ {
		spec := l.spec
		T := spec.Inputs[1].Elems(g)
		C := spec.Inputs[2].Elems(g) / T
		input := randBF16(r, T*s.Hidden)
		idx := make([]uint32, T)
		for i := range idx {
			idx[i] = uint32(r.IntN(s.MaxCtx))
		}
		mask := make([]uint16, T*C)
		for i := range mask {
			switch r.IntN(4) {
			case 0:
				mask[i] = MaskHidden
			case 1:
				mask[i] = FloatToBF16(float32(-r.Float64() * 3))
			default:
				mask[i] = MaskVisible
			}
		}
		for row := 0; row < T; row += 7 { // some rows fully hidden, like padding rows
			for col := 0; col < C; col++ {
				mask[row*C+col] = MaskHidden
			}
		}
		k, v, out := c.step(l, g, input, idx, mask)
		rk, rv, rout, err := ref.Run(input, idx, mask, kc, vc)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(k, rk) || !slices.Equal(v, rv) || !slices.Equal(out, rout) {
			t.Fatalf("group %d: C and Go differ (K %v, V %v, output %v)", g, slices.Equal(k, rk), slices.Equal(v, rv), slices.Equal(out, rout))
		}
	}
}

// TestLayerSensitivity checks that a wrong mask entry, K row or position changes the output,
// and that a hidden K row does not matter.
func TestLayerSensitivity(t *testing.T) {
	c := openCard(t, "")
	dir := t.TempDir()
	s := smallLLM()
	if err := WriteLLMPackage(dir, s); err != nil {
		t.Fatal(err)
	}
	l := c.loadLayer(dir, s, 0)
	r := rand.New(rand.NewPCG(3, 4))
	kc, vc := randBF16(r, s.MaxCtx*s.KVDim), randBF16(r, s.MaxCtx*s.KVDim)
	input := randBF16(r, s.Hidden)
	const pos = 10
	mask := make([]uint16, s.MaxCtx+1)
	for i := range mask {
		if i > pos && i < s.MaxCtx {
			mask[i] = MaskHidden
		}
	}
	run := func(kc, vc []uint16, idx uint32, mask []uint16) []uint16 {
		c.put(l.k, u16bytes(kc))
		c.put(l.v, u16bytes(vc))
		_, _, out := c.step(l, 0, input, []uint32{idx}, mask)
		return out
	}
	base := run(kc, vc, pos, mask)
	if again := run(kc, vc, pos, mask); !slices.Equal(base, again) {
		t.Fatal("the op is not deterministic")
	}
	m2 := slices.Clone(mask)
	m2[3] = MaskHidden
	if slices.Equal(base, run(kc, vc, pos, m2)) {
		t.Error("hiding a history column did not change the output")
	}
	k2 := slices.Clone(kc)
	k2[5*s.KVDim+1] ^= 0x0100
	if slices.Equal(base, run(k2, vc, pos, mask)) {
		t.Error("changing a visible K row did not change the output")
	}
	v2 := slices.Clone(vc)
	v2[5*s.KVDim+1] ^= 0x0100
	if slices.Equal(base, run(kc, v2, pos, mask)) {
		t.Error("changing a visible V row did not change the output")
	}
	if slices.Equal(base, run(kc, vc, pos+1, mask)) {
		t.Error("changing the position did not change the output")
	}
	k3 := slices.Clone(kc)
	k3[(pos+5)*s.KVDim] ^= 0x0100
	if !slices.Equal(base, run(k3, vc, pos, mask)) {
		t.Error("changing a hidden K row changed the output")
	}
}

// TestCachedRuntimeMatchesReference drives the simulated card like the LLM runtime does
// (prefill in 128-token chunks in the smallest group that fits, D2D of K/V rows to
// position×kv_dim, decode through group 0, post model) and compares every logit with the
// cacheless Go reference.
func TestCachedRuntimeMatchesReference(t *testing.T) {
	c := openCard(t, "")
	dir := t.TempDir()
	s := smallLLM()
	if err := WriteLLMPackage(dir, s); err != nil {
		t.Fatal(err)
	}
	ref, err := LoadReference(dir)
	if err != nil {
		t.Fatal(err)
	}
	layers := make([]*layerIO, s.Layers)
	for i := range layers {
		layers[i] = c.loadLayer(dir, s, i)
	}
	post := c.load(filepath.Join(dir, s.ModelDir, s.PostFile()), s.PostSpec())
	d, kv, P := s.Hidden, s.KVDim, s.Prefill
	r := rand.New(rand.NewPCG(5, 6))
	prompt := make([]int, 150)
	for i := range prompt {
		prompt[i] = r.IntN(s.Vocab)
	}
	logits := func(hidden []uint16) []uint16 {
		c.put(post.in[0][0], u16bytes(hidden))
		c.ok("post", c.Execute(post.id, post.ctx, 0, post.io[0]))
		return bytesU16(c.get(post.out[0][0], s.Vocab*2))
	}
	appendKV := func(l *layerIO, g, pos, n int) {
		off := uintptr(pos * kv * 2)
		c.ok("D2D K", c.MemcpyD2D(l.k+off, l.out[g][0], uintptr(n*kv*2), 3))
		c.ok("D2D V", c.MemcpyD2D(l.v+off, l.out[g][1], uintptr(n*kv*2), 3))
	}
	// prefill
	var last []uint16
	for start := 0; start < len(prompt); start += P {
		n := min(P, len(prompt)-start)
		g := 0
		for i, h := range s.Histories {
			if h >= start {
				g = i + 1
				break
			}
		}
		H := s.Histories[g-1]
		x := make([]uint16, P*d)
		for i := 0; i < n; i++ {
			copy(x[i*d:], ref.Embed[prompt[start+i]*d:(prompt[start+i]+1)*d])
		}
		idx := make([]uint32, P)
		for i := range idx {
			idx[i] = uint32(start + i)
		}
		mask := make([]uint16, P*(H+P))
		for row := 0; row < P; row++ {
			for col := 0; col < H+P; col++ {
				visible := row < n && (col < start || (col >= H && col-H <= row))
				if !visible {
					mask[row*(H+P)+col] = MaskHidden
				}
			}
		}
		for _, l := range layers {
			_, _, x = c.step(l, g, x, idx, mask)
			appendKV(l, g, start, n)
		}
		last = x[(n-1)*d : n*d]
	}
	want, err := ref.Logits(prompt)
	if err != nil {
		t.Fatal(err)
	}
	compare := func(step int, got []uint16, want []float32) {
		t.Helper()
		for i := range want {
			if BF16ToFloat(got[i]) != want[i] {
				t.Fatalf("step %d: logit %d = %v (cached), %v (reference)", step, i, BF16ToFloat(got[i]), want[i])
			}
		}
	}
	compare(0, logits(last), want)
	// decode
	toks := slices.Clone(prompt)
	decMask := make([]uint16, s.MaxCtx+1)
	for i := range decMask {
		if i >= len(prompt) && i < s.MaxCtx {
			decMask[i] = MaskHidden
		}
	}
	for step := 1; step <= 4; step++ {
		next := r.IntN(s.Vocab)
		pos := len(toks)
		toks = append(toks, next)
		x := slices.Clone(ref.Embed[next*d : (next+1)*d])
		for _, l := range layers {
			_, _, x = c.step(l, 0, x, []uint32{uint32(pos)}, decMask)
			appendKV(l, 0, pos, 1)
		}
		decMask[pos] = MaskVisible
		want, err := ref.Logits(toks)
		if err != nil {
			t.Fatal(err)
		}
		compare(step, logits(x), want)
	}
}

func TestNoCompute(t *testing.T) {
	c := openCard(t, "nocompute=1")
	dir := t.TempDir()
	s := smallLLM()
	if err := WriteLLMPackage(dir, s); err != nil {
		t.Fatal(err)
	}
	l := c.loadLayer(dir, s, 0)
	r := rand.New(rand.NewPCG(7, 8))
	input := randBF16(r, s.Prefill*s.Hidden)
	k, _, out := c.step(l, 1, input, make([]uint32, s.Prefill), make([]uint16, s.Prefill*s.Prefill))
	if !slices.Equal(out, input) {
		t.Error("no-compute layer output is not a copy of its input")
	}
	if slices.ContainsFunc(k, func(v uint16) bool { return v != 0 }) {
		t.Error("no-compute layer wrote K_cache_out")
	}
}

func TestLLMPackageLayout(t *testing.T) {
	dir := t.TempDir()
	s := smallLLM()
	s.Vision = &VisionSpec{File: "vision_model.axmodel", Width: 64, Height: 64, Grid: 4, ImageTokenID: 151655}
	s.TokenizerDir = t.TempDir()
	if err := writeFile(filepath.Join(s.TokenizerDir, "tokenizer.json"), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if err := WriteLLMPackage(dir, s); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"config.json", "post_config.json", "qwen3_tokenizer/tokenizer.json",
		"qwen3-tiny-ax650/qwen3_p128_l0_together.axmodel", "qwen3-tiny-ax650/qwen3_p128_l1_together.axmodel",
		"qwen3-tiny-ax650/qwen3_post.axmodel", "qwen3-tiny-ax650/vision_model.axmodel",
		"qwen3-tiny-ax650/" + EmbedFile} {
		if !fileExists(filepath.Join(dir, f)) {
			t.Errorf("%s missing", f)
		}
	}
	ref, err := LoadReference(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ref.Embed[7*s.Hidden:8*s.Hidden], s.EmbedRow(7)) {
		t.Error("embedding row 7 differs from EmbedRow(7)")
	}
	// A greedy continuation is deterministic and stays in the vocabulary.
	a, err := ref.Greedy([]int{1, 2, 3}, 3)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := ref.Greedy([]int{1, 2, 3}, 3)
	if !slices.Equal(a, b) {
		t.Fatal("greedy is not deterministic")
	}

	big := Qwen3_4B()
	bdir := t.TempDir()
	if err := WriteLLMPackage(bdir, big); err != nil {
		t.Fatal(err)
	}
	st, err := statSize(filepath.Join(bdir, big.ModelDir, EmbedFile))
	if err != nil || st != int64(151936*2560*2) {
		t.Fatalf("Qwen3-4B embedding size %d (%v)", st, err)
	}
	spec, err := ParseModelSpec(mustRead(t, filepath.Join(bdir, big.ModelDir, big.LayerFile(35))))
	if err != nil {
		t.Fatal(err)
	}
	mask, _ := spec.Input("mask")
	if spec.Groups != 7 || mask.Elems(0) != 2560 || mask.Elems(6) != 128*(2048+128) {
		t.Fatalf("Qwen3-4B layer groups %d, mask %v", spec.Groups, mask.Dims)
	}
	if !bytes.HasPrefix(mustRead(t, filepath.Join(bdir, big.ModelDir, big.PostFile())), []byte(Magic)) {
		t.Fatal("post model has no magic")
	}
}

// TestUncachedWeightsMatchReference covers the simulator's path for models too large to cache
// their weights (the full Qwen3-4B shapes): weights recomputed on the fly must give the same
// bits.
func TestUncachedWeightsMatchReference(t *testing.T) {
	c := openCard(t, "")
	dir := t.TempDir()
	s := LLMSpec{Name: "wide", Arch: "wide", ModelDir: "wide", Layers: 1, Hidden: 2048, KVDim: 640, Vocab: 300000,
		MaxCtx: 15, Prefill: 16, Histories: []int{0}, Seed: 99, PostRank: 16}
	if err := WriteLLMPackage(dir, s); err != nil {
		t.Fatal(err)
	}
	l := c.loadLayer(dir, s, 0)
	r := rand.New(rand.NewPCG(9, 9))
	kc, vc := randBF16(r, s.MaxCtx*s.KVDim), randBF16(r, s.MaxCtx*s.KVDim)
	c.put(l.k, u16bytes(kc))
	c.put(l.v, u16bytes(vc))
	x := randBF16(r, s.Hidden)
	mask := make([]uint16, s.MaxCtx+1)
	mask[7] = MaskHidden
	k, v, out := c.step(l, 0, x, []uint32{5}, mask)
	ref := &Layer{Seed: s.Seed + 1, Hidden: s.Hidden, KVDim: s.KVDim}
	rk, rv, rout, err := ref.Run(x, []uint32{5}, mask, kc, vc)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(k, rk) || !slices.Equal(v, rv) || !slices.Equal(out, rout) {
		t.Fatal("uncached layer weights differ from the reference")
	}
	post := c.load(filepath.Join(dir, s.ModelDir, s.PostFile()), s.PostSpec())
	c.put(post.in[0][0], u16bytes(out))
	c.ok("post", c.Execute(post.id, post.ctx, 0, post.io[0]))
	got := bytesU16(c.get(post.out[0][0], s.Vocab*2))
	p := &Post{Seed: s.Seed + 0x10000, Hidden: s.Hidden, Vocab: s.Vocab, Rank: 16}
	for i, want := range p.Logits(out) {
		if got[i] != FloatToBF16(want) {
			t.Fatalf("uncached post logit %d differs from the reference", i)
		}
	}
}
