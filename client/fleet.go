package client

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
)

// workers returns the client's mirror of the worker registry, starting it
// on first use.
func (c *Client) workers(ctx context.Context) (*topology.Registry, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.registry != nil {
		return c.registry, nil
	}
	r, err := topology.WatchRegistry(ctx, c.js, c.topo)
	if err != nil {
		return nil, fmt.Errorf("kiln: %w", err)
	}
	c.registry = r
	return r, nil
}

// serving reports whether one of hbs takes jobs and serves model as kind.
func serving(hbs []schema.Heartbeat, kind, model string) bool {
	for _, hb := range hbs {
		if hb.TakesJobs() && hb.Serves(kind, model) {
			return true
		}
	}
	return false
}

// servedNow reads the registry afresh: the watch may lag a worker that
// has just started, or have missed updates while a cluster failed over.
// Entries expire by themselves after three heartbeats. When the registry
// cannot be read it answers true: better a queued job than a false "no
// live worker".
func (c *Client) servedNow(ctx context.Context, kind, model string) bool {
	ws, err := c.Workers(ctx)
	return err != nil || serving(ws, kind, model)
}

// Workers lists the live workers' latest heartbeats, sorted by name.
func (c *Client) Workers(ctx context.Context) ([]schema.Heartbeat, error) {
	ws, err := topology.ReadRegistry(ctx, c.js, c.topo)
	if err != nil {
		return nil, fmt.Errorf("kiln: %w", err)
	}
	return ws, nil
}

// QueueDepth is the state of one (kind, model, lane) consumer, or of jobs
// queued where no consumer takes them.
type QueueDepth struct {
	Kind    string `json:"kind"`
	Model   string `json:"model"`
	Lane    string `json:"lane"`
	Waiting uint64 `json:"waiting"` // queued, not yet delivered
	Running int    `json:"running"` // delivered, not yet acknowledged
	Retries int    `json:"retries"` // waiting for a redelivery
	// Oldest is when the longest-waiting job not yet delivered was
	// queued; zero when none waits or the client may not read the jobs
	// stream's messages (a controller or observer).
	Oldest time.Time `json:"oldest,omitzero"`
	// Unserved: no registered worker serves this kind and model. A janitor
	// answers its jobs (no_worker) after the grace.
	Unserved bool `json:"unserved,omitempty"`
	// Subject is set, instead of Kind, Model and Lane, for jobs on a
	// subject that can never be a job (a janitor answers them bad_subject).
	Subject string `json:"subject,omitempty"`
}

// QueueOption tunes Client.Queue.
type QueueOption func(*queueOptions)

type queueOptions struct{ noOldest bool }

// WithoutOldest leaves QueueDepth.Oldest zero, and reads no job message:
// for a client whose identity may not read the jobs stream's messages (a
// controller, an observer, a gateway), which the broker would refuse.
func WithoutOldest() QueueOption { return func(o *queueOptions) { o.noOldest = true } }

// Queue lists the job consumers and how many jobs wait on each, and the
// jobs queued for models that no worker serves.
func (c *Client) Queue(ctx context.Context, opts ...QueueOption) ([]QueueDepth, error) {
	var o queueOptions
	for _, opt := range opts {
		opt(&o)
	}
	st, err := c.js.Stream(ctx, c.topo.JobsStream())
	if err != nil {
		return nil, fmt.Errorf("kiln: jobs stream: %w", err)
	}
	workers, err := c.Workers(ctx)
	if err != nil {
		return nil, err
	}
	served := func(kind, model string) bool {
		for _, hb := range workers {
			if hb.Serves(kind, model) {
				return true
			}
		}
		return false
	}
	var out []QueueDepth
	oldest := oldestReader{off: o.noOldest}
	consumed := map[string]bool{}
	lister := st.ListConsumers(ctx)
	for info := range lister.Info() {
		filter := info.Config.FilterSubject
		if len(info.Config.FilterSubjects) > 0 {
			filter = info.Config.FilterSubjects[0] // the anonymous subject, then the clients'
		}
		subj, err := c.subj.ParseJob(filter)
		if err != nil {
			continue
		}
		consumed[route(subj)] = true
		q := QueueDepth{Kind: subj.Kind, Model: subj.Model, Lane: subj.Lane,
			Waiting: info.NumPending, Running: info.NumAckPending, Retries: info.NumRedelivered,
			Unserved: !served(subj.Kind, subj.Model)}
		if q.Waiting > 0 {
			q.Oldest = oldest.after(ctx, st, info.Delivered.Stream+1, c.subj.JobFilters(subj.Kind, subj.Model, subj.Lane))
		}
		out = append(out, q)
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("kiln: list consumers: %w", err)
	}
	// Jobs on subjects no worker ever took from (a mistyped model, lane
	// or kind) have no consumer.
	si, err := st.Info(ctx, jetstream.WithSubjectFilter(c.subj.Jobs()))
	if err != nil {
		return nil, fmt.Errorf("kiln: jobs stream: %w", err)
	}
	unconsumed := map[string]int{} // route -> index in out: one entry per route, whoever's jobs
	for subject, n := range si.State.Subjects {
		subj, err := c.subj.ParseJob(subject)
		if err == nil && consumed[route(subj)] {
			continue
		}
		at := oldest.after(ctx, st, 1, []string{subject})
		if err != nil {
			out = append(out, QueueDepth{Subject: subject, Waiting: n, Unserved: true, Oldest: at})
			continue
		}
		i, seen := unconsumed[route(subj)]
		if !seen {
			i = len(out)
			unconsumed[route(subj)] = i
			out = append(out, QueueDepth{Kind: subj.Kind, Model: subj.Model, Lane: subj.Lane, Unserved: true})
		}
		q := &out[i]
		q.Waiting += n
		if !at.IsZero() && (q.Oldest.IsZero() || at.Before(q.Oldest)) {
			q.Oldest = at
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Model != b.Model {
			return a.Model < b.Model
		}
		return a.Lane < b.Lane
	})
	return out, nil
}

