package llm

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
)

// npuMSPerToken is what the card needs per decoded Qwen3-4B token
// (research/llm-runtime.md §8: 3.65 tok/s on the M.2 card).
const npuMSPerToken = 274.0

// loadShape loads the full shapes of s on the no-compute simulator.
func loadShape(b *testing.B, s cardsim.LLMSpec) *Model { return loadShapeWith(b, s, nil) }

// loadShapeWith is loadShape with options.
func loadShapeWith(b *testing.B, s cardsim.LLMSpec, opts *Options) *Model {
	b.Helper()
	dir := filepath.Join(b.TempDir(), s.Name)
	s.TokenizerDir = "../tokenize/testdata/qwen3"
	if err := cardsim.WriteLLMPackage(dir, s); err != nil {
		b.Fatal(err)
	}
	dev := openDevice(b)
	cardsim.Controls(b).Config(b, "nocompute=1", "nocompute=0")
	m, err := Load(context.Background(), dev, dir, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close(context.Background()) })
	return m
}

// load4B loads the full Qwen3-4B shapes (36 layers, hidden 2560, kv_dim
// 1024, context 2559) on the no-compute simulator.
func load4B(b *testing.B) *Model { return loadShape(b, cardsim.Qwen3_4B()) }

// fieldCallUS is the fixed cost of one engine call on the card, PCIe round
// trip included (research/card-field-notes.md §3.1: "fixed ≈ 457 µs/call
// (sync execute incl. PCIe round-trip)"). The latency benchmarks charge it
// to every synchronous runtime call.
const fieldCallUS = 457

// decodeShapes are the shapes of the decode benchmark with the card's
// device time per token: Qwen3-0.6B from the field's measured synchronous
// layer and post times (28 × 1500 µs + 7917 µs, card-field-notes.md §3.1),
// Qwen3-4B from the field notes' cost model (36 × (457 µs + 111.5 MB at
// 25 GB/s) + ~20 ms post, §6.2). Both include the fixed cost of every
// engine call, which async execution does not remove (§3.2).
var decodeShapes = []struct {
	name     string
	spec     func() cardsim.LLMSpec
	deviceUS float64
	vendor   float64 // the vendor runner's tok/s on an LLM-8850 + Pi 5 (llm-runtime.md §8)
}{
	{"qwen3-0.6b", cardsim.Qwen3_0_6B, 28*1500 + 7917, 12.88},
	{"qwen3-4b", cardsim.Qwen3_4B, 36*(457+111.5e6/25e9*1e6) + 20000, 3.65},
}

// BenchmarkDecode is the host's work per decoded token for the full
// Qwen3-0.6B and Qwen3-4B shapes on the no-compute simulator (shapes,
// copies and validation, no arithmetic): one trip to the device thread per
// token with the embedding row, position and mask, every layer's execute
// and K/V rows, the post model, the logits read, and a greedy pick. It
// reports what the simulator counted per token: synchronous round trips
// (sync_trips: calls that wait for the card), engine binds, queued async
// operations and host transfers from unpinned memory.
//
// "latency" sub-benchmarks set the simulator's latency model to the field's
// per-call cost (sync_us=457: every synchronous call waits 457 µs) and
// report proj_tok/s: the projected decode speed on the card,
// 1e6 / (wall µs per token − synchronous executes × 457 + the card's
// device time per token), where the executes' own fixed cost is already in
// the device time. vendor_tok/s is the vendor runner's published figure.
func BenchmarkDecode(b *testing.B) {
	for _, sh := range decodeShapes {
		for _, latency := range []bool{false, true} {
			name := sh.name
			if latency {
				name += "/latency"
			}
			b.Run(name, func(b *testing.B) {
				m := loadShape(b, sh.spec())
				ctl := cardsim.Controls(b)
				if latency {
					ctl.Config(b, fmt.Sprintf("sync_us=%d", fieldCallUS), "sync_us=0")
				}
				st := m.st
				ctx := context.Background()
				greedy := Sampling{}
				st.pos, st.maskAt = 0, -1
				tok := 1
				step := func() {
					if st.pos >= m.shape.Context-1 {
						st.pos, st.maskAt = 0, -1
					}
					st.tok, st.logits = tok, true
					if err := m.do(ctx, m.decodeFn); err != nil {
						b.Fatal(err)
					}
					st.pos++
					tok = m.next(&greedy)
				}
				step() // the first step after a prefill writes the whole mask
				before := ctl.Stats()
				b.ReportAllocs()
				for b.Loop() {
					step()
				}
				n := float64(b.N)
				d := ctl.Stats().Sub(before)
				b.ReportMetric(float64(d.SyncCalls)/n, "sync_trips/token")
				b.ReportMetric(float64(d.Binds)/n, "binds/token")
				b.ReportMetric(float64(d.AsyncExecutes+d.AsyncCopies)/n, "async_ops/token")
				b.ReportMetric(float64(d.Unpinned)/n, "unpinned/token")
				wallUS := float64(b.Elapsed().Microseconds()) / n
				if latency {
					proj := 1e6 / (wallUS - float64(d.SyncExecutes)/n*fieldCallUS + sh.deviceUS)
					b.ReportMetric(proj, "proj_tok/s")
					b.ReportMetric(sh.vendor, "vendor_tok/s")
				} else {
					b.ReportMetric(wallUS, "host_us/token")
				}
			})
		}
	}
}

