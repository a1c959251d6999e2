package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kiln-project/kiln/schema"
)

// Device is the card a worker's handlers run on, as far as fault handling
// needs it. cmd/kiln's card implements it over worker/npu.
type Device interface {
	// Fault reports whether a handler's transient error came from the card
	// (an execute error, a lost device), so that the card must be reset.
	Fault(err error) bool
	// Lost returns a non-nil error once the card is gone for good: the
	// worker hands back its job and exits with that error, so the service
	// manager restarts the process.
	Lost() error
	// Reset re-opens the card and reloads the models it serves. The
	// handlers in Config keep working afterwards.
	Reset(ctx context.Context) error
}

// Loader is optionally implemented by a Device whose models load after
// the worker has started: the worker then registers at once, heartbeats
// "loading" and fetches nothing until Load returns. A Load error stops the
// worker (Run returns it).
type Loader interface {
	Load(ctx context.Context) error
}

// ModelChecker is optionally implemented by a Device that loads each
// model's package on its own, so that one package that fails to load does
// not take the others down. The worker fetches no job for a model whose
// ModelErr is non-nil: its jobs wait for a card that serves it (heartbeats
// list the model as failed: StatusFunc says so). After each load or reset
// the worker publishes a load_failed device event naming every such model.
type ModelChecker interface {
	ModelErr(kind, model string) error
}

// Rebooter is optionally implemented by a Device that can reboot its card
// (a firmware reboot, not a reset: everything on the card is gone). The
// worker reboots a lost card, and one that made it unhealthy, before it
// exits, so that the process systemd starts next finds a working card
// (card-field-notes.md §1.6: once OFFLINE, submit nothing more, reboot,
// exit). Reboot waits, bounded, for the card to come back.
type Rebooter interface {
	Reboot(ctx context.Context) error
}

// ErrCardLost is matched by the error of a worker that stopped because its
// card was lost.
var ErrCardLost = errors.New("worker: card lost")

// ErrUnhealthy is matched by the error of a worker that stopped after
// MaxFaults device faults in a row.
var ErrUnhealthy = errors.New("worker: unhealthy card")

// Device event types on kiln.events.device.<worker>.
const (
	DeviceFault       = "fault"        // a job failed on the card; the job was handed back
	DeviceReset       = "reset"        // resetting the card and reloading its models
	DeviceResetFailed = "reset_failed" // the reset did not bring the card back
	DeviceReady       = "ready"        // the card is back, models loaded, taking jobs
	DeviceUnhealthy   = "unhealthy"    // too many faults in a row: no more jobs
	DeviceLost        = "lost"         // the card is gone: the worker exits
	DeviceReboot      = "reboot"       // rebooting the card before the worker exits
	DeviceRebooted    = "rebooted"     // the card came back after its reboot
	// DeviceLoadFailed: with Model set, that model's package did not load
	// (the others serve); without, the card could not be loaded at start
	// and the worker exits.
	DeviceLoadFailed = "load_failed"
)

// startLoading loads the device's models in the background (Loader) and
// reports whether it does; "worker ready" is logged once they are loaded.
func (w *Worker) startLoading(ctx context.Context) bool {
	l, ok := w.cfg.Device.(Loader)
	if !ok {
		return false
	}
	w.hw.mu.Lock()
	w.hw.resetting = true
	w.hw.mu.Unlock()
	ctx, cancel := w.untilStop(context.WithoutCancel(ctx))
	go func() {
		defer cancel()
		start := time.Now()
		if err := l.Load(ctx); err != nil {
			if w.stopping() {
				return // stopped while loading
			}
			w.deviceEvent(DeviceLoadFailed, err.Error())
			w.die(fmt.Errorf("worker: load models: %w", err))
			return
		}
		w.endReset()
		w.modelEvents()
		w.deviceEvent(DeviceReady, fmt.Sprintf("models loaded in %v", time.Since(start).Round(time.Millisecond)))
		w.logReady()
	}()
	return true
}

// noteFault records a device fault seen by a job and stops the other
// running jobs (ErrDeviceFault: each is handed back); the loop resets the
// card once none runs (handleFault).
func (w *Worker) noteFault(err error) bool {
	if w.cfg.Device == nil || !w.cfg.Device.Fault(err) {
		return false
	}
	w.hw.mu.Lock()
	w.hw.fault = err
	w.hw.notify()
	w.hw.mu.Unlock()
	w.cancelAll(ErrDeviceFault)
	return true
}

// jobSucceeded clears the run of consecutive faults.
func (w *Worker) jobSucceeded() {
	w.hw.mu.Lock()
	w.hw.faults = 0
	w.hw.mu.Unlock()
}

