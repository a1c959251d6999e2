package workertest

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/kiln-project/kiln/broker"
	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker"
)

// QueueOptions configure StartQueue. The zero value is a queue on the default topology (with
// the shorter ack wait and heartbeat interval of QueueOptions.Topology) whose workers serve
// nothing until their own configuration says what.
type QueueOptions struct {
	// Topology overrides the topology defaults, as brokertest.Options.Topology does, except
	// that AckWait is at least 3 s and HeartbeatInterval at least 1 s: a zero one is that
	// short rather than the topology's default (30 s, 5 s), so that a job a stopped worker
	// held comes back and a worker's heartbeats show within a test's patience.
	Topology topology.Config
	// Chat and Image are the handlers every worker of the queue serves unless the
	// configuration given to Queue.Worker changes them (each worker gets its own copy of the
	// maps).
	Chat  map[string]worker.Handler[schema.ChatJob]
	Image map[string]worker.Handler[schema.ImageJob]
}

// Queue is a real embedded broker (brokertest.Run) with the kiln topology, for tests that
// take jobs through the queue: start workers on it with Worker and clients with Client. All
// of it stops when the test ends.
type Queue struct {
	// Broker is the broker: brokertest.Connect(tb, q.Broker) connects to it.
	Broker *broker.Broker
	// Topology is the topology the broker was provisioned with and the workers use (see
	// QueueOptions.Topology).
	Topology topology.Config

	chat  map[string]worker.Handler[schema.ChatJob]
	image map[string]worker.Handler[schema.ImageJob]
}

// StartQueue starts a broker for tb, shut down when tb ends.
func StartQueue(tb testing.TB, o QueueOptions) *Queue {
	tb.Helper()
	topo := o.Topology
	topo.AckWait = max(topo.AckWait, 3*time.Second)
	topo.HeartbeatInterval = max(topo.HeartbeatInterval, time.Second)
	b := brokertest.Run(tb, &brokertest.Options{Topology: topo})
	return &Queue{Broker: b, Topology: topo, chat: o.Chat, image: o.Image}
}

// discard is the workers' logger unless their configuration sets one.
var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// Worker starts a worker named name on the queue, on a connection of its own, and stops it
// (StopAndCancel) when tb ends. It serves the queue's handlers, retries a failed job after
// 50 ms and logs nowhere; configure, when not nil, changes that configuration (the handlers,
// the device, the governor...) before the worker starts. Worker fails tb if the worker does
// not start within 20 s.
func (q *Queue) Worker(tb testing.TB, name string, configure func(*worker.Config)) *worker.Worker {
	tb.Helper()
	cfg := worker.Config{
		Name:        name,
		Topology:    q.Topology,
		Chat:        maps.Clone(q.chat),
		Image:       maps.Clone(q.image),
		RetryDelays: []time.Duration{50 * time.Millisecond},
		Logger:      discard,
	}
	if configure != nil {
		configure(&cfg)
	}
	w, err := worker.New(brokertest.Connect(tb, q.Broker), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(tb.Context(), 20*time.Second)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = w.StopAndCancel(ctx)
	})
	return w
}

// Client returns a client of the queue on a connection of its own, closed when tb ends. It
// polls for a result it missed every second (client.WithResultPoll), before opts.
func (q *Queue) Client(tb testing.TB, opts ...client.Option) *client.Client {
	tb.Helper()
	c, err := client.New(brokertest.Connect(tb, q.Broker), append([]client.Option{client.WithResultPoll(time.Second)}, opts...)...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	return c
}

// Context is tb's context bounded to 30 s, for a test's calls through the queue (submit, wait,
// chat): a job that never ends fails the test with context.DeadlineExceeded rather than
// hanging it until go test's -timeout.
func Context(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(tb.Context(), 30*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

// WaitAll waits for the result of every job in ps, in parallel (each Wait reads its own
// events), and returns them in the order of ps; a Wait that returns an error fails tb.
func WaitAll(tb testing.TB, ctx context.Context, ps []*client.Pending) []*schema.Result {
	tb.Helper()
	out := make([]*schema.Result, len(ps))
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Go(func() {
			res, err := p.Wait(ctx, nil)
			if err != nil {
				tb.Errorf("job %s: %v", p.ID, err)
				return
			}
			out[i] = res
		})
	}
	wg.Wait()
	if tb.Failed() {
		tb.FailNow()
	}
	return out
}
