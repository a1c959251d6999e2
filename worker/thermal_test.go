package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/test/echo"
	"github.com/kiln-project/kiln/test/wait"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/npu"
	"github.com/kiln-project/kiln/worker/thermal"
	"github.com/kiln-project/kiln/worker/workertest"
)

// The tests in this file drive the card simulator, whose fault plan and
// temperature are per process: they do not run in parallel.

// sim is the card simulator with its controls (fault plan, settings,
// thermal model).
type sim struct{ *cardsim.Control }

func loadSim(t *testing.T) *sim {
	t.Helper()
	return &sim{cardsim.Controls(t)}
}

// card opens the simulated card with the echo test model; its properties
// are sampled every 10 ms.
func (s *sim) card(t *testing.T) *echo.Card {
	t.Helper()
	c, err := echo.OpenCard(t.Context(), npu.Config{Library: s.Library(), SampleInterval: 10 * time.Millisecond, Logger: quiet}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// writeTemp writes a temperature file: °C for the simulator's override
// (KILN_SIM_TEMP_FILE), millidegrees for a thermal zone.
func writeTemp(t *testing.T, path string, v float64) {
	t.Helper()
	if err := writeTempFile(path, v); err != nil {
		t.Fatal(err)
	}
}

// writeTempFile is writeTemp for a goroutine other than the test's (a
// handler): it returns the error.
func writeTempFile(path string, v float64) error {
	if err := os.WriteFile(path+".tmp", []byte(fmt.Sprint(v)), 0o644); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

// events collects the JSON events published on subject.
type events[T any] struct {
	mu  sync.Mutex
	got []T
	ch  chan struct{}
}

func collect[T any](t *testing.T, nc *nats.Conn, subject string) *events[T] {
	t.Helper()
	e := &events[T]{ch: make(chan struct{}, 1024)}
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		var v T
		if err := json.Unmarshal(m.Data, &v); err != nil {
			t.Errorf("event on %s is not JSON: %v", m.Subject, err)
			return
		}
		e.mu.Lock()
		e.got = append(e.got, v)
		e.mu.Unlock()
		e.ch <- struct{}{}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return e
}

func (e *events[T]) all() []T {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.got)
}

// waitFor waits until ok holds for the events so far.
func (e *events[T]) waitFor(t *testing.T, what string, ok func([]T) bool) []T {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		if got := e.all(); ok(got) {
			return got
		}
		select {
		case <-e.ch:
		case <-deadline:
			t.Fatalf("gave up waiting for %s; events: %+v", what, e.all())
		}
	}
}

// eventTypes is the types of evs in order, space-separated.
func eventTypes(evs []schema.DeviceEvent) string {
	types := make([]string, len(evs))
	for i, e := range evs {
		types[i] = e.Type
	}
	return strings.Join(types, " ")
}

// waitState waits until w reports state in its status.
func waitState(t *testing.T, w *worker.Worker, state string) {
	t.Helper()
	wait.For(t, 30*time.Second, 5*time.Millisecond, func() error {
		if got := w.Status().State; got != state {
			return fmt.Errorf("worker state %s, want %s", got, state)
		}
		return nil
	})
}

func transitions(evs []schema.ThermalEvent) string {
	var s []string
	for _, e := range evs {
		s = append(s, e.From+">"+e.To)
	}
	return strings.Join(s, " ")
}

// Under a queue of jobs the worker never starts one while the card is at
// or above the pause threshold, stays paused down to the resume threshold
// (hysteresis), resumes there, and reports each transition once, in order.
// The card's temperature comes from the simulator's override file, read by
// the device thread's sampler; the third job "heats" the card to 85 °C.
func TestGovernorPausesAndResumes(t *testing.T) {
	s := loadSim(t)
	tempFile := filepath.Join(t.TempDir(), "card-temp")
	writeTemp(t, tempFile, 50)
	t.Setenv("KILN_SIM_TEMP_FILE", tempFile)
	card := s.card(t)

	var mu sync.Mutex
	var startTemps []float64
	npuChat := card.Chat()
	h := worker.HandlerFunc[schema.ChatJob](func(ctx context.Context, job *worker.Job[schema.ChatJob]) (*schema.Result, error) {
		c, err := card.Temp(ctx)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		startTemps = append(startTemps, c)
		mu.Unlock()
		res, err := npuChat.Handle(ctx, job)
		if job.Args.Metadata["heat"] != "" {
			if err := writeTempFile(tempFile, 85); err != nil { // the worker's goroutine: no t.Fatal
				t.Error(err)
				return nil, worker.Permanent(err)
			}
			if _, err := card.Device().Refresh(ctx); err != nil {
				return nil, err
			}
		}
		return res, err
	})
	started := func() int { mu.Lock(); defer mu.Unlock(); return len(startTemps) }

	bb := setup(t, topology.Config{})
	nc := brokertest.Connect(t, bb.Broker)
	thermalEvents := collect[schema.ThermalEvent](t, nc, "kiln.events.thermal.hot1")
	w := bb.Worker(t, "hot1", func(c *worker.Config) {
		c.Chat = map[string]worker.Handler[schema.ChatJob]{model: h}
		c.Thermal = &thermal.MonitorConfig{Card: card.Temp, Interval: 20 * time.Millisecond}
		c.Device = card
	})
	c := bb.Client(t)
	ctx := workertest.Context(t)
	var pending []*client.Pending
	for i := range 8 {
		md := map[string]string{}
		if i == 2 {
			md["heat"] = "1"
		}
		p, err := c.Submit(ctx, chatJob(fmt.Sprintf("job %d of eight", i), md))
		if err != nil {
			t.Fatal(err)
		}
		pending = append(pending, p)
	}
	thermalEvents.waitFor(t, "the governor to go hot", func(e []schema.ThermalEvent) bool { return len(e) >= 1 })
	waitState(t, w, schema.StatePaused)
	if n := started(); n != 3 {
		t.Fatalf("%d jobs started; the worker went hot during the third and must finish it and start no other", n)
	}
	// 76 °C: below pause, above resume: still paused.
	writeTemp(t, tempFile, 76)
	wait.For(t, 30*time.Second, 5*time.Millisecond, func() error {
		if c := w.Status().CardTempC; c != 76 {
			return fmt.Errorf("the governor reads %.1f °C, want 76", c)
		}
		return nil
	})
	if st := w.Status(); st.State != schema.StatePaused || st.Governor.State != "hot" || started() != 3 {
		t.Fatalf("at 76 °C (resume 72): state %s, governor %s, %d started; want paused, hot, 3", st.State, st.Governor.State, started())
	}
	writeTemp(t, tempFile, 71)
	for i, p := range pending {
		res, err := p.Wait(ctx, nil)
		if err != nil || res.Status != schema.StatusOK || res.Attempt != 1 {
			t.Fatalf("job %d: %+v, %v", i, res, err)
		}
	}
	got := thermalEvents.all()
	if tr := transitions(got); tr != "ok>hot hot>ok" {
		t.Fatalf("thermal events %q, want \"ok>hot hot>ok\"", tr)
	}
	if got[0].CardTempC != 85 || got[1].CardTempC != 71 || got[0].Worker != "hot1" || got[0].Reason == "" {
		t.Fatalf("thermal events %+v", got)
	}
	mu.Lock()
	defer mu.Unlock()
	for i, c := range startTemps {
		if c >= 80 {
			t.Fatalf("job %d started at %.1f °C, at or above the pause threshold", i, c)
		}
	}
	// (The last result is sent a moment before the worker leaves "busy".)
	waitState(t, w, schema.StateReady)
	if st := w.Status(); st.Governor.State != "ok" || st.JobsOK != 8 {
		t.Fatalf("after cooling: %+v", st)
	}
}

// A card that turns critical mid-job stops the job at the next token and
// hands it back; it finishes on another worker, runs to completion once,
// and the hot worker's heartbeat says paused/critical meanwhile. Here the
// SoC zone of the first worker is what turns critical.
func TestCriticalHandsRunningJobToAnotherWorker(t *testing.T) {
	s := loadSim(t)
	card := s.card(t)
	zone := filepath.Join(t.TempDir(), "temp")
	writeTemp(t, zone, 50000)

	bb := setup(t, topology.Config{})
	nc := brokertest.Connect(t, bb.Broker)
	thermalEvents := collect[schema.ThermalEvent](t, nc, "kiln.events.thermal.>")
	hot := bb.Worker(t, "crit1", func(c *worker.Config) {
		c.Chat = map[string]worker.Handler[schema.ChatJob]{model: card.Chat()}
		c.Thermal = &thermal.MonitorConfig{Card: card.Temp, SoC: thermal.ZoneSource(zone), Interval: 20 * time.Millisecond}
		c.Device = card
	})
	c := bb.Client(t)
	ctx := workertest.Context(t)
	p, err := c.Submit(ctx, chatJob("one two three four five six seven eight", map[string]string{"delay_ms": "30"}))
	if err != nil {
		t.Fatal(err)
	}
	var cool *worker.Worker
	var res *schema.Result
	tokens := map[int]int{}
	for ev, err := range p.Events(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case ev.Type == schema.EventStarted && ev.Attempt == 1 && ev.Worker != "crit1":
			t.Fatalf("first attempt on %s", ev.Worker)
		case ev.Type == schema.EventToken:
			tokens[ev.Attempt]++
			if ev.Attempt == 1 && tokens[1] == 2 {
				writeTemp(t, zone, 90000) // SoC critical is 85 °C
				thermalEvents.waitFor(t, "critical", func(e []schema.ThermalEvent) bool { return len(e) > 0 })
				cool = bb.Worker(t, "cool1", nil)
			}
		case ev.Type == schema.EventResult:
			res = ev.Result
		}
	}
	if res.Status != schema.StatusOK || res.Worker != "cool1" || res.Attempt != 2 || res.Text != "echo: one two three four five six seven eight" {
		t.Fatalf("result %+v: want ok from cool1 on attempt 2 with the whole text", res)
	}
	if tokens[1] >= 9 {
		t.Fatalf("the critical worker ran the job to completion (%d tokens)", tokens[1])
	}
	if tr := transitions(thermalEvents.all()); tr != "ok>critical" {
		t.Fatalf("thermal events %q, want ok>critical", tr)
	}
	st := hot.Status()
	if st.State != schema.StatePaused || st.Governor.State != "critical" || st.JobsOK != 0 || st.SoCTempC != 90 {
		t.Fatalf("critical worker status %+v", st)
	}
	if st := cool.Status(); st.JobsOK != 1 || st.TokensPerS <= 0 || st.TokensPerS > 1000/30.0 {
		t.Fatalf("cool worker: %d jobs at %.1f tokens/s; want 1 job at a rate under one token per 30 ms", st.JobsOK, st.TokensPerS)
	}
	// Exactly one result stored.
	js, _ := nc.JetStream()
	info, err := js.StreamInfo(bb.Topology.WithDefaults().ResultsStream())
	if err != nil || info.State.Msgs != 1 {
		t.Fatalf("results stream: %+v, %v; want exactly one result", info, err)
	}
}

