package worker_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker"
)

// noop answers at once with one token: what is measured is the queue.
var noop = worker.HandlerFunc[schema.ChatJob](func(ctx context.Context, job *worker.Job[schema.ChatJob]) (*schema.Result, error) {
	if err := job.Token("ok"); err != nil {
		return nil, err
	}
	return &schema.Result{Text: "ok", FinishReason: schema.FinishStop}, nil
})

func benchWorkers(b *testing.B, n int, noSync bool) *client.Client {
	br := brokertest.Run(b, &brokertest.Options{NoSync: noSync})
	for i := range n {
		w, err := worker.New(brokertest.Connect(b, br), worker.Config{Name: fmt.Sprintf("bench%d", i),
			Chat: map[string]worker.Handler[schema.ChatJob]{model: noop}, Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		if err := w.Start(b.Context()); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = w.StopAndCancel(context.Background()) })
	}
	c, err := client.New(brokertest.Connect(b, br))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	return c
}

func percentiles(b *testing.B, name string, d []time.Duration) {
	slices.Sort(d)
	p := func(q float64) float64 { return float64(d[int(q*float64(len(d)-1))].Microseconds()) }
	b.ReportMetric(p(0.50), name+"-p50-µs")
	b.ReportMetric(p(0.99), name+"-p99-µs")
}

// BenchmarkJobRoundTrip: submit → accepted (publish acknowledged, on disk),
// submit → first event and submit → result of a job
// through JetStream (sync always) to a no-op handler and back, one at a time.
func BenchmarkJobRoundTrip(b *testing.B) {
	b.Run("sync=always", func(b *testing.B) { benchRoundTrip(b, false) })
	b.Run("sync=off", func(b *testing.B) { benchRoundTrip(b, true) })
}

func benchRoundTrip(b *testing.B, noSync bool) {
	c := benchWorkers(b, 1, noSync)
	ctx := b.Context()
	accepted := make([]time.Duration, 0, b.N)
	first := make([]time.Duration, 0, b.N)
	done := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		p, err := c.Submit(ctx, chatJob("hi", nil))
		if err != nil {
			b.Fatal(err)
		}
		accepted = append(accepted, time.Since(t0))
		gotFirst := false
		if _, err := p.Wait(ctx, func(schema.Event) error {
			if !gotFirst {
				gotFirst = true
				first = append(first, time.Since(t0))
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		done = append(done, time.Since(t0))
		p.Close()
	}
	percentiles(b, "accepted", accepted)
	percentiles(b, "first-event", first)
	percentiles(b, "result", done)
}

// BenchmarkCoreRequestReply is the floor: a core NATS request/reply on the
// same server, no queue, no storage.
func BenchmarkCoreRequestReply(b *testing.B) {
	br := brokertest.Run(b, nil)
	srv := brokertest.Connect(b, br)
	if _, err := srv.Subscribe("bench.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		b.Fatal(err)
	}
	_ = srv.Flush()
	nc := brokertest.Connect(b, br)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		if _, err := nc.Request("bench.echo", []byte("hi"), 5*time.Second); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	percentiles(b, "reply", lat)
}

// BenchmarkThroughput: jobs/s through the queue with 64 submitters and 4
// workers (cards) taking no-op jobs, with every write synced to disk and without.
func BenchmarkThroughput(b *testing.B) {
	b.Run("sync=always", func(b *testing.B) { benchThroughput(b, false) })
	b.Run("sync=off", func(b *testing.B) { benchThroughput(b, true) })
}

func benchThroughput(b *testing.B, noSync bool) {
	c := benchWorkers(b, 4, noSync)
	ctx := b.Context()
	jobs := make(chan struct{}, b.N)
	for range b.N {
		jobs <- struct{}{}
	}
	close(jobs)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				if _, err := c.Chat(ctx, chatJob("hi", nil), nil); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "jobs/s")
}
