package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/test/echo"
	"github.com/kiln-project/kiln/test/wait"
	"github.com/kiln-project/kiln/worker"
)

// running is a kiln command running in-process in the background.
type running struct {
	cancel         context.CancelCauseFunc
	stdout, stderr wait.Buffer
	done           chan struct{}
	code           int
}

// background runs kiln args with stdin until it exits or the test ends.
func background(t *testing.T, stdin string, args ...string) *running {
	ctx, cancel := context.WithCancelCause(t.Context())
	r := &running{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.code = run(ctx, args, strings.NewReader(stdin), &r.stdout, &r.stderr)
	}()
	t.Cleanup(func() { cancel(nil); <-r.done })
	return r
}

func (r *running) wait() (int, string, string) {
	<-r.done
	return r.code, r.stdout.String(), r.stderr.String()
}

var submitted = regexp.MustCompile(`kiln: job (\S+) submitted to`)

// jobID waits for the command's "job … submitted" line and returns the id.
func (r *running) jobID(t *testing.T) string {
	t.Helper()
	var id string
	wait.For(t, 30*time.Second, 10*time.Millisecond, func() error {
		m := submitted.FindStringSubmatch(r.stderr.String())
		if m == nil {
			return fmt.Errorf("no job submitted yet: %q", r.stderr.String())
		}
		id = m[1]
		return nil
	})
	return id
}

// commandPaths are every command and sub-command, as typed.
var commandPaths = [][]string{
	{"up"}, {"gateway"}, {"broker"}, {"broker", "init-auth"}, {"worker"}, {"chat"}, {"image"}, {"status"}, {"events"},
	{"cancel"}, {"result"}, {"card"}, {"card", "info"}, {"card", "inspect"}, {"card", "reboot"}, {"card", "probe", "copy"},
	{"card", "probe", "load-order"}, {"card", "probe", "kv-inplace"}, {"tokenize"}, {"version"},
}

// Every command takes -h (and `kiln help <command>`), exits 0 and shows
// its usage; no flag states its default twice, even with the whole
// environment set.
func TestHelpEverywhere(t *testing.T) {
	for _, s := range environment {
		t.Setenv(s.env, "x1")
	}
	for _, path := range commandPaths {
		for _, args := range [][]string{append(slices.Clone(path), "-h"), append([]string{"help"}, path...)} {
			code, out, errOut := kiln(t, t.Context(), args...)
			help := out + errOut
			if code != 0 || !strings.Contains(help, "usage: kiln "+path[0]) {
				t.Errorf("kiln %s: %d %q", strings.Join(args, " "), code, help)
				continue
			}
			for _, entry := range flagEntries(help) {
				if strings.Count(strings.ToLower(entry), "default") > 1 {
					t.Errorf("kiln %s: a default stated twice: %q", strings.Join(args, " "), entry)
				}
			}
		}
	}
}

// flagEntries splits flag.PrintDefaults output into one string per flag.
func flagEntries(help string) []string {
	var out []string
	for _, line := range strings.Split(help, "\n") {
		switch {
		case strings.HasPrefix(line, "  -"):
			out = append(out, line)
		case strings.HasPrefix(line, "    \t") && len(out) > 0:
			out[len(out)-1] += line
		}
	}
	return out
}

var envLiteral = regexp.MustCompile(`"(KILN_[A-Z_]+)"`)

// kiln help lists every environment variable the code reads, each with a
// flag that some command has.
func TestUsageListsTheWholeEnvironment(t *testing.T) {
	files, _ := filepath.Glob("*.go")
	files = append(files, "../../worker/axcl/loader.go")
	listed := map[string]bool{}
	for _, s := range environment {
		listed[s.env] = true
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range envLiteral.FindAllStringSubmatch(string(src), -1) {
			if !listed[m[1]] {
				t.Errorf("%s reads %s, which `kiln help` does not list (settings.go environment)", f, m[1])
			}
		}
	}
	_, usage, _ := kiln(t, t.Context(), "help")
	var helps strings.Builder
	for _, path := range commandPaths {
		_, out, errOut := kiln(t, t.Context(), append(slices.Clone(path), "-h")...)
		helps.WriteString(out + errOut)
	}
	for _, s := range environment {
		if !strings.Contains(usage, s.env) {
			t.Errorf("kiln help does not list %s", s.env)
		}
		if !regexp.MustCompile(`(?m)^  -` + regexp.QuoteMeta(s.flag) + `\b`).MatchString(helps.String()) {
			t.Errorf("%s: no command has its flag --%s", s.env, s.flag)
		}
	}
}

