package worker

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker/thermal"
)

// health is what decides, besides Stop, whether the loop may fetch: the
// thermal governor, a device reset in progress, an unhealthy card. Every
// change closes changed, so a blocked loop wakes and looks again.
type health struct {
	monitor *thermal.Monitor // nil: governor off

	mu        sync.Mutex
	gov       thermal.State // "" while off
	resetting bool
	unhealthy bool
	faults    int   // consecutive device faults without a job done since
	fault     error // a device fault seen by the last job, handled by the loop
	changed   chan struct{}

	fatalOnce sync.Once
	lostOnce  sync.Once     // cardLost
	fatal     chan struct{} // closed when the worker must exit (card lost)
	fatalErr  error
}

func (h *health) init() {
	h.changed = make(chan struct{})
	h.fatal = make(chan struct{})
}

// notify wakes a loop blocked on the health gate (h.mu held).
func (h *health) notify() {
	close(h.changed)
	h.changed = make(chan struct{})
}

// changedChan is closed at the next change of the health gate (or a
// device fault seen by a job).
func (h *health) changedChan() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.changed
}

// startGovernor starts the thermal monitor when the config has one.
func (w *Worker) startGovernor(ctx context.Context) error {
	if w.cfg.Thermal == nil {
		return nil
	}
	mc := *w.cfg.Thermal
	if mc.Logger == nil {
		mc.Logger = w.log
	}
	m, err := thermal.NewMonitor(mc, w.onThermal)
	if err != nil {
		return err
	}
	w.hw.mu.Lock()
	w.hw.gov = thermal.OK
	w.hw.monitor = m
	w.hw.mu.Unlock()
	m.Start(ctx)
	return nil
}

// onThermal acts on a governor transition: one event on
// kiln.events.thermal.<worker>, in order (the monitor serialises them);
// critical stops every running job at its next token or step and hands
// each back to the queue (ErrPaused), so a cooler card takes it.
func (w *Worker) onThermal(t thermal.Transition) {
	w.hw.mu.Lock()
	w.hw.gov = t.To
	w.hw.notify()
	w.hw.mu.Unlock()
	if t.To == thermal.Critical {
		w.cancelAll(ErrPaused)
	}
	ev := schema.ThermalEvent{Worker: w.cfg.Name, From: string(t.From), To: string(t.To),
		CardTempC: finite(t.Reading.CardC), SoCTempC: finite(t.Reading.SoCC), Reason: t.Reason, Time: time.Now().UTC()}
	w.publishEvent(w.subj.Thermal(w.cfg.Name), &ev)
}

// publishEvent publishes a fleet event as JSON (DESIGN §4: events are
// always JSON).
func (w *Worker) publishEvent(subject string, v any) {
	if err := topology.Publish(w.nc, subject, schema.JSON, v); err != nil {
		w.log.Warn("publish event", "subject", subject, "err", err)
	}
}

// gate reports whether the loop may fetch a job. When it may not, wait is
// closed once that may have changed. It samples the governor first, so
// the decision rests on the latest reading, not the last tick's.
func (w *Worker) gate() (wait <-chan struct{}) {
	if w.cfg.Device != nil {
		if err := w.cfg.Device.Lost(); err != nil {
			w.cardLost(err)
			return w.hw.fatal
		}
	}
	if m := w.hw.monitor; m != nil {
		m.Admit(context.Background())
	}
	w.hw.mu.Lock()
	defer w.hw.mu.Unlock()
	if w.hw.resetting || w.hw.unhealthy || (w.hw.gov != "" && w.hw.gov != thermal.OK) {
		return w.hw.changed
	}
	return nil
}

// governorStatus fills the heartbeat's governor, temperatures and state.
func (w *Worker) governorStatus(hb *schema.Heartbeat) {
	w.hw.mu.Lock()
	gov, resetting, unhealthy := w.hw.gov, w.hw.resetting, w.hw.unhealthy
	w.hw.mu.Unlock()
	switch {
	case hb.State == schema.StateStopping:
	case unhealthy:
		hb.State = schema.StateUnhealthy
	case resetting:
		hb.State = schema.StateLoading
	case hb.State == schema.StateReady && gov != "" && gov != thermal.OK:
		hb.State = schema.StatePaused
	}
	if m := w.hw.monitor; m != nil {
		_, r := m.Snapshot()
		lim := m.Limits()
		hb.Governor = schema.GovernorStatus{State: string(gov), PauseC: lim.Card.PauseC, ResumeC: lim.Card.ResumeC}
		hb.CardTempC = finite(r.CardC)
		hb.SoCTempC = finite(r.SoCC)
	}
}

func finite(c float64) float64 {
	if math.IsNaN(c) || math.IsInf(c, 0) {
		return 0
	}
	return math.Round(c*10) / 10
}
