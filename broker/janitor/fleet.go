package janitor

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/schema"
)

// fleet mirrors the worker registry (kiln_workers) through a watch, so that
// a sweep knows what the fleet serves without a round trip. A janitor
// answers no_worker only after reading the registry afresh (read): the
// watch may lag a worker that has just registered.
type fleet struct {
	js     jetstream.JetStream
	bucket string
	period time.Duration // heartbeat period of an entry that does not say its own

	kv    jetstream.KeyValue   // nil until the bucket was found
	watch jetstream.KeyWatcher // nil until started

	mu      sync.Mutex
	workers map[string]member // registry key -> latest entry
}

type member struct {
	hb   schema.Heartbeat
	seen time.Time
}

// served is what a fleet serves: for each kind, its model names, sorted.
type served map[string][]string

// mirror starts the watch if it is not running yet and returns what the
// live workers serve. (The registry's entries expire after three
// heartbeats, which a watch does not see: an entry not heard from for
// three periods is left out.)
func (f *fleet) mirror(ctx context.Context) (served, error) {
	if err := f.start(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var hbs []schema.Heartbeat
	for _, m := range f.workers {
		period := time.Duration(m.hb.IntervalMS) * time.Millisecond
		if period <= 0 {
			period = f.period
		}
		if time.Since(m.seen) < 3*period {
			hbs = append(hbs, m.hb)
		}
	}
	return servedBy(hbs), nil
}

func (f *fleet) start(ctx context.Context) error {
	if f.watch != nil {
		return nil
	}
	if f.kv == nil {
		kv, err := f.js.KeyValue(ctx, f.bucket)
		if err != nil {
			return fmt.Errorf("worker registry %s: %w", f.bucket, err)
		}
		f.kv = kv
	}
	w, err := f.kv.WatchAll(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("watch worker registry %s: %w", f.bucket, err)
	}
	f.mu.Lock()
	f.workers = map[string]member{}
	f.mu.Unlock()
	initial := make(chan struct{})
	go f.follow(w, initial)
	select {
	case <-initial:
	case <-ctx.Done():
		_ = w.Stop()
		return ctx.Err()
	}
	f.watch = w
	return nil
}

// follow applies the watch's updates until it stops; initial is closed
// once the registry's current entries are in.
func (f *fleet) follow(w jetstream.KeyWatcher, initial chan struct{}) {
	var once sync.Once
	defer once.Do(func() { close(initial) })
	for e := range w.Updates() {
		if e == nil {
			once.Do(func() { close(initial) })
			continue
		}
		f.mu.Lock()
		if e.Operation() == jetstream.KeyValuePut {
			var hb schema.Heartbeat
			if schema.JSON.Unmarshal(e.Value(), &hb) == nil {
				f.workers[e.Key()] = member{hb: hb, seen: time.Now()}
			}
		} else {
			delete(f.workers, e.Key())
		}
		f.mu.Unlock()
	}
}

// read reads the registry afresh: its entries are the live workers.
func (f *fleet) read(ctx context.Context) (served, error) {
	if f.kv == nil {
		if err := f.start(ctx); err != nil {
			return nil, err
		}
	}
	keys, err := f.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("worker registry %s: %w", f.bucket, err)
	}
	var hbs []schema.Heartbeat
	for key := range keys.Keys() {
		e, err := f.kv.Get(ctx, key)
		if err != nil {
			continue // gone since it was listed
		}
		var hb schema.Heartbeat
		if schema.JSON.Unmarshal(e.Value(), &hb) == nil {
			hbs = append(hbs, hb)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return servedBy(hbs), nil
}

func (f *fleet) close() {
	if f.watch != nil {
		_ = f.watch.Stop()
	}
}

func servedBy(hbs []schema.Heartbeat) served {
	s := served{}
	for _, hb := range hbs {
		for _, m := range hb.Models {
			if m.Serving() && !slices.Contains(s[m.Kind], m.Name) {
				s[m.Kind] = append(s[m.Kind], m.Name)
			}
		}
	}
	for _, models := range s {
		slices.Sort(models)
	}
	return s
}

func (s served) serves(kind, model string) bool { return slices.Contains(s[kind], model) }

// kindsOf lists the kinds model is served as.
func (s served) kindsOf(model string) []string {
	var kinds []string
	for _, kind := range slices.Sorted(maps.Keys(s)) {
		if s.serves(kind, model) {
			kinds = append(kinds, kind)
		}
	}
	return kinds
}

// String says what the fleet serves, for people: "chat: a, b; image: c".
func (s served) String() string {
	var parts []string
	for _, kind := range slices.Sorted(maps.Keys(s)) {
		parts = append(parts, kind+": "+strings.Join(s[kind], ", "))
	}
	if len(parts) == 0 {
		return "no live worker serves any model"
	}
	return "the fleet serves " + strings.Join(parts, "; ")
}
