package card_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/test/wait"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/card"
	"github.com/kiln-project/kiln/worker/workertest"
)

// tinyModels writes cardsim.TinyQwen3 with layers layers (4 is its own)
// as the chat package qwen3-tiny into a fresh models folder.
func tinyModels(t *testing.T, layers int) string {
	t.Helper()
	models := t.TempDir()
	spec := cardsim.TinyQwen3()
	spec.Layers = layers
	spec.TokenizerDir = "../tokenize/testdata/qwen3"
	if err := cardsim.WriteLLMPackage(filepath.Join(models, "qwen3-tiny"), spec); err != nil {
		t.Fatal(err)
	}
	return models
}

// loadedCard opens the card cfg describes (logging nowhere unless cfg
// says), closes it at cleanup, and loads its packages.
func loadedCard(tb testing.TB, cfg card.Config) *card.Card {
	tb.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quiet
	}
	c, err := card.Open(tb.Context(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close(tb.Context()) })
	if err := c.Load(tb.Context()); err != nil {
		tb.Fatal(err)
	}
	return c
}

// runCardWorker opens the card, starts a worker named name on it that
// serves its packages, and returns the channel Run's error arrives on.
func runCardWorker(t *testing.T, q *workertest.Queue, lib, models, name string, configure func(*worker.Config)) (*card.Card, <-chan error) {
	t.Helper()
	c, err := card.Open(t.Context(), card.Config{Library: lib, ModelsDir: models, Logger: quiet, EnumerateTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(t.Context()) })
	cfg := worker.Config{
		Name: name, Topology: q.Topology, Logger: quiet, Device: c,
		Chat: c.ChatHandlers(), RetryDelays: []time.Duration{50 * time.Millisecond},
	}
	if configure != nil {
		configure(&cfg)
	}
	w, err := worker.New(brokertest.Connect(t, q.Broker), cfg)
	if err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- w.Run(t.Context()) }()
	return c, runErr
}

// waitReady waits until worker name heartbeats ready.
func waitReady(t *testing.T, q *workertest.Queue, name string) {
	t.Helper()
	c := q.Client(t)
	wait.For(t, 30*time.Second, 10*time.Millisecond, func() error {
		ws, err := c.Workers(workertest.Context(t))
		if err != nil {
			return err
		}
		for _, hb := range ws {
			if hb.Worker == name && hb.State == schema.StateReady {
				return nil
			}
		}
		return fmt.Errorf("worker %s not ready: %+v", name, ws)
	})
}

// The card goes OFFLINE in the middle of a reply: the worker submits
// nothing more to it, reboots it, and exits (ErrCardLost, for systemd);
// the next worker on the rebooted card finishes the job, which has exactly
// one result.
func TestOfflineMidReplyRebootsCardAndJobFinishesOnce(t *testing.T) {
	sim := cardsim.Controls(t)
	t.Setenv(cardsim.EnvRebootMS, "300")
	models := tinyModels(t, 2)
	q := workertest.StartQueue(t, workertest.QueueOptions{})
	nc := brokertest.Connect(t, q.Broker)
	_, runErr := runCardWorker(t, q, sim.Library(), models, "card0-a", nil)
	waitReady(t, q, "card0-a")

	reboots, offline := sim.Count(t, "reboots"), sim.Count(t, "offline_calls")
	// Two layers: the prefill is executes 1–3 (two layers and the post,
	// which gives the first token); execute 5 is the second layer of the
	// first decoded token.
	sim.SetFaults(t, "offline=5")
	c := q.Client(t)
	ctx := workertest.Context(t)
	p, err := c.Submit(ctx, &schema.ChatJob{JobHeader: schema.JobHeader{Model: "qwen3-tiny"}, MaxTokens: 12,
		Messages: []schema.Message{{Role: "user", Content: "kiln fire"}}})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-runErr:
		if !errors.Is(err, worker.ErrCardLost) || !errors.Is(err, axcl.ErrDeviceNotConnected) {
			t.Fatalf("Run = %v, want ErrCardLost for a card that is not connected", err)
		}
	case <-ctx.Done():
		t.Fatal("the worker did not stop after its card went offline")
	}
	if n := sim.Count(t, "offline_calls") - offline; n != 1 {
		t.Errorf("%d calls reached the card after it went offline (the failing execute included), want 1", n)
	}
	if n := sim.Count(t, "reboots") - reboots; n != 1 {
		t.Fatalf("%d reboots, want 1", n)
	}

	_, runErr2 := runCardWorker(t, q, sim.Library(), models, "card0-b", nil)
	res, err := p.Wait(ctx, nil)
	if err != nil || res.Status != schema.StatusOK || res.Worker != "card0-b" || res.Attempt != 2 || res.Text == "" {
		t.Fatalf("result %+v, %v: want ok from card0-b on attempt 2", res, err)
	}
	js, _ := nc.JetStream()
	info, err := js.StreamInfo(q.Topology.WithDefaults().ResultsStream())
	if err != nil || info.State.Msgs != 1 {
		t.Fatalf("results stream: %+v, %v; want exactly one result", info, err)
	}
	select {
	case err := <-runErr2:
		t.Fatalf("the worker on the rebooted card stopped: %v", err)
	default:
	}
}

