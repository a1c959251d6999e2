package worker_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker/workertest"
)

// An operator (or an older worker) provisioned the consumer with fewer
// deliveries than the worker's topology says: the consumer's MaxDeliver
// holds, so the worker's own last delivery answers, not the reaper.
func TestTheConsumersMaxDeliverHolds(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{}) // the worker's topology: MaxDeliver 5
	ctx := workertest.Context(t)
	js, _ := jetstream.New(brokertest.Connect(t, bb.Broker))
	stream := bb.Topology.WithDefaults().JobsStream()
	cc := bb.Topology.ConsumerConfig(schema.KindChat, model, schema.LaneNormal)
	cc.MaxDeliver = 2
	if _, err := js.CreateConsumer(ctx, stream, cc); err != nil {
		t.Fatal(err)
	}
	bb.Worker(t, "w1", nil)
	c := bb.Client(t)
	res, err := c.Chat(ctx, chatJob("never", map[string]string{"fail_until": "99"}), nil)
	if !errors.Is(err, client.ErrFailed) || res.Attempt != 2 || res.Worker != "w1" ||
		!strings.Contains(res.Error.Message, "failed on all 2 deliveries") {
		t.Fatalf("result %+v (error %+v), err %v; want the worker's error result on delivery 2", res, res.Error, err)
	}
	cons, err := js.Consumer(ctx, stream, cc.Durable)
	if err != nil {
		t.Fatal(err)
	}
	if got := cons.CachedInfo().Config; got.MaxDeliver != 2 || got.AckWait != cc.AckWait {
		t.Fatalf("the worker changed the consumer: MaxDeliver %d, AckWait %v", got.MaxDeliver, got.AckWait)
	}
}