// Client commands find a kiln started with KILN_LISTEN=… when
// KILN_NATS_URL is unset.
func TestClientsDialKILNLISTEN(t *testing.T) {
	for _, c := range []struct{ url, listen, want string }{
		{"", "", "nats://127.0.0.1:4222"},
		{"", "127.0.0.1:4333", "nats://127.0.0.1:4333"},
		{"", "0.0.0.0:4333", "nats://127.0.0.1:4333"},
		{"", ":4333", "nats://127.0.0.1:4333"},
		{"", "[::]:4333", "nats://127.0.0.1:4333"},
		{"nats://pi:4222", "127.0.0.1:4333", "nats://pi:4222"},
	} {
		t.Setenv(envNATSURL, c.url)
		t.Setenv(envListen, c.listen)
		if got := defaultURL(); got != c.want {
			t.Errorf("KILN_NATS_URL=%q KILN_LISTEN=%q: %s, want %s", c.url, c.listen, got, c.want)
		}
	}
	u := startUp(t, "--models", t.TempDir(), "--name", "listen-card0")
	t.Setenv(envNATSURL, "")
	t.Setenv(envListen, strings.TrimPrefix(u.url, "nats://"))
	wait.For(t, 30*time.Second, 100*time.Millisecond, func() error {
		code, out, errOut := kiln(t, t.Context(), "status")
		if code != 0 || !strings.Contains(out, "listen-card0") {
			return fmt.Errorf("kiln status with only KILN_LISTEN set: %d %q %q", code, out, errOut)
		}
		return nil
	})
}

// A chat without a prompt says what is missing; "-" reads it from stdin.
func TestPromptArguments(t *testing.T) {
	code, _, errOut := kiln(t, t.Context(), "chat")
	if code != 2 || !strings.Contains(errOut, "no PROMPT: give it as arguments, or - to read it from stdin") {
		t.Fatalf("kiln chat without a prompt: %d %q", code, errOut)
	}
	code, _, errOut = kiln(t, t.Context(), "image")
	if code != 2 || !strings.Contains(errOut, "no PROMPT") {
		t.Fatalf("kiln image without a prompt: %d %q", code, errOut)
	}
	code, _, errOut = kiln(t, t.Context(), "chat", "-")
	if code != 1 || !strings.Contains(errOut, "the prompt on stdin (-) is empty") {
		t.Fatalf("kiln chat - with nothing on stdin: %d %q", code, errOut)
	}
	code, _, errOut = kiln(t, t.Context(), "chat", "  ")
	if code != 1 || !strings.Contains(errOut, "the PROMPT is empty") {
		t.Fatalf("kiln chat with a blank prompt: %d %q", code, errOut)
	}
	e := &env{stdin: strings.NewReader("a fox\nin snow\n\n")}
	if p, err := readPrompt(e, []string{"-"}); err != nil || p != "a fox\nin snow" {
		t.Fatalf("prompt from stdin %q, %v", p, err)
	}
}

