// Package workertest runs a worker.Handler without a broker, the way river's rivertest.Worker
// runs a river worker: for tests of a handler (an engine adapter, a custom model) that need
// the handler's behaviour, not the queue's.
//
// Run hands the handler one delivery of a job as the worker would once the job is decoded and
// validated, records the token and progress events it streams, and returns them with its
// result and error:
//
//	out, err := workertest.Run(ctx, echo.Chat, &schema.ChatJob{...})
//	// out.Result.Text, out.Text() (the streamed tokens), out.Steps(), err
//
// What happens around the handler in the worker (validation, the "started" and "result"
// events, retries, the stored result, the status and timings it adds to the result) is the
// worker's; Run does none of it. A handler that panics panics the test.
//
// For that part, StartQueue starts a real embedded broker (broker/brokertest) and returns a
// Queue that starts workers and clients on it, all stopped when the test ends:
//
//	q := workertest.StartQueue(t, workertest.QueueOptions{Chat: handlers})
//	q.Worker(t, "w1", nil)
//	res, err := q.Client(t).Chat(workertest.Context(t), job, onEvent)
package workertest

import (
	"context"
	"strings"
	"sync"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker"
)

// Outcome is what one run of a handler produced besides its error.
type Outcome struct {
	// Result is what Handle returned, as it returned it (nil if none): Run adds none of
	// the fields the worker fills in (job id, status, worker, run, attempt, timings).
	Result *schema.Result
	// Events are the "token" and "progress" events the handler sent, in order: Type with
	// Text, or Step and Steps (the worker adds the job id, run, attempt and sequence number).
	Events []schema.Event
}

// Text joins the text of the token events: the reply as a client streaming it saw it.
func (o *Outcome) Text() string {
	var b strings.Builder
	for _, ev := range o.Events {
		if ev.Type == schema.EventToken {
			b.WriteString(ev.Text)
		}
	}
	return b.String()
}

// Steps lists the Step of each progress event, in order.
func (o *Outcome) Steps() []int {
	var steps []int
	for _, ev := range o.Events {
		if ev.Type == schema.EventProgress {
			steps = append(steps, ev.Step)
		}
	}
	return steps
}

// jobPointer is *T for a job type T (schema.ChatJob, schema.ImageJob): Run reads its header.
type jobPointer[T any] interface {
	*T
	schema.Job
}

// Run runs h on the first delivery of args and returns what it produced. ctx is the job's
// context: cancel it to test what the handler does on a cancel. A deadline in args ends ctx
// at that time with cause worker.ErrDeadline, as it does in the worker. The Outcome is
// returned with the handler's error too (a handler returns its partial result with one).
func Run[T any, PT jobPointer[T]](ctx context.Context, h worker.Handler[T], args *T) (*Outcome, error) {
	return RunAttempt[T, PT](ctx, h, args, 1)
}

// RunAttempt is Run for a later delivery: the handler sees attempt (from 1) as Job.Attempt.
func RunAttempt[T any, PT jobPointer[T]](ctx context.Context, h worker.Handler[T], args *T, attempt int) (*Outcome, error) {
	if d := PT(args).Header().Deadline; d != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadlineCause(ctx, *d, worker.ErrDeadline)
		defer cancel()
	}
	out := &Outcome{}
	var mu sync.Mutex // a handler may stream from goroutines of its own
	job := worker.NewJob(args, func(ev schema.Event) error {
		mu.Lock()
		defer mu.Unlock()
		out.Events = append(out.Events, ev)
		return nil
	})
	job.Attempt = attempt
	res, err := h.Handle(ctx, job)
	mu.Lock()
	defer mu.Unlock()
	out.Result = res
	return out, err
}