// route names a job's consumer: the (kind, model, lane) of its subject,
// anonymous or a client's.
func route(s schema.JobSubject) string { return s.Kind + "." + s.Model + "." + s.Lane }

// oldestReader finds when the next job a consumer hands out was stored,
// with one stored-message get per subject. The first get that fails other
// than "no such message" (a client not allowed to read the jobs stream's
// messages: a controller or observer) turns it off for the rest of the
// listing, so that such a client waits for one refusal at most.
type oldestReader struct{ off bool }

// after is the time the first job at or after stream sequence seq on one
// of subjects was stored; zero when there is none or it cannot be read.
func (o *oldestReader) after(ctx context.Context, st jetstream.Stream, seq uint64, subjects []string) time.Time {
	var oldest time.Time
	for _, s := range subjects {
		if o.off {
			return time.Time{}
		}
		gctx, cancel := context.WithTimeout(ctx, time.Second)
		m, err := st.GetMsg(gctx, seq, jetstream.WithGetMsgSubject(s))
		cancel()
		switch {
		case err == nil:
			if oldest.IsZero() || m.Time.Before(oldest) {
				oldest = m.Time
			}
		case !errors.Is(err, jetstream.ErrMsgNotFound):
			o.off = true
		}
	}
	return oldest
}

// FleetEvent is one message from KILN_EVENTS: exactly one of its pointers is set.
type FleetEvent struct {
	Subject   string
	Heartbeat *schema.Heartbeat
	Thermal   *schema.ThermalEvent
	Device    *schema.DeviceEvent
}

// Watch passes fleet events (heartbeats, thermal transitions, device faults)
// to fn as they happen, starting with those of the last `since` (0: only
// new ones), until ctx ends or fn returns an error.
func (c *Client) Watch(ctx context.Context, since time.Duration, fn func(FleetEvent) error) error {
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{c.subj.Events()}, DeliverPolicy: jetstream.DeliverNewPolicy}
	if since > 0 {
		start := time.Now().Add(-since)
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
	}
	cons, err := c.js.OrderedConsumer(ctx, c.topo.EventsStream(), cfg)
	if err != nil {
		return fmt.Errorf("kiln: watch events: %w", err)
	}
	msgs, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("kiln: watch events: %w", err)
	}
	go func() { <-ctx.Done(); msgs.Stop() }()
	for {
		m, err := msgs.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return ctx.Err()
			}
			return fmt.Errorf("kiln: watch events: %w", err)
		}
		ev, err := decodeFleetEvent(c.subj, m.Subject(), m.Headers(), m.Data())
		if err != nil {
			continue // not ours to judge; a later version's event
		}
		if err := fn(ev); err != nil {
			return err
		}
	}
}

func decodeFleetEvent(subj schema.Subjects, subject string, h nats.Header, data []byte) (FleetEvent, error) {
	codec, err := schema.CodecFor(h.Get(schema.HeaderContentType))
	if err != nil {
		return FleetEvent{}, err
	}
	topic, _, err := subj.ParseEvent(subject)
	if err != nil {
		return FleetEvent{}, err
	}
	ev := FleetEvent{Subject: subject}
	switch topic {
	case schema.TopicHeartbeat:
		ev.Heartbeat = new(schema.Heartbeat)
		err = codec.Unmarshal(data, ev.Heartbeat)
	case schema.TopicThermal:
		ev.Thermal = new(schema.ThermalEvent)
		err = codec.Unmarshal(data, ev.Thermal)
	case schema.TopicDevice:
		ev.Device = new(schema.DeviceEvent)
		err = codec.Unmarshal(data, ev.Device)
	default:
		err = fmt.Errorf("unknown event subject %s", subject)
	}
	return ev, err
}
