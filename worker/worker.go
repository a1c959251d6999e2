package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
)

// ErrStopped is returned by Start on a worker that was stopped.
var ErrStopped = errors.New("worker: stopped")

// Worker takes jobs for the models of one card, as many at once as the
// card has free slots (Capacity, Config.MaxJobs), and answers them. Every
// worker that serves a model pulls from the same durable consumer: that is
// the load balancing across cards and Pis.
type Worker struct {
	cfg  Config
	nc   *nats.Conn
	js   jetstream.JetStream
	log  *slog.Logger
	subj schema.Subjects

	routes    []*route // high lanes first
	results   jetstream.Stream
	cancelKV  jetstream.KeyValue
	workersKV jetstream.KeyValue
	subs      []*nats.Subscription
	wake      chan *route // a job was stored for this route

	startOnce, stopOnce sync.Once
	stopFetch           chan struct{} // closed: take no new job
	loopDone            chan struct{}
	hbStop              chan struct{}
	hbDone              chan struct{}
	stopped             chan struct{}
	startedAt           time.Time

	cancelWatch jetstream.KeyWatcher

	mu        sync.Mutex
	running   []*runningJob  // admitted jobs, oldest first
	reserved  int            // jobs fetched and not yet settled
	inUse     map[string]int // reserved jobs by slotKey
	halt      error          // ErrShutdown once Stop's grace ended: a job admitted later stops at once
	state     string
	jobs      sync.WaitGroup       // the running jobs' goroutines
	freed     chan struct{}        // a job settled: its slot is free
	cancelled map[string]time.Time // ids cancelled (kiln_cancel mirror), pruned after JobMaxAge

	jobsOK, jobsFailed atomic.Int64
	jobsRefused        atomic.Int64  // invalid jobs: the sender's fault, not the card's
	tokensPerS         atomic.Uint64 // float64 bits: decode rate of the last chat job done

	hw  health        // thermal governor, device faults (governor.go, faults.go)
	svc micro.Service // NATS micro registration (micro.go)
}

// route is one (kind, model, lane) the worker pulls from.
type route struct {
	kind, model, lane string
	cons              jetstream.Consumer
	run               func(ctx context.Context, d *delivery)
	capacity          func() int    // how many of its model's jobs may run at once (Capacity)
	ackWait           time.Duration // the consumer's: InProgress every third of it
	maxDeliver        int           // the consumer's: the last delivery fails; 0 or less: no limit

	// Owned by the loop goroutine.
	pending     bool       // a job may be waiting: look before sleeping
	rung        bool       // the stream announced a job: wait briefly for it
	fetchErrors logLimiter // failed fetches, logged at most every fetchLogEvery
}

// bind makes rt pull from cons and take its AckWait and MaxDeliver from
// the consumer's configuration: whoever provisioned the consumer decides
// them, not this worker's Config (the fallback when the consumer has none).
func (rt *route) bind(cons jetstream.Consumer, fallback topology.Config) {
	rt.cons = cons
	rt.ackWait, rt.maxDeliver = fallback.AckWait, fallback.MaxDeliver
	if info := cons.CachedInfo(); info != nil {
		if info.Config.AckWait > 0 {
			rt.ackWait = info.Config.AckWait
		}
		if info.Config.MaxDeliver != 0 {
			rt.maxDeliver = info.Config.MaxDeliver // -1: no limit
		}
	}
}

// New returns a worker on nc. Start runs it.
func New(nc *nats.Conn, cfg Config) (*Worker, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	w := &Worker{
		cfg:       cfg,
		nc:        nc,
		js:        js,
		log:       cfg.Logger.With("worker", cfg.Name),
		subj:      cfg.Topology.Subjects(),
		wake:      make(chan *route, 64),
		stopFetch: make(chan struct{}),
		loopDone:  make(chan struct{}),
		hbStop:    make(chan struct{}),
		hbDone:    make(chan struct{}),
		stopped:   make(chan struct{}),
		state:     schema.StateLoading,
		cancelled: map[string]time.Time{},
		inUse:     map[string]int{},
		freed:     make(chan struct{}, 1),
	}
	w.hw.init()
	return w, nil
}

