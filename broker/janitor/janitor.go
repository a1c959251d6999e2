// Package janitor answers the jobs that no worker will ever take, so that
// every accepted job ends with exactly one result.
//
// A job can sit in KILN_JOBS with nobody to take it: published by hand to a
// model no worker serves (kiln.jobs.chat.qwen3-4b.normal on a fleet without
// qwen3-4b), to the wrong kind (an image job for a chat model), to a lane or
// kind that does not exist, or to a subject with a literal "*" or ">" token;
// or it waited longer than the queue's max age. The stream would drop such
// a job at its MaxAge without a word. A janitor looks at the queue every
// Interval and answers them:
//
//   - a subject that can never be a job (unknown kind or lane, a model token
//     that is not a model name, a wildcard token, a token more or less):
//     bad_subject, naming the part, at once;
//   - a (kind, model) that no registered worker that takes jobs serves
//     (loading and paused count; unhealthy and stopping do not):
//     no_worker, or unknown_model when the fleet serves the model as the
//     other kind, once the job has waited Grace and the
//     janitor has seen the route unserved for Grace, so that a worker that
//     is just starting (it registers before its models load) or restarting
//     still gets its job;
//   - a job that waited the queue's max age (topology JobMaxAge), on any
//     subject: expired. A job that a worker has taken is left to it.
//
// An answer is what a worker would give: a result stored in KILN_RESULTS
// only if none is stored yet (first write wins), then sent as a result
// event on the job's reply subject in the job's codec, then the job is
// deleted from the queue. Any number of janitors may run at once (kiln runs
// one beside every broker and every worker): the first-write-wins store
// keeps it to one result per job.
//
// A janitor is a plain NATS client (nats.go, never nats-server), so it works
// against the embedded broker and any external nats-server or cluster.
package janitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
)

// DefaultGrace is how long a job for a model nobody serves waits for a
// worker before it is answered no_worker. It covers a worker that is
// starting: systemd restarts a worker 3 s after it died, a Pi that just
// booted may enumerate its card only after up to ~30 s, and a worker
// registers (state loading) right after it opened its card, before its
// models load. A minute keeps a margin on top of that and is still a
// bounded wait for a job published to a mistyped model.
const DefaultGrace = time.Minute

// DefaultInterval is how often a janitor looks at the queue.
const DefaultInterval = 5 * time.Second

// ErrStopped is returned by Start on a janitor that was stopped.
var ErrStopped = errors.New("janitor: stopped")

// Config configures a Janitor. The zero value of a field means its default.
type Config struct {
	// Topology names the streams and buckets (its Prefix). The queue's max
	// age is read from KILN_JOBS (topology.JobMaxAgeOf), so every janitor
	// agrees with the broker that provisioned it; Topology.JobMaxAge counts
	// only for a stream without MaxAge.
	Topology topology.Config
	// Grace is how long a job for a (kind, model) that no worker serves
	// waits before it is answered (default DefaultGrace). It counts from the
	// later of the job's arrival and the moment this janitor saw the route
	// unserved (its last worker left, or the janitor started), so a job is
	// answered within Grace + Interval of both, plus the three heartbeats a
	// dead worker's registry entry lives.
	Grace time.Duration
	// Interval is the time between two looks at the queue (default
	// DefaultInterval).
	Interval time.Duration
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	c.Topology = c.Topology.WithDefaults()
	if c.Grace <= 0 {
		c.Grace = DefaultGrace
	}
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Janitor answers the jobs in the queue that no worker will take. New
// makes one, Start or Run runs it.
type Janitor struct {
	cfg  Config
	nc   *nats.Conn
	js   jetstream.JetStream
	subj schema.Subjects
	log  *slog.Logger

	startOnce, stopOnce sync.Once
	stop                chan struct{}      // closed by Stop: no new sweep, no new answer
	halt                context.CancelFunc // cancels a sweep's requests (Stop's ctx ended)
	done                chan struct{}      // closed when the loop has ended

	// Owned by the loop goroutine.
	jobs     jetstream.Stream
	fleet    *fleet
	unserved map[string]time.Time // job subject -> when this janitor first saw nobody serve it
	failing  bool                 // the last sweep failed (logged once)
}

// New returns a janitor on nc. It does not touch the broker until Start.
func New(nc *nats.Conn, cfg Config) (*Janitor, error) {
	if nc == nil {
		return nil, errors.New("janitor: no NATS connection")
	}
	cfg = cfg.withDefaults()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("janitor: %w", err)
	}
	return &Janitor{
		cfg:      cfg,
		nc:       nc,
		js:       js,
		subj:     cfg.Topology.Subjects(),
		log:      cfg.Logger.With("component", "janitor"),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		fleet:    &fleet{js: js, topo: cfg.Topology},
		unserved: map[string]time.Time{},
	}, nil
}

// Start starts sweeping in the background and returns at once. The streams
// and the worker registry need not exist yet: a sweep that cannot read
// them logs why and tries again at the next Interval.
func (j *Janitor) Start(ctx context.Context) error {
	err := ErrStopped
	j.startOnce.Do(func() {
		err = nil
		sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		j.halt = cancel
		j.log.Info("janitor started: answering the jobs no worker will take", "grace", j.cfg.Grace, "every", j.cfg.Interval)
		go j.loop(sctx)
	})
	return err
}

// Run starts the janitor, sweeps until ctx ends, then stops (the answer
// in progress is finished, for at most 10 s).
func (j *Janitor) Run(ctx context.Context) error {
	if err := j.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := j.Stop(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// Stop ends the sweeping: the answer in progress is finished, then the
// janitor stops. If ctx ends first, its requests are cancelled and Stop
// returns ctx.Err() once it has stopped. Calling Stop again, or before
// Start, is safe.
func (j *Janitor) Stop(ctx context.Context) error {
	j.startOnce.Do(func() { close(j.done) }) // never started: nothing to wait for
	j.stopOnce.Do(func() { close(j.stop) })
	select {
	case <-j.done:
		return nil
	case <-ctx.Done():
		if j.halt != nil {
			j.halt()
		}
		<-j.done
		return ctx.Err()
	}
}

// Stopped is closed once the janitor has stopped.
func (j *Janitor) Stopped() <-chan struct{} { return j.done }

func (j *Janitor) stopping() bool {
	select {
	case <-j.stop:
		return true
	default:
		return false
	}
}

func (j *Janitor) loop(ctx context.Context) {
	defer close(j.done)
	defer j.fleet.close()
	defer j.halt()
	tick := time.NewTicker(j.cfg.Interval)
	defer tick.Stop()
	for {
		err := j.sweep(ctx)
		switch {
		case err != nil && j.stopping():
		case err != nil && !j.failing:
			j.log.Warn("cannot look at the job queue; trying again", "err", err, "every", j.cfg.Interval)
			j.failing = true
		case err != nil:
			j.log.Debug("cannot look at the job queue", "err", err)
		case j.failing:
			j.log.Info("looking at the job queue again")
			j.failing = false
		}
		select {
		case <-j.stop:
			return
		case <-tick.C:
		}
	}
}
