package worker_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/echo"
	"github.com/kiln-project/kiln/test/wait"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/npu"
	"github.com/kiln-project/kiln/worker/thermal"
	"github.com/kiln-project/kiln/worker/workertest"
)

// held is a chat handler whose jobs stream one token, say they started,
// then hold their slot until released (or their context ends): so a test
// knows which jobs run at once without timing anything.
type held struct {
	started chan string // the last message of each job that started
	release chan struct{}
	once    sync.Once
}

func newHeld() *held {
	return &held{started: make(chan string, 64), release: make(chan struct{})}
}

func (h *held) free() { h.once.Do(func() { close(h.release) }) }

func (h *held) handler() worker.Handler[schema.ChatJob] {
	return worker.HandlerFunc[schema.ChatJob](func(ctx context.Context, job *worker.Job[schema.ChatJob]) (*schema.Result, error) {
		text := job.Args.Messages[len(job.Args.Messages)-1].Content
		if err := job.Token("echo:"); err != nil {
			return nil, err
		}
		h.started <- text
		select {
		case <-ctx.Done():
			return &schema.Result{Text: "echo:"}, ctx.Err()
		case <-h.release:
		}
		_ = job.Token(" " + text)
		return &schema.Result{Text: "echo: " + text, FinishReason: schema.FinishStop, Usage: schema.Usage{CompletionTokens: 2}}, nil
	})
}

// await receives n starts of h, failing t after 30 s.
func (h *held) await(t *testing.T, n int) []string {
	t.Helper()
	var got []string
	deadline := time.After(30 * time.Second)
	for len(got) < n {
		select {
		case s := <-h.started:
			got = append(got, s)
		case <-deadline:
			t.Fatalf("%d of %d jobs started: %v", len(got), n, got)
		}
	}
	return got
}

// slotted configures a worker to serve chat h with n slots (echo.Slots,
// unless h says its own Capacity).
func slotted(h worker.Handler[schema.ChatJob], n int) func(*worker.Config) {
	if _, ok := h.(worker.Capacity); !ok {
		h = echo.Slots(h, n)
	}
	return func(c *worker.Config) {
		c.Chat = map[string]worker.Handler[schema.ChatJob]{model: h}
		c.MaxJobs = n
	}
}

// submitN submits n chat jobs "job0".."jobN-1" with metadata md.
func submitN(t *testing.T, c *client.Client, n int, md map[string]string) []*client.Pending {
	t.Helper()
	return submitText(t, c, n, "", md)
}

