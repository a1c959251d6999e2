package cluster

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
)

// BenchmarkDispatch compares a single `kiln broker` with a 3-node R3
// cluster on the same machine in the same run, both with the deploy/
// configs, init-auth's users and sync to disk before every ack: two echo
// workers in their own processes, jobs of one word.
//
//   - throughput: 16 controllers submit and wait concurrently; jobs/s is
//     the dispatch rate (publish, store, fetch, run, store result, reply, ack).
//
//   - first-event: one job at a time; submit→first-event is the time from
//     Submit to the "started" event at the client (p50, p99).
//
//     go test -run '^$' -bench Dispatch -benchtime 2000x ./test/cluster
func BenchmarkDispatch(b *testing.B) {
	for _, setup := range []string{"single", "cluster3"} {
		b.Run(setup, func(b *testing.B) {
			dir := initAuth(b)
			var url string
			if setup == "single" {
				url = singleNode(b, "--config", filepath.Join(dir, "single.conf")).url
			} else {
				url = urls(startCluster(b, dir))
			}
			startWorker(b, url, "w1", filepath.Join(dir, "worker.nk"), 30*time.Second)
			startWorker(b, url, "w2", filepath.Join(dir, "worker.nk"), 30*time.Second)
			newClient := func(id string) *client.Client {
				nc := login(b, url, dir, id, nil)
				c, err := client.New(nc, client.WithClientID(id))
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(c.Close)
				return c
			}
			c := newClient("room-1")
			waitServedBy(b, c, 2)
			job := func() *schema.ChatJob {
				return &schema.ChatJob{JobHeader: schema.JobHeader{Model: "echo"}, Messages: []schema.Message{{Role: "user", Content: "x"}}}
			}
			b.Run("throughput", func(b *testing.B) {
				ctx, cancel := context.WithTimeout(b.Context(), 5*time.Minute)
				defer cancel()
				const senders = 16
				jobs := make(chan struct{}, b.N)
				for range b.N {
					jobs <- struct{}{}
				}
				close(jobs)
				b.ResetTimer()
				start := time.Now()
				var wg sync.WaitGroup
				for range senders {
					wg.Go(func() {
						for range jobs {
							if _, err := c.Chat(ctx, job(), nil); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "jobs/s")
			})
			b.Run("first-event", func(b *testing.B) {
				ctx, cancel := context.WithTimeout(b.Context(), 5*time.Minute)
				defer cancel()
				lat := make([]time.Duration, 0, b.N)
				b.ResetTimer()
				for range b.N {
					t0 := time.Now()
					p, err := c.Submit(ctx, job())
					if err != nil {
						b.Fatal(err)
					}
					first := time.Duration(0)
					if _, err := p.Wait(ctx, func(ev schema.Event) error {
						if first == 0 {
							first = time.Since(t0)
						}
						return nil
					}); err != nil {
						b.Fatal(err)
					}
					p.Close()
					lat = append(lat, first)
				}
				b.StopTimer()
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			})
		})
	}
}
