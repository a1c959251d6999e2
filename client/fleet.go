package client

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
)

// registry mirrors the kiln_workers bucket through a watch, so that the
// live-worker check before each publish costs no round trip.
type registry struct {
	mu      sync.Mutex
	workers map[string]schema.Heartbeat
	seen    map[string]time.Time
	w       jetstream.KeyWatcher
}

func (c *Client) workers(ctx context.Context) (*registry, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.registry != nil {
		return c.registry, nil
	}
	kv, err := c.js.KeyValue(ctx, c.topo.WorkersBucket())
	if err != nil {
		return nil, fmt.Errorf("kiln: worker registry %s (is the broker provisioned?): %w", c.topo.WorkersBucket(), err)
	}
	w, err := kv.WatchAll(context.WithoutCancel(ctx))
	if err != nil {
		return nil, fmt.Errorf("kiln: watch worker registry: %w", err)
	}
	r := &registry{workers: map[string]schema.Heartbeat{}, seen: map[string]time.Time{}, w: w}
	initial := make(chan struct{})
	go r.run(initial)
	select {
	case <-initial:
	case <-ctx.Done():
		_ = w.Stop()
		return nil, ctx.Err()
	}
	c.registry = r
	return r, nil
}

func (r *registry) run(initial chan struct{}) {
	once := sync.Once{}
	for e := range r.w.Updates() {
		if e == nil {
			once.Do(func() { close(initial) })
			continue
		}
		r.mu.Lock()
		if e.Operation() == jetstream.KeyValuePut {
			var hb schema.Heartbeat
			if schema.JSON.Unmarshal(e.Value(), &hb) == nil {
				r.workers[e.Key()] = hb
				r.seen[e.Key()] = time.Now()
			}
		} else {
			delete(r.workers, e.Key())
			delete(r.seen, e.Key())
		}
		r.mu.Unlock()
	}
	once.Do(func() { close(initial) })
}

func (r *registry) stop() { _ = r.w.Stop() }

// live reports whether a registry entry is fresh: heard from within three
// heartbeat periods.
func (r *registry) live(key string, hb schema.Heartbeat) bool {
	period := time.Duration(hb.IntervalMS) * time.Millisecond
	if period <= 0 {
		period = topology.DefaultHeartbeatInterval
	}
	return time.Since(r.seen[key]) < 3*period && hb.State != schema.StateUnhealthy && hb.State != schema.StateStopping
}

func (r *registry) serves(kind, model string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for key, hb := range r.workers {
		if r.live(key, hb) && hb.Serves(kind, model) {
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
	if err != nil {
		return true
	}
	for _, hb := range ws {
		if hb.Serves(kind, model) && hb.State != schema.StateUnhealthy && hb.State != schema.StateStopping {
			return true
		}
	}
	return false
}

// Workers lists the live workers' latest heartbeats, sorted by name.
func (c *Client) Workers(ctx context.Context) ([]schema.Heartbeat, error) {
	kv, err := c.js.KeyValue(ctx, c.topo.WorkersBucket())
	if err != nil {
		return nil, fmt.Errorf("kiln: worker registry: %w", err)
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("kiln: worker registry: %w", err)
	}
	var out []schema.Heartbeat
	for key := range keys.Keys() {
		e, err := kv.Get(ctx, key)
		if err != nil {
			continue
		}
		var hb schema.Heartbeat
		if schema.JSON.Unmarshal(e.Value(), &hb) == nil {
			out = append(out, hb)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Worker < out[j].Worker })
	return out, nil
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
	// Unserved: no registered worker serves this kind and model. A janitor
	// answers its jobs (no_worker) after the grace.
	Unserved bool `json:"unserved,omitempty"`
	// Subject is set, instead of Kind, Model and Lane, for jobs on a
	// subject that can never be a job (a janitor answers them bad_subject).
	Subject string `json:"subject,omitempty"`
}

// Queue lists the job consumers and how many jobs wait on each, and the
// jobs queued for models that no worker serves.
func (c *Client) Queue(ctx context.Context) ([]QueueDepth, error) {
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
		consumed[info.Config.FilterSubject] = true
		out = append(out, QueueDepth{Kind: subj.Kind, Model: subj.Model, Lane: subj.Lane,
			Waiting: info.NumPending, Running: info.NumAckPending, Retries: info.NumRedelivered,
			Unserved: !served(subj.Kind, subj.Model)})
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
	for subject, n := range si.State.Subjects {
		if consumed[subject] {
			continue
		}
		q := QueueDepth{Waiting: n, Unserved: true}
		if subj, err := c.subj.ParseJob(subject); err == nil {
			q.Kind, q.Model, q.Lane = subj.Kind, subj.Model, subj.Lane
		} else {
			q.Subject = subject
		}
		out = append(out, q)
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
