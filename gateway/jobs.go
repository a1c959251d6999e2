package gateway

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
)

// Headers of kiln's own that a request may carry and every answer does.
const (
	// HeaderJobID is on every answer of a job endpoint: the id of the
	// job (comma-separated ids when an image request made several).
	HeaderJobID = "X-Kiln-Job-Id"
	// HeaderLane picks the lane: "high" or "normal" (the default).
	HeaderLane = "X-Kiln-Lane"
	// HeaderDeadline is how long the job is worth running, as a Go
	// duration ("30s", "2m") or an RFC 3339 time: past it the job ends
	// and the answer is 504.
	HeaderDeadline = "X-Kiln-Deadline"
)

// deadlineMargin is how long after a job's deadline the gateway still
// waits for the worker's own "expired" answer before it cancels the job.
const deadlineMargin = 2 * time.Second

// jobHeader fills the lane and deadline of h from the request's headers.
func jobHeader(r *http.Request, h *schema.JobHeader) *apiError {
	switch lane := strings.ToLower(strings.TrimSpace(r.Header.Get(HeaderLane))); lane {
	case "":
	case schema.LaneHigh, schema.LaneNormal:
		h.Lane = lane
	default:
		return invalid(schema.CodeBadValue, HeaderLane, "%q is not a lane: use high or normal", clip(lane))
	}
	v := strings.TrimSpace(r.Header.Get(HeaderDeadline))
	if v == "" {
		return nil
	}
	var at time.Time
	if d, err := time.ParseDuration(v); err == nil {
		if d <= 0 {
			return invalid(schema.CodeOutOfRange, HeaderDeadline, "%s is not in the future", v)
		}
		at = time.Now().Add(d)
	} else if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		at = t
	} else {
		return invalid(schema.CodeBadValue, HeaderDeadline, "%q is neither a duration (30s) nor an RFC 3339 time", clip(v))
	}
	at = at.UTC()
	h.Deadline = &at
	return nil
}

// jobContext is the context a job's request waits in: the request's
// (a client that goes away cancels the job), ended errDeadline a little
// after the job's deadline.
func jobContext(r *http.Request, h *schema.JobHeader) (context.Context, context.CancelFunc) {
	if h.Deadline == nil {
		return context.WithCancel(r.Context())
	}
	return context.WithDeadlineCause(r.Context(), h.Deadline.Add(deadlineMargin), errDeadline)
}

// checkModel answers 404 for a model no worker of the fleet has (of this
// kind) and 503 for one that workers list but none serves now.
func (s *Server) checkModel(ctx context.Context, kind, model string) *apiError {
	reg, err := s.workers(ctx)
	if err == nil && served(reg.Live(), kind, model) {
		return nil
	}
	hbs, err := topology.ReadRegistry(ctx, s.js, s.cfg.Topology)
	if err != nil {
		return nil // the client's own check decides
	}
	if served(hbs, kind, model) {
		return nil
	}
	listed, otherKind := false, ""
	for _, hb := range hbs {
		for _, m := range hb.Models {
			switch {
			case m.Name == model && m.Kind == kind:
				listed = true
			case m.Name == model:
				otherKind = m.Kind
			}
		}
	}
	switch {
	case listed:
		return &apiError{Status: http.StatusServiceUnavailable, Type: typeServer, Param: "model", Code: string(schema.CodeNoWorker),
			Message: "no worker serves " + kind + " model " + model + " now (its package failed to load, or its workers are unhealthy or stopping); kiln status shows the fleet"}
	case otherKind != "":
		return &apiError{Status: http.StatusNotFound, Type: typeInvalidRequest, Param: "model", Code: "model_not_found",
			Message: "model " + model + " is a " + otherKind + " model, not a " + kind + " model"}
	}
	return &apiError{Status: http.StatusNotFound, Type: typeInvalidRequest, Param: "model", Code: "model_not_found",
		Message: "the fleet serves no " + kind + " model " + clip(model) + " (GET /v1/models lists what it serves)"}
}

// served reports whether one of hbs takes jobs and serves model as kind.
func served(hbs []schema.Heartbeat, kind, model string) bool {
	for _, hb := range hbs {
		if hb.TakesJobs() && hb.Serves(kind, model) {
			return true
		}
	}
	return false
}