// Name is the worker's name.
func (w *Worker) Name() string { return w.cfg.Name }

// Models lists the models the worker serves.
func (w *Worker) Models() []schema.ModelInfo {
	var ms []schema.ModelInfo
	for m := range w.cfg.Chat {
		ms = append(ms, schema.ModelInfo{Name: m, Kind: schema.KindChat})
	}
	for m := range w.cfg.Image {
		ms = append(ms, schema.ModelInfo{Name: m, Kind: schema.KindImage})
	}
	slices.SortFunc(ms, func(a, b schema.ModelInfo) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Name, b.Name))
	})
	return ms
}

// Start creates what is missing of the topology (topology.Ensure: it never
// changes the broker's streams) and the worker's consumers, registers the
// worker and starts taking jobs. It returns once the worker is running.
func (w *Worker) Start(ctx context.Context) error {
	err := ErrStopped
	w.startOnce.Do(func() { err = w.start(ctx) })
	return err
}

func (w *Worker) start(ctx context.Context) error {
	w.startedAt = time.Now()
	top := w.cfg.Topology
	if err := topology.Ensure(ctx, w.js, top); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	var err error
	if w.results, err = w.js.Stream(ctx, top.ResultsStream()); err != nil {
		return fmt.Errorf("worker: results stream: %w", err)
	}
	if w.cancelKV, err = w.js.KeyValue(ctx, top.CancelBucket()); err != nil {
		return fmt.Errorf("worker: cancel bucket: %w", err)
	}
	if w.workersKV, err = w.js.KeyValue(ctx, top.WorkersBucket()); err != nil {
		return fmt.Errorf("worker: workers bucket: %w", err)
	}
	if err := w.watchCancels(ctx); err != nil {
		return err
	}
	for _, lane := range []string{schema.LaneHigh, schema.LaneNormal} {
		for model, h := range w.cfg.Chat {
			w.routes = append(w.routes, &route{kind: schema.KindChat, model: model, lane: lane, capacity: capacityOf(h),
				run: func(ctx context.Context, d *delivery) { runJob(ctx, w, d, h, schema.ValidateChat) }})
		}
		for model, h := range w.cfg.Image {
			w.routes = append(w.routes, &route{kind: schema.KindImage, model: model, lane: lane, capacity: capacityOf(h),
				run: func(ctx context.Context, d *delivery) { runJob(ctx, w, d, h, schema.ValidateImage) }})
		}
	}
	for _, rt := range w.routes {
		cons, err := topology.EnsureConsumer(ctx, w.js, top, rt.kind, rt.model, rt.lane)
		if err != nil {
			return fmt.Errorf("worker: %w", err)
		}
		rt.bind(cons, top)
		if rt.ackWait != top.AckWait || rt.maxDeliver != top.MaxDeliver {
			w.log.Info("the consumer's settings differ from the worker's topology; the consumer's hold",
				"consumer", topology.ConsumerName(rt.kind, rt.model, rt.lane), "ack_wait", rt.ackWait, "max_deliver", rt.maxDeliver)
		}
		for _, wake := range w.subj.WakeFilters(rt.kind, rt.model, rt.lane) {
			sub, err := w.nc.Subscribe(wake, func(*nats.Msg) { w.signalWake(rt) })
			if err != nil {
				return fmt.Errorf("worker: wake subscription: %w", err)
			}
			w.subs = append(w.subs, sub)
		}
	}
	sub, err := w.nc.Subscribe(w.subj.Cancels(), w.onCancel)
	if err != nil {
		return fmt.Errorf("worker: cancel subscription: %w", err)
	}
	w.subs = append(w.subs, sub)
	if sub, err = w.subscribeReaper(); err != nil {
		return err
	}
	w.subs = append(w.subs, sub)
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := w.nc.FlushWithContext(fctx); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	if err := w.startGovernor(ctx); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	loading := w.startLoading(ctx)
	if err := w.startMicro(); err != nil {
		w.log.Warn("not registered as a NATS micro service", "err", err)
	}
	w.setState(schema.StateReady)
	w.heartbeat(ctx)
	go w.heartbeatLoop()
	go w.loop()
	if loading {
		w.log.Info("worker started, loading its models: it takes jobs once they are loaded", "models", w.modelNames())
	} else {
		w.logReady()
	}
	return nil
}

