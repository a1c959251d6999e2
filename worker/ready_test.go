package worker_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/echo"
	"github.com/kiln-project/kiln/test/wait"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/workertest"
)

// slowLoad is a card without faults whose models load when the test says.
type slowLoad struct{ release chan struct{} }

func (slowLoad) Fault(error) bool            { return false }
func (slowLoad) Lost() error                 { return nil }
func (slowLoad) Reset(context.Context) error { return nil }
func (d slowLoad) Load(ctx context.Context) error {
	select {
	case <-d.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// "worker ready" is logged when the worker takes jobs: once its models are
// loaded, not when it registers.
func TestReadyLoggedOnceModelsLoad(t *testing.T) {
	bb := setup(t, topology.Config{})
	var logs wait.Buffer
	card := slowLoad{release: make(chan struct{})}
	w := bb.Worker(t, "ready1", func(c *worker.Config) {
		c.Chat = map[string]worker.Handler[schema.ChatJob]{model: echo.Chat}
		c.Device = card
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	if got := logs.String(); !strings.Contains(got, "loading its models") || strings.Contains(got, "worker ready") {
		t.Fatalf("logs while loading:\n%s", got)
	}
	if st := w.Status(); st.State != schema.StateLoading {
		t.Fatalf("state %s while loading", st.State)
	}
	close(card.release)
	wait.For(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !strings.Contains(logs.String(), "worker ready") {
			return errors.New(`no "worker ready" after the models loaded`)
		}
		return nil
	})
	if n := strings.Count(logs.String(), "worker ready"); n != 1 {
		t.Fatalf("%d ready lines:\n%s", n, logs.String())
	}
}

// Jobs refused as invalid (the sender's fault) are counted apart from the
// ones that failed on the card.
func TestRefusedJobsCountedApartFromFailed(t *testing.T) {
	bb := setup(t, topology.Config{})
	w := bb.Worker(t, "count1", nil)
	c := bb.Client(t)
	ctx := workertest.Context(t)
	for _, md := range []map[string]string{{"fail": "invalid"}, {"fail": "invalid"}, {"fail": "permanent"}, nil} {
		_, err := c.Chat(ctx, chatJob("count me", md), nil)
		if md != nil && md["fail"] == "invalid" && !errors.Is(err, client.ErrInvalid) ||
			md != nil && md["fail"] == "permanent" && !errors.Is(err, client.ErrFailed) || md == nil && err != nil {
			t.Fatalf("job %v: %v", md, err)
		}
	}
	st := w.Status()
	if st.JobsOK != 1 || st.JobsFailed != 1 || st.JobsRefused != 2 {
		t.Fatalf("ok %d, failed %d, refused %d; want 1, 1, 2", st.JobsOK, st.JobsFailed, st.JobsRefused)
	}
}
