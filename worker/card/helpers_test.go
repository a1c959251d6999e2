package card_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/kiln-project/kiln/broker"
	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/worker"
)

// The queue helpers of the worker package's tests, for the handler tests
// that moved here with the handlers.

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type bundle struct {
	b    *broker.Broker
	topo topology.Config
}

func setup(t *testing.T, topo topology.Config) *bundle {
	t.Helper()
	topo.AckWait = max(topo.AckWait, 3*time.Second)
	topo.HeartbeatInterval = max(topo.HeartbeatInterval, time.Second)
	b := brokertest.Run(t, &brokertest.Options{Topology: topo})
	return &bundle{b: b, topo: topo}
}

// worker starts a worker named name on the broker; mod sets its handlers.
func (bb *bundle) worker(t *testing.T, name string, mod func(*worker.Config)) *worker.Worker {
	t.Helper()
	cfg := worker.Config{
		Name:        name,
		Topology:    bb.topo,
		RetryDelays: []time.Duration{50 * time.Millisecond},
		Logger:      quiet,
	}
	if mod != nil {
		mod(&cfg)
	}
	w, err := worker.New(brokertest.Connect(t, bb.b), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = w.StopAndCancel(ctx)
	})
	return w
}

func (bb *bundle) client(t *testing.T, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(brokertest.Connect(t, bb.b), append([]client.Option{client.WithResultPoll(time.Second)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
