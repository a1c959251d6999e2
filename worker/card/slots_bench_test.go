package card_test

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/card"
	"github.com/kiln-project/kiln/worker/workertest"
)

// BenchmarkQueueVisitors is worker/llm's BenchmarkVisitors through the
// whole queue: 4 visitors submit a chat job at once to one worker on the
// simulated card (36 layers with the vendor's Qwen3-4B times scaled down
// 20× per execute, narrow tensors, no compute: every reply is 32 tokens),
// which serves it with one slot (serial, one job at a time) or four
// (slots4, the worker takes all four). It reports the k-th first token as
// a client sees it (ttft_k_ms: from its submit to its first token event,
// k-th smallest) and tokens per second of wall time over the 4 replies.
func BenchmarkQueueVisitors(b *testing.B) {
	for _, n := range []int{1, 4} {
		name := "serial"
		if n > 1 {
			name = fmt.Sprintf("slots%d", n)
		}
		b.Run(name, func(b *testing.B) {
			sim := cardsim.Controls(b)
			models := b.TempDir()
			spec := cardsim.TinyQwen3()
			spec.Layers, spec.TokenizerDir = 36, "../tokenize/testdata/qwen3"
			spec.LayerWeightBytes = 1 << 20
			if err := cardsim.WriteLLMPackage(filepath.Join(models, "qwen3-36"), spec); err != nil {
				b.Fatal(err)
			}
			c := loadedCard(b, card.Config{Library: sim.Library(), ModelsDir: models, Slots: n})
			sim.Config(b, "exec_us=370,prefill_exec_us=1795,nocompute=1", "exec_us=0,prefill_exec_us=0,nocompute=0")
			q := workertest.StartQueue(b, workertest.QueueOptions{})
			q.Worker(b, "bench0", func(cfg *worker.Config) {
				cfg.Chat, cfg.MaxJobs, cfg.Device = c.ChatHandlers(), c.MaxJobs(), c
			})
			cl := q.Client(b)
			job := func(iter, k int) *schema.ChatJob {
				return &schema.ChatJob{JobHeader: schema.JobHeader{Model: "qwen3-36"}, MaxTokens: 32,
					Messages: []schema.Message{{Role: "user", Content: fmt.Sprintf("visitor %d of round %d: ", k, iter) +
						strings.Repeat("tell me about the kiln "+strconv.Itoa(k)+" ", 12)}}}
			}
			const visitors = 4
			ttft := make([]time.Duration, visitors)
			var tokens int
			var wall time.Duration
			iters := 0
			for b.Loop() {
				got := make([]time.Duration, visitors)
				start := time.Now()
				var wg sync.WaitGroup
				for k := range visitors {
					wg.Go(func() {
						ctx := workertest.Context(b)
						submitted := time.Now()
						var first time.Duration
						res, err := cl.Chat(ctx, job(iters, k), func(ev schema.Event) error {
							if ev.Type == schema.EventToken && first == 0 {
								first = time.Since(submitted)
							}
							return nil
						})
						if err != nil {
							b.Error(err)
							return
						}
						got[k] = first
						if res.Usage.CompletionTokens != 32 {
							b.Errorf("visitor %d: %d tokens, want 32", k, res.Usage.CompletionTokens)
						}
					})
				}
				wg.Wait()
				wall += time.Since(start)
				tokens += visitors * 32
				slices.Sort(got)
				for k := range got {
					ttft[k] += got[k]
				}
				iters++
			}
			for k := range ttft {
				b.ReportMetric(float64(ttft[k].Microseconds())/1e3/float64(iters), fmt.Sprintf("ttft_%d_ms", k+1))
			}
			b.ReportMetric(float64(tokens)/wall.Seconds(), "agg_tok/s")
		})
	}
}
