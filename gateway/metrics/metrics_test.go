package metrics_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/gateway/internal/simfleet"
	"github.com/kiln-project/kiln/gateway/metrics"
	"github.com/kiln-project/kiln/gateway/watch"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/wait"
	"github.com/kiln-project/kiln/worker/workertest"
)

// scrape is one parsed GET /metrics.
type scrape map[string]*dto.MetricFamily

func get(t *testing.T, url string) scrape {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s %s", resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("Prometheus' text parser refuses /metrics: %v", err)
	}
	return fams
}

// value is the series name{labels}'s value (a histogram's: its count);
// ok is false when there is no such series.
func (s scrape) value(name string, labels map[string]string) (float64, bool) {
	f := s[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// /metrics parses with Prometheus' own parser, and its figures move as jobs
// run through the real queue on the simulated card: the worker's
// temperature follows the card, a job held back by the thermal pause shows
// as queue depth and age, finished jobs count by outcome and fill the
// histograms.
func TestMetricsFollowTheQueue(t *testing.T) {
	f := simfleet.Start(t)
	cl := f.Queue.Client(t)
	w, err := watch.Start(t.Context(), watch.Config{Conn: brokertest.Connect(t, f.Queue.Broker), Client: f.Queue.Client(t),
		Topology: f.Queue.Topology, PollInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	m, err := metrics.New(metrics.Config{Watcher: w, Process: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	url := srv.URL + "/metrics"

	worker := map[string]string{"worker": simfleet.WorkerName}
	chat := map[string]string{"kind": "chat", "model": simfleet.ChatModel}
	okChats := map[string]string{"kind": "chat", "model": simfleet.ChatModel, "outcome": "ok"}
	until := func(what string, cond func(scrape) bool) scrape {
		t.Helper()
		var s scrape
		wait.For(t, 30*time.Second, 50*time.Millisecond, func() error {
			if s = get(t, url); cond(s) {
				return nil
			}
			return fmt.Errorf("/metrics never showed %s", what)
		})
		return s
	}
	is := func(s scrape, name string, labels map[string]string, want float64) bool {
		v, ok := s.value(name, labels)
		return ok && v == want
	}

	f.SetTempC(t, 57)
	s := until("the card at 57 °C, ready", func(s scrape) bool {
		return is(s, "kiln_worker_card_temperature_celsius", worker, 57) &&
			is(s, "kiln_worker_state", map[string]string{"worker": simfleet.WorkerName, "state": "ready"}, 1)
	})
	if _, ok := s.value("kiln_worker_heartbeat_age_seconds", worker); !ok {
		t.Error("no kiln_worker_heartbeat_age_seconds")
	}
	for name, want := range map[string]float64{"kiln_workers": 1, "kiln_worker_models_resident": 2, "kiln_worker_device_faults_total": 0} {
		if v, _ := s.value(name, nil); v != want {
			t.Errorf("%s = %g, want %g", name, v, want)
		}
	}
	if v, ok := s.value("kiln_worker_cmm_total_bytes", worker); !ok || v <= 0 {
		t.Errorf("kiln_worker_cmm_total_bytes = %g %v, want the card's CMM", v, ok)
	}
	if _, ok := s.value("go_goroutines", nil); !ok {
		t.Error("no go_goroutines: the process series are missing")
	}
	if v, _ := s.value("kiln_jobs_total", okChats); v != 0 {
		t.Fatalf("kiln_jobs_total before any job = %g", v)
	}

	// Hot: the worker pauses and the job waits in the queue.
	f.SetTempC(t, 85)
	until("the worker paused", func(s scrape) bool {
		return is(s, "kiln_worker_state", map[string]string{"worker": simfleet.WorkerName, "state": "paused"}, 1)
	})
	ctx := workertest.Context(t)
	p, err := cl.Submit(ctx, &schema.ChatJob{JobHeader: schema.JobHeader{Model: simfleet.ChatModel}, MaxTokens: 8, Messages: []schema.Message{{Role: "user", Content: "hello"}}})
	if err != nil {
		t.Fatal(err)
	}
	normal := map[string]string{"kind": "chat", "model": simfleet.ChatModel, "lane": "normal"}
	until("the job waiting, and for a while", func(s scrape) bool {
		age, ok := s.value("kiln_queue_oldest_job_age_seconds", normal)
		return is(s, "kiln_queue_waiting_jobs", normal, 1) && ok && age >= 0.5
	})

	// Cool again: the job runs and is counted.
	f.SetTempC(t, 50)
	res, err := p.Wait(ctx, nil)
	if err != nil || res.Status != schema.StatusOK {
		t.Fatalf("chat: %v %+v", err, res)
	}
	s = until("the chat counted", func(s scrape) bool {
		return is(s, "kiln_jobs_total", okChats, 1) && is(s, "kiln_queue_waiting_jobs", normal, 0) &&
			is(s, "kiln_queue_oldest_job_age_seconds", normal, 0)
	})
	for _, name := range []string{"kiln_job_queue_wait_seconds", "kiln_job_duration_seconds", "kiln_job_time_to_first_token_seconds"} {
		if v, _ := s.value(name, chat); v != 1 {
			t.Errorf("%s{chat} count = %g, want 1", name, v)
		}
	}
	if v, _ := s.value("kiln_generated_tokens_total", map[string]string{"model": simfleet.ChatModel}); v != float64(res.Usage.CompletionTokens) || v == 0 {
		t.Errorf("kiln_generated_tokens_total = %g, the result says %d", v, res.Usage.CompletionTokens)
	}
	if wait := s["kiln_job_queue_wait_seconds"].GetMetric()[0].GetHistogram().GetSampleSum(); wait < 0.5 {
		t.Errorf("queue wait sum %gs, but the job waited out a thermal pause", wait)
	}

	// A device fault: the job is handed back, the card reset, the job run
	// again; the fault is counted.
	f.Control.SetFaults(t, "fail_execute=1")
	if res, err := cl.Chat(ctx, &schema.ChatJob{JobHeader: schema.JobHeader{Model: simfleet.ChatModel}, MaxTokens: 4,
		Messages: []schema.Message{{Role: "user", Content: "again"}}}, nil); err != nil || res.Status != schema.StatusOK {
		t.Fatalf("chat after a device fault: %v %+v", err, res)
	}
	until("the device fault counted", func(s scrape) bool {
		return is(s, "kiln_worker_device_faults_total", worker, 1) && is(s, "kiln_jobs_total", okChats, 2)
	})

	// An image, and a refused job: each outcome by its kind and code.
	img, err := cl.Image(ctx, &schema.ImageJob{JobHeader: schema.JobHeader{Model: simfleet.ImageModel}, Prompt: "a kiln", Steps: 1}, nil)
	if err != nil || img.Status != schema.StatusOK {
		t.Fatalf("image: %v %+v", err, img)
	}
	bad, _ := cl.Image(ctx, &schema.ImageJob{JobHeader: schema.JobHeader{Model: simfleet.ImageModel}, Prompt: "a kiln", Steps: 3}, nil)
	if bad == nil || bad.Error == nil {
		t.Fatalf("3 steps: %+v", bad)
	}
	until("the image and the refusal counted", func(s scrape) bool {
		return is(s, "kiln_jobs_total", map[string]string{"kind": "image", "model": simfleet.ImageModel, "outcome": "ok"}, 1) &&
			is(s, "kiln_jobs_total", map[string]string{"kind": "image", "model": simfleet.ImageModel, "outcome": "error"}, 1) &&
			is(s, "kiln_job_errors_total", map[string]string{"kind": "image", "code": string(bad.Error.Code)}, 1) &&
			is(s, "kiln_worker_jobs_total", map[string]string{"worker": simfleet.WorkerName, "outcome": "ok"}, 3) &&
			is(s, "kiln_worker_jobs_total", map[string]string{"worker": simfleet.WorkerName, "outcome": "refused"}, 1)
	})
}
