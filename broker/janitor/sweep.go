package janitor

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
)

// sweep looks at every subject that holds jobs once and answers the jobs
// that nobody will take.
func (j *Janitor) sweep(ctx context.Context) error {
	if j.jobs == nil {
		st, err := j.js.Stream(ctx, j.cfg.Topology.JobsStream())
		if err != nil {
			return fmt.Errorf("jobs stream %s: %w", j.cfg.Topology.JobsStream(), err)
		}
		j.jobs = st
	}
	asked := time.Now()
	info, err := j.jobs.Info(ctx, jetstream.WithSubjectFilter(j.subj.Jobs()))
	if err != nil {
		return fmt.Errorf("jobs stream %s: %w", j.cfg.Topology.JobsStream(), err)
	}
	if len(info.State.Subjects) == 0 {
		clear(j.unserved)
		return nil
	}
	s := &sweep{j: j, serverTime: info.TimeStamp, asked: asked, maxAge: topology.JobMaxAgeOf(info.Config)}
	if s.maxAge <= 0 {
		s.maxAge = j.cfg.Topology.JobMaxAge
	}
	if s.fleet, err = j.fleet.mirror(ctx); err != nil {
		return err
	}
	for subject := range j.unserved {
		if _, ok := info.State.Subjects[subject]; !ok {
			delete(j.unserved, subject) // emptied
		}
	}
	var first error // one subject's trouble does not hold up the others
	for _, subject := range slices.Sorted(maps.Keys(info.State.Subjects)) {
		if j.stopping() {
			return nil
		}
		if err := s.subject(ctx, subject, info.State.Subjects[subject]); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// sweep is one look at the queue.
type sweep struct {
	j          *Janitor
	serverTime time.Time // the broker's clock when the sweep began (zero: unknown)
	asked      time.Time // this process's clock then
	maxAge     time.Duration
	fleet      served // the registry mirror
	fresh      served // the registry read afresh, once a sweep needs it
}

// now is the broker's clock, so that the ages of jobs (stamped by the
// broker) do not depend on how well this host's clock agrees with it.
func (s *sweep) now() time.Time {
	if s.serverTime.IsZero() {
		return time.Now()
	}
	return s.serverTime.Add(time.Since(s.asked))
}

// confirm reads the registry afresh, once per sweep.
func (s *sweep) confirm(ctx context.Context) (served, error) {
	if s.fresh == nil {
		f, err := s.j.fleet.read(ctx)
		if err != nil {
			return nil, err
		}
		s.fresh = f
	}
	return s.fresh, nil
}

func (s *sweep) subject(ctx context.Context, subject string, count uint64) error {
	j := s.j
	route, bad := j.parse(subject, s.fleet)
	if bad != nil {
		delete(j.unserved, subject)
		return s.walk(ctx, subject, func(*jetstream.RawStreamMsg, time.Duration) (*schema.Result, bool) {
			return &schema.Result{Status: schema.StatusError, Error: bad}, true
		})
	}
	if s.fleet.serves(route.Kind, route.Model) {
		delete(j.unserved, subject)
		return s.served(ctx, subject, route)
	}
	since, ok := j.unserved[subject]
	if !ok {
		since = time.Now()
		j.unserved[subject] = since
		j.log.Info("jobs wait for a model no live worker serves; answering them after the grace",
			"subject", subject, "jobs", count, "grace", j.cfg.Grace)
	}
	graceOver := time.Since(since) >= j.cfg.Grace
	fleet := s.fleet
	if graceOver {
		var err error
		if fleet, err = s.confirm(ctx); err != nil {
			return err
		}
		if fleet.serves(route.Kind, route.Model) { // a worker the mirror has not seen yet
			delete(j.unserved, subject)
			return s.served(ctx, subject, route)
		}
	}
	return s.walk(ctx, subject, func(_ *jetstream.RawStreamMsg, age time.Duration) (*schema.Result, bool) {
		switch {
		case age >= s.maxAge:
			return s.expired(age), true
		case graceOver && age >= j.cfg.Grace:
			return &schema.Result{Status: schema.StatusError, Error: j.unservedError(route, fleet, age)}, true
		}
		return nil, false // younger jobs follow
	})
}

// served answers the jobs of a route that a worker serves that waited past
// the max age, unless a worker has taken them (delivered, not yet
// acknowledged): the worker answers those.
func (s *sweep) served(ctx context.Context, subject string, route schema.JobSubject) error {
	var delivered *uint64 // the highest stream sequence the route's consumer has delivered
	return s.walk(ctx, subject, func(m *jetstream.RawStreamMsg, age time.Duration) (*schema.Result, bool) {
		if age < s.maxAge {
			return nil, false
		}
		if delivered == nil {
			var seq uint64
			cons, err := s.j.jobs.Consumer(ctx, topology.ConsumerName(route.Kind, route.Model, route.Lane))
			if err == nil {
				seq = cons.CachedInfo().Delivered.Stream
			} else if !errors.Is(err, jetstream.ErrConsumerNotFound) {
				return nil, false // not sure: look again next sweep
			}
			delivered = &seq
		}
		if m.Sequence <= *delivered {
			return nil, true // a worker has it
		}
		return s.expired(age), true
	})
}

func (s *sweep) expired(age time.Duration) *schema.Result {
	return &schema.Result{Status: schema.StatusExpired, Error: schema.Errorf(schema.CodeExpired, "",
		"waited %s in the queue, longer than its max age of %s: no worker took it in time",
		rounded(age), s.maxAge)}
}

// walk passes the jobs stored on subject to decide, oldest first, and
// answers those it returns a result for; it stops where decide says no
// more (the jobs after it are younger) or the janitor is stopping.
func (s *sweep) walk(ctx context.Context, subject string, decide func(m *jetstream.RawStreamMsg, age time.Duration) (res *schema.Result, more bool)) error {
	filter := subject
	if wildcard(subject) {
		// As a filter it would match other subjects, or be refused
		// ("kiln.jobs.>.m.normal"): look at every job, act on its own.
		filter = s.j.subj.Jobs()
	}
	for seq := uint64(1); !s.j.stopping(); {
		m, err := s.j.jobs.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read a job on %s: %w", subject, err)
		}
		seq = m.Sequence + 1
		if m.Subject != subject {
			continue
		}
		age := s.now().Sub(m.Time)
		res, more := decide(m, age)
		if res != nil {
			res.Usage.QueueMS = max(age.Milliseconds(), 0)
			if err := s.j.answer(ctx, m, res); err != nil {
				return err
			}
		}
		if !more {
			return nil
		}
	}
	return nil
}

// parse splits a job subject into its route, or says why it can never be
// one (a bad_subject error). A kind this janitor does not know is a route
// when a worker serves it (a newer worker in a fleet being upgraded).
func (j *Janitor) parse(subject string, fleet served) (schema.JobSubject, *schema.Error) {
	pattern := j.subj.Job("<kind>", "<model>", "<lane>")
	bad := func(format string, args ...any) *schema.Error {
		return schema.Errorf(schema.CodeBadSubject, "subject", "%s: publish jobs to %s (kind %s or %s, lane %s or %s)",
			fmt.Sprintf(format, args...), pattern, schema.KindChat, schema.KindImage, schema.LaneHigh, schema.LaneNormal)
	}
	route, err := j.subj.ParseJob(subject)
	if err != nil {
		return route, bad("%q is not a job subject", subject)
	}
	for _, tok := range []struct{ name, value string }{{"kind", route.Kind}, {"model", route.Model}, {"lane", route.Lane}} {
		if tok.value == "*" || tok.value == ">" {
			return route, bad("the %s of %q is the wildcard %q, not a name", tok.name, subject, tok.value)
		}
	}
	switch {
	case route.Kind != schema.KindChat && route.Kind != schema.KindImage && len(fleet[route.Kind]) == 0:
		return route, bad("unknown kind %q in %q", route.Kind, subject)
	case !schema.ValidToken(route.Model):
		return route, bad("%q in %q is not a model name (letters, digits, '-' and '_')", route.Model, subject)
	case route.Lane != schema.LaneHigh && route.Lane != schema.LaneNormal:
		return route, bad("unknown lane %q in %q", route.Lane, subject)
	}
	return route, nil
}

// unservedError says that nobody serves route: unknown_model when the fleet
// serves the model as another kind, else no_worker.
func (j *Janitor) unservedError(route schema.JobSubject, fleet served, age time.Duration) *schema.Error {
	if kinds := fleet.kindsOf(route.Model); len(kinds) > 0 {
		return schema.Errorf(schema.CodeUnknownModel, "model", "model %q takes %s jobs, not %s jobs: publish to %s (%s)",
			route.Model, strings.Join(kinds, " and "), route.Kind, j.subj.Job(kinds[0], route.Model, route.Lane), fleet)
	}
	return schema.Errorf(schema.CodeNoWorker, "model", "no live worker serves %s model %q (waited %s); %s",
		route.Kind, route.Model, rounded(age), fleet)
}

// rounded is d for people: tenths of a second under a minute, else seconds.
func rounded(d time.Duration) time.Duration {
	if d < time.Minute {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}

// wildcard reports whether a subject has a "*" or ">" token.
func wildcard(subject string) bool {
	for _, tok := range strings.Split(subject, ".") {
		if tok == "*" || tok == ">" {
			return true
		}
	}
	return false
}
