package worker_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/echo"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/workertest"
)

// halfLoaded is a Device whose packages load one by one and one of which
// failed (worker.ModelChecker): no card behind it, no faults.
type halfLoaded struct{ failed map[string]error }

func (d *halfLoaded) Fault(error) bool               { return false }
func (d *halfLoaded) Lost() error                    { return nil }
func (d *halfLoaded) Reset(context.Context) error    { return nil }
func (d *halfLoaded) Load(context.Context) error     { return nil }
func (d *halfLoaded) ModelErr(_, model string) error { return d.failed[model] }

// A worker whose Device reports a model's package failed publishes a
// load_failed event naming it, lists it failed (with why) in heartbeats,
// serves its other models, and takes none of the failed model's jobs: they
// all go to a worker that serves it.
func TestFailedModelIsNotFetched(t *testing.T) {
	const broken = "broken"
	bb := workertest.StartQueue(t, workertest.QueueOptions{
		Chat: map[string]worker.Handler[schema.ChatJob]{model: echo.Chat, broken: echo.Chat},
	})
	nc := brokertest.Connect(t, bb.Broker)
	deviceEvents := collect[schema.DeviceEvent](t, nc, "kiln.events.device.half1")
	reason := errors.New("model broken: unet.axmodel is missing")
	half := bb.Worker(t, "half1", func(c *worker.Config) { c.Device = &halfLoaded{failed: map[string]error{broken: reason}} })
	evs := deviceEvents.waitFor(t, "ready", func(e []schema.DeviceEvent) bool {
		return slices.ContainsFunc(e, func(d schema.DeviceEvent) bool { return d.Type == worker.DeviceReady })
	})
	if evs[0].Type != worker.DeviceLoadFailed || evs[0].Model != broken || evs[0].Message != reason.Error() {
		t.Fatalf("device events %+v, want load_failed for %q first", evs, broken)
	}
	st := half.Status()
	for _, m := range st.Models {
		if m.Name == broken && (m.State != schema.ModelFailed || m.Error != reason.Error() || st.Serves(m.Kind, m.Name)) {
			t.Fatalf("failed model in the heartbeat: %+v", m)
		}
		if m.Name == model && (m.State == schema.ModelFailed || !st.Serves(m.Kind, m.Name)) {
			t.Fatalf("good model in the heartbeat: %+v", m)
		}
	}
	bb.Worker(t, "full1", nil)
	c := bb.Client(t)
	ctx := workertest.Context(t)
	for range 4 {
		job := chatJob("x", nil)
		job.Model = broken
		res, err := c.Chat(ctx, job, nil)
		if err != nil || res.Status != schema.StatusOK || res.Worker != "full1" {
			t.Fatalf("job for the failed model: %+v, %v; want ok from full1", res, err)
		}
	}
	res, err := c.Chat(ctx, chatJob("y", nil), nil)
	if err != nil || res.Status != schema.StatusOK {
		t.Fatalf("job for the good model: %+v, %v", res, err)
	}
}
