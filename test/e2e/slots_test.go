package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/wait"
	"github.com/kiln-project/kiln/worker/workertest"
)

// runningOn waits until worker name says (its status endpoint) that n jobs
// run on it at once.
func runningOn(t *testing.T, url, name string, n int) {
	t.Helper()
	nc := brokertest.ConnectURL(t, url)
	subject := topology.Config{}.WithDefaults().Subjects().Status(name)
	wait.For(t, 30*time.Second, 20*time.Millisecond, func() error {
		msg, err := nc.Request(subject, nil, time.Second)
		if err != nil {
			return err
		}
		var hb schema.Heartbeat
		if err := json.Unmarshal(msg.Data, &hb); err != nil {
			return err
		}
		if len(hb.RunningJobs) != n {
			return fmt.Errorf("%s runs %v, want %d jobs", name, hb.RunningJobs, n)
		}
		return nil
	})
}

// storedResults counts the results kept in KILN_RESULTS.
func storedResults(t *testing.T, url string) uint64 {
	t.Helper()
	js, err := jetstream.New(brokertest.ConnectURL(t, url))
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(t.Context(), topology.Config{}.WithDefaults().ResultsStream())
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// A worker process running three jobs at once is stopped past its grace
// (SIGTERM) or killed (kill -9): each of the three is handed back, or
// redelivered after the ack wait, and finishes on another worker with
// exactly one result.
func TestSeveralRunningJobsSurviveTheirWorkerProcess(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
		env  []string
	}{
		{name: "sigterm-past-grace", sig: syscall.SIGTERM, env: []string{envGrace + "=200ms"}},
		{name: "kill9", sig: syscall.SIGKILL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			url := startBroker(t, 2*time.Second)
			c := newClient(t, url)
			first := child(t, append([]string{envRole + "=worker", envURL + "=" + url, envName + "=first3", envSlots + "=3", envAckWait + "=2s"}, tc.env...)...)
			waitWorkers(t, c, 1)
			ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer cancel()
			var ps []*client.Pending
			for range 3 {
				p, err := c.Submit(ctx, longJob(60, 50))
				if err != nil {
					t.Fatal(err)
				}
				ps = append(ps, p)
			}
			runningOn(t, url, "first3", 3)
			if err := first.Process.Signal(tc.sig); err != nil {
				t.Fatal(err)
			}
			err := first.Wait()
			if tc.sig == syscall.SIGTERM && err != nil {
				t.Fatalf("worker exit after SIGTERM: %v (want 0)", err)
			}
			child(t, envRole+"=worker", envURL+"="+url, envName+"=second3", envSlots+"=3", envAckWait+"=2s")
			for _, res := range workertest.WaitAll(t, ctx, ps) {
				if res.Status != schema.StatusOK || res.Worker != "second3" || res.Attempt != 2 || strings.Count(res.Text, "w") != 60 {
					t.Fatalf("result %+v: want ok from second3 on attempt 2 with the whole text", res)
				}
			}
			if n := storedResults(t, url); n != 3 {
				t.Fatalf("%d results stored, want 3", n)
			}
		})
	}
}
