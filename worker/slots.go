package worker

import (
	"context"
	"errors"
	"slices"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker/thermal"
)

// Capacity is optionally implemented by a Handler that runs several jobs
// at once: a chat model that holds several K/V slots on the card. total is
// how many of its jobs may run at once (less than 1 counts as 1), used how
// many run now as the model sees it. A Handler without it runs one job at
// a time; one with it must be safe to call from several goroutines (each
// job runs on its own), and Capacity is asked before every fetch, so it
// must be cheap. Heartbeats report the worker's own count of the model's
// running jobs as slots_used, total as slots_total.
//
// The worker admits a job of a model only while fewer than total of that
// model's jobs run here, and fewer than Config.MaxJobs jobs of any model:
// a card that is full fetches nothing, so its jobs stay in the queue for
// other cards.
type Capacity interface {
	Capacity() (used, total int)
}

// ErrDeviceFault is the cause with which the other running jobs are
// stopped when one of them hit a device fault: each is handed back to the
// queue, then the card is reset.
var ErrDeviceFault = errors.New("worker: device fault on the card, job handed back to the queue")

// runningJob is an admitted job: what a cancel, Stop, the governor or a
// device fault stops.
type runningJob struct {
	id     string
	key    string // schema.JobKey: what a cancel names
	cancel context.CancelCauseFunc
}

// slotKey names a model's slot count in Worker.inUse.
func slotKey(kind, model string) string { return kind + "/" + model }

// capacityOf is how many jobs of h may run at once: its Capacity's total,
// at least 1.
func capacityOf(h any) func() int {
	c, ok := h.(Capacity)
	if !ok {
		return func() int { return 1 }
	}
	return func() int {
		_, total := c.Capacity()
		return max(total, 1)
	}
}

// roomFor reports whether a job of rt's model may be admitted now: a
// free slot of its model and room under MaxJobs. Owned by the loop (the
// counts only fall elsewhere).
func (w *Worker) roomFor(rt *route) bool {
	capacity := rt.capacity() // outside w.mu: a handler's Capacity may take its own locks
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.reserved < w.cfg.MaxJobs && w.inUse[slotKey(rt.kind, rt.model)] < capacity
}

// full reports whether MaxJobs jobs run now.
func (w *Worker) full() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.reserved >= w.cfg.MaxJobs
}

// idle reports whether no job runs.
func (w *Worker) idle() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.reserved == 0
}

// startJob takes a slot of rt's model for msg and runs it on a goroutine
// of its own; the slot is freed (and the loop woken) when it has settled.
func (w *Worker) startJob(rt *route, run func()) {
	key := slotKey(rt.kind, rt.model)
	w.mu.Lock()
	w.reserved++
	w.inUse[key]++
	w.mu.Unlock()
	w.jobs.Go(func() {
		defer func() {
			w.mu.Lock()
			w.reserved--
			w.inUse[key]--
			w.mu.Unlock()
			select {
			case w.freed <- struct{}{}:
			default:
			}
		}()
		run()
	})
}

// slots reports a model's slots for heartbeats: jobs running here and its
// capacity.
func (w *Worker) slots(kind, model string) (used, total int) {
	for _, rt := range w.routes {
		if rt.kind == kind && rt.model == model {
			total = rt.capacity()
			break
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.inUse[slotKey(kind, model)], total
}

// addRunning registers an admitted job. When the worker is already
// stopping at once, resetting after a fault or critical, the job is
// stopped right away with that cause, so a job fetched just before one of
// those is handed back like the others.
func (w *Worker) addRunning(j *runningJob) {
	w.mu.Lock()
	w.running = append(w.running, j)
	if w.state == schema.StateReady {
		w.state = schema.StateBusy // not over stopping
	}
	cause := w.halt
	w.mu.Unlock()
	if cause == nil {
		cause = w.hw.haltCause()
	}
	if cause != nil {
		j.cancel(cause)
	}
}

// removeRunning forgets an ended job.
func (w *Worker) removeRunning(j *runningJob) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.running = slices.DeleteFunc(w.running, func(r *runningJob) bool { return r == j })
	if len(w.running) == 0 && w.state == schema.StateBusy {
		w.state = schema.StateReady
	}
}

// runningIDs lists the running jobs' ids, oldest first.
func (w *Worker) runningIDs() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	ids := make([]string, 0, len(w.running))
	for _, j := range w.running {
		ids = append(ids, j.id)
	}
	return ids
}

// cancelAll stops every running job with cause. ErrShutdown is kept, so a
// job admitted afterwards stops at once too.
func (w *Worker) cancelAll(cause error) {
	w.mu.Lock()
	if errors.Is(cause, ErrShutdown) {
		w.halt = cause
	}
	running := slices.Clone(w.running)
	w.mu.Unlock()
	for _, j := range running {
		j.cancel(cause)
	}
}

// haltCause is why a job admitted now must be handed back at once: a
// device fault waiting for its reset (ErrDeviceFault) or a critical card
// (ErrPaused); nil when it may run.
func (h *health) haltCause() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.fault != nil:
		return ErrDeviceFault
	case h.gov == thermal.Critical:
		return ErrPaused
	}
	return nil
}

// faultPending reports whether a device fault waits for its reset.
func (h *health) faultPending() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.fault != nil
}
