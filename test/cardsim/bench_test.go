package cardsim

import (
	"math/rand/v2"
	"testing"
)

// benchLayer loads layer 0 of s, fills the K/V caches and returns a decode step with the
// first `history` positions visible.
func benchLayer(b *testing.B, s LLMSpec, config string, history int) (*card, *layerIO) {
	c := openCard(b, config)
	dir := b.TempDir()
	if err := WriteLLMPackage(dir, s); err != nil {
		b.Fatal(err)
	}
	l := c.loadLayer(dir, s, 0)
	r := rand.New(rand.NewPCG(1, 1))
	c.put(l.k, u16bytes(randBF16(r, s.MaxCtx*s.KVDim)))
	c.put(l.v, u16bytes(randBF16(r, s.MaxCtx*s.KVDim)))
	mask := make([]uint16, s.MaxCtx+1)
	for i := history; i < s.MaxCtx; i++ {
		mask[i] = MaskHidden
	}
	c.put(l.in[0][0], u16bytes(randBF16(r, s.Hidden)))
	c.put(l.in[0][1], u32bytes([]uint32{uint32(history)}))
	c.put(l.in[0][2], u16bytes(mask))
	return c, l
}

// BenchmarkExecuteDecodeTiny: one TinyQwen3 layer, decode with 512 visible history rows.
func BenchmarkExecuteDecodeTiny(b *testing.B) {
	s := TinyQwen3()
	s.Vocab = 1000
	c, l := benchLayer(b, s, "", 512)
	b.ResetTimer()
	for range b.N {
		if r := c.Execute(l.id, l.ctx, 0, l.io[0]); r != 0 {
			b.Fatalf("execute %#x", code(r))
		}
	}
}

// BenchmarkExecuteDecode4BNoCompute: one layer of the full Qwen3-4B shape in no-compute
// mode: the simulator's own per-execute overhead (validation, buffer resolution, the
// input→output copy).
func BenchmarkExecuteDecode4BNoCompute(b *testing.B) {
	c, l := benchLayer(b, Qwen3_4B(), "nocompute=1", 512)
	b.ResetTimer()
	for range b.N {
		if r := c.Execute(l.id, l.ctx, 0, l.io[0]); r != 0 {
			b.Fatalf("execute %#x", code(r))
		}
	}
}

// BenchmarkExecutePostTiny: the TinyQwen3 post model over the full 151936-token vocabulary.
func BenchmarkExecutePostTiny(b *testing.B) {
	c := openCard(b, "")
	s := TinyQwen3()
	s.EmbedValues = false
	dir := b.TempDir()
	if err := WriteLLMPackage(dir, s); err != nil {
		b.Fatal(err)
	}
	post := c.load(dir+"/"+s.ModelDir+"/"+s.PostFile(), s.PostSpec())
	b.ResetTimer()
	for range b.N {
		if r := c.Execute(post.id, post.ctx, 0, post.io[0]); r != 0 {
			b.Fatalf("execute %#x", code(r))
		}
	}
}

// BenchmarkReferenceDecodeTiny: the Go reference of one TinyQwen3 layer, same step as
// BenchmarkExecuteDecodeTiny.
func BenchmarkReferenceDecodeTiny(b *testing.B) {
	s := TinyQwen3()
	r := rand.New(rand.NewPCG(1, 1))
	kc, vc := randBF16(r, s.MaxCtx*s.KVDim), randBF16(r, s.MaxCtx*s.KVDim)
	mask := make([]uint16, s.MaxCtx+1)
	for i := 512; i < s.MaxCtx; i++ {
		mask[i] = MaskHidden
	}
	x := randBF16(r, s.Hidden)
	l := &Layer{Seed: s.Seed + 1, Hidden: s.Hidden, KVDim: s.KVDim}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, _, _, err := l.Run(x, []uint32{512}, mask, kc, vc); err != nil {
			b.Fatal(err)
		}
	}
}