// submitText submits n chat jobs "job0"+tail.."jobN-1"+tail.
func submitText(t *testing.T, c *client.Client, n int, tail string, md map[string]string) []*client.Pending {
	t.Helper()
	var ps []*client.Pending
	for i := range n {
		p, err := c.Submit(workertest.Context(t), chatJob(fmt.Sprintf("job%d%s", i, tail), md))
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	return ps
}

// results waits for every job's result (workertest.WaitAll).
func results(t *testing.T, ps []*client.Pending) []*schema.Result {
	t.Helper()
	return workertest.WaitAll(t, workertest.Context(t), ps)
}

// spareFinishes starts a 3-slot echo worker named name and checks that it
// finishes every one of ps, which another worker handed back: each ok, on
// its second attempt. It returns the results in the order of ps.
func spareFinishes(t *testing.T, bb *workertest.Queue, name string, ps []*client.Pending) []*schema.Result {
	t.Helper()
	bb.Worker(t, name, slotted(echo.Slots(echo.Chat, 3), 3))
	res := results(t, ps)
	for i, r := range res {
		if r.Status != schema.StatusOK || r.Worker != name || r.Attempt != 2 || r.JobID != ps[i].ID {
			t.Fatalf("handed-back job %s: %+v; want ok from %s on attempt 2", ps[i].ID, r, name)
		}
	}
	return res
}

// storedResults counts the results kept in KILN_RESULTS: exactly one per
// job that ended.
func storedResults(t *testing.T, q *workertest.Queue) uint64 {
	t.Helper()
	js, err := jetstream.New(brokertest.Connect(t, q.Broker))
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(t.Context(), q.Topology.WithDefaults().ResultsStream())
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// chatConsumer is the echo model's normal-lane chat consumer.
func chatConsumer(t *testing.T, q *workertest.Queue) jetstream.Consumer {
	t.Helper()
	js, err := jetstream.New(brokertest.Connect(t, q.Broker))
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.Consumer(t.Context(), q.Topology.WithDefaults().JobsStream(), topology.ConsumerName(schema.KindChat, model, schema.LaneNormal))
	if err != nil {
		t.Fatal(err)
	}
	return cons
}

// modelSlots is the echo chat model's slots in a heartbeat.
func modelSlots(hb schema.Heartbeat) (used, total int) {
	for _, m := range hb.Models {
		if m.Kind == schema.KindChat && m.Name == model {
			return m.SlotsUsed, m.SlotsTotal
		}
	}
	return -1, -1
}

// A worker whose chat model has three slots takes three of its jobs at
// once and no more (though MaxJobs would allow more): the
// fourth waits in the queue for another card, which takes it, and the
// fifth stays queued (not held by the full worker) until a slot frees.
// Heartbeats say how many slots are in use.
func TestFullCardLeavesJobsToOtherCards(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	h1 := newHeld()
	s1 := echo.Slots(h1.handler(), 3)
	w1 := bb.Worker(t, "slots1", func(c *worker.Config) {
		slotted(s1, 3)(c)
		c.MaxJobs = 8 // the model's three slots are what bind
	})
	c := bb.Client(t)
	ps := submitN(t, c, 5, nil)
	h1.await(t, 3)
	wait.For(t, 30*time.Second, 5*time.Millisecond, func() error {
		st := w1.Status()
		if used, total := modelSlots(st); len(st.RunningJobs) != 3 || used != 3 || total != 3 || st.MaxJobs != 8 || st.State != schema.StateBusy {
			return fmt.Errorf("status: %d running %v, slots %d/%d, max %d, %s; want 3 running, slots 3/3", len(st.RunningJobs), st.RunningJobs, used, total, st.MaxJobs, st.State)
		}
		return nil
	})
	h2 := newHeld()
	bb.Worker(t, "slots2", slotted(h2.handler(), 1))
	h2.await(t, 1)
	// Four jobs are out (three on the full card, one on the other), one is
	// still in the queue: the full card did not fetch it.
	cons := chatConsumer(t, bb)
	wait.For(t, 30*time.Second, 5*time.Millisecond, func() error {
		info, err := cons.Info(t.Context())
		if err == nil && (info.NumAckPending != 4 || info.NumPending != 1) {
			err = fmt.Errorf("consumer: %d delivered and not acked, %d queued; want 4 and 1", info.NumAckPending, info.NumPending)
		}
		return err
	})
	h1.free()
	h2.free()
	byWorker := map[string]int{}
	for i, res := range results(t, ps) {
		if res.Status != schema.StatusOK || res.Text != fmt.Sprintf("echo: job%d", i) || res.Attempt != 1 {
			t.Fatalf("job%d: %+v; want ok on attempt 1", i, res)
		}
		byWorker[res.Worker]++
	}
	if byWorker["slots1"] < 3 || byWorker["slots2"] < 1 {
		t.Fatalf("jobs by worker %v: want at least 3 on slots1 and 1 on slots2", byWorker)
	}
	if s1.Max() != 3 {
		t.Fatalf("slots1 ran up to %d jobs at once, want 3", s1.Max())
	}
	if n := storedResults(t, bb); n != 5 {
		t.Fatalf("%d results stored, want 5", n)
	}
}

// High-lane jobs are admitted before normal ones when a slot frees. One
// slot frees (its job is cancelled) while the other stays held, so the
// next job to start is the one the freed slot took: two slots freeing at
// once would start two jobs on two goroutines in either order.
func TestHighLaneTakesTheFreedSlotFirst(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	h := newHeld()
	w := bb.Worker(t, "lanes1", slotted(h.handler(), 2))
	c := bb.Client(t)
	ctx := workertest.Context(t)
	ps := submitN(t, c, 2, nil)
	h.await(t, 2)
	more := submitN(t, c, 2, nil) // normal lane, queued
	urgent := chatJob("urgent", nil)
	urgent.Lane = schema.LaneHigh
	p, err := c.Submit(ctx, urgent)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Cancel(ctx, ps[0].ID); err != nil {
		t.Fatal(err)
	}
	if res, err := ps[0].Wait(ctx, nil); !errors.Is(err, client.ErrCancelled) {
		t.Fatalf("cancelled job: %+v, %v", res, err)
	}
	if next := h.await(t, 1); next[0] != "urgent" {
		t.Fatalf("the freed slot took %q: want the high lane's job", next[0])
	}
	if n := len(w.Status().RunningJobs); n != 2 {
		t.Fatalf("%d jobs running, want the held one and the urgent one", n)
	}
	h.free() // every job ends as soon as it starts from here on
	for _, res := range results(t, append(append(ps[1:], more...), p)) {
		if res.Status != schema.StatusOK {
			t.Fatalf("result %+v", res)
		}
	}
}

// Cancelling one of several running jobs ends that one, cancelled, and
// leaves the others to finish.
func TestCancelOneOfSeveralRunningJobs(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	h := newHeld()
	bb.Worker(t, "cancel3", slotted(echo.Slots(h.handler(), 3), 3))
	c := bb.Client(t)
	ctx := workertest.Context(t)
	ps := submitN(t, c, 3, nil)
	h.await(t, 3)
	if err := c.Cancel(ctx, ps[1].ID); err != nil {
		t.Fatal(err)
	}
	res, err := ps[1].Wait(ctx, nil)
	if !errors.Is(err, client.ErrCancelled) || res.Status != schema.StatusCancelled || res.Text != "echo:" {
		t.Fatalf("cancelled job: %+v, %v", res, err)
	}
	h.free()
	for i, res := range results(t, []*client.Pending{ps[0], ps[2]}) {
		if want := fmt.Sprintf("echo: job%d", 2*i); res.Status != schema.StatusOK || res.Text != want || res.Attempt != 1 {
			t.Fatalf("job that was not cancelled: %+v; want ok %q", res, want)
		}
	}
	if n := storedResults(t, bb); n != 3 {
		t.Fatalf("%d results stored, want 3", n)
	}
}

// A graceful stop lets every running job finish; past the grace every job
// still running is handed back and finishes on another worker, each with
// exactly one result.
func TestStopWithSeveralJobsDrainsOrHandsBack(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	c := bb.Client(t)
	ctx := workertest.Context(t)

	h1 := newHeld()
	w1 := bb.Worker(t, "drain1", slotted(h1.handler(), 3))
	ps := submitN(t, c, 3, nil)
	h1.await(t, 3)
	stopped := make(chan error, 1)
	go func() { stopped <- w1.Stop(ctx) }()
	waitState(t, w1, schema.StateStopping)
	h1.free()
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	for i, res := range results(t, ps) {
		if res.Status != schema.StatusOK || res.Worker != "drain1" || res.Text != fmt.Sprintf("echo: job%d", i) {
			t.Fatalf("after a graceful stop: %+v", res)
		}
	}

	h2 := newHeld()
	w2 := bb.Worker(t, "drain2", slotted(h2.handler(), 3))
	ps = submitN(t, c, 3, nil)
	h2.await(t, 3)
	sctx, cancel := context.WithCancel(ctx)
	cancel() // no grace left
	if err := w2.Stop(sctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("stop past grace: %v", err)
	}
	for i, res := range spareFinishes(t, bb, "drain3", ps) {
		if want := fmt.Sprintf("echo: job%d", i); res.Text != want {
			t.Fatalf("handed-back job %d: %q, want %q", i, res.Text, want)
		}
	}
	if n := storedResults(t, bb); n != 6 {
		t.Fatalf("%d results stored, want 6", n)
	}
}

// A critical temperature hands every running job back; a cooler worker
// finishes each, once, and the hot one admits nothing more.
func TestCriticalHandsEveryRunningJobBack(t *testing.T) {
	t.Parallel()
	zone := filepath.Join(t.TempDir(), "temp")
	writeTemp(t, zone, 50000)
	bb := setup(t, topology.Config{})
	h := newHeld()
	hot := bb.Worker(t, "hot3", func(c *worker.Config) {
		slotted(h.handler(), 3)(c)
		c.Thermal = &thermal.MonitorConfig{SoC: thermal.ZoneSource(zone), Interval: 20 * time.Millisecond}
	})
	c := bb.Client(t)
	ps := submitN(t, c, 3, nil)
	h.await(t, 3)
	writeTemp(t, zone, 90000) // SoC critical is 85 °C
	waitState(t, hot, schema.StatePaused)
	wait.For(t, 30*time.Second, 5*time.Millisecond, func() error {
		if n := len(hot.Status().RunningJobs); n != 0 {
			return fmt.Errorf("%d jobs still running on the critical card", n)
		}
		return nil
	})
	spareFinishes(t, bb, "cool3", ps)
	if len(h.started) != 0 || hot.Status().JobsOK != 0 {
		t.Fatalf("the critical worker started %d more jobs, finished %d", len(h.started), hot.Status().JobsOK)
	}
	if n := storedResults(t, bb); n != 3 {
		t.Fatalf("%d results stored, want 3", n)
	}
}

// simTail makes a simSlots job long: 41 tokens at 50 ms.
var simTail = strings.Repeat(" w", 40)

// simSlots starts, on the simulated card, a worker with three slots whose
// chat handler executes the model before every token, and submits three
// jobs that are all running before it returns.
func simSlots(t *testing.T, s *sim, bb *workertest.Queue, name string, run func(*worker.Config) *worker.Worker) (*echo.Card, *echo.Slotted[schema.ChatJob], []*client.Pending) {
	t.Helper()
	card := s.card(t)
	h := echo.Slots(card.Chat(), 3)
	run(&worker.Config{
		Name: name, Topology: bb.Topology, Logger: quiet, Device: card, MaxJobs: 3,
		Chat:        map[string]worker.Handler[schema.ChatJob]{model: h},
		RetryDelays: []time.Duration{50 * time.Millisecond}, ResetDelays: []time.Duration{10 * time.Millisecond},
	})
	c := bb.Client(t, client.WithoutWorkerCheck()) // Run may not have registered yet
	ps := submitText(t, c, 3, simTail, map[string]string{"delay_ms": "50"})
	// A job is running once it streamed a token; the rest of its events
	// stay queued for Wait.
	wait.For(t, 30*time.Second, 5*time.Millisecond, func() error {
		if used, _ := h.Capacity(); used != 3 {
			return fmt.Errorf("%d jobs running", used)
		}
		return nil
	})
	return card, h, ps
}

// An execute failure with three jobs running: every running job is handed
// back, the card is reset once, and each job ends with one ok result.
func TestExecuteFailureWithSeveralJobsRunning(t *testing.T) {
	s := loadSim(t)
	bb := setup(t, topology.Config{})
	nc := brokertest.Connect(t, bb.Broker)
	deviceEvents := collect[schema.DeviceEvent](t, nc, "kiln.events.device.fault3")
	card, h, ps := simSlots(t, s, bb, "fault3", func(cfg *worker.Config) *worker.Worker {
		return bb.Worker(t, cfg.Name, func(c *worker.Config) { *c = *cfg })
	})
	s.SetFaults(t, "fail_execute=1")
	attempts := 0
	for i, res := range results(t, ps) {
		if res.Status != schema.StatusOK || res.Worker != "fault3" || res.Text != fmt.Sprintf("echo: job%d%s", i, simTail) {
			t.Fatalf("job%d: %+v", i, res)
		}
		attempts += res.Attempt
	}
	if attempts != 6 {
		t.Fatalf("attempts add up to %d: want every running job handed back once (2 each)", attempts)
	}
	if card.Resets() != 1 {
		t.Fatalf("card reset %d times, want 1", card.Resets())
	}
	evs := deviceEvents.waitFor(t, "ready", func(e []schema.DeviceEvent) bool { return len(e) >= 3 })
	if types := eventTypes(evs); types != "fault reset ready" {
		t.Fatalf("device events %q, want fault reset ready", types)
	}
	if h.Max() != 3 {
		t.Fatalf("ran up to %d at once, want 3", h.Max())
	}
	if n := storedResults(t, bb); n != 3 {
		t.Fatalf("%d results stored, want 3", n)
	}
}

// A lost card with three jobs running: each is handed back, the worker
// stops with ErrCardLost, and a spare worker finishes every job once.
func TestLostCardWithSeveralJobsRunning(t *testing.T) {
	s := loadSim(t)
	bb := setup(t, topology.Config{})
	runErr := make(chan error, 1)
	_, _, ps := simSlots(t, s, bb, "lost3", func(cfg *worker.Config) *worker.Worker {
		w, err := worker.New(brokertest.Connect(t, bb.Broker), *cfg)
		if err != nil {
			t.Fatal(err)
		}
		go func() { runErr <- w.Run(t.Context()) }()
		return w
	})
	s.SetFaults(t, "lose_device=1")
	select {
	case err := <-runErr:
		if !errors.Is(err, worker.ErrCardLost) || !errors.Is(err, npu.ErrLost) {
			t.Fatalf("Run = %v, want ErrCardLost wrapping npu.ErrLost", err)
		}
	case <-workertest.Context(t).Done():
		t.Fatal("the worker did not stop after losing its card")
	}
	spareFinishes(t, bb, "spare3", ps)
	if n := storedResults(t, bb); n != 3 {
		t.Fatalf("%d results stored, want 3", n)
	}
}

// A hot card lets its running jobs finish and admits nothing new until it
// has cooled: the job queued meanwhile starts only once the governor says
// ok again.
func TestHotCardFinishesRunningJobsAndAdmitsNothing(t *testing.T) {
	t.Parallel()
	zone := filepath.Join(t.TempDir(), "temp")
	writeTemp(t, zone, 50000)
	bb := setup(t, topology.Config{})
	h := newHeld()
	var w atomic.Pointer[worker.Worker]
	var govAtStart []string // the governor's state as each job started
	var mu sync.Mutex
	inner := h.handler()
	watched := worker.HandlerFunc[schema.ChatJob](func(ctx context.Context, job *worker.Job[schema.ChatJob]) (*schema.Result, error) {
		mu.Lock()
		govAtStart = append(govAtStart, w.Load().Status().Governor.State)
		mu.Unlock()
		return inner.Handle(ctx, job)
	})
	warm := bb.Worker(t, "warm3", func(c *worker.Config) {
		slotted(watched, 3)(c)
		c.Thermal = &thermal.MonitorConfig{SoC: thermal.ZoneSource(zone), Interval: 20 * time.Millisecond}
	})
	w.Store(warm)
	c := bb.Client(t)
	ps := submitN(t, c, 2, nil)
	h.await(t, 2)
	writeTemp(t, zone, 82000) // SoC pause 80 °C, critical 85 °C
	wait.For(t, 30*time.Second, 5*time.Millisecond, func() error {
		if g := warm.Status().Governor.State; g != string(thermal.Hot) {
			return fmt.Errorf("governor %s", g)
		}
		return nil
	})
	late, err := c.Submit(workertest.Context(t), chatJob("late", nil))
	if err != nil {
		t.Fatal(err)
	}
	h.free()
	for _, res := range results(t, ps) {
		if res.Status != schema.StatusOK || res.Worker != "warm3" || res.Attempt != 1 {
			t.Fatalf("job running when the card got hot: %+v; want it finished here on attempt 1", res)
		}
	}
	waitState(t, warm, schema.StatePaused)
	writeTemp(t, zone, 60000) // below resume, 72 °C
	res := results(t, []*client.Pending{late})[0]
	if res.Status != schema.StatusOK || res.Worker != "warm3" || res.Attempt != 1 {
		t.Fatalf("job queued while hot: %+v", res)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(govAtStart) != 3 || govAtStart[2] != string(thermal.OK) {
		t.Fatalf("governor state as each job started: %v; want the third to start once it was ok", govAtStart)
	}
}

// One of several running jobs passes its deadline: it ends expired, the
// others run on and finish.
func TestDeadlineOfOneOfSeveralRunningJobs(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	h := newHeld()
	bb.Worker(t, "deadline3", slotted(h.handler(), 3))
	c := bb.Client(t)
	ctx := workertest.Context(t)
	ps := submitN(t, c, 2, nil)
	h.await(t, 2)
	job := chatJob("soon", nil)
	deadline := time.Now().Add(2 * time.Second)
	job.Deadline = &deadline
	p, err := c.Submit(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	h.await(t, 1) // it runs beside the others
	res, err := p.Wait(ctx, nil)
	if !errors.Is(err, client.ErrExpired) || res.Status != schema.StatusExpired {
		t.Fatalf("job past its deadline: %+v, %v; want expired", res, err)
	}
	h.free()
	for _, res := range results(t, ps) {
		if res.Status != schema.StatusOK || res.Attempt != 1 {
			t.Fatalf("the other jobs: %+v; want ok on attempt 1", res)
		}
	}
}

// Several jobs held past the ack wait are each kept in progress: none is
// redelivered.
func TestSeveralLongJobsAreKeptInProgress(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{AckWait: 3 * time.Second})
	h := newHeld()
	bb.Worker(t, "long3", slotted(h.handler(), 3))
	c := bb.Client(t)
	ps := submitN(t, c, 3, nil)
	h.await(t, 3)
	time.Sleep(2*3*time.Second + time.Second) // two ack waits and more: only InProgress keeps them
	cons := chatConsumer(t, bb)
	info, err := cons.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.NumRedelivered != 0 || info.NumAckPending != 3 {
		t.Fatalf("consumer after two ack waits: %d redelivered, %d ack pending; want 0 and 3", info.NumRedelivered, info.NumAckPending)
	}
	h.free()
	for _, res := range results(t, ps) {
		if res.Status != schema.StatusOK || res.Attempt != 1 {
			t.Fatalf("result %+v: want ok on attempt 1", res)
		}
	}
	if len(h.started) != 0 {
		t.Fatalf("%d jobs started again", len(h.started))
	}
}