// BenchmarkDecodeQwen3_4B is the host's work per decoded token for the
// full Qwen3-4B shape on the no-compute simulator. "host_%" is that time
// against the ~274 ms the NPU needs per token.
func BenchmarkDecodeQwen3_4B(b *testing.B) {
	m := load4B(b)
	st := m.st
	ctx := context.Background()
	greedy := Sampling{}
	st.pos, st.maskAt = 0, -1
	tok := 1
	b.ReportAllocs()
	for b.Loop() {
		if st.pos >= m.shape.Context-1 {
			st.pos = 0
		}
		st.tok, st.logits = tok, true
		if err := m.do(ctx, m.decodeFn); err != nil {
			b.Fatal(err)
		}
		st.pos++
		tok = m.next(&greedy)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e6/npuMSPerToken*100, "host_%")
}

// BenchmarkSampleQwen3 is the sampling of one token from 151,936 logits.
func BenchmarkSampleQwen3(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 2))
	sp := newSampler(151936)
	logits := make([]float32, len(sp.logits))
	for i := range logits {
		logits[i] = float32(r.NormFloat64() * 3)
	}
	history := []int{1, 2, 3, 4, 5, 6, 7, 8}
	for _, c := range []struct {
		name string
		s    Sampling
	}{
		{"greedy", Sampling{}},
		{"top_k_40", Sampling{Temperature: 0.7, TopK: 40}},
		{"top_p_0.9", Sampling{Temperature: 0.7, TopP: 0.9}},
		{"temperature_penalty", Sampling{Temperature: 0.7, RepetitionPenalty: 1.1}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				copy(sp.logits, logits)
				sp.pick(&c.s, history)
			}
		})
	}
}

// qwen3_4BShape is the shape Load derives from the Qwen3-4B package.
func qwen3_4BShape() Shape {
	s := Shape{Layers: 36, Hidden: 2560, KVDim: 1024, Vocab: 151936, Context: 2559, Chunk: 128}
	for i, h := range []int{0, 256, 512, 1024, 1536, 2048} {
		s.Prefill = append(s.Prefill, Group{Index: i + 1, History: h})
	}
	return s
}

// vendorPlan is the mid-2025 vendor runner's rule: every chunk of a call in
// the largest prefill group.
func vendorPlan(s Shape, start, n int) PrefillStats {
	chunks := (n + s.Chunk - 1) / s.Chunk
	h := s.Prefill[len(s.Prefill)-1].History
	return PrefillStats{Chunks: chunks, Positions: chunks * s.Chunk, Columns: chunks * s.Chunk * (h + s.Chunk)}
}

// TestPrefillWorkQwen3_4B: a 500-token system prompt and a 20-token
// question on the Qwen3-4B shape, cold, with the system prompt from the
// prefix cache, and under the vendor rule. The goal is at least 5× less
// work on a hit.
func TestPrefillWorkQwen3_4B(t *testing.T) {
	s := qwen3_4BShape()
	cold, hit := s.PlanPrefill(0, 520), s.PlanPrefill(500, 20)
	vendor := vendorPlan(s, 0, 520)
	t.Logf("cold %+v, hit %+v, vendor %+v", cold, hit, vendor)
	if cold != (PrefillStats{Chunks: 5, Positions: 640, Columns: 128 * (128 + 384 + 384 + 640 + 640)}) {
		t.Fatalf("cold plan %+v", cold)
	}
	if hit != (PrefillStats{Chunks: 1, Positions: 128, Columns: 128 * 640}) {
		t.Fatalf("hit plan %+v", hit)
	}
	if hit.Positions*5 > cold.Positions || hit.Columns*5 > vendor.Columns {
		t.Fatalf("a hit is not 5× less work: cold %+v, hit %+v, vendor %+v", cold, hit, vendor)
	}
}

// BenchmarkPrefillQwen3_4B runs that request through Generate on the
// no-compute simulator: cold (nothing reused), with the system prompt's rows
// still on the card from the previous request (a new question each time),
// and with them restored from the host prefix cache (the card's rows
// dropped before each request). It reports the host time of the prefill
// and first token, and the work in executed group positions and attention
// columns.
func BenchmarkPrefillQwen3_4B(b *testing.B) {
	m := load4B(b)
	r := rand.New(rand.NewPCG(3, 4))
	system := randomPrompt(r, 500)
	var prompts [][]int
	for range 8 {
		prompts = append(prompts, slices.Concat(system, randomPrompt(r, 20)))
	}
	run := func(b *testing.B, cache int, before func()) {
		var res *Result
		var err error
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			before()
			i++
			res, err = m.Generate(context.Background(), Request{Prompt: prompts[i%len(prompts)], MaxTokens: 1, CachePrefix: cache, StopIDs: []int{}}, nil)
			if err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(res.Prefill.Positions), "positions")
		b.ReportMetric(float64(res.Prefill.Columns), "columns")
		b.ReportMetric(float64(res.CachedTokens), "kept")
		b.ReportMetric(float64(res.RestoredTokens), "restored")
	}
	dropRows := func() { m.st.resident = m.st.resident[:0] }
	b.Run("cold", func(b *testing.B) { run(b, 0, dropRows) })
	// One request fills the host cache.
	if _, err := m.Generate(context.Background(), Request{Prompt: prompts[0], MaxTokens: 1, CachePrefix: 500, StopIDs: []int{}}, nil); err != nil {
		b.Fatal(err)
	}
	b.Run("hit_card", func(b *testing.B) { run(b, 500, func() {}) })
	b.Run("hit_host", func(b *testing.B) { run(b, 500, dropRows) })
	b.Logf("vendor rule for the cold request: %+v", vendorPlan(m.shape, 0, 520))
}
