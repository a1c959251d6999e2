package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kiln-project/kiln/test/wait"
)

// kiln runs the command in-process and returns its exit code, stdout and stderr.
func kiln(t testing.TB, ctx context.Context, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(ctx, args, strings.NewReader(""), &out, &errOut)
	return code, out.String(), errOut.String()
}

func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// upProcess is `kiln up` running in-process for a test, on a free port.
type upProcess struct {
	url    string
	cancel context.CancelFunc
	done   chan struct{}
	code   int
	stderr string
}

// startUp runs `kiln up --listen <free port> --data <temp> --grace 1s
// --gateway off` plus
// args, stopped at test end. An exit other than 0 after the stop fails the
// test unless the test waited for the exit itself.
func startUp(t testing.TB, args ...string) *upProcess {
	t.Helper()
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(t.Context())
	u := &upProcess{url: "nats://" + addr, cancel: cancel, done: make(chan struct{}), code: -1}
	// No gateway unless the test asks for one (--gateway ADDR after these wins).
	args = append([]string{"up", "--listen", addr, "--data", t.TempDir(), "--grace", "1s", "--gateway", "off"}, args...)
	go func() {
		defer close(u.done)
		u.code, _, u.stderr = kiln(t, ctx, args...)
	}()
	t.Cleanup(func() {
		select {
		case <-u.done:
			return // the test saw it exit
		default:
		}
		cancel()
		<-u.done
		if u.code != 0 {
			t.Errorf("kiln up exited %d after its context ended, want 0: %s", u.code, u.stderr)
		}
	})
	return u
}

// wait waits for kiln up to exit by itself and returns its code and stderr.
func (u *upProcess) wait() (int, string) {
	<-u.done
	return u.code, u.stderr
}

// fleetStatus is what the tests read of `kiln status --json`.
type fleetStatus struct {
	Workers []struct {
		Worker     string
		State      string
		CardTempC  float64 `json:"card_temp_c"`
		SoCTempC   float64 `json:"soc_temp_c"`
		Governor   struct{ State string }
		CurrentJob string `json:"current_job"`
		Models     []struct{ Name, Kind, State, Error string }
	}
	Queue []any
}

// waitStatus polls `kiln status --json` until ok says so, or 30 s pass.
func waitStatus(t testing.TB, url string, ok func(*fleetStatus) bool) fleetStatus {
	t.Helper()
	var st fleetStatus
	wait.For(t, 30*time.Second, 100*time.Millisecond, func() error {
		st = fleetStatus{}
		code, out, _ := kiln(t, t.Context(), "status", "--json", "--nats", url)
		if code == 0 && json.Unmarshal([]byte(out), &st) == nil && ok(&st) {
			return nil
		}
		return fmt.Errorf("kiln status never showed what the test waits for: %d %q", code, out)
	})
	return st
}

// oneReadyWorker is a waitStatus condition: one worker, ready, serving n models.
func oneReadyWorker(n int) func(*fleetStatus) bool {
	return func(st *fleetStatus) bool {
		return len(st.Workers) == 1 && st.Workers[0].State == "ready" && len(st.Workers[0].Models) == n
	}
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
	u := startUp(t, "--models", t.TempDir(), "--name", "shelf-card0")
	url := u.url
	status := waitStatus(t, url, oneReadyWorker(0))
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
	code, _, errOut = kiln(t, t.Context(), "cancel", "--nats", url, "01SOMEJOB")
	if code != 1 || !strings.Contains(errOut, "no job 01SOMEJOB") {
		t.Fatalf("cancel of an unknown job: %d %q", code, errOut)
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
	code, _, errOut = kiln(t, t.Context(), "cancel", "--nats", url, "01DONE")
	if code != 1 || !strings.Contains(errOut, "job 01DONE has finished already (ok, on w9): nothing to cancel") {
		t.Fatalf("cancel of a finished job: %d %q", code, errOut)
	}
	// A client's result, found whoever's it is (an operator's lookup).
	m.Subject, m.Data = "kiln.results.01MINE.room-1", []byte(`{"job_id":"01MINE","status":"ok","text":"room one's answer","worker":"w9","attempt":1}`)
	if _, err := nc.RequestMsg(m, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	code, out, _ = kiln(t, t.Context(), "result", "--nats", url, "01MINE")
	if code != 0 || !strings.Contains(out, "room one's answer") {
		t.Fatalf("result of a client's job: %d %q", code, out)
	}
	// Queued jobs nobody serves (yet): an anonymous one and two clients'.
	for _, q := range []struct{ subject, msgID string }{
		{"kiln.jobs.chat.nobody.normal", "01ANON"},
		{"kiln.jobs.chat.nobody.normal.room-1", "room-1.01ROOM1"},
		{"kiln.jobs.chat.nobody.normal.room-2", "room-2.01ROOM2"},
	} {
		job := &nats.Msg{Subject: q.subject, Header: nats.Header{"Content-Type": {"application/json"}, "Nats-Msg-Id": {q.msgID}},
			Data: []byte(`{"model":"nobody","messages":[{"role":"user","content":"hi"}]}`)}
		if _, err := nc.RequestMsg(job, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// A cancel names the job's client: --client (an operator's), else the
	// command's own --client-id, else the client the job is queued for
	// (an operator's), else none (an anonymous job).
	cancels, err := nc.SubscribeSync("kiln.cancel.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args    []string
		subject string
	}{
		{[]string{"01ANON"}, "kiln.cancel.01ANON"},
		{[]string{"--client-id", "room-2", "01ROOM2"}, "kiln.cancel.room-2.01ROOM2"},
		{[]string{"--client-id", "room-2", "--client", "room-1", "01ROOM1"}, "kiln.cancel.room-1.01ROOM1"},
		{[]string{"01ROOM1"}, "kiln.cancel.room-1.01ROOM1"},
	} {
		code, out, errOut := kiln(t, t.Context(), append([]string{"cancel", "--nats", url}, tc.args...)...)
		if m, err := cancels.NextMsg(5 * time.Second); err != nil || m.Subject != tc.subject {
			t.Errorf("kiln cancel %s: %v %v, want a cancel on %s (exit %d, %q %q)", strings.Join(tc.args, " "), m, err, tc.subject, code, out, errOut)
		}
	}
	evCtx, evCancel := context.WithTimeout(t.Context(), 4*time.Second)
	defer evCancel()
	_, out, _ = kiln(t, evCtx, "events", "--nats", url, "--since", "1m")
	if !strings.Contains(out, "heartbeat") || !strings.Contains(out, "shelf-card0") {
		t.Fatalf("events: %q", out)
	}
}

func TestSecondUpOnTheSameStoreExitsNamingTheFirst(t *testing.T) {
	data := t.TempDir()
	u := startUp(t, "--models", t.TempDir(), "--data", data)
	waitStatus(t, u.url, oneReadyWorker(0))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	code, _, errOut := kiln(t, ctx, "up", "--listen", freeAddr(t), "--data", data, "--models", t.TempDir())
	if code != 1 || !strings.Contains(errOut, "is held by process "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("a second kiln up on %s: exit %d, %q; want exit 1 naming process %d", data, code, errOut, os.Getpid())
	}
}
