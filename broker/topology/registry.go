package topology

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/schema"
)

// Registry mirrors the worker registry (the workers bucket, one JSON
// schema.Heartbeat per worker) through a watch, so that "does a live
// worker serve this model" costs no round trip. The client asks it before
// each publish, the janitor before each sweep. A watch can lag a worker
// that has just registered: before a "no" that matters, read the registry
// afresh (ReadRegistry).
type Registry struct {
	watch jetstream.KeyWatcher

	mu      sync.Mutex
	entries map[string]registryEntry // registry key -> latest entry
}

type registryEntry struct {
	hb   schema.Heartbeat
	seen time.Time
}

// WatchRegistry starts a Registry on the workers bucket of c and returns
// once the registry's current entries are in.
func WatchRegistry(ctx context.Context, js jetstream.JetStream, c Config) (*Registry, error) {
	c = c.WithDefaults()
	kv, err := js.KeyValue(ctx, c.WorkersBucket())
	if err != nil {
		return nil, fmt.Errorf("topology: worker registry %s (is the broker provisioned?): %w", c.WorkersBucket(), err)
	}
	w, err := kv.WatchAll(context.WithoutCancel(ctx))
	if err != nil {
		return nil, fmt.Errorf("topology: watch worker registry %s: %w", c.WorkersBucket(), err)
	}
	r := &Registry{watch: w, entries: map[string]registryEntry{}}
	initial := make(chan struct{})
	go r.follow(initial)
	select {
	case <-initial:
		return r, nil
	case <-ctx.Done():
		_ = w.Stop()
		return nil, ctx.Err()
	}
}

// follow applies the watch's updates until it stops; initial is closed
// once the current entries are in.
func (r *Registry) follow(initial chan struct{}) {
	var once sync.Once
	defer once.Do(func() { close(initial) })
	for e := range r.watch.Updates() {
		if e == nil {
			once.Do(func() { close(initial) })
			continue
		}
		r.mu.Lock()
		if e.Operation() == jetstream.KeyValuePut {
			var hb schema.Heartbeat
			if schema.JSON.Unmarshal(e.Value(), &hb) == nil {
				r.entries[e.Key()] = registryEntry{hb: hb, seen: time.Now()}
			}
		} else {
			delete(r.entries, e.Key())
		}
		r.mu.Unlock()
	}
}

// Live returns the heartbeats of the workers heard from within three of
// their heartbeat periods (the bucket's entries expire then, which a watch
// does not see), sorted by worker.
func (r *Registry) Live() []schema.Heartbeat {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []schema.Heartbeat
	for _, e := range r.entries {
		period := time.Duration(e.hb.IntervalMS) * time.Millisecond
		if period <= 0 {
			period = DefaultHeartbeatInterval
		}
		if time.Since(e.seen) < 3*period {
			out = append(out, e.hb)
		}
	}
	sortWorkers(out)
	return out
}

// Stop ends the watch.
func (r *Registry) Stop() { _ = r.watch.Stop() }

// ReadRegistry reads the registry afresh: every entry the bucket holds (it
// expires an entry three heartbeats after its last), sorted by worker.
func ReadRegistry(ctx context.Context, js jetstream.JetStream, c Config) ([]schema.Heartbeat, error) {
	c = c.WithDefaults()
	kv, err := js.KeyValue(ctx, c.WorkersBucket())
	if err != nil {
		return nil, fmt.Errorf("topology: worker registry %s: %w", c.WorkersBucket(), err)
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("topology: worker registry %s: %w", c.WorkersBucket(), err)
	}
	var out []schema.Heartbeat
	for key := range keys.Keys() {
		e, err := kv.Get(ctx, key)
		if err != nil {
			continue // gone since it was listed
		}
		var hb schema.Heartbeat
		if schema.JSON.Unmarshal(e.Value(), &hb) == nil {
			out = append(out, hb)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sortWorkers(out)
	return out, nil
}

func sortWorkers(hbs []schema.Heartbeat) {
	slices.SortFunc(hbs, func(a, b schema.Heartbeat) int { return strings.Compare(a.Worker, b.Worker) })
}