// An injected execute failure hands the job back, resets the card and
// reloads its model; the job then completes after the recovery. The
// heartbeat says loading while the card resets.
func TestExecuteFailureResetsCard(t *testing.T) {
	s := loadSim(t)
	card := s.card(t)
	bb := setup(t, topology.Config{})
	nc := brokertest.Connect(t, bb.Broker)
	deviceEvents := collect[schema.DeviceEvent](t, nc, "kiln.events.device.dev1")
	beats := collect[schema.Heartbeat](t, nc, "kiln.events.heartbeat.dev1")
	w := bb.Worker(t, "dev1", func(c *worker.Config) {
		c.Chat = map[string]worker.Handler[schema.ChatJob]{model: card.Chat()}
		c.Device = card
		c.ResetDelays = []time.Duration{1500 * time.Millisecond} // long enough for a heartbeat to show it
	})
	s.SetFaults(t, "fail_execute=2")
	c := bb.Client(t)
	res, err := c.Chat(workertest.Context(t), chatJob("alpha beta gamma", nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != schema.StatusOK || res.Worker != "dev1" || res.Attempt != 2 || res.Text != "echo: alpha beta gamma" {
		t.Fatalf("result %+v: want ok on attempt 2 after the reset", res)
	}
	if card.Resets() != 1 {
		t.Fatalf("card reset %d times, want 1", card.Resets())
	}
	evs := deviceEvents.waitFor(t, "ready", func(e []schema.DeviceEvent) bool { return len(e) >= 3 })
	if eventTypes(evs) != "fault reset ready" || !strings.Contains(evs[0].Message, "0x8030070C") {
		t.Fatalf("device events %+v, want fault (naming 0x8030070C), reset, ready", evs)
	}
	hbs := beats.waitFor(t, "a heartbeat after recovery", func(h []schema.Heartbeat) bool {
		return slices.ContainsFunc(h, func(b schema.Heartbeat) bool { return b.State == schema.StateLoading }) &&
			h[len(h)-1].State == schema.StateReady
	})
	for _, b := range hbs {
		if b.State != schema.StateReady && b.State != schema.StateLoading && b.State != schema.StateBusy {
			t.Fatalf("heartbeat state %q during a reset", b.State)
		}
	}
	if st := w.Status(); st.JobsOK != 1 {
		t.Fatalf("status after recovery %+v", st)
	}
}

// A fault on every execute after each (re)initialisation: three faults in
// a row make the worker unhealthy; it stops consuming, says so and fails
// (Run returns ErrUnhealthy: the process exits non-zero for systemd rather
// than idling), and the job completes on another worker.
func TestRepeatedFaultsMakeWorkerUnhealthy(t *testing.T) {
	s := loadSim(t)
	t.Setenv("KILN_SIM_FAULTS", "fail_execute=1") // re-applied at every init, so after every reset
	card := s.card(t)
	bb := setup(t, topology.Config{})
	nc := brokertest.Connect(t, bb.Broker)
	deviceEvents := collect[schema.DeviceEvent](t, nc, "kiln.events.device.>")
	sick := bb.Worker(t, "sick1", func(c *worker.Config) {
		c.Chat = map[string]worker.Handler[schema.ChatJob]{model: card.Chat()}
		c.Device = card
		c.ResetDelays = []time.Duration{10 * time.Millisecond}
	})
	c := bb.Client(t)
	ctx := workertest.Context(t)
	p, err := c.Submit(ctx, chatJob("x y", nil))
	if err != nil {
		t.Fatal(err)
	}
	deviceEvents.waitFor(t, "unhealthy", func(e []schema.DeviceEvent) bool {
		return slices.ContainsFunc(e, func(d schema.DeviceEvent) bool { return d.Type == worker.DeviceUnhealthy })
	})
	waitState(t, sick, schema.StateUnhealthy)
	bb.Worker(t, "well1", nil)
	res, err := p.Wait(ctx, nil)
	if err != nil || res.Worker != "well1" || res.Attempt != 4 {
		t.Fatalf("result %+v, %v: want ok from well1 on attempt 4", res, err)
	}
	if types, want := eventTypes(deviceEvents.all()), "fault reset ready fault reset ready fault unhealthy"; types != want {
		t.Fatalf("device events %q, want %q", types, want)
	}
	if st := sick.Status(); st.State != schema.StateUnhealthy || st.JobsOK != 0 {
		t.Fatalf("unhealthy worker status %+v", st)
	}
	select {
	case <-sick.Failed():
	case <-time.After(20 * time.Second):
		t.Fatal("the unhealthy worker did not fail")
	}
	if err := sick.Err(); !errors.Is(err, worker.ErrUnhealthy) {
		t.Fatalf("unhealthy worker error %v, want ErrUnhealthy", err)
	}
}

// A lost device: the job is handed back and finishes elsewhere, and Run
// returns an error (the process exits non-zero, systemd restarts it).
func TestLostDeviceStopsWorker(t *testing.T) {
	s := loadSim(t)
	card := s.card(t)
	bb := setup(t, topology.Config{})
	nc := brokertest.Connect(t, bb.Broker)
	deviceEvents := collect[schema.DeviceEvent](t, nc, "kiln.events.device.lost1")
	w, err := worker.New(brokertest.Connect(t, bb.Broker), worker.Config{
		Name: "lost1", Topology: bb.Topology, Logger: quiet, Device: card,
		Chat:        map[string]worker.Handler[schema.ChatJob]{model: card.Chat()},
		RetryDelays: []time.Duration{50 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	s.SetFaults(t, "lose_device=2")
	runErr := make(chan error, 1)
	go func() { runErr <- w.Run(t.Context()) }()
	c := bb.Client(t)
	ctx := workertest.Context(t)
	wait.For(t, 30*time.Second, 5*time.Millisecond, func() error {
		ws, err := c.Workers(ctx)
		if err == nil && len(ws) != 1 {
			err = fmt.Errorf("%d workers registered, want 1", len(ws))
		}
		return err
	})
	p, err := c.Submit(ctx, chatJob("a b c", nil))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-runErr:
		if !errors.Is(err, worker.ErrCardLost) || !errors.Is(err, npu.ErrLost) {
			t.Fatalf("Run = %v, want ErrCardLost wrapping npu.ErrLost", err)
		}
	case <-ctx.Done():
		t.Fatal("the worker did not stop after losing its card")
	}
	bb.Worker(t, "spare1", nil)
	res, err := p.Wait(ctx, nil)
	if err != nil || res.Worker != "spare1" || res.Attempt != 2 {
		t.Fatalf("result %+v, %v: want ok from spare1 on attempt 2", res, err)
	}
	evs := deviceEvents.waitFor(t, "lost", func(e []schema.DeviceEvent) bool { return len(e) >= 2 })
	if evs[0].Type != worker.DeviceFault || evs[1].Type != worker.DeviceLost {
		t.Fatalf("device events %+v, want fault, lost", evs)
	}
	// The stopped worker left the registry.
	ws, err := c.Workers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, hb := range ws {
		if hb.Worker == "lost1" {
			t.Fatalf("a worker that lost its card is still registered: %+v", hb)
		}
	}
}

// Workers register with the NATS micro-service framework: $SRV.PING and
// $SRV.INFO find each, and the status endpoint answers with the heartbeat.
func TestMicroServiceRegistration(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	bb.Worker(t, "m1", nil)
	bb.Worker(t, "m2", nil)
	nc := brokertest.Connect(t, bb.Broker)
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.PublishRequest("$SRV.INFO."+worker.MicroName, inbox, nil); err != nil {
		t.Fatal(err)
	}
	workers := map[string]micro.Info{}
	for len(workers) < 2 {
		m, err := sub.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("INFO replies so far %v: %v", workers, err)
		}
		var info micro.Info
		if err := json.Unmarshal(m.Data, &info); err != nil {
			t.Fatal(err)
		}
		workers[info.Metadata["worker"]] = info
	}
	for _, name := range []string{"m1", "m2"} {
		info, ok := workers[name]
		if !ok || info.Name != worker.MicroName || len(info.Endpoints) != 1 || info.Endpoints[0].Subject != "kiln.status."+name {
			t.Fatalf("INFO of %s: %+v", name, info)
		}
	}
	m, err := nc.Request("$SRV.PING."+worker.MicroName, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var ping micro.Ping
	if err := json.Unmarshal(m.Data, &ping); err != nil || ping.Name != worker.MicroName {
		t.Fatalf("PING: %s, %v", m.Data, err)
	}
	m, err = nc.Request("kiln.status.m2", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var hb schema.Heartbeat
	if err := json.Unmarshal(m.Data, &hb); err != nil || hb.Worker != "m2" || hb.State != schema.StateReady || !hb.Serves(schema.KindChat, model) {
		t.Fatalf("status reply %s, %v", m.Data, err)
	}
	m, err = nc.Request("$SRV.STATS."+worker.MicroName+"."+workers["m2"].ID, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var stats micro.Stats
	if err := json.Unmarshal(m.Data, &stats); err != nil || len(stats.Endpoints) != 1 || stats.Endpoints[0].NumRequests != 1 {
		t.Fatalf("STATS: %s, %v", m.Data, err)
	}
}

// loadingCard is the echo card whose models "load" after the worker has
// started, until the test lets them.
type loadingCard struct {
	*echo.Card
	release chan struct{}
	err     error
}

func (c *loadingCard) Load(ctx context.Context) error {
	select {
	case <-c.release:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// A worker whose card loads its models after start registers at once,
// heartbeats "loading" and fetches nothing until the load is done; a
// failed load stops it with the error.
func TestWorkerHeartbeatsWhileLoading(t *testing.T) {
	s := loadSim(t)
	card := &loadingCard{Card: s.card(t), release: make(chan struct{})}
	bb := setup(t, topology.Config{})
	nc := brokertest.Connect(t, bb.Broker)
	beats := collect[schema.Heartbeat](t, nc, "kiln.events.heartbeat.load1")
	w := bb.Worker(t, "load1", func(c *worker.Config) {
		c.Chat = map[string]worker.Handler[schema.ChatJob]{model: card.Chat()}
		c.Device = card
	})
	c := bb.Client(t)
	ctx := workertest.Context(t)
	p, err := c.Submit(ctx, chatJob("after loading", nil))
	if err != nil {
		t.Fatal(err)
	}
	beats.waitFor(t, "two heartbeats", func(h []schema.Heartbeat) bool { return len(h) >= 2 })
	for _, hb := range beats.all() {
		if hb.State != schema.StateLoading || hb.CurrentJob != "" || !hb.Serves(schema.KindChat, model) {
			t.Fatalf("heartbeat while loading: %+v", hb)
		}
	}
	if st := w.Status(); st.JobsOK != 0 {
		t.Fatalf("a job ran before the models loaded: %+v", st)
	}
	close(card.release)
	res, err := p.Wait(ctx, nil)
	if err != nil || res.Worker != "load1" || res.Text != "echo: after loading" {
		t.Fatalf("result %+v, %v", res, err)
	}

	bad := &loadingCard{Card: card.Card, release: make(chan struct{}), err: errors.New("package broken")}
	close(bad.release)
	w2, err := worker.New(brokertest.Connect(t, bb.Broker), worker.Config{Name: "load2", Topology: bb.Topology, Logger: quiet, Device: bad,
		Chat: map[string]worker.Handler[schema.ChatJob]{model: card.Chat()}})
	if err != nil {
		t.Fatal(err)
	}
	if err := w2.Run(ctx); err == nil || !strings.Contains(err.Error(), "package broken") {
		t.Fatalf("Run after a failed load = %v", err)
	}
}
