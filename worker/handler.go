package worker

import (
	"context"
	"errors"
	"time"

	"github.com/kiln-project/kiln/schema"
)

// Handler runs jobs of one kind for one model. T is schema.ChatJob or
// schema.ImageJob.
//
// Handle must return when ctx is done, at the latest after the next token
// or step: ctx ends when the job is cancelled, passes its deadline, or the
// worker stops. What Handle returns then is kept as the partial result.
//
// The result it returns needs only what the handler knows (text, finish
// reason, image, token counts, time to first token); the worker fills in the
// job id, status, worker, run, attempt and timings. An error that is a
// *schema.Error is the request's fault: the job ends with that error and is
// never retried. Any other error is taken as transient (a device fault, say):
// the job is handed back to the queue with a delay and retried, on this card
// or another, until its last delivery (the consumer's MaxDeliver), which
// ends with an error result.
// Wrap an error with Permanent to end the job at once without retries.
type Handler[T any] interface {
	Handle(ctx context.Context, job *Job[T]) (*schema.Result, error)
}

// HandlerFunc adapts a function to a Handler.
type HandlerFunc[T any] func(ctx context.Context, job *Job[T]) (*schema.Result, error)

// Handle implements Handler.
func (f HandlerFunc[T]) Handle(ctx context.Context, job *Job[T]) (*schema.Result, error) {
	return f(ctx, job)
}

// Job is one delivery of a job to a handler.
type Job[T any] struct {
	// Args is the decoded, validated job.
	Args *T
	// Attempt is the delivery count, from 1. A broker that crashes can lose
	// its recent counts, so a job may see 1 again: a hint, not an identity.
	Attempt int
	// Enqueued is when the job was accepted by the queue.
	Enqueued time.Time

	stream *eventStream
	record func(schema.Event) error // set by NewJob: events go here, not to a stream
}

// Token streams a piece of generated text (whole UTF-8 characters) to the
// client as a "token" event.
func (j *Job[T]) Token(text string) error {
	return j.send(schema.Event{Type: schema.EventToken, Text: text})
}

// Progress reports that step of steps is done as a "progress" event.
func (j *Job[T]) Progress(step, steps int) error {
	return j.send(schema.Event{Type: schema.EventProgress, Step: step, Steps: steps})
}

// Permanent marks err as not worth retrying: the job ends with an error
// result on this delivery.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Causes with which a running job's context is cancelled.
var (
	// ErrCancelRequested: a client asked to cancel the job.
	ErrCancelRequested = errors.New("worker: job cancelled by request")
	// ErrDeadline: the job's deadline passed.
	ErrDeadline = errors.New("worker: job deadline passed")
	// ErrShutdown: the worker is stopping and the job is handed back to the queue.
	ErrShutdown = errors.New("worker: stopping, job handed back to the queue")
	// ErrPaused: the card is too hot; the job is handed to a cooler card.
	ErrPaused = errors.New("worker: card critical, job handed to another card")
)