// kiln status asks each worker for its status now: the running job shows
// at once, not at the next heartbeat, and refused jobs are counted apart
// from failed ones.
func TestStatusShowsTheRunningJobLive(t *testing.T) {
	// Heartbeats an hour apart: the registry keeps the entry the worker
	// wrote at start, with no job.
	topo := topology.Config{HeartbeatInterval: time.Hour}
	b := brokertest.Run(t, &brokertest.Options{Topology: topo})
	w, err := worker.New(brokertest.Connect(t, b), worker.Config{Name: "live1", Topology: topo, Logger: quietLog(),
		Chat: map[string]worker.Handler[schema.ChatJob]{"echo": echo.Chat}})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.StopAndCancel(context.Background()) })
	c, err := client.New(brokertest.Connect(t, b))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Chat(t.Context(), chatJob("refuse me", map[string]string{"fail": "invalid"}), nil); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("invalid job: %v", err)
	}
	if _, err := c.Chat(t.Context(), chatJob("fail me", map[string]string{"fail": "permanent"}), nil); !errors.Is(err, client.ErrFailed) {
		t.Fatalf("failing job: %v", err)
	}
	p, err := c.Submit(t.Context(), chatJob(strings.Repeat("slow ", 100), map[string]string{"delay_ms": "200"}))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for ev, err := range p.Events(t.Context()) { // until it runs
		if err != nil || ev.Type == schema.EventStarted {
			break
		}
	}
	url := b.ClientURL()
	code, out, errOut := kiln(t, t.Context(), "status", "--json", "--nats", url)
	var st struct{ Workers []schema.Heartbeat }
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Workers) != 1 {
		t.Fatalf("kiln status --json: %d %q %q", code, out, errOut)
	}
	if hb := st.Workers[0]; hb.CurrentJob != p.ID || hb.JobsRefused != 1 || hb.JobsFailed != 1 {
		t.Fatalf("status current job %q, refused %d, failed %d; want %s, 1, 1", hb.CurrentJob, hb.JobsRefused, hb.JobsFailed, p.ID)
	}
	code, out, _ = kiln(t, t.Context(), "status", "--nats", url)
	if code != 0 || !strings.Contains(out, "REFUSED") || !strings.Contains(out, p.ID) {
		t.Fatalf("kiln status: %d %q", code, out)
	}
}

func quietLog() *slog.Logger { return newLogger(io.Discard, "json", false) }

func chatJob(text string, md map[string]string) *schema.ChatJob {
	return &schema.ChatJob{JobHeader: schema.JobHeader{Model: "echo", Metadata: md},
		Messages: []schema.Message{{Role: "user", Content: text}}}
}