// logReady says the worker takes jobs now: at start, or once a Loader has
// loaded the models.
func (w *Worker) logReady() {
	models := w.modelNames()
	w.log.Info("worker ready", "models", models)
	if len(models) == 0 {
		w.log.Warn("worker serves no models: it heartbeats but takes no jobs")
	}
}

// modelNames lists the served models as kind/name.
func (w *Worker) modelNames() []string {
	models := []string{}
	for _, m := range w.Models() {
		models = append(models, m.Kind+"/"+m.Name)
	}
	return models
}

// Run starts the worker, serves until ctx ends, then stops gracefully: the
// running jobs get ShutdownGrace to finish before those still running are
// handed back to the queue. It returns nil after a clean stop, and an
// error matching ErrCardLost after stopping because the card was lost.
func (w *Worker) Run(ctx context.Context) error {
	if err := w.Start(ctx); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-w.hw.fatal:
		_ = w.StopAndCancel(context.Background())
		return w.Err()
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.cfg.ShutdownGrace)
	defer cancel()
	if err := w.Stop(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// Stop stops taking jobs and waits for the running jobs to finish. If ctx
// ends first, each job still running is cancelled and handed back to the
// queue so another card takes it at once, and Stop returns ctx.Err() after
// the worker has stopped. Calling Stop again, or before Start, is safe.
func (w *Worker) Stop(ctx context.Context) error {
	w.stopOnce.Do(func() {
		w.setState(schema.StateStopping)
		close(w.stopFetch)
		go w.finishStop()
	})
	select {
	case <-w.stopped:
		return nil
	case <-ctx.Done():
		w.cancelAll(ErrShutdown)
		<-w.stopped
		return ctx.Err()
	}
}

// StopAndCancel stops at once: every running job is cancelled and handed
// back to the queue. It waits until the worker has stopped or ctx ends.
func (w *Worker) StopAndCancel(ctx context.Context) error {
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	err := w.Stop(cctx)
	if errors.Is(err, context.Canceled) && ctx.Err() == nil {
		return nil
	}
	return err
}

// Stopped is closed once the worker has stopped.
func (w *Worker) Stopped() <-chan struct{} { return w.stopped }

func (w *Worker) finishStop() {
	if w.startedAt.IsZero() { // never started
		close(w.stopped)
		return
	}
	<-w.loopDone
	if m := w.hw.monitor; m != nil {
		m.Stop()
	}
	if w.svc != nil {
		_ = w.svc.Stop()
	}
	close(w.hbStop)
	<-w.hbDone
	for _, s := range w.subs {
		_ = s.Unsubscribe()
	}
	_ = w.cancelWatch.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if w.workersKV != nil {
		if err := w.workersKV.Delete(ctx, w.cfg.Name); err != nil {
			w.log.Warn("could not leave the worker registry", "err", err)
		}
	}
	_ = w.nc.FlushWithContext(ctx)
	w.log.Info("worker stopped", "jobs_ok", w.jobsOK.Load(), "jobs_failed", w.jobsFailed.Load(), "jobs_refused", w.jobsRefused.Load())
	close(w.stopped)
}

func (w *Worker) stopping() bool {
	select {
	case <-w.stopFetch:
		return true
	default:
		return false
	}
}

func (w *Worker) signalWake(rt *route) {
	select {
	case w.wake <- rt:
	default: // the loop is behind on wake-ups; its scan sees every route anyway
	}
}

func (w *Worker) setState(s string) {
	w.mu.Lock()
	w.state = s
	w.mu.Unlock()
}

// onCancel handles kiln.cancel.<client>.<id> (kiln.cancel.<id> for an
// anonymous job): it stops the running job that is that client's job of
// that id, and no other.
func (w *Worker) onCancel(m *nats.Msg) {
	key, ok := w.subj.ParseCancel(m.Subject)
	if !ok {
		return
	}
	w.mu.Lock()
	w.cancelled[key] = time.Now()
	var hit []*runningJob
	for _, j := range w.running {
		if j.key == key {
			hit = append(hit, j)
		}
	}
	w.mu.Unlock()
	for _, j := range hit {
		w.log.Info("cancel requested", "job", j.id, "key", key)
		j.cancel(ErrCancelRequested)
	}
}

// watchCancels mirrors the kiln_cancel bucket in memory, so that checking
// whether a job was cancelled while queued costs no round trip. Its keys
// are schema.JobKey(client, id), as the cancel subjects' tails are. A
// cancel on the subject is recorded too, in case it arrives first.
func (w *Worker) watchCancels(ctx context.Context) error {
	watch, err := w.cancelKV.WatchAll(context.WithoutCancel(ctx), jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("worker: watch cancel bucket: %w", err)
	}
	w.cancelWatch = watch
	initial := make(chan struct{})
	go func() {
		once := sync.Once{}
		defer once.Do(func() { close(initial) })
		for e := range watch.Updates() {
			if e == nil {
				once.Do(func() { close(initial) })
				continue
			}
			w.mu.Lock()
			w.cancelled[e.Key()] = e.Created()
			w.mu.Unlock()
		}
	}()
	select {
	case <-initial:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// wasCancelled reports whether the job of key (schema.JobKey) was
// cancelled, and forgets keys older than the queue's max age (they cannot
// come back).
func (w *Worker) wasCancelled(key string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.cancelled[key]
	if len(w.cancelled) > 1024 {
		horizon := time.Now().Add(-w.cfg.Topology.JobMaxAge)
		for k, t := range w.cancelled {
			if t.Before(horizon) {
				delete(w.cancelled, k)
			}
		}
	}
	return ok
}

// loop admits jobs, high lanes first, while the card has free slots (one
// at a time per model unless its handler says otherwise: Capacity; at most
// Config.MaxJobs in all), until Stop; each admitted job runs on a goroutine
// of its own. When Stop comes it waits for the running jobs to settle.
//
// An idle worker sleeps until the job stream republishes a stored job's
// headers on the wake subject of its route, a running job settles and
// frees its slot, or PollInterval passes (redeliveries after a retry delay
// do not wake). Each route remembers whether a job may be waiting on it, so
// a wake-up costs one fetch, not a scan of every consumer, and a high lane
// is still looked at before any normal one whenever it may hold a job.
//
// A device fault seen by a job stops the others (ErrDeviceFault: each is
// handed back); once none runs, the loop resets the card (handleFault).
func (w *Worker) loop() {
	defer close(w.loopDone)
	defer w.jobs.Wait()
	timer := time.NewTimer(w.cfg.PollInterval)
	defer timer.Stop()
	for _, rt := range w.routes {
		rt.pending = true
	}
	for {
		if w.stopping() {
			return
		}
		if w.hw.faultPending() {
			if !w.idle() {
				// The other jobs are being handed back; reset once they are.
				select {
				case <-w.stopFetch:
					return
				case <-w.freed:
				}
				continue
			}
			w.handleFault()
			continue
		}
		if wait := w.gate(); wait != nil {
			// Paused (governor), resetting or unhealthy: fetch nothing.
			select {
			case <-w.stopFetch:
				return
			case <-wait:
			case <-w.freed:
			case <-timer.C:
			}
			if w.Err() != nil {
				return // the card is lost: Run stops the worker
			}
			timer.Reset(w.cfg.PollInterval)
			for _, rt := range w.routes {
				rt.pending = true
			}
			continue
		}
		if w.full() {
			// No free slot: the queue's jobs are for other cards until one
			// frees (or the card faults, or the governor acts).
			select {
			case <-w.stopFetch:
				return
			case <-w.freed:
				w.lookEverywhere()
			case <-w.hw.changedChan():
			}
			continue
		}
		w.drainWake()
		if msg, rt := w.next(); msg != nil {
			// The delivery says how many more wait behind it.
			rt.pending = true
			if meta, err := msg.Metadata(); err == nil {
				rt.pending = meta.NumPending > 0
			}
			w.startJob(rt, func() { w.process(rt, msg) })
			continue
		}
		timer.Reset(w.cfg.PollInterval)
		select {
		case <-w.stopFetch:
			return
		case rt := <-w.wake:
			rt.pending, rt.rung = true, true
		case <-w.freed:
			w.lookEverywhere()
		case <-w.hw.changedChan():
		case <-timer.C:
			w.lookEverywhere()
		}
	}
}

// lookEverywhere marks every route as maybe holding a job: after the poll
// interval, and when a slot frees (a job announced meanwhile may be a
// redelivery, which is not announced, and the high lane must be looked at
// first whatever woke the loop).
func (w *Worker) lookEverywhere() {
	for _, rt := range w.routes {
		rt.pending = true
	}
}

// rungFetchWait bounds the wait for a job that the stream announced: the
// announcement can come a moment before the consumer offers the job.
const rungFetchWait = 250 * time.Millisecond

// drainWake marks the routes announced since the last look.
func (w *Worker) drainWake() {
	for {
		select {
		case rt := <-w.wake:
			rt.pending, rt.rung = true, true
		default:
			return
		}
	}
}

// next asks, in priority order, each route that may hold a job and whose
// model has a free slot for one.
func (w *Worker) next() (jetstream.Msg, *route) {
	for _, rt := range w.routes {
		if !rt.pending || !w.roomFor(rt) {
			continue // a full model's jobs stay pending: looked at again when a slot frees
		}
		if w.modelErr(rt.kind, rt.model) != nil {
			rt.pending, rt.rung = false, false // its package did not load: leave its jobs to other cards
			continue
		}
		var batch jetstream.MessageBatch
		var err error
		if rt.rung {
			batch, err = rt.cons.Fetch(1, jetstream.FetchMaxWait(rungFetchWait))
		} else {
			batch, err = rt.cons.FetchNoWait(1)
		}
		rt.rung = false
		if err != nil {
			w.fetchFailed(rt, err)
			continue
		}
		for msg := range batch.Messages() {
			return msg, rt
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			w.fetchFailed(rt, err)
			continue
		}
		rt.pending = false
	}
	return nil, nil
}

// fetchLogEvery bounds how often a route logs its failed fetches: a
// permission error fails every fetch, and must be seen without flooding
// the log.
const fetchLogEvery = 30 * time.Second

// fetchFailed logs a failed fetch at Warn, at most once per route every
// fetchLogEvery, with the count of failures not logged since.
func (w *Worker) fetchFailed(rt *route, err error) {
	if suppressed, ok := rt.fetchErrors.allow(time.Now(), fetchLogEvery); ok {
		w.log.Warn("fetch failed", "consumer", topology.ConsumerName(rt.kind, rt.model, rt.lane), "err", err,
			"suppressed", suppressed)
	}
}

// logLimiter lets one of a run of repeated messages through per period.
type logLimiter struct {
	last       time.Time // when a message was let through; zero: never
	suppressed int       // messages held back since
}

// allow reports whether a message may be logged at now, and how many were
// held back since the last one that was.
func (l *logLimiter) allow(now time.Time, period time.Duration) (suppressed int, ok bool) {
	if !l.last.IsZero() && now.Sub(l.last) < period {
		l.suppressed++
		return 0, false
	}
	suppressed = l.suppressed
	l.last, l.suppressed = now, 0
	return suppressed, true
}
