package worker

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
)

// The worker takes AckWait and MaxDeliver from the consumers it binds to,
// not from its own topology: an existing consumer is left as provisioned,
// a missing one is made from the topology.
func TestRoutesTakeTheConsumersLimits(t *testing.T) {
	t.Parallel()
	b := brokertest.Run(t, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	nc := brokertest.Connect(t, b)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var top topology.Config // defaults: AckWait 30 s, MaxDeliver 5
	cc := top.ConsumerConfig(schema.KindChat, "m", schema.LaneHigh)
	cc.AckWait, cc.MaxDeliver = 7*time.Second, 2
	if _, err := js.CreateConsumer(ctx, top.WithDefaults().JobsStream(), cc); err != nil {
		t.Fatal(err)
	}
	noop := HandlerFunc[schema.ChatJob](func(context.Context, *Job[schema.ChatJob]) (*schema.Result, error) { return nil, nil })
	w, err := New(nc, Config{Name: "w1", Topology: top, Chat: map[string]Handler[schema.ChatJob]{"m": noop},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.StopAndCancel(context.Background()) })
	want := map[string][2]any{
		schema.LaneHigh:   {7 * time.Second, 2},                                  // provisioned
		schema.LaneNormal: {topology.DefaultAckWait, topology.DefaultMaxDeliver}, // made by the worker
	}
	for _, rt := range w.routes {
		if got := [2]any{rt.ackWait, rt.maxDeliver}; got != want[rt.lane] {
			t.Errorf("%s lane: ack wait, max deliver = %v, want %v", rt.lane, got, want[rt.lane])
		}
	}
}
