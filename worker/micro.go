package worker

import (
	"fmt"
	"regexp"

	"github.com/nats-io/nats.go/micro"

	"github.com/kiln-project/kiln/schema"
)

// MicroName is the name workers register under with the NATS
// micro-service framework: `nats micro ls` lists every worker,
// `nats micro info kiln-worker` / `stats kiln-worker` describe them.
const MicroName = "kiln-worker"

var semver = regexp.MustCompile(`^v?(\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?)$`)

// startMicro registers the worker as a micro service with one endpoint,
// "status", on <prefix>.status.<worker>: a request gets the worker's
// heartbeat as JSON.
func (w *Worker) startMicro() error {
	version := "0.0.0"
	if m := semver.FindStringSubmatch(w.cfg.Version); m != nil {
		version = m[1]
	}
	meta := map[string]string{"worker": w.cfg.Name, "card": fmt.Sprint(w.cfg.Card)}
	if w.cfg.Version != "" {
		meta["kiln_version"] = w.cfg.Version
	}
	svc, err := micro.AddService(w.nc, micro.Config{
		Name:        MicroName,
		Version:     version,
		Description: "kiln worker " + w.cfg.Name + ": chat and image jobs on one NPU card",
		Metadata:    meta,
		StatsHandler: func(*micro.Endpoint) any {
			return map[string]any{"worker": w.cfg.Name, "jobs_ok": w.jobsOK.Load(), "jobs_failed": w.jobsFailed.Load(), "jobs_refused": w.jobsRefused.Load()}
		},
	})
	if err != nil {
		return fmt.Errorf("worker: register micro service: %w", err)
	}
	err = svc.AddEndpoint("status", micro.HandlerFunc(func(r micro.Request) {
		hb := w.Status()
		data, err := schema.JSON.Marshal(&hb)
		if err != nil {
			_ = r.Error("500", err.Error(), nil)
			return
		}
		_ = r.Respond(data, micro.WithHeaders(micro.Headers{schema.HeaderContentType: {schema.ContentJSON}}))
	}), micro.WithEndpointSubject(w.statusSubject()), micro.WithEndpointQueueGroupDisabled(),
		micro.WithEndpointMetadata(map[string]string{"description": "the worker's heartbeat (JSON)"}))
	if err != nil {
		_ = svc.Stop()
		return fmt.Errorf("worker: micro status endpoint: %w", err)
	}
	w.svc = svc
	return nil
}

// statusSubject is <prefix>.status.<worker>.
func (w *Worker) statusSubject() string { return w.subj.Status(w.cfg.Name) }
