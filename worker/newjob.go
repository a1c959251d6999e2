package worker

import (
	"time"

	"github.com/kiln-project/kiln/schema"
)

// NewJob builds a Job for running a Handler outside the queue, as
// worker/workertest does: the first delivery of args, enqueued now (set
// Attempt and Enqueued to change that). The handler's Token and Progress
// calls become "token" and "progress" events passed to emit (nil drops
// them); what emit returns is what the handler's call returns.
func NewJob[T any](args *T, emit func(schema.Event) error) *Job[T] {
	if emit == nil {
		emit = func(schema.Event) error { return nil }
	}
	return &Job[T]{Args: args, Attempt: 1, Enqueued: time.Now(), record: emit}
}

// send passes a handler's event to the delivery's event stream, or to the
// emit function of a job built by NewJob.
func (j *Job[T]) send(ev schema.Event) error {
	if j.record != nil {
		return j.record(ev)
	}
	return j.stream.emit(ev)
}
