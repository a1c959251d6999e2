package llm

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/npu"
)

// The vendor's Qwen3-4B figures on an LLM-8850 + Pi 5 (issue 15,
// research/llm-runtime.md §8): TTFT ≈ 1.3 s for a one-chunk prompt,
// 3.65 tok/s (274 ms per token: 36 layer executes and the post model).
// Scaled down 20×, per execute on the simulator: a decode-group execute
// (and the post model) 370 µs, so a decode step is 37 × 370 µs ≈ 13.7 ms;
// a prefill-group execute 1795 µs, so a one-chunk prompt is 36 × 1795 µs
// + 370 µs ≈ 65 ms.
const (
	visitorExecUS    = 370
	visitorPrefillUS = 1795
	visitorPrompt    = 100 // tokens: one prefill chunk
	visitorReply     = 32  // tokens
	visitors         = 4
)

// visit runs one request of a fresh random prompt (no rows to reuse) and
// returns its result.
func visit(b *testing.B, m *Model, r *rand.Rand) *Result {
	prompt := randomPrompt(r, visitorPrompt)
	res, err := m.Generate(bg, Request{Prompt: prompt, MaxTokens: visitorReply, StopIDs: []int{}}, nil)
	if err != nil {
		b.Error(err)
	}
	return res
}

// BenchmarkVisitors: 4 visitors submit a one-chunk prompt and ask for 32
// tokens at once, to the full Qwen3-4B shapes on the no-compute simulator
// with per-execute times of the vendor's figures scaled down 20×; serial is
// one slot (each visitor waits for the whole replies before it), slots4 is
// four. It reports the k-th first token (ttft_k_ms, k-th smallest), the
// bound 4 × solo TTFT + one decode round of the 4 running (bound_4_ms,
// from the quickest of three solo runs), and tokens per second of wall
// time over the 4 replies (agg_tok/s).
func BenchmarkVisitors(b *testing.B) {
	for _, n := range []int{1, visitors} {
		name := "serial"
		if n > 1 {
			name = fmt.Sprintf("slots%d", n)
		}
		b.Run(name, func(b *testing.B) {
			m := loadShapeWith(b, cardsim.Qwen3_4B(), &Options{Slots: n, PrefixCacheBytes: -1})
			cardsim.Controls(b).Config(b, fmt.Sprintf("exec_us=%d,prefill_exec_us=%d", visitorExecUS, visitorPrefillUS), "exec_us=0,prefill_exec_us=0")
			r := rand.New(rand.NewPCG(15, 5))
			visit(b, m, r) // warm up: the first touch of every buffer
			solo := *visit(b, m, r)
			for range 2 { // the quickest of three solo runs: the machine is shared
				x := visit(b, m, r)
				solo.TTFT, solo.Decode = min(solo.TTFT, x.TTFT), min(solo.Decode, x.Decode)
			}
			round := time.Duration(visitors) * solo.Decode / time.Duration(visitorReply-1)
			ttft := make([]time.Duration, visitors)
			var tokens int
			var wall time.Duration
			iters := 0
			for b.Loop() {
				res := make([]*Result, visitors)
				prompts := make([]*rand.Rand, visitors)
				for k := range prompts {
					prompts[k] = rand.New(rand.NewPCG(uint64(iters), uint64(k)))
				}
				start := time.Now()
				var wg sync.WaitGroup
				for k := range visitors {
					wg.Go(func() { res[k] = visit(b, m, prompts[k]) })
				}
				wg.Wait()
				wall += time.Since(start)
				got := make([]time.Duration, visitors)
				for k, x := range res {
					got[k] = x.TTFT
					tokens += x.CompletionTokens
				}
				slices.Sort(got)
				for k := range got {
					ttft[k] += got[k]
				}
				iters++
			}
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
			for k := range ttft {
				b.ReportMetric(ms(ttft[k])/float64(iters), fmt.Sprintf("ttft_%d_ms", k+1))
			}
			b.ReportMetric(ms(solo.TTFT), "solo_ttft_ms")
			b.ReportMetric(ms(time.Duration(visitors)*solo.TTFT+round), "bound_4_ms")
			b.ReportMetric(float64(tokens)/wall.Seconds(), "agg_tok/s")
			b.ReportMetric(float64(visitorReply-1)/solo.Decode.Seconds(), "solo_tok/s")
		})
	}
}

// BenchmarkSlotsHost is the host's work per token with 4 requests
// interleaved on 4 slots against one request on one slot, for the full
// Qwen3-4B shapes on the no-compute simulator without execute times: wall
// µs per token (host_us/token), heap allocations per token (requests of
// 128 tokens, so the per-request ones — the job, its token channel — are
// amortised over them), and engine binds per token (the K/V input rebinds
// when the slot changes, on top of in-place decode's output rebinds).
func BenchmarkSlotsHost(b *testing.B) {
	const reply = 128
	for _, n := range []int{1, visitors} {
		b.Run(fmt.Sprintf("slots%d", n), func(b *testing.B) {
			m := loadShapeWith(b, cardsim.Qwen3_4B(), &Options{Slots: n, PrefixCacheBytes: -1})
			ctl := cardsim.Controls(b)
			prompt := []int{1, 2, 3}
			run := func() int {
				var wg sync.WaitGroup
				tokens := make([]int, n)
				for k := range n {
					wg.Go(func() {
						res, err := m.Generate(bg, Request{Prompt: prompt, MaxTokens: reply, StopIDs: []int{}}, nil)
						if err != nil {
							b.Error(err)
							return
						}
						tokens[k] = res.CompletionTokens
					})
				}
				wg.Wait()
				total := 0
				for _, t := range tokens {
					total += t
				}
				return total
			}
			run()
			var ms0, ms1 runtime.MemStats
			runtime.ReadMemStats(&ms0)
			before := ctl.Stats()
			tokens := 0
			start := time.Now()
			for b.Loop() {
				tokens += run()
			}
			wall := time.Since(start)
			runtime.ReadMemStats(&ms1)
			d := ctl.Stats().Sub(before)
			t := float64(tokens)
			b.ReportMetric(float64(wall.Microseconds())/t, "host_us/token")
			b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/t, "allocs/token")
			b.ReportMetric(float64(d.Binds)/t, "binds/token")
			b.ReportMetric(float64(d.StreamSyncs)/t, "syncs/token")
		})
	}
}

// BenchmarkRebind is switching the decode group's K/V inputs of every
// layer from one slot to another through the binding (Thread.Rebind,
// purego, the simulator): 2 × 36 binds per switch, 100 switches per trip
// to the device thread.
func BenchmarkRebind(b *testing.B) {
	m := loadShapeWith(b, cardsim.Qwen3_4B(), &Options{Slots: 2, PrefixCacheBytes: -1})
	const switches = 100
	b.ReportAllocs()
	for b.Loop() {
		if err := m.do(bg, func(t *npu.Thread) error {
			for i := range switches {
				m.st = m.slots[i&1]
				if err := m.bindSlot(t, m.shape.Decode); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	m.st = m.slots[0]
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*switches*2*m.shape.Layers), "ns/bind")
}
