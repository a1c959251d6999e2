package janitor

import (
	"context"
	"maps"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
)

// fleet is the janitor's view of the worker registry: a watched mirror
// (topology.Registry) for each sweep, and a fresh read before it answers
// no_worker, since the watch may lag a worker that has just registered.
type fleet struct {
	js   jetstream.JetStream
	topo topology.Config
	reg  *topology.Registry // nil until started
}

// mirror starts the watch if it is not running yet and returns what the
// live workers serve.
func (f *fleet) mirror(ctx context.Context) (served, error) {
	if f.reg == nil {
		reg, err := topology.WatchRegistry(ctx, f.js, f.topo)
		if err != nil {
			return nil, err
		}
		f.reg = reg
	}
	return servedBy(f.reg.Live()), nil
}

// read reads the registry afresh: its entries are the live workers.
func (f *fleet) read(ctx context.Context) (served, error) {
	hbs, err := topology.ReadRegistry(ctx, f.js, f.topo)
	if err != nil {
		return nil, err
	}
	return servedBy(hbs), nil
}

func (f *fleet) close() {
	if f.reg != nil {
		f.reg.Stop()
	}
}

// served is what a fleet serves: for each kind, its model names, sorted.
type served map[string][]string

// servedBy is what the workers of hbs that take jobs serve (a failed
// package, an unhealthy or stopping worker serves nothing).
func servedBy(hbs []schema.Heartbeat) served {
	s := served{}
	for _, hb := range hbs {
		if !hb.TakesJobs() {
			continue
		}
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
