package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/test/wait"
	kilncard "github.com/kiln-project/kiln/worker/card"
	"github.com/kiln-project/kiln/worker/npu"
)

// The built kiln binary, for tests that need a real process (one they can
// kill -9).
var kilnBin struct {
	once sync.Once
	path string
	err  error
}

func kilnBinary(t *testing.T) string {
	t.Helper()
	kilnBin.once.Do(func() {
		dir, err := os.MkdirTemp("", "kiln-bin-")
		if err != nil {
			kilnBin.err = err
			return
		}
		kilnBin.path = filepath.Join(dir, "kiln")
		out, err := exec.Command("go", "build", "-o", kilnBin.path, ".").CombinedOutput()
		if err != nil {
			kilnBin.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if kilnBin.err != nil {
		t.Fatal(kilnBin.err)
	}
	return kilnBin.path
}

// workerProc is a `kiln worker` process.
type workerProc struct {
	cmd  *exec.Cmd
	log  string // its stderr, a file
	done chan struct{}
}

// startWorkerProc starts `kiln worker` with args and the environment env
// added; it is killed at test end if still running.
func startWorkerProc(t *testing.T, env []string, args ...string) *workerProc {
	t.Helper()
	log := filepath.Join(t.TempDir(), "worker.log")
	f, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(kilnBinary(t), append([]string{"worker"}, args...)...)
	cmd.Env = append(os.Environ(), append([]string{"KILN_LOG_FORMAT=json"}, env...)...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &workerProc{cmd: cmd, log: log, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
			return
		default:
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *workerProc) stderr() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// readyWorker is a waitStatus condition: worker name is ready.
func readyWorker(name string) func(*fleetStatus) bool {
	return func(st *fleetStatus) bool {
		for _, w := range st.Workers {
			if w.Worker == name && w.State == "ready" {
				return true
			}
		}
		return false
	}
}

// chatPackage writes a two-layer chat package qwen3-tiny into a fresh
// models folder.
func chatPackage(t *testing.T) string {
	t.Helper()
	models := t.TempDir()
	spec := cardsim.TinyQwen3()
	spec.Layers = 2
	spec.TokenizerDir = "../../worker/tokenize/testdata/qwen3"
	if err := cardsim.WriteLLMPackage(filepath.Join(models, "qwen3-tiny"), spec); err != nil {
		t.Fatal(err)
	}
	return models
}

// A `kiln worker` killed with kill -9 in the middle of an execute leaves
// its (simulated) card wedged: the next `kiln worker` on it finds that out
// with its health check, reboots the card and serves. While a worker
// holds the card, `kiln card inspect` refuses it.
func TestKilledWorkerWedgesCardNextWorkerRebootsAndServes(t *testing.T) {
	lib := cardsim.Library(t)
	models := chatPackage(t)
	state, locks := t.TempDir(), t.TempDir()
	loads := filepath.Join(t.TempDir(), "loads")
	u := startUp(t, "--lib", filepath.Join(t.TempDir(), "none.so"), "--models", t.TempDir())
	env := []string{cardsim.EnvStateDir + "=" + state, cardsim.EnvLoadLog + "=" + loads, cardsim.EnvRebootMS + "=200"}
	args := []string{"--nats", u.url, "--lib", lib, "--models", models, "--lock-dir", locks, "--card", "0"}

	first := startWorkerProc(t, append(env, "KILN_SIM_EXEC_US=400000"), append(args, "--name", "wedge-a")...)
	waitStatus(t, u.url, readyWorker("wedge-a"))
	go kiln(t, t.Context(), "chat", "--nats", u.url, "--max-tokens", "20", "hi") // never answered by wedge-a
	stateFile := filepath.Join(state, "card1.state")
	busy := "busy " + strconv.Itoa(first.cmd.Process.Pid)
	wait.For(t, 30*time.Second, 5*time.Millisecond, func() error {
		if b, _ := os.ReadFile(stateFile); !strings.HasPrefix(string(b), busy) {
			return fmt.Errorf("card state %q, want %q", b, busy)
		}
		return nil
	})
	if err := first.cmd.Process.Kill(); err != nil { // SIGKILL, mid-execute
		t.Fatal(err)
	}
	<-first.done
	if b, _ := os.ReadFile(stateFile); !strings.HasPrefix(string(b), busy) {
		t.Fatalf("card state after the kill %q, want %q (wedged)", b, busy)
	}

	second := startWorkerProc(t, env, append(args, "--name", "wedge-b")...)
	waitStatus(t, u.url, readyWorker("wedge-b"))
	log, _ := os.ReadFile(loads)
	lines := strings.Split(strings.TrimSpace(string(log)), "\n")
	at := slices.Index(lines, "reboot 1")
	if at < 0 || at == len(lines)-1 || !strings.Contains(second.stderr(), "rebooting the card") {
		t.Fatalf("the second worker did not reboot the wedged card before loading: load log %q\nworker log %s", lines, second.stderr())
	}
	if b, _ := os.ReadFile(stateFile); strings.TrimSpace(string(b)) != "idle" {
		t.Fatalf("card state after the reboot %q, want idle", b)
	}
	code, out, errOut := kiln(t, t.Context(), "chat", "--nats", u.url, "--json", "--max-tokens", "4", "kiln")
	var res struct{ Status, Worker string }
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || res.Status != "ok" || res.Worker != "wedge-b" {
		t.Fatalf("chat on the rebooted card: %d %q %q", code, out, errOut)
	}
	layer := filepath.Join(models, "qwen3-tiny")
	files, _ := filepath.Glob(filepath.Join(layer, "*", "*.axmodel"))
	if len(files) == 0 {
		t.Fatalf("no model file under %s", layer)
	}
	// The simulated card is one card for every process that shares its state
	// folder (its chip id says so), this test's process included.
	t.Setenv(cardsim.EnvStateDir, state)
	code, _, errOut = kiln(t, t.Context(), "card", "inspect", "--lib", lib, "--lock-dir", locks, files[0])
	if code != 1 || !strings.Contains(errOut, "held by process "+strconv.Itoa(second.cmd.Process.Pid)) {
		t.Fatalf("kiln card inspect on a held card: exit %d, %q; want exit 1 naming process %d", code, errOut, second.cmd.Process.Pid)
	}
}

// A card that enumerates 10 s after boot is waited for, and said so, rather
// than failing the worker at once.
func TestWorkerWaitsForACardThatEnumeratesLate(t *testing.T) {
	t.Parallel()
	lib := cardsim.Library(t)
	models := chatPackage(t)
	u := startUp(t, "--lib", filepath.Join(t.TempDir(), "none.so"), "--models", t.TempDir())
	start := time.Now()
	w := startWorkerProc(t, []string{cardsim.EnvEnumDelayMS + "=10000"},
		"--nats", u.url, "--lib", lib, "--models", models, "--lock-dir", t.TempDir(), "--name", "late-0")
	wait.For(t, 60*time.Second, 100*time.Millisecond, func() error {
		if !strings.Contains(w.stderr(), "card enumerated") {
			select {
			case <-w.done:
				return fmt.Errorf("the worker exited: %s", w.stderr())
			default:
			}
			return fmt.Errorf("the card has not enumerated yet after %v", time.Since(start).Round(time.Second))
		}
		return nil
	})
	waitStatus(t, u.url, readyWorker("late-0"))
	if log := w.stderr(); !strings.Contains(log, "waiting for the card to enumerate") {
		t.Fatalf("the worker did not say it waits for the card: %s", log)
	}
}

// SIGTERM, then SIGTERM again (a forced stop) while the card executes: the
// worker stops after the running engine call, never in it, so the card is
// not left wedged (its state is idle, not busy), and exits 1.
func TestForcedStopWaitsForTheRunningExecute(t *testing.T) {
	lib := cardsim.Library(t)
	models := chatPackage(t)
	state := t.TempDir()
	u := startUp(t, "--lib", filepath.Join(t.TempDir(), "none.so"), "--models", t.TempDir())
	w := startWorkerProc(t, []string{cardsim.EnvStateDir + "=" + state, "KILN_SIM_EXEC_US=400000"},
		"--nats", u.url, "--lib", lib, "--models", models, "--lock-dir", t.TempDir(), "--name", "stop-0")
	waitStatus(t, u.url, readyWorker("stop-0"))
	go kiln(t, t.Context(), "chat", "--nats", u.url, "--max-tokens", "20", "hi")
	stateFile := filepath.Join(state, "card1.state")
	wait.For(t, 30*time.Second, 5*time.Millisecond, func() error {
		if b, _ := os.ReadFile(stateFile); !strings.HasPrefix(string(b), "busy") {
			return fmt.Errorf("card state %q, want busy", b)
		}
		return nil
	})
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.cmd.Process.Signal(syscall.SIGTERM))
	wait.For(t, 30*time.Second, 5*time.Millisecond, func() error { // the first signal landed
		if !strings.Contains(w.stderr(), "signal received") {
			return fmt.Errorf("the worker has not seen the first SIGTERM: %s", w.stderr())
		}
		return nil
	})
	must(w.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-w.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("the worker did not exit after two SIGTERMs: %s", w.stderr())
	}
	if code := w.cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("exit code %d after a forced stop, want 1: %s", code, w.stderr())
	}
	if b, _ := os.ReadFile(stateFile); strings.TrimSpace(string(b)) != "idle" {
		t.Fatalf("card state after a forced stop %q, want idle (stopped between engine calls): %s", b, w.stderr())
	}
}

// kiln card probe copy, probe load-order and reboot take their
// measurements on the simulated card, and refuse a card another process
// holds.
func TestCardProbesAndReboot(t *testing.T) {
	lib := cardsim.Library(t)
	locks := t.TempDir()
	pkg := filepath.Join(t.TempDir(), "qwen3-vl")
	spec := cardsim.TinyQwen3VL()
	spec.Layers = 1
	if err := cardsim.WriteLLMPackage(pkg, spec); err != nil {
		t.Fatal(err)
	}
	layers, _ := filepath.Glob(filepath.Join(pkg, "*", "qwen3_p128_l0_together.axmodel"))
	vision, _ := filepath.Glob(filepath.Join(pkg, "*", spec.Vision.File))
	if len(layers) != 1 || len(vision) != 1 {
		t.Fatalf("model files not found under %s", pkg)
	}
	card := func(args ...string) (int, string, string) {
		return kiln(t, t.Context(), append(append([]string{"card"}, args...), "--lib", lib, "--lock-dir", locks)...)
	}
	code, out, errOut := card("probe", "copy", "--rounds", "20")
	if code != 0 || !strings.Contains(out, "copies of 2048 bytes, median of 20 rounds") {
		t.Fatalf("kiln card probe copy: %d %q %q", code, out, errOut)
	}
	code, out, errOut = card("probe", "load-order", "--llm", layers[0], "--onnx", vision[0])
	if code != 0 || !strings.Contains(out, "does not drop the card") {
		t.Fatalf("kiln card probe load-order on a card that does not care: %d %q %q", code, out, errOut)
	}
	t.Setenv(cardsim.EnvLoadOrderDrop, "1")
	t.Setenv(cardsim.EnvRebootMS, "100")
	code, out, errOut = card("probe", "load-order", "--llm", layers[0], "--onnx", vision[0])
	if code != 0 || !strings.Contains(out, "load order matters") || !strings.Contains(out, "card rebooted and back") {
		t.Fatalf("kiln card probe load-order on a card that drops: %d %q %q", code, out, errOut)
	}
	code, out, errOut = card("reboot")
	if code != 0 || !strings.Contains(out, "card 0 rebooted: back after") {
		t.Fatalf("kiln card reboot: %d %q %q", code, out, errOut)
	}
	info, err := npu.CardInfo(t.Context(), lib)
	if err != nil || len(info.Cards) != 1 || info.Cards[0].UID == "" {
		t.Fatalf("kiln card info: %+v, %v", info, err)
	}
	held, err := kilncard.Lock(locks, 0, info.Cards[0].UID) // as a worker holds it
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	code, _, errOut = card("reboot")
	if code != 1 || !strings.Contains(errOut, "held by process "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("kiln card reboot of a held card: %d %q", code, errOut)
	}
}
