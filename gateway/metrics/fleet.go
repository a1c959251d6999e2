package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kiln-project/kiln/gateway/watch"
	"github.com/kiln-project/kiln/schema"
)

// fleet collects, at each scrape, the queue and the workers as the
// watcher last saw them.
type fleet struct{ w *watch.Watcher }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, labels, nil)
}

var (
	lane = []string{"kind", "model", "lane"}

	queueWaiting = desc("queue_waiting_jobs", "Jobs queued and not yet delivered to a worker.", lane...)
	queueRunning = desc("queue_running_jobs", "Jobs delivered to a worker and not yet acknowledged.", lane...)
	queueOldest  = desc("queue_oldest_job_age_seconds", "Age of the longest-waiting job not yet delivered (0 when none waits; absent when the gateway may not read the jobs stream).", lane...)
	queueServed  = desc("queue_served", "1 when a registered worker serves the kind and model, 0 when none does.", lane...)

	workersLive     = desc("workers", "Live workers (heard from within three heartbeat periods).")
	workerState     = desc("worker_state", "1 for the worker's current state, 0 for the others.", "worker", "state")
	workerCardTemp  = desc("worker_card_temperature_celsius", "The card's junction temperature.", "worker")
	workerSoCTemp   = desc("worker_soc_temperature_celsius", "The host SoC's temperature.", "worker")
	workerCMMUsed   = desc("worker_cmm_used_bytes", "Card memory (CMM) in use.", "worker")
	workerCMMTotal  = desc("worker_cmm_total_bytes", "Card memory (CMM) in all.", "worker")
	workerNPULoad   = desc("worker_npu_load_ratio", "NPU load, 0 to 1.", "worker")
	workerModels    = desc("worker_models_resident", "Models loaded and served.", "worker")
	workerModel     = desc("worker_model_info", "One series per model a worker lists, with its state (loading, ready, failed).", "worker", "model", "kind", "state")
	workerFaults    = desc("worker_device_faults_total", "Device faults the worker reported since the gateway started.", "worker")
	workerHeartbeat = desc("worker_heartbeat_age_seconds", "Time since the gateway saw the worker's latest heartbeat (on the gateway's clock, read every 2 s).", "worker")
	workerJobs      = desc("worker_jobs_total", "Jobs the worker finished since it started: ok, failed (failed, cancelled, expired, retried) or refused (invalid).", "worker", "outcome")
	workerSpeed     = desc("worker_tokens_per_second", "The worker's recent decode speed.", "worker")
	workerUptime    = desc("worker_uptime_seconds", "Time since the worker started.", "worker")
)

var workerStates = []string{schema.StateLoading, schema.StateReady, schema.StateBusy, schema.StatePaused, schema.StateUnhealthy, schema.StateStopping}

func (f *fleet) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{queueWaiting, queueRunning, queueOldest, queueServed, workersLive, workerState,
		workerCardTemp, workerSoCTemp, workerCMMUsed, workerCMMTotal, workerNPULoad, workerModels, workerModel,
		workerFaults, workerHeartbeat, workerJobs, workerSpeed, workerUptime} {
		ch <- d
	}
}

func (f *fleet) Collect(ch chan<- prometheus.Metric) {
	s := f.w.Snapshot()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	for _, q := range s.Queue {
		if q.Subject != "" {
			continue // not a job subject: the janitor answers it
		}
		l := []string{q.Kind, q.Model, q.Lane}
		gauge(queueWaiting, float64(q.Waiting), l...)
		gauge(queueRunning, float64(q.Running), l...)
		switch {
		case !q.Oldest.IsZero():
			gauge(queueOldest, max(s.Time.Sub(q.Oldest).Seconds(), 0), l...)
		case q.Waiting == 0:
			gauge(queueOldest, 0, l...)
			// else: jobs wait, but the identity may not read when they came
		}
		gauge(queueServed, boolf(!q.Unserved), l...)
	}
	gauge(workersLive, float64(len(s.Workers)))
	for _, w := range s.Workers {
		n := w.Worker
		for _, st := range workerStates {
			gauge(workerState, boolf(w.State == st), n, st)
		}
		if w.CardTempC != 0 {
			gauge(workerCardTemp, w.CardTempC, n)
		}
		if w.SoCTempC != 0 {
			gauge(workerSoCTemp, w.SoCTempC, n)
		}
		if w.CMMTotalMiB > 0 {
			gauge(workerCMMUsed, float64(w.CMMUsedMiB)*(1<<20), n)
			gauge(workerCMMTotal, float64(w.CMMTotalMiB)*(1<<20), n)
			gauge(workerNPULoad, w.NPUUtil, n)
		}
		resident := 0
		for _, m := range w.Models {
			if m.Serving() {
				resident++
			}
			gauge(workerModel, 1, n, m.Name, m.Kind, m.State)
		}
		gauge(workerModels, float64(resident), n)
		counter(workerFaults, float64(w.Faults), n)
		gauge(workerHeartbeat, max(s.Time.Sub(w.Seen).Seconds(), 0), n)
		counter(workerJobs, float64(w.JobsOK), n, "ok")
		counter(workerJobs, float64(w.JobsFailed), n, "failed")
		counter(workerJobs, float64(w.JobsRefused), n, "refused")
		gauge(workerSpeed, w.TokensPerS, n)
		gauge(workerUptime, float64(w.UptimeS), n)
	}
}

func boolf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
