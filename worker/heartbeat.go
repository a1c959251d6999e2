package worker

import (
	"context"
	"math"
	"os"
	"time"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
)

// Status returns the worker's heartbeat as it would be published now.
func (w *Worker) Status() schema.Heartbeat {
	host, _ := os.Hostname()
	w.mu.Lock()
	state := w.state
	w.mu.Unlock()
	running := w.runningIDs()
	current := ""
	if len(running) > 0 {
		current = running[0]
	}
	hb := schema.Heartbeat{
		Worker:      w.cfg.Name,
		Host:        host,
		Card:        w.cfg.Card,
		Version:     w.cfg.Version,
		State:       state,
		Models:      w.Models(),
		CurrentJob:  current,
		RunningJobs: running,
		MaxJobs:     w.cfg.MaxJobs,
		JobsOK:      w.jobsOK.Load(),
		JobsFailed:  w.jobsFailed.Load(),
		JobsRefused: w.jobsRefused.Load(),
		TokensPerS:  math.Float64frombits(w.tokensPerS.Load()),
		UptimeS:     int64(time.Since(w.startedAt).Seconds()),
		Governor:    schema.GovernorStatus{State: "off"},
		IntervalMS:  w.cfg.Topology.HeartbeatInterval.Milliseconds(),
		Time:        time.Now().UTC(),
	}
	w.governorStatus(&hb)
	for i := range hb.Models {
		hb.Models[i].SlotsUsed, hb.Models[i].SlotsTotal = w.slots(hb.Models[i].Kind, hb.Models[i].Name)
		if err := w.modelErr(hb.Models[i].Kind, hb.Models[i].Name); err != nil {
			hb.Models[i].State, hb.Models[i].Error = schema.ModelFailed, err.Error()
		}
	}
	if w.cfg.StatusFunc != nil {
		w.cfg.StatusFunc(&hb)
	}
	return hb
}

// noteRate keeps the token rate of a finished job for heartbeats: the
// handler's own figure, else completion tokens over the run time.
func (w *Worker) noteRate(res *schema.Result) {
	u := res.Usage
	rate := u.TokensPerS
	if rate == 0 && u.CompletionTokens > 0 && u.TotalMS > 0 {
		rate = float64(u.CompletionTokens) * 1000 / float64(u.TotalMS)
	}
	if rate > 0 {
		w.tokensPerS.Store(math.Float64bits(math.Round(rate*10) / 10))
	}
}

// heartbeat publishes the status on the heartbeat subject (kept in
// KILN_EVENTS) and puts it in the kiln_workers registry. Events are JSON so
// that `nats sub 'kiln.events.>'` is readable as is.
func (w *Worker) heartbeat(ctx context.Context) {
	hb := w.Status()
	m, err := topology.NewMsg(w.subj.Heartbeat(w.cfg.Name), schema.JSON, &hb)
	if err != nil {
		w.log.Error("encode heartbeat", "err", err)
		return
	}
	if err := w.nc.PublishMsg(m); err != nil {
		w.log.Warn("publish heartbeat", "err", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := w.workersKV.Put(pctx, w.cfg.Name, m.Data); err != nil {
		w.log.Warn("update worker registry", "err", err)
	}
}

func (w *Worker) heartbeatLoop() {
	defer close(w.hbDone)
	t := time.NewTicker(w.cfg.Topology.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-w.hbStop:
			return
		case <-t.C:
			w.heartbeat(context.Background())
		}
	}
}
