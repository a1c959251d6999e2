package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/client"
)

// memoryBound is the most resident memory a broker or a worker may reach
// while 1,000 jobs are queued and run (measured: broker ~32 MiB, worker
// ~47 MiB as this test binary built with -race).
const memoryBound = 128 << 20

func TestLoadBoundedQueue(t *testing.T) {
	t.Parallel()
	const clients, perClient = 20, 50
	const queueMax = clients * perClient
	n := singleNode(t, "--queue-max", fmt.Sprint(queueMax))
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()

	// 20 controllers, each on its own connection, queue 50 jobs each while
	// no worker runs: the queue fills to its bound.
	var mu sync.Mutex
	var pending []*client.Pending
	want := map[string]string{}
	var cs []*client.Client
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		nc, err := nats.Connect(n.url)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		c, err := client.New(nc, client.WithClientID(fmt.Sprintf("ctl-%d", i)), client.WithoutWorkerCheck())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cs = append(cs, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range perClient {
				tag := fmt.Sprintf("c%dj%d", i, j)
				p, err := c.Submit(ctx, echoJob(tag, 3, 0))
				if err != nil {
					errs <- fmt.Errorf("client %d job %d: %w", i, j, err)
					return
				}
				mu.Lock()
				pending = append(pending, p)
				want[p.ID] = fmt.Sprintf("echo: %s-0 %s-1 %s-2", tag, tag, tag)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// The queue is full: one more is refused at publish, and nothing is lost.
	if _, err := cs[0].Submit(ctx, echoJob("one-too-many", 1, 0)); !errors.Is(err, client.ErrQueueFull) {
		t.Fatalf("job %d: %v, want ErrQueueFull", queueMax+1, err)
	}

	w1 := startWorker(t, n.url, "w1", "", 30*time.Second)
	w2 := startWorker(t, n.url, "w2", "", 30*time.Second)
	results := make(chan error, len(pending))
	for _, p := range pending {
		go func() {
			defer p.Close()
			res, err := p.Wait(ctx, nil)
			if err == nil && res.Text != want[p.ID] {
				err = fmt.Errorf("job %s: text %q, want %q", p.ID, res.Text, want[p.ID])
			}
			results <- err
		}()
	}
	byWorker := 0
	for range pending {
		if err := <-results; err != nil {
			t.Fatal(err)
		}
		byWorker++
	}
	for _, p := range []struct {
		name string
		p    *proc
	}{{"broker", n.p}, {"worker w1", w1}, {"worker w2", w2}} {
		rss := p.p.peakRSS(t)
		t.Logf("%s peak RSS %d MiB", p.name, rss>>20)
		if rss > memoryBound {
			t.Errorf("%s reached %d MiB of memory for %d queued jobs (bound %d MiB)", p.name, rss>>20, queueMax, memoryBound>>20)
		}
	}
	// The workers (default topology) left the broker's queue bound alone.
	nc, err := nats.Connect(n.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if info := streamInfoSingle(t, ctx, js, "KILN_JOBS"); info.Config.MaxMsgs != queueMax {
		t.Fatalf("KILN_JOBS MaxMsgs %d after the workers started, want the broker's %d", info.Config.MaxMsgs, queueMax)
	}
	if byWorker != queueMax {
		t.Fatalf("%d results, want %d", byWorker, queueMax)
	}
}

func streamInfoSingle(t *testing.T, ctx context.Context, js jetstream.JetStream, name string) *jetstream.StreamInfo {
	t.Helper()
	st, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info
}
