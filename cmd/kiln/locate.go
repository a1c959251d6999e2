package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
)

// statusWait bounds a worker's answer to a status request.
const statusWait = time.Second

// liveStatus asks each worker's status endpoint (<prefix>.status.<worker>,
// worker/micro.go) for its status now, so that the current job is the one
// running, not a heartbeat's of up to an interval ago. A worker that does
// not answer within statusWait (or a client not allowed to ask) keeps its
// registry entry.
func liveStatus(ctx context.Context, nc *nats.Conn, subj schema.Subjects, workers []schema.Heartbeat) []schema.Heartbeat {
	out := make([]schema.Heartbeat, len(workers))
	copy(out, workers)
	var wg sync.WaitGroup
	for i := range out {
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(ctx, statusWait)
			defer cancel()
			m, err := nc.RequestWithContext(rctx, subj.Status(out[i].Worker), nil)
			if err != nil {
				return
			}
			var hb schema.Heartbeat
			if json.Unmarshal(m.Data, &hb) == nil && hb.Worker == out[i].Worker {
				out[i] = hb
			}
		})
	}
	wg.Wait()
	return out
}

// whereabouts is what kiln cancel learned of a job before cancelling it.
type whereabouts struct {
	result  *schema.Result // its stored result: it has finished
	worker  string         // the worker running it now
	subject string         // the subject it waits on in the jobs stream
	client  string         // the client token of that subject ("" for an anonymous job)
	unsure  error          // a look-up that could not be made (e.g. not permitted)
}

// locate looks for job id: a stored result, a worker running it, a message
// in the jobs stream.
func locate(ctx context.Context, nc *nats.Conn, c *client.Client, topo topology.Config, id string) whereabouts {
	var w whereabouts
	res, err := c.AnyResult(ctx, id)
	switch {
	case err == nil:
		w.result = res
		return w
	case !errors.Is(err, client.ErrNotFound):
		w.unsure = err
	}
	if ws, err := c.Workers(ctx); err == nil {
		for _, hb := range liveStatus(ctx, nc, topo.Subjects(), ws) {
			if hb.CurrentJob == id || slices.Contains(hb.RunningJobs, id) {
				w.worker = hb.Worker
			}
		}
	} else {
		w.unsure = err
	}
	subject, err := queuedOn(ctx, nc, topo, id)
	if err != nil {
		w.unsure = err
	}
	w.subject = subject
	if route, err := topo.Subjects().ParseJob(subject); err == nil {
		w.client = route.Client
	}
	if w.worker == "" && w.subject == "" {
		// It may have finished between the looks.
		if res, err := c.AnyResult(ctx, id); err == nil {
			w.result = res
		}
	}
	return w
}

// queuedOn is the subject of job id's message in the jobs stream, "" when
// it is not there: found by its Nats-Msg-Id header (<client>.<id> for a
// client's job) or, for a JSON body published without one, the body's id. It reads every queued message's
// headers, one request each (a queue holds at most topology's
// MaxQueuedJobs; usually a few).
func queuedOn(ctx context.Context, nc *nats.Conn, topo topology.Config, id string) (string, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return "", err
	}
	st, err := js.Stream(ctx, topo.JobsStream())
	if err != nil {
		return "", fmt.Errorf("jobs stream: %w", err)
	}
	state := st.CachedInfo().State
	jobs := topo.Subjects().Jobs()
	for seq, n := state.FirstSeq, uint64(0); seq <= state.LastSeq && n <= state.Msgs; n++ {
		m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(jobs))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return "", nil
		}
		if err != nil {
			return "", fmt.Errorf("reading the jobs stream: %w", err)
		}
		route, _ := topo.Subjects().ParseJob(m.Subject)
		if msgID := m.Header.Get(jetstream.MsgIDHeader); msgID != "" && schema.JobIDOf(route.Client, msgID) == id || msgID == "" && jsonID(m) == id {
			return m.Subject, nil
		}
		seq = m.Sequence + 1
	}
	return "", nil
}

// jsonID is the "id" of a JSON job body, "" for any other.
func jsonID(m *jetstream.RawStreamMsg) string {
	if codec, err := schema.CodecFor(m.Header.Get(schema.HeaderContentType)); err != nil || codec != schema.JSON {
		return ""
	}
	var h struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(m.Data, &h) != nil {
		return ""
	}
	return h.ID
}

// outcome says how a result ended, once: "ok", "cancelled while running",
// "refused: over_limit on messages: …" (client.JobError's sentence).
func outcome(res *schema.Result) string {
	if res.Status == schema.StatusOK {
		return res.Status
	}
	return strings.TrimPrefix((&client.JobError{Result: res}).Error(), "kiln: job "+res.JobID+" ")
}

// ended is outcome and the worker: "cancelled while running, on w1".
func ended(res *schema.Result) string {
	if res.Worker == "" {
		return outcome(res)
	}
	return outcome(res) + ", on " + res.Worker
}