// Faults in a row that resets do not cure make the worker unhealthy; that
// ends in a reboot of the card and Run returning ErrUnhealthy, not in a
// worker that idles forever.
func TestUnhealthyEndsInRebootAndExit(t *testing.T) {
	sim := cardsim.Controls(t)
	models := tinyModels(t, 2)
	q := workertest.StartQueue(t, workertest.QueueOptions{})
	nc := brokertest.Connect(t, q.Broker)
	events := make(chan string, 64)
	sub, err := nc.Subscribe("kiln.events.device.>", func(m *nats.Msg) {
		var ev schema.DeviceEvent
		if json.Unmarshal(m.Data, &ev) == nil {
			events <- ev.Type
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	_, runErr := runCardWorker(t, q, sim.Library(), models, "sick0", func(c *worker.Config) {
		c.ResetDelays = []time.Duration{10 * time.Millisecond}
	})
	waitReady(t, q, "sick0")
	reboots := sim.Count(t, "reboots")
	// Every execute after every re-initialisation fails: the health check
	// of each reset too.
	t.Setenv("KILN_SIM_FAULTS", "fail_execute=1")
	sim.SetFaults(t, "fail_execute=1")
	ctx := workertest.Context(t)
	if _, err := q.Client(t).Submit(ctx, &schema.ChatJob{JobHeader: schema.JobHeader{Model: "qwen3-tiny"}, MaxTokens: 4,
		Messages: []schema.Message{{Role: "user", Content: "kiln"}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-runErr:
		if !errors.Is(err, worker.ErrUnhealthy) {
			t.Fatalf("Run = %v, want ErrUnhealthy", err)
		}
	case <-ctx.Done():
		t.Fatal("the unhealthy worker did not exit")
	}
	if n := sim.Count(t, "reboots") - reboots; n != 1 {
		t.Fatalf("%d reboots, want 1", n)
	}
	var seen []string
	for len(events) > 0 {
		seen = append(seen, <-events)
	}
	i := slices.Index(seen, worker.DeviceUnhealthy)
	if i < 0 || !slices.Equal(seen[i:], []string{worker.DeviceUnhealthy, worker.DeviceReboot, worker.DeviceRebooted}) {
		t.Fatalf("device events %v, want them to end unhealthy, reboot, rebooted", seen)
	}
}

// ONNX-built engines (SD, vision encoders) load before llm_build ones, at
// start and after a reset, whatever the packages' names; the simulator's
// load log shows the order the card saw, and a simulated card that drops
// on the other order stays up.
func TestLoadOrderOnnxBuiltFirst(t *testing.T) {
	lib := cardsim.Library(t)
	log := filepath.Join(t.TempDir(), "loads")
	t.Setenv(cardsim.EnvLoadLog, log)
	t.Setenv(cardsim.EnvLoadOrderDrop, "1")
	models := t.TempDir()
	text := cardsim.TinyQwen3()
	text.Layers = 2
	vl := cardsim.TinyQwen3VL()
	vl.Layers = 2
	text.TokenizerDir, vl.TokenizerDir = "../tokenize/testdata/qwen3", "../tokenize/testdata/qwen3"
	sd := cardsim.SD15LCM()
	sd.TokenizerDir = "../tokenize/testdata/clip"
	for name, spec := range map[string]cardsim.LLMSpec{"qwen3-a": text, "qwen3-vl": vl} {
		if err := cardsim.WriteLLMPackage(filepath.Join(models, name), spec); err != nil {
			t.Fatal(err)
		}
	}
	if err := cardsim.WriteSDPackage(filepath.Join(models, "sd15-lcm"), sd); err != nil {
		t.Fatal(err)
	}
	c, err := card.Open(t.Context(), card.Config{Library: lib, ModelsDir: models, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(t.Context()) })
	for _, step := range []struct {
		name string
		run  func() error
	}{{"load", func() error { return c.Load(t.Context()) }}, {"reset", func() error { return c.Reset(t.Context()) }}} {
		if err := os.WriteFile(log, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := step.run(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		for _, m := range []string{"qwen3-a", "qwen3-vl", "sd15-lcm"} {
			if err := c.ModelErr("", m); err != nil {
				t.Fatalf("%s: %s did not load: %v", step.name, m, err)
			}
		}
		b, err := os.ReadFile(log)
		if err != nil {
			t.Fatal(err)
		}
		var kinds []string
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "load" {
				kinds = append(kinds, f[1])
			}
		}
		llmAt := slices.IndexFunc(kinds, func(k string) bool { return strings.HasPrefix(k, "llm_") })
		lastOnnx := -1
		for i, k := range kinds {
			if !strings.HasPrefix(k, "llm_") {
				lastOnnx = i
			}
		}
		if llmAt < 0 || lastOnnx < 0 || lastOnnx > llmAt || !slices.Contains(kinds, "vision") || !slices.Contains(kinds, "sd_unet") {
			t.Fatalf("%s: the card loaded %v; want every SD and vision engine before the first LLM layer", step.name, kinds)
		}
		if strings.Contains(string(b), "drop") || c.Lost() != nil {
			t.Fatalf("%s: the card dropped: %s %v", step.name, b, c.Lost())
		}
	}
}

// A runtime without axclrtRegisterDeviceStatusCallback (the public V3.10.2
// library) serves as before: the callback is optional.
func TestRuntimeWithoutStatusCallbackServes(t *testing.T) {
	lib := cardsim.NoCallbackLibrary(t)
	rt, err := axcl.Load(lib)
	if err != nil {
		t.Fatal(err)
	}
	if rt.HasStatusCallback() || !rt.HasReboot() {
		t.Fatalf("simulator without the callback: status callback %v, reboot %v", rt.HasStatusCallback(), rt.HasReboot())
	}
	if err := rt.WatchDeviceStatus(func(axcl.DeviceID, axcl.DeviceStatus) {}); !errors.Is(err, axcl.ErrUnsupported) {
		t.Fatalf("WatchDeviceStatus without the symbol: %v, want ErrUnsupported", err)
	}
	c := loadedCard(t, card.Config{Library: lib, ModelsDir: tinyModels(t, 2)})
	out, err := workertest.Run(workertest.Context(t), c.ChatHandlers()["qwen3-tiny"], &schema.ChatJob{
		JobHeader: schema.JobHeader{Model: "qwen3-tiny"}, MaxTokens: 4, Messages: []schema.Message{{Role: "user", Content: "kiln"}}})
	if err != nil || out.Text() == "" {
		t.Fatalf("chat on a runtime without the status callback: %+v, %v", out, err)
	}
	if err := c.Lost(); err != nil {
		t.Fatalf("Lost: %v", err)
	}
}