// handleFault runs on the loop after a job hit a device fault and every
// running job has been handed back: it
// resets the card with back-off until it works again, MaxFaults faults in
// a row (without a job done in between) make the worker unhealthy, and a
// lost card makes it exit. Heartbeats say "loading" meanwhile.
func (w *Worker) handleFault() {
	w.hw.mu.Lock()
	ferr := w.hw.fault
	w.hw.fault = nil
	w.hw.mu.Unlock()
	if ferr == nil {
		return
	}
	w.deviceEvent(DeviceFault, ferr.Error())
	for {
		if err := w.cfg.Device.Lost(); err != nil {
			w.cardLost(err)
			return
		}
		w.hw.mu.Lock()
		w.hw.faults++
		n := w.hw.faults
		if n >= w.cfg.MaxFaults {
			w.hw.unhealthy = true
			w.hw.notify()
			w.hw.mu.Unlock()
			msg := fmt.Sprintf("%d device faults in a row, last: %v; taking no more jobs: rebooting the card and exiting", n, ferr)
			w.log.Error("worker unhealthy", "faults", n, "err", ferr)
			w.deviceEvent(DeviceUnhealthy, msg)
			w.rebootCard(ferr)
			w.die(fmt.Errorf("%w: %d device faults in a row, last: %w", ErrUnhealthy, n, ferr))
			return
		}
		w.hw.resetting = true
		w.hw.mu.Unlock()

		delay := w.cfg.ResetDelays[min(n, len(w.cfg.ResetDelays))-1]
		w.log.Warn("device fault: resetting the card", "err", ferr, "fault", n, "delay", delay)
		t := time.NewTimer(delay)
		select {
		case <-w.stopFetch:
			t.Stop()
			w.endReset()
			return
		case <-t.C:
		}
		w.deviceEvent(DeviceReset, fmt.Sprintf("reset %d after: %v", n, ferr))
		ctx, cancel := context.WithTimeout(context.Background(), w.cfg.ResetTimeout)
		ctx, stop := w.untilStop(ctx)
		err := w.cfg.Device.Reset(ctx)
		stop()
		cancel()
		if w.stopping() {
			w.endReset()
			return
		}
		if err == nil {
			w.endReset()
			w.modelEvents()
			w.deviceEvent(DeviceReady, "card reset, models reloaded")
			w.log.Info("card reset, models reloaded")
			return
		}
		ferr = err
		w.log.Warn("card reset failed", "err", err)
		w.deviceEvent(DeviceResetFailed, err.Error())
	}
}

// untilStop returns ctx, also cancelled when the worker stops fetching.
func (w *Worker) untilStop(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-w.stopFetch:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

func (w *Worker) endReset() {
	w.hw.mu.Lock()
	w.hw.resetting = false
	w.hw.notify()
	w.hw.mu.Unlock()
}

// fail stops the worker for good: the card is lost. Run returns the error.
func (w *Worker) fail(err error) {
	w.hw.fatalOnce.Do(func() {
		w.hw.fatalErr = fmt.Errorf("%w: %w", ErrCardLost, err)
		w.log.Error("card lost: the worker stops; restart the process", "err", err)
		close(w.hw.fatal)
	})
}

// cardLost stops the worker for good after its card was lost: it says so,
// reboots the card (Rebooter) and fails. Run returns the error.
func (w *Worker) cardLost(err error) {
	w.hw.lostOnce.Do(func() {
		w.deviceEvent(DeviceLost, err.Error())
		w.rebootCard(err)
		w.fail(err)
	})
}

// rebootCard reboots the card of a Device that can (Rebooter) and waits for
// it to come back, bounded by ResetTimeout; the worker exits afterwards
// either way. Heartbeats say "loading" meanwhile.
func (w *Worker) rebootCard(cause error) {
	rb, ok := w.cfg.Device.(Rebooter)
	if !ok {
		return
	}
	w.hw.mu.Lock()
	w.hw.resetting = true
	w.hw.notify()
	w.hw.mu.Unlock()
	w.deviceEvent(DeviceReboot, fmt.Sprintf("rebooting the card after: %v", cause))
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.ResetTimeout)
	defer cancel()
	if err := rb.Reboot(ctx); err != nil {
		w.log.Error("card reboot failed: the card needs a hand (docs/card.md, the recovery ladder)", "err", err)
		w.deviceEvent(DeviceResetFailed, "reboot: "+err.Error())
		return
	}
	w.deviceEvent(DeviceRebooted, fmt.Sprintf("card back %v after its reboot", time.Since(start).Round(time.Millisecond)))
}

// die stops the worker with err (Run returns it).
func (w *Worker) die(err error) {
	w.hw.fatalOnce.Do(func() {
		w.hw.fatalErr = err
		w.log.Error("the worker stops", "err", err)
		close(w.hw.fatal)
	})
}

// Failed is closed when the worker must exit because its card was lost;
// Err then says why. Run returns that error after stopping.
func (w *Worker) Failed() <-chan struct{} { return w.hw.fatal }

// Err is nil unless the worker failed (Failed is closed).
func (w *Worker) Err() error {
	select {
	case <-w.hw.fatal:
		return w.hw.fatalErr
	default:
		return nil
	}
}

func (w *Worker) deviceEvent(typ, msg string) { w.modelEvent(typ, "", msg) }

func (w *Worker) modelEvent(typ, model, msg string) {
	ev := schema.DeviceEvent{Worker: w.cfg.Name, Type: typ, Model: model, Message: msg, Time: time.Now().UTC()}
	w.publishEvent(w.subj.Device(w.cfg.Name), &ev)
}

// modelErr is the Device's ModelErr for the model (nil without a
// ModelChecker).
func (w *Worker) modelErr(kind, model string) error {
	if mc, ok := w.cfg.Device.(ModelChecker); ok {
		return mc.ModelErr(kind, model)
	}
	return nil
}

// modelEvents publishes a load_failed event for each model whose package
// did not load (ModelChecker).
func (w *Worker) modelEvents() {
	for _, m := range w.Models() {
		if err := w.modelErr(m.Kind, m.Name); err != nil {
			w.log.Error("model not served: its package did not load", "model", m.Name, "kind", m.Kind, "err", err)
			w.modelEvent(DeviceLoadFailed, m.Name, err.Error())
		}
	}
}
