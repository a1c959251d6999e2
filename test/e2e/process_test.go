package e2e

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/wait"
)

func startBroker(t *testing.T, ackWait time.Duration) string {
	b := brokertest.Run(t, &brokertest.Options{Topology: topology.Config{AckWait: ackWait, HeartbeatInterval: time.Second}})
	return b.ClientURL()
}

func newClient(t *testing.T, url string) *client.Client {
	c, err := client.New(brokertest.ConnectURL(t, url))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// waitWorkers waits until n workers are in the registry.
func waitWorkers(t *testing.T, c *client.Client, n int) {
	t.Helper()
	wait.For(t, 20*time.Second, 50*time.Millisecond, func() error {
		ws, err := c.Workers(t.Context())
		if err == nil && len(ws) < n {
			err = fmt.Errorf("%d workers registered, want %d", len(ws), n)
		}
		return err
	})
}

func longJob(words int, delayMS int) *schema.ChatJob {
	return &schema.ChatJob{
		JobHeader: schema.JobHeader{Model: "echo", Metadata: map[string]string{"delay_ms": fmt.Sprint(delayMS), "pid": "1"}},
		Messages:  []schema.Message{{Role: "user", Content: strings.TrimSpace(strings.Repeat("w ", words))}},
	}
}

func TestKilledWorkerJobCompletesOnAnother(t *testing.T) {
	t.Parallel()
	url := startBroker(t, 2*time.Second)
	c := newClient(t, url)
	first := child(t, envRole+"=worker", envURL+"="+url, envName+"=first", envAckWait+"=2s")
	waitWorkers(t, c, 1)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	p, err := c.Submit(ctx, longJob(20, 40))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var text strings.Builder // what a caller shows: reset on restart
	var starts []string
	killed := false
	res, err := p.Wait(ctx, func(ev schema.Event) error {
		switch ev.Type {
		case schema.EventStarted:
			starts = append(starts, fmt.Sprintf("%s#%d", ev.Worker, ev.Attempt))
			text.Reset()
		case schema.EventToken:
			text.WriteString(ev.Text)
			if !killed && ev.Seq == 5 {
				killed = true
				if err := first.Process.Signal(syscall.SIGKILL); err != nil {
					return err
				}
				_ = first.Wait()
				child(t, envRole+"=worker", envURL+"="+url, envName+"=second", envAckWait+"=2s")
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(starts, " ") != "first#1 second#2" {
		t.Fatalf("starts %v, want the first worker then the second", starts)
	}
	if res.Worker != "second" || res.Attempt != 2 || !strings.HasPrefix(res.Text, text.String()) || strings.Count(text.String(), "w") != 20 {
		t.Fatalf("result %+v; streamed after restart %q", res, text.String())
	}
}

func TestSIGTERMFinishesRunningJobThenExits(t *testing.T) {
	t.Parallel()
	url := startBroker(t, 3*time.Second)
	c := newClient(t, url)
	w := child(t, envRole+"=worker", envURL+"="+url, envName+"=draining", envGrace+"=20s")
	waitWorkers(t, c, 1)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	p, err := c.Submit(ctx, longJob(10, 50))
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.Wait(ctx, func(ev schema.Event) error {
		if ev.Type == schema.EventStarted {
			return w.Process.Signal(syscall.SIGTERM)
		}
		return nil
	})
	if err != nil || res.Worker != "draining" || res.Attempt != 1 || strings.Count(res.Text, "w") != 10 {
		t.Fatalf("result %+v, %v", res, err)
	}
	if err := w.Wait(); err != nil {
		t.Fatalf("worker exit after SIGTERM: %v (want 0)", err)
	}
}

func TestSIGTERMPastGraceHandsJobBack(t *testing.T) {
	t.Parallel()
	url := startBroker(t, 3*time.Second)
	c := newClient(t, url)
	w := child(t, envRole+"=worker", envURL+"="+url, envName+"=impatient", envGrace+"=200ms")
	waitWorkers(t, c, 1)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	p, err := c.Submit(ctx, longJob(30, 50))
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.Wait(ctx, func(ev schema.Event) error {
		if ev.Type == schema.EventStarted && ev.Attempt == 1 {
			if err := w.Process.Signal(syscall.SIGTERM); err != nil {
				return err
			}
			if err := w.Wait(); err != nil {
				return fmt.Errorf("worker exit after SIGTERM: %w (want 0)", err)
			}
			child(t, envRole+"=worker", envURL+"="+url, envName+"=patient")
		}
		return nil
	})
	if err != nil || res.Worker != "patient" || res.Attempt != 2 || strings.Count(res.Text, "w") != 30 {
		t.Fatalf("result %+v, %v", res, err)
	}
}

func TestClientsInSeparateProcesses(t *testing.T) {
	t.Parallel()
	url := startBroker(t, 3*time.Second)
	c := newClient(t, url)
	child(t, envRole+"=worker", envURL+"="+url, envName+"=w1")
	child(t, envRole+"=worker", envURL+"="+url, envName+"=w2")
	waitWorkers(t, c, 2)
	var clients []interface{ Wait() error }
	for i := range 4 {
		clients = append(clients, child(t, envRole+"=client", envURL+"="+url, fmt.Sprintf("%s=ctl%d", envName, i), envJobs+"=10"))
	}
	for i, cl := range clients {
		if err := cl.Wait(); err != nil {
			t.Errorf("client process %d: %v", i, err)
		}
	}
}
