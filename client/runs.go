package client

import (
	"strconv"

	"github.com/kiln-project/kiln/schema"
)

// runs decides which of a job's events reach the caller, so that the
// caller, discarding what it had on every "started" event, always holds
// exactly one run's text. It does no I/O.
//
// Events come over core NATS, from every worker that ran the job, through
// broker restarts: some can be lost, and those of an old run can arrive
// after a new run began. So:
//
//   - a "started" of a run not seen before begins that run: it is passed
//     on, and the run that was current is superseded;
//   - a token or progress event is passed on only if it is the current
//     run's next one (Seq); after a gap the rest of the run is held back;
//   - the result ends the job. It passes as it is when it is the current
//     run's own result and nothing of that run was missed; otherwise the
//     run it comes from is started over (see end).
type runs struct {
	live       bool            // a run has begun: current names it
	current    string          // the run whose events pass
	next       int             // the Seq expected next of current
	broken     bool            // an event of current was missed: hold back the rest
	superseded map[string]bool // runs that a later one replaced
}

// pass returns the events to hand on for ev, in order; the last is the
// result when ev ends the job.
func (r *runs) pass(ev schema.Event) []schema.Event {
	run := runOf(ev.Run, ev.Attempt)
	switch ev.Type {
	case schema.EventResult:
		complete := r.live && run == r.current && !r.broken && ev.Seq == r.next &&
			runOf(ev.Result.Run, ev.Result.Attempt) == run
		if complete || (!r.live && ev.Result.Text == "") {
			return []schema.Event{ev} // nothing to start over
		}
		return r.end(ev.JobID, ev.Result)
	case schema.EventStarted:
		if (r.live && run == r.current) || r.superseded[run] {
			return nil // a late or repeated start of a run already seen
		}
		if r.live {
			if r.superseded == nil {
				r.superseded = map[string]bool{}
			}
			r.superseded[r.current] = true
		}
		r.live, r.current, r.next, r.broken = true, run, ev.Seq+1, false
		return []schema.Event{ev}
	}
	switch {
	case !r.live || run != r.current || r.broken:
		return nil // another run's, or the current one's after a gap
	case ev.Seq < r.next:
		return nil // seen already
	case ev.Seq > r.next:
		r.broken = true // some were lost: the result starts the run over
		return nil
	}
	r.next++
	return []schema.Event{ev}
}

// end returns the events that end the job with res when the caller may not
// hold exactly res's run: a "started" of res's run and its whole text as one
// token (made up here, Seq 0), then the result. A job that passed nothing
// and has no text (refused, cancelled while queued) gets the result alone.
func (r *runs) end(jobID string, res *schema.Result) []schema.Event {
	var out []schema.Event
	if r.live || res.Text != "" {
		out = append(out, schema.Event{JobID: jobID, Run: res.Run, Attempt: res.Attempt, Type: schema.EventStarted,
			Worker: res.Worker, QueueMS: res.Usage.QueueMS})
		if res.Text != "" {
			out = append(out, schema.Event{JobID: jobID, Run: res.Run, Attempt: res.Attempt, Type: schema.EventToken, Text: res.Text})
		}
	}
	return append(out, schema.Event{JobID: jobID, Run: res.Run, Attempt: res.Attempt, Type: schema.EventResult, Result: res})
}

// runOf is the identity of a run: its id, or for a sender that names none
// (a worker older than run ids, an event published by hand) its attempt.
func runOf(id string, attempt int) string {
	if id != "" {
		return id
	}
	return "attempt " + strconv.Itoa(attempt)
}
