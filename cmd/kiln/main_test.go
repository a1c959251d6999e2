package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// kiln runs the command in-process and returns its exit code, stdout and stderr.
func kiln(t *testing.T, ctx context.Context, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(ctx, args, strings.NewReader(""), &out, &errOut)
	return code, out.String(), errOut.String()
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestUsageAndUnknownCommand(t *testing.T) {
	if code, out, _ := kiln(t, t.Context(), "help"); code != 0 || !strings.Contains(out, "chat") || !strings.Contains(out, "KILN_NATS_URL") {
		t.Fatalf("help: %d %q", code, out)
	}
	if code, _, errOut := kiln(t, t.Context(), "bogus"); code != 2 || !strings.Contains(errOut, `unknown command "bogus"`) {
		t.Fatalf("unknown command: %d %q", code, errOut)
	}
	if code, _, errOut := kiln(t, t.Context(), "chat", "--no-such-flag"); code != 2 || !strings.Contains(errOut, "no-such-flag") {
		t.Fatalf("bad flag: %d %q", code, errOut)
	}
	if code, _, errOut := kiln(t, t.Context(), "chat", "--nats", "nats://127.0.0.1:1", "hi"); code != 1 || !strings.Contains(errOut, "is kiln running?") {
		t.Fatalf("no broker: %d %q", code, errOut)
	}
}

func TestUpServesTheQueueCommands(t *testing.T) {
	addr := freeAddr(t)
	url := "nats://" + addr
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Add(1)
	upCode := -1
	go func() {
		defer wg.Done()
		upCode, _, _ = kiln(t, ctx, "up", "--listen", addr, "--data", t.TempDir(), "--models", t.TempDir(), "--name", "shelf-card0", "--grace", "1s")
	}()
	defer func() {
		cancel()
		wg.Wait()
		if upCode != 0 {
			t.Errorf("kiln up exited %d after its context ended, want 0", upCode)
		}
	}()
	// Wait for the worker to register.
	deadline := time.Now().Add(20 * time.Second)
	var status struct {
		Workers []struct {
			Worker, State string
		}
		Queue []any
	}
	for {
		code, out, _ := kiln(t, t.Context(), "status", "--json", "--nats", url)
		if code == 0 && json.Unmarshal([]byte(out), &status) == nil && len(status.Workers) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kiln status never showed the worker: %d %q", code, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if status.Workers[0].Worker != "shelf-card0" || status.Workers[0].State != "ready" {
		t.Fatalf("status %+v", status)
	}
	code, out, _ := kiln(t, t.Context(), "status", "--nats", url)
	if code != 0 || !strings.Contains(out, "shelf-card0") || !strings.Contains(out, "QUEUE") {
		t.Fatalf("status table: %d %q", code, out)
	}
	// No model is served yet: chat says so on stderr with a non-zero exit.
	code, out, errOut := kiln(t, t.Context(), "chat", "--nats", url, "hello")
	if code != 1 || out != "" || !strings.Contains(errOut, "no live worker serves any chat model") {
		t.Fatalf("chat without a model: %d %q %q", code, out, errOut)
	}
	code, _, errOut = kiln(t, t.Context(), "result", "--nats", url, "01NOSUCHJOB")
	if code != 1 || !strings.Contains(errOut, "no stored result for 01NOSUCHJOB") {
		t.Fatalf("result of an unknown job: %d %q", code, errOut)
	}
	code, out, errOut = kiln(t, t.Context(), "cancel", "--nats", url, "01SOMEJOB")
	if code != 0 || !strings.Contains(out, "cancel requested for 01SOMEJOB") {
		t.Fatalf("cancel: %d %q %q", code, out, errOut)
	}
	// A result stored as a worker stores it reads back through `kiln result`.
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	m := &nats.Msg{Subject: "kiln.results.01DONE", Header: nats.Header{"Content-Type": {"application/json"}},
		Data: []byte(`{"job_id":"01DONE","status":"ok","text":"a stored answer","worker":"w9","attempt":1,"usage":{"queue_ms":3,"total_ms":40}}`)}
	if _, err := nc.RequestMsg(m, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	code, out, _ = kiln(t, t.Context(), "result", "--nats", url, "01DONE")
	if code != 0 || !strings.Contains(out, "a stored answer") || !strings.Contains(out, "ok on w9") {
		t.Fatalf("result: %d %q", code, out)
	}
	evCtx, evCancel := context.WithTimeout(t.Context(), 4*time.Second)
	defer evCancel()
	_, out, _ = kiln(t, evCtx, "events", "--nats", url, "--since", "1m")
	if !strings.Contains(out, "heartbeat") || !strings.Contains(out, "shelf-card0") {
		t.Fatalf("events: %q", out)
	}
}
