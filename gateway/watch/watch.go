// Package watch follows the fleet as NATS shows it, for the gateway's
// /metrics and dashboard: the worker registry (each worker's latest
// heartbeat and a short history of its temperatures), device faults, the
// queue depth of every (kind, model, lane), and the jobs passing through
// the queue (queued from the job stream's wake subjects, running from the
// heartbeats' current job, finished from the results stream).
//
// It reads what its connection's identity may read: on an open broker, or
// as an admin, everything; a part it may not read (a controller may not
// read other clients' wakes or results) stays empty, and the first refusal
// is logged.
package watch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker"
)

// Config configures a Watcher.
type Config struct {
	// Conn is the connection the watcher reads the fleet with.
	Conn *nats.Conn
	// Client is a kiln client on Conn, for the queue depths.
	Client *client.Client
	// Topology gives the prefix and the stream and bucket names.
	Topology topology.Config
	// Clients, when set, limits the jobs followed to these clients' (their
	// wakes and results), and leaves out when the oldest waiting job was
	// queued (a job message read): what a gateway identity of `kiln broker
	// init-auth` may read (broker/auth). Empty: every job (an open broker,
	// an admin, the broker's in-process user).
	Clients []string
	// PollInterval is how often the queue depths and the registry are read
	// (default 2 s).
	PollInterval time.Duration
	// RecentJobs bounds the jobs kept (default 50); the images of at most
	// RecentImages of them are kept (default 12).
	RecentJobs, RecentImages int
	// TempHistory is how many temperature samples are kept per worker
	// (default 60, one per heartbeat).
	TempHistory int
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

func (c *Config) defaults() {
	if c.PollInterval <= 0 {
		c.PollInterval = 2 * time.Second
	}
	if c.RecentJobs <= 0 {
		c.RecentJobs = 50
	}
	if c.RecentImages <= 0 {
		c.RecentImages = 12
	}
	if c.TempHistory <= 0 {
		c.TempHistory = 60
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Topology = c.Topology.WithDefaults()
}

// The states of a Job: queued, running, then the result's status
// (schema.StatusOK, StatusError, StatusCancelled, StatusExpired).
const (
	JobQueued  = "queued"
	JobRunning = "running"
)

// PreviewRunes bounds Job.Text.
const PreviewRunes = 240

// Job is one job the watcher saw: queued (a wake), running (a heartbeat's
// current job) or finished (a result). Kind, Model and Lane are empty for
// a job whose wake it did not see (queued before it started).
type Job struct {
	ID     string `json:"id"`
	Client string `json:"client,omitempty"`
	Kind   string `json:"kind,omitempty"`
	Model  string `json:"model,omitempty"`
	Lane   string `json:"lane,omitempty"`
	State  string `json:"state"`
	Worker string `json:"worker,omitempty"`
	// Queued is when the job was stored; Finished when its result was.
	Queued   time.Time `json:"queued,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	// Text is the start of a chat's answer (at most PreviewRunes runes).
	Text         string        `json:"text,omitempty"`
	FinishReason string        `json:"finish_reason,omitempty"`
	Error        *schema.Error `json:"error,omitempty"`
	Usage        schema.Usage  `json:"usage"`
	// Image says the watcher holds the job's image (Watcher.Image).
	Image bool `json:"image,omitempty"`

	image []byte
	mime  string
}

// Done reports whether the job has its result.
func (j *Job) Done() bool { return j.State != JobQueued && j.State != JobRunning }

// TempSample is one heartbeat's temperatures.
type TempSample struct {
	Time  time.Time `json:"t"`
	CardC float64   `json:"card_c,omitempty"`
	SoCC  float64   `json:"soc_c,omitempty"`
}

// Worker is a live worker: its latest heartbeat, when the watcher first
// saw that heartbeat (on its own clock: a Pi's may be off), the
// temperatures of its recent heartbeats (oldest first) and the device
// faults it reported since the watcher started.
type Worker struct {
	schema.Heartbeat
	Seen   time.Time    `json:"seen"`
	Temps  []TempSample `json:"temps"`
	Faults uint64       `json:"faults"`
}

// Watcher follows the fleet; its methods are safe for concurrent use.
type Watcher struct {
	cfg  Config
	js   jetstream.JetStream
	subj schema.Subjects
	log  *slog.Logger

	registry *topology.Registry
	subs     []*nats.Subscription
	stop     context.CancelFunc
	done     chan struct{}

	mu        sync.Mutex
	jobs      []*Job // oldest first, at most RecentJobs
	temps     map[string][]TempSample
	seen      map[string]time.Time // worker -> when its latest heartbeat was first seen
	faults    map[string]uint64
	queue     []client.QueueDepth
	workers   []schema.Heartbeat
	listeners map[chan struct{}]struct{}
	finished  []func(Job)
	refused   map[string]bool // parts it may not read, logged once
}

// Start starts a watcher; Stop ends it.
func Start(ctx context.Context, cfg Config) (*Watcher, error) {
	if cfg.Conn == nil || cfg.Client == nil {
		return nil, errors.New("watch: Config needs Conn and Client")
	}
	cfg.defaults()
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	w := &Watcher{cfg: cfg, js: js, subj: cfg.Topology.Subjects(), log: cfg.Logger.With("component", "watch"),
		temps: map[string][]TempSample{}, seen: map[string]time.Time{}, faults: map[string]uint64{}, listeners: map[chan struct{}]struct{}{},
		refused: map[string]bool{}, done: make(chan struct{})}
	if w.registry, err = topology.WatchRegistry(ctx, js, cfg.Topology); err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	subs := map[string]nats.MsgHandler{w.subj.Device("*"): w.onDevice}
	for _, s := range w.wakeSubjects() {
		subs[s] = w.onWake
	}
	for subject, fn := range subs {
		sub, err := cfg.Conn.Subscribe(subject, fn)
		if err != nil {
			w.Stop()
			return nil, fmt.Errorf("watch: subscribe %s: %w", subject, err)
		}
		w.subs = append(w.subs, sub)
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w.stop = cancel
	w.poll(rctx)
	go w.run(rctx)
	return w, nil
}

// Stop ends the watcher.
func (w *Watcher) Stop() {
	for _, s := range w.subs {
		_ = s.Unsubscribe()
	}
	if w.stop != nil {
		w.stop()
		<-w.done
	}
	w.registry.Stop()
}

// wakeSubjects are the wake subjects of the jobs followed.
func (w *Watcher) wakeSubjects() []string {
	if len(w.cfg.Clients) == 0 {
		return []string{w.subj.Wakes()}
	}
	var out []string
	for _, c := range w.cfg.Clients {
		out = append(out, w.subj.ClientWakes(c))
	}
	return out
}

// resultSubjects are the result subjects of the jobs followed, one
// consumer each (a gateway identity may make a consumer of one client's
// results at a time).
func (w *Watcher) resultSubjects() []string {
	if len(w.cfg.Clients) == 0 {
		return []string{w.subj.Results()}
	}
	var out []string
	for _, c := range w.cfg.Clients {
		out = append(out, w.subj.ClientResults(c))
	}
	return out
}

// run follows the results and polls the registry and the queue until ctx ends.
func (w *Watcher) run(ctx context.Context) {
	defer close(w.done)
	var wg sync.WaitGroup
	for _, subject := range w.resultSubjects() {
		wg.Go(func() { w.followResults(ctx, subject) })
	}
	t := time.NewTicker(w.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-t.C:
			w.poll(ctx)
		}
	}
}

// refusedOnce logs, once per part, that the identity may not read it.
func (w *Watcher) refusedOnce(part string, err error) {
	w.mu.Lock()
	first := !w.refused[part]
	w.refused[part] = true
	w.mu.Unlock()
	if first {
		w.log.Warn("cannot read "+part+" (the identity's permissions?): left out", "err", err)
	}
}

// poll reads the queue depths and the registry's latest heartbeats.
func (w *Watcher) poll(ctx context.Context) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	var opts []client.QueueOption
	if len(w.cfg.Clients) > 0 {
		opts = append(opts, client.WithoutOldest()) // a gateway identity may not read job messages
	}
	queue, err := w.cfg.Client.Queue(qctx, opts...)
	cancel()
	if err != nil && ctx.Err() == nil {
		w.refusedOnce("queue depths", err)
	}
	hbs := w.registry.Live()
	w.mu.Lock()
	if err == nil {
		w.queue = queue
	}
	w.workers = hbs
	for _, hb := range hbs {
		w.sampleTemps(hb)
		// The heartbeat names the running job by its id alone.
		for _, j := range w.jobs {
			if j.ID == hb.CurrentJob && !j.Done() {
				j.State, j.Worker = JobRunning, hb.Worker
			}
		}
	}
	w.mu.Unlock()
	w.changed()
}

// sampleTemps adds hb's temperatures to its worker's history once per
// heartbeat, and notes when it first saw it. w.mu is held.
func (w *Watcher) sampleTemps(hb schema.Heartbeat) {
	h := w.temps[hb.Worker]
	if n := len(h); n > 0 && hb.Time.Equal(h[n-1].Time) {
		return
	}
	w.seen[hb.Worker] = time.Now()
	h = append(h, TempSample{Time: hb.Time, CardC: hb.CardTempC, SoCC: hb.SoCTempC})
	if over := len(h) - w.cfg.TempHistory; over > 0 {
		h = slices.Delete(h, 0, over)
	}
	w.temps[hb.Worker] = h
}

// jobLocked returns client's job id, adding it when new (and dropping the
// oldest past RecentJobs). w.mu is held.
func (w *Watcher) jobLocked(client, id string) *Job {
	for _, j := range w.jobs {
		if j.ID == id && j.Client == client {
			return j
		}
	}
	j := &Job{ID: id, Client: client, State: JobQueued}
	w.jobs = append(w.jobs, j)
	if over := len(w.jobs) - w.cfg.RecentJobs; over > 0 {
		w.jobs = slices.Delete(w.jobs, 0, over)
	}
	return j
}

// onWake records a job the jobs stream stored: the wake subject is the
// job's, under wake instead of jobs; its message id is its key.
func (w *Watcher) onWake(m *nats.Msg) {
	route, err := w.subj.ParseJob(strings.Replace(m.Subject, w.subj.Prefix+".wake.", w.subj.Prefix+".jobs.", 1))
	if err != nil {
		return
	}
	id := schema.JobIDOf(route.Client, m.Header.Get(nats.MsgIdHdr))
	if id == "" {
		return
	}
	queued := time.Now()
	if ts, err := time.Parse(time.RFC3339Nano, m.Header.Get(jetstream.TimeStampHeaer)); err == nil {
		queued = ts
	}
	w.mu.Lock()
	j := w.jobLocked(route.Client, id)
	j.Kind, j.Model, j.Lane, j.Queued = route.Kind, route.Model, route.Lane, queued
	w.mu.Unlock()
	w.changed()
}

// onDevice counts a worker's device faults.
func (w *Watcher) onDevice(m *nats.Msg) {
	var ev schema.DeviceEvent
	if schema.JSON.Unmarshal(m.Data, &ev) != nil || ev.Type != worker.DeviceFault {
		return
	}
	_, worker, err := w.subj.ParseEvent(m.Subject)
	if err != nil {
		return
	}
	w.mu.Lock()
	w.faults[worker]++
	w.mu.Unlock()
	w.changed()
}

// followResults reads the results stored on subject from now on until
// ctx ends.
func (w *Watcher) followResults(ctx context.Context, subject string) {
	for ctx.Err() == nil {
		err := w.readResults(ctx, subject)
		if ctx.Err() != nil {
			return
		}
		w.refusedOnce("results", err)
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
	}
}

func (w *Watcher) readResults(ctx context.Context, subject string) error {
	cons, err := w.js.OrderedConsumer(ctx, w.cfg.Topology.ResultsStream(), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject}, DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return err
	}
	msgs, err := cons.Messages()
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, msgs.Stop)
	defer stop()
	for {
		m, err := msgs.Next()
		if err != nil {
			return err
		}
		w.onResult(m)
	}
}

// onResult records a stored result: results.<job>[.<client>].
func (w *Watcher) onResult(m jetstream.Msg) {
	codec, err := schema.CodecFor(m.Headers().Get(schema.HeaderContentType))
	if err != nil {
		return
	}
	var res schema.Result
	if codec.Unmarshal(m.Data(), &res) != nil {
		return
	}
	tokens := strings.Split(strings.TrimPrefix(m.Subject(), w.subj.Prefix+".results."), ".")
	id, client := tokens[0], ""
	if len(tokens) == 2 {
		client = tokens[1]
	}
	finished := time.Now()
	if md, err := m.Metadata(); err == nil {
		finished = md.Timestamp
	}
	w.mu.Lock()
	j := w.jobLocked(client, id)
	j.State, j.Worker, j.Finished, j.Usage = res.Status, res.Worker, finished, res.Usage
	j.Text, j.FinishReason, j.Error = preview(res.Text), res.FinishReason, res.Error
	if len(res.Image) > 0 {
		j.Image, j.image, j.mime = true, res.Image, res.Mime
		w.dropOldImages()
	}
	done := *j
	hooks := slices.Clone(w.finished)
	w.mu.Unlock()
	for _, fn := range hooks {
		fn(done)
	}
	w.changed()
}

// dropOldImages keeps the images of the RecentImages newest jobs. w.mu is held.
func (w *Watcher) dropOldImages() {
	n := 0
	for _, j := range slices.Backward(w.jobs) {
		if j.Image {
			if n++; n > w.cfg.RecentImages {
				j.Image, j.image = false, nil
			}
		}
	}
}

func preview(s string) string {
	if utf8.RuneCountInString(s) <= PreviewRunes {
		return s
	}
	r := []rune(s)
	return string(r[:PreviewRunes]) + "…"
}

// OnFinished calls fn with every job whose result is stored from now on,
// in the order the results stream holds them.
func (w *Watcher) OnFinished(fn func(Job)) {
	w.mu.Lock()
	w.finished = append(w.finished, fn)
	w.mu.Unlock()
}

// Changes returns a channel that receives (without blocking the watcher:
// changes coalesce) whenever something the watcher shows changed, and a
// function that stops it.
func (w *Watcher) Changes() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	w.mu.Lock()
	w.listeners[ch] = struct{}{}
	w.mu.Unlock()
	return ch, func() {
		w.mu.Lock()
		delete(w.listeners, ch)
		w.mu.Unlock()
	}
}

func (w *Watcher) changed() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for ch := range w.listeners {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Snapshot is what the watcher shows at one moment.
type Snapshot struct {
	Time    time.Time           `json:"time"`
	Workers []Worker            `json:"workers"`
	Queue   []client.QueueDepth `json:"queue"`
	// Jobs are the recent jobs, newest first.
	Jobs []Job `json:"jobs"`
}

// Snapshot returns the fleet as last seen.
func (w *Watcher) Snapshot() Snapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := Snapshot{Time: time.Now().UTC(), Queue: slices.Clone(w.queue)}
	for _, hb := range w.workers {
		s.Workers = append(s.Workers, Worker{Heartbeat: hb, Seen: w.seen[hb.Worker], Temps: slices.Clone(w.temps[hb.Worker]), Faults: w.faults[hb.Worker]})
	}
	for _, j := range slices.Backward(w.jobs) {
		c := *j
		c.image = nil
		s.Jobs = append(s.Jobs, c)
	}
	return s
}

// Image returns the image of client's recent job id and its MIME type.
func (w *Watcher) Image(client, id string) ([]byte, string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, j := range w.jobs {
		if j.ID == id && j.Client == client && j.image != nil {
			return j.image, j.mime, true
		}
	}
	return nil, "", false
}
