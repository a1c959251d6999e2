package client

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kiln-project/kiln/schema"
)

// Pending is a submitted job whose events are being received.
type Pending struct {
	// ID is the job's id.
	ID string

	c   *Client
	sub *nats.Subscription
	ch  chan *nats.Msg

	runs runs // what of the job's runs has been passed on
}

// Close stops receiving the job's events. The job itself goes on.
func (p *Pending) Close() {
	if p.sub != nil {
		_ = p.sub.Unsubscribe()
	}
}

// Cancel asks for the job to stop (Client.Cancel of its id). It gives up
// after 2 s when ctx has no deadline.
func (p *Pending) Cancel(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
	}
	return p.c.Cancel(ctx, p.ID)
}

// Wait passes the job's events to fn (nil is fine) until the result event,
// and returns the result. A result whose status is not ok comes back with a
// *JobError. An error from fn stops the wait and is returned. If no event
// arrives for a while, Wait looks for the stored result, so a missed reply
// does not hang it.
//
// fn sees the events in the order Events gives them: on every "started"
// event, fn should discard what it had (text, progress). The token texts
// after the last "started" then add up to the result's text.
func (p *Pending) Wait(ctx context.Context, fn func(schema.Event) error) (*schema.Result, error) {
	for ev, err := range p.Events(ctx) {
		if err != nil {
			return nil, err
		}
		if fn != nil {
			if err := fn(ev); err != nil {
				return nil, err
			}
		}
		if ev.Type == schema.EventResult {
			return ev.Result, resultError(ev.Result)
		}
	}
	return nil, fmt.Errorf("kiln: job %s: event stream ended", p.ID)
}

// Events iterates over the job's events up to and including the result.
// It yields a non-nil error once and stops when ctx ends or an event cannot
// be decoded.
//
// A job runs again from the start when its worker dies, its card faults or
// the broker crashes; each run has its own id (Event.Run) and begins with a
// "started" event. Events yields one run at a time, from its "started" on,
// in order, and never an event of another run after it: a caller that
// discards what it had on every "started" assembles exactly one run's text.
// When the client missed events (a broker restart drops those sent while
// the client reconnects), or the result comes from another run than the one
// streamed (a restarted job whose first run had finished), Events passes no
// more of the broken run and, at the result, starts over: a "started" event
// of the result's run, the result's whole text as one "token" event, then
// the result. Events the client makes up this way have Seq 0.
func (p *Pending) Events(ctx context.Context) iter.Seq2[schema.Event, error] {
	return func(yield func(schema.Event, error) bool) {
		poll := time.NewTimer(p.c.resultPoll)
		defer poll.Stop()
		for {
			select {
			case <-ctx.Done():
				yield(schema.Event{}, ctx.Err())
				return
			case <-poll.C:
				// Bounded: a request lost while a cluster fails over must
				// not stall the events that keep arriving meanwhile.
				rctx, cancel := context.WithTimeout(ctx, requestTimeout)
				res, err := p.c.Result(rctx, p.ID)
				cancel()
				if err == nil {
					for _, ev := range p.runs.end(p.ID, res) {
						if !yield(ev, nil) {
							return
						}
					}
					return
				}
				if !errors.Is(err, ErrNotFound) && !transient(err) && ctx.Err() == nil {
					yield(schema.Event{}, err)
					return
				}
				poll.Reset(p.c.resultPoll)
			case m := <-p.ch:
				ev, err := decodeEvent(m, p.c.codec)
				if err != nil {
					yield(schema.Event{}, fmt.Errorf("kiln: job %s: %w", p.ID, err))
					return
				}
				if !poll.Stop() {
					select {
					case <-poll.C:
					default:
					}
				}
				poll.Reset(p.c.resultPoll)
				for _, ev := range p.runs.pass(ev) {
					if !yield(ev, nil) || ev.Type == schema.EventResult {
						return
					}
				}
			}
		}
	}
}

func decodeEvent(m *nats.Msg, fallback schema.Codec) (schema.Event, error) {
	codec := fallback
	if ct := m.Header.Get(schema.HeaderContentType); ct != "" {
		var err error
		if codec, err = schema.CodecFor(ct); err != nil {
			return schema.Event{}, err
		}
	}
	var ev schema.Event
	if err := codec.Unmarshal(m.Data, &ev); err != nil {
		return schema.Event{}, err
	}
	if ev.Type == schema.EventResult && ev.Result == nil {
		return schema.Event{}, errors.New("result event without a result")
	}
	return ev, nil
}