// The jobs of kiln chat and kiln image on the simulated card, slowed down
// so that they can be caught running: the job id is on stderr when
// submitted; --timeout, Ctrl-C and kiln cancel say the job was cancelled
// and name it; kiln cancel says when there is nothing to cancel; results
// name the seed and the settings.
func TestJobsFromTheCommandLine(t *testing.T) {
	lib := cardsim.Library(t)
	t.Setenv("KILN_SIM_EXEC_US", "30000") // 30 ms per execute: a few tokens a second
	models := chatPackage(t)
	sdSpec := cardsim.SD15LCM()
	sdSpec.TokenizerDir = "../../worker/tokenize/testdata/clip"
	if err := cardsim.WriteSDPackage(filepath.Join(models, "sd15-lcm"), sdSpec); err != nil {
		t.Fatal(err)
	}
	url := startUp(t, "--models", models, "--lib", lib, "--name", "cli-card0").url
	waitStatus(t, url, oneReadyWorker(2))
	long := []string{"chat", "--nats", url, "--model", "qwen3-tiny", "--max-tokens", "500", "tell me everything"}

	t.Run("stdin prompt and job id", func(t *testing.T) {
		r := background(t, "hello\n", "chat", "--nats", url, "--model", "qwen3-tiny", "--max-tokens", "3", "-")
		code, out, errOut := r.wait()
		if code != 0 || strings.TrimSpace(out) == "" || !strings.Contains(errOut, "submitted to chat/qwen3-tiny (normal lane)") {
			t.Fatalf("kiln chat -: %d %q %q", code, out, errOut)
		}
		id := r.jobID(t)
		if code, out, _ := kiln(t, t.Context(), "result", "--nats", url, id); code != 0 || !strings.Contains(out, "job "+id+": ok") {
			t.Fatalf("kiln result %s: %d %q", id, code, out)
		}
	})

	t.Run("results say how they were made", func(t *testing.T) {
		code, out, errOut := kiln(t, t.Context(), "chat", "--nats", url, "--model", "qwen3-tiny", "--json", "--max-tokens", "3",
			"--seed", "7", "--temperature", "0.5", "hi")
		var res schema.Result
		if code != 0 || json.Unmarshal([]byte(out), &res) != nil {
			t.Fatalf("kiln chat --json: %d %q %q", code, out, errOut)
		}
		if res.Seed == nil || *res.Seed != 7 || res.Sampling == nil || res.Sampling.Temperature != 0.5 || res.Sampling.Greedy {
			t.Fatalf("chat result seed %v sampling %+v", res.Seed, res.Sampling)
		}
		png := filepath.Join(t.TempDir(), "fox.png")
		code, out, errOut = kiln(t, t.Context(), "image", "--nats", url, "--seed", "3", "-o", png, "a red fox")
		if code != 0 || !strings.Contains(out, "seed 3, 4 steps, 512×512") {
			t.Fatalf("kiln image: %d %q %q", code, out, errOut)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		r := background(t, "", append(long, "--timeout", "1s")...)
		code, _, errOut := r.wait()
		id := r.jobID(t)
		if code != 1 || !strings.Contains(errOut, "kiln chat: job "+id+" cancelled: --timeout 1s passed") {
			t.Fatalf("kiln chat --timeout 1s: %d %q", code, errOut)
		}
		waitStored(t, url, id, schema.StatusCancelled)
	})

	t.Run("interrupt", func(t *testing.T) {
		r := background(t, "", long...)
		id := r.jobID(t)
		r.cancel(fmt.Errorf("%w by SIGINT", errInterrupted))
		code, _, errOut := r.wait()
		if code != 1 || !strings.Contains(errOut, "kiln chat: job "+id+" cancelled: interrupted by SIGINT") {
			t.Fatalf("kiln chat interrupted: %d %q", code, errOut)
		}
		waitStored(t, url, id, schema.StatusCancelled)
	})

	t.Run("cancel", func(t *testing.T) {
		code, _, errOut := kiln(t, t.Context(), "cancel", "--nats", url, "01NOSUCHJOB")
		if code != 1 || !strings.Contains(errOut, "no job 01NOSUCHJOB: it is not queued, not running and has no stored result") {
			t.Fatalf("kiln cancel of an unknown job: %d %q", code, errOut)
		}
		first := background(t, "", long...)
		running := first.jobID(t)
		waitStatus(t, url, func(st *fleetStatus) bool { return len(st.Workers) == 1 && st.Workers[0].CurrentJob == running })
		second := background(t, "", long...)
		queued := second.jobID(t)

		code, out, errOut := kiln(t, t.Context(), "cancel", "--nats", url, queued)
		if code != 0 || !strings.Contains(out, "job "+queued+" cancelled while queued (kiln.jobs.chat.qwen3-tiny.normal)") {
			t.Fatalf("kiln cancel of a queued job: %d %q %q", code, out, errOut)
		}
		code, out, errOut = kiln(t, t.Context(), "cancel", "--nats", url, running)
		if code != 0 || !strings.Contains(out, "job "+running+" cancelled while running, on cli-card0\n") {
			t.Fatalf("kiln cancel of a running job: %d %q %q", code, out, errOut)
		}
		code, _, errOut = first.wait()
		if code != 1 || !strings.Contains(errOut, "kiln chat: job "+running+" cancelled while running") || strings.Contains(errOut, "cancelled: cancelled") {
			t.Fatalf("the cancelled chat: %d %q", code, errOut)
		}
		code, _, errOut = second.wait()
		if code != 1 || !strings.Contains(errOut, "kiln chat: job "+queued+" cancelled before it started") {
			t.Fatalf("the chat cancelled while queued: %d %q", code, errOut)
		}
		code, out, _ = kiln(t, t.Context(), "result", "--nats", url, running)
		if code != 1 || !strings.Contains(out, "\ncancelled while running\n") || strings.Contains(out, "cancelled: cancelled") {
			t.Fatalf("kiln result of the cancelled job: %d %q", code, out)
		}
		code, _, errOut = kiln(t, t.Context(), "cancel", "--nats", url, running)
		if code != 1 || !strings.Contains(errOut, "job "+running+" has finished already (cancelled while running, on cli-card0): nothing to cancel") {
			t.Fatalf("kiln cancel of a finished job: %d %q", code, errOut)
		}
	})
}

// waitStored waits for job id's stored result to have status.
func waitStored(t *testing.T, url, id, status string) {
	t.Helper()
	wait.For(t, 30*time.Second, 100*time.Millisecond, func() error {
		_, out, _ := kiln(t, t.Context(), "result", "--json", "--nats", url, id)
		var res schema.Result
		if json.Unmarshal([]byte(out), &res) != nil || res.Status != status {
			return fmt.Errorf("job %s: stored result %q, want status %s", id, out, status)
		}
		return nil
	})
}
