// Package metrics owns the gateway's GET /metrics: the fleet and its jobs
// in Prometheus' text format (docs/metrics.md lists every series, a scrape
// config and what to alert on). The queue and the workers are read from a
// watch.Watcher at each scrape; the job counters and histograms move as the
// watcher sees results stored.
package metrics

import (
	"errors"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kiln-project/kiln/gateway/watch"
	"github.com/kiln-project/kiln/schema"
)

// Namespace begins every series name.
const Namespace = "kiln"

// Config configures the metrics handler.
type Config struct {
	// Watcher is the fleet the metrics describe.
	Watcher *watch.Watcher
	// Process adds the Go runtime's and the process's own series
	// (go_*, process_*: the gateway's memory, file descriptors).
	Process bool
}

// Metrics is the /metrics handler.
type Metrics struct {
	reg     *prometheus.Registry
	handler http.Handler

	jobs, jobErrors, tokens     *prometheus.CounterVec
	wait, ttft, duration, speed *prometheus.HistogramVec
}

// New registers the series and follows cfg.Watcher's finished jobs.
func New(cfg Config) (*Metrics, error) {
	if cfg.Watcher == nil {
		return nil, errors.New("metrics: Config needs a Watcher")
	}
	route := []string{"kind", "model"}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "jobs_total",
			Help: "Jobs finished, by outcome: the result's status (ok, error, cancelled, expired)."},
			[]string{"kind", "model", "outcome"}),
		jobErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "job_errors_total",
			Help: "Jobs that ended with status error, by the error's code (over_limit, no_worker, failed...)."},
			[]string{"kind", "model", "code"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "generated_tokens_total",
			Help: "Completion tokens of finished chat jobs."}, []string{"model"}),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "job_queue_wait_seconds",
			Help:    "Time from a job's acceptance to its delivery to the worker that ran it.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}}, route),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "job_time_to_first_token_seconds",
			Help:    "Time from a job's start on its worker to its first token (chat) or step (image).",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2, 4, 8, 16, 32}}, route),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "job_duration_seconds",
			Help:    "Run time of a job on its worker.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320}}, route),
		speed: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "job_tokens_per_second",
			Help:    "Decode speed of finished chat jobs.",
			Buckets: []float64{1, 2, 4, 6, 8, 10, 12, 15, 20, 30, 50, 100, 250, 1000}}, []string{"model"}),
	}
	cs := []prometheus.Collector{m.jobs, m.jobErrors, m.tokens, m.wait, m.ttft, m.duration, m.speed, &fleet{w: cfg.Watcher}}
	if cfg.Process {
		cs = append(cs, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	for _, c := range cs {
		if err := m.reg.Register(c); err != nil {
			return nil, err
		}
	}
	m.handler = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
	cfg.Watcher.OnFinished(m.observe)
	return m, nil
}

// ServeHTTP serves the series in the format the scraper asks for.
func (m *Metrics) ServeHTTP(w http.ResponseWriter, r *http.Request) { m.handler.ServeHTTP(w, r) }

// unknown labels a job whose kind or model the watcher did not see.
const unknown = "unknown"

func orUnknown(s string) string {
	if s == "" {
		return unknown
	}
	return s
}

// observe counts a finished job.
func (m *Metrics) observe(j watch.Job) {
	kind, model := orUnknown(j.Kind), orUnknown(j.Model)
	m.jobs.WithLabelValues(kind, model, j.State).Inc()
	if j.State == schema.StatusError && j.Error != nil {
		m.jobErrors.WithLabelValues(kind, model, string(j.Error.Code)).Inc()
	}
	u := j.Usage
	if j.Worker == "" || j.Usage.TotalMS == 0 && j.Usage.QueueMS == 0 {
		return // no worker ran it (a janitor's answer): no run to time
	}
	m.wait.WithLabelValues(kind, model).Observe(seconds(u.QueueMS))
	m.duration.WithLabelValues(kind, model).Observe(seconds(u.TotalMS))
	if u.TTFTMS > 0 {
		m.ttft.WithLabelValues(kind, model).Observe(seconds(u.TTFTMS))
	}
	if u.CompletionTokens > 0 {
		m.tokens.WithLabelValues(model).Add(float64(u.CompletionTokens))
	}
	if u.TokensPerS > 0 {
		m.speed.WithLabelValues(model).Observe(u.TokensPerS)
	}
}

func seconds(ms int64) float64 { return (time.Duration(ms) * time.Millisecond).Seconds() }
