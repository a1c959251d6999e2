package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
)

// envBrokerKills sets how many times in a row TestBrokerKilledMidStream
// kills the broker (default 20, the bar).
const envBrokerKills = "KILN_E2E_BROKER_KILLS"

// brokerProcess is a broker in a process of its own on a fixed address and
// store, which the test kills with SIGKILL and starts again.
type brokerProcess struct {
	listen, dir string
	cmd         *exec.Cmd
	exited      chan error // the process's exit, once
}

// start runs the broker and waits until it says it is ready.
func (b *brokerProcess) start() error {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"=broker", envListen+"="+b.listen, envData+"="+b.dir, envAckWait+"="+brokerKillAckWait)
	ready := &lineWriter{line: []byte("ready\n"), seen: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = ready, os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	b.cmd, b.exited = cmd, make(chan error, 1)
	go func() { b.exited <- cmd.Wait() }()
	select {
	case <-ready.seen:
		return nil
	case err := <-b.exited:
		b.cmd = nil
		return fmt.Errorf("broker exited before it was ready: %v", err)
	case <-time.After(30 * time.Second):
		return errors.New("broker not ready after 30 s")
	}
}

// kill kills the broker with SIGKILL, as a power cut or the OOM killer
// would, and waits until it is gone (and its store lock with it).
func (b *brokerProcess) kill() error {
	if b.cmd == nil {
		return nil
	}
	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	<-b.exited
	b.cmd = nil
	return nil
}

// lineWriter closes seen once line has been written to it.
type lineWriter struct {
	line []byte
	seen chan struct{}
	buf  []byte
	once sync.Once
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	if bytes.Contains(w.buf, w.line) {
		w.once.Do(func() { close(w.seen) })
		w.buf = w.buf[:0]
	}
	return len(p), nil
}

// brokerKillAckWait is the ack wait of TestBrokerKilledMidStream: a job
// whose worker died with the broker comes back after it.
const brokerKillAckWait = "1s"

// freeAddr is a loopback address with a port nobody listens on now.
func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestBrokerKilledMidStream kills the broker (its own process) with kill -9
// while a job streams, at its started event or one of its first tokens, and
// starts it again on the same store and port; the client reconnects. Every
// other time the worker is killed with it, as when `kiln up` (broker and
// worker in one process) is killed, and started again under the same name.
// The delivery state the broker had not flushed yet is lost, so the job may
// be delivered again with the same attempt number, and events sent while
// the client was away are lost. Each time, the text a caller assembles by
// the documented rule (discard on every started event) is exactly one run's
// text, and the job has exactly one result, the stored one. 20 times in a
// row.
func TestBrokerKilledMidStream(t *testing.T) {
	t.Parallel()
	reps := 20
	if s := os.Getenv(envBrokerKills); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a count", envBrokerKills, s)
		}
		reps = n
	}
	br := &brokerProcess{listen: freeAddr(t), dir: t.TempDir()}
	if err := br.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = br.kill() })
	url := "nats://" + br.listen
	nc := brokertest.ConnectURL(t, url, nats.ReconnectWait(20*time.Millisecond), nats.MaxReconnects(-1))
	c, err := client.New(nc, client.WithClientID("survivor"), client.WithoutWorkerCheck(), client.WithResultPoll(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	workerEnv := []string{envRole + "=worker", envURL + "=" + url, envName + "=steady", envAckWait + "=" + brokerKillAckWait}
	w := child(t, workerEnv...)
	waitWorkers(t, c, 1)

	// Every result event that reaches the client's reply subjects, by job:
	// a result sent twice (a lost ack, a re-sent stored result) is the same
	// result, never a second one.
	var mu sync.Mutex
	results := map[string]map[string]bool{}
	resent := 0 // result events of a delivery that found the result stored
	spy, err := nc.Subscribe(schema.Subjects{}.ClientReplies(c.ID()), func(m *nats.Msg) {
		var ev schema.Event
		if schema.Msgpack.Unmarshal(m.Data, &ev) == nil && ev.Type == schema.EventResult {
			mu.Lock()
			defer mu.Unlock()
			if results[ev.JobID] == nil {
				results[ev.JobID] = map[string]bool{}
			}
			results[ev.JobID][resultKey(ev.Result)] = true
			if ev.Run != ev.Result.Run {
				resent++
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer spy.Unsubscribe()

	var restarted, startedOver, sameAttempt int
	for rep := range reps {
		words := make([]string, 16)
		for i := range words {
			words[i] = fmt.Sprintf("r%dw%d", rep, i)
		}
		want := "echo: " + strings.Join(words, " ")
		job := &schema.ChatJob{JobHeader: schema.JobHeader{Model: "echo", Metadata: map[string]string{"delay_ms": "30"}},
			Messages: []schema.Message{{Role: "user", Content: strings.Join(words, " ")}}}
		killAt := rep/2%4 + 1 // the started event (seq 1) or one of the first three tokens
		withWorker := rep%2 == 1
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		p, err := c.Submit(ctx, job)
		if err != nil {
			cancel()
			t.Fatalf("rep %d: submit: %v", rep, err)
		}
		var text strings.Builder
		runs := map[string]int{} // run → attempt, as the started events said
		killed := false
		res, err := p.Wait(ctx, func(ev schema.Event) error {
			switch ev.Type {
			case schema.EventStarted:
				text.Reset()
				if ev.Seq == 0 {
					startedOver++
				}
				runs[ev.Run] = ev.Attempt
			case schema.EventToken:
				text.WriteString(ev.Text)
			}
			if !killed && ev.Seq == killAt {
				killed = true
				if withWorker {
					if err := w.Process.Signal(syscall.SIGKILL); err != nil {
						return err
					}
					_ = w.Wait()
				}
				if err := br.kill(); err != nil {
					return err
				}
				if err := br.start(); err != nil {
					return err
				}
				if withWorker {
					w = child(t, workerEnv...)
				}
			}
			return nil
		})
		p.Close()
		cancel()
		if err != nil {
			t.Fatalf("rep %d: %v", rep, err)
		}
		if !killed {
			t.Fatalf("rep %d: the broker was not killed (no event %d)", rep, killAt)
		}
		if text.String() != want || res.Text != want {
			t.Fatalf("rep %d: assembled %q, result %q; want one run's text %q (runs %v)", rep, text.String(), res.Text, want, runs)
		}
		if len(runs) > 1 {
			restarted++
			attempts := map[int]bool{}
			for _, a := range runs {
				if attempts[a] {
					sameAttempt++
					break
				}
				attempts[a] = true
			}
		}
		rctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		stored, err := c.Result(rctx, p.ID)
		cancel()
		if err != nil || resultKey(stored) != resultKey(res) {
			t.Fatalf("rep %d: stored result %+v, %v; the client got %+v", rep, stored, err, res)
		}
		mu.Lock()
		for id, seen := range results {
			if len(seen) > 1 {
				t.Errorf("job %s: %d different results: %v", id, len(seen), seen)
			}
		}
		mu.Unlock()
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d broker kills (%d with the worker): %d jobs ran again (%d with a repeated attempt number), "+
		"%d streams started over at the result, %d stored results re-sent",
		reps, reps/2, restarted, sameAttempt, startedOver, resent)
}

// resultKey is what tells two results apart.
func resultKey(res *schema.Result) string {
	return fmt.Sprintf("%s %s %q", res.Run, res.Status, res.Text)
}
