package gateway

import (
	"net/http"
	"slices"
	"time"

	"github.com/kiln-project/kiln/schema"
)

// modelEntry is one model of GET /v1/models, with kiln's extension fields.
type modelEntry struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"` // when the longest-running worker serving it started
	OwnedBy string `json:"owned_by"`
	// Kind is "chat" or "image": which endpoint takes the model.
	Kind string `json:"kind"`
	// Cards is how many cards serve the model now; Workers names them.
	Cards   int      `json:"cards"`
	Workers []string `json:"workers"`
}

// fleetModels lists the models the live workers serve now, by name.
func fleetModels(hbs []schema.Heartbeat) []modelEntry {
	byName := map[string]*modelEntry{}
	for _, hb := range hbs {
		if !hb.TakesJobs() {
			continue
		}
		started := hb.Time.Add(-time.Duration(hb.UptimeS) * time.Second).Unix()
		for _, m := range hb.Models {
			if !m.Serving() {
				continue
			}
			key := m.Kind + "/" + m.Name
			e := byName[key]
			if e == nil {
				e = &modelEntry{ID: m.Name, Object: "model", Created: started, OwnedBy: "kiln", Kind: m.Kind}
				byName[key] = e
			}
			e.Created = min(e.Created, started)
			if !slices.Contains(e.Workers, hb.Worker) {
				e.Workers = append(e.Workers, hb.Worker)
				e.Cards++
			}
		}
	}
	out := make([]modelEntry, 0, len(byName))
	for _, e := range byName {
		slices.Sort(e.Workers)
		out = append(out, *e)
	}
	slices.SortFunc(out, func(a, b modelEntry) int {
		if a.ID != b.ID {
			if a.ID < b.ID {
				return -1
			}
			return 1
		}
		if a.Kind < b.Kind {
			return -1
		}
		return 1
	})
	return out
}

// live is the fleet's heartbeats now: the registry's mirror.
func (s *Server) live(r *http.Request) ([]schema.Heartbeat, *apiError) {
	reg, err := s.workers(r.Context())
	if err != nil {
		return nil, &apiError{Status: http.StatusBadGateway, Type: typeServer, Code: "queue_unavailable",
			Message: "cannot read the worker registry: " + err.Error()}
	}
	return reg.Live(), nil
}

// models serves GET /v1/models.
func (s *Server) models(w http.ResponseWriter, r *http.Request, _ *caller) {
	hbs, err := s.live(r)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": fleetModels(hbs)})
}

// model serves GET /v1/models/{model}.
func (s *Server) model(w http.ResponseWriter, r *http.Request, _ *caller) {
	hbs, err := s.live(r)
	if err != nil {
		writeError(w, err)
		return
	}
	name := r.PathValue("model")
	for _, m := range fleetModels(hbs) {
		if m.ID == name {
			writeJSON(w, http.StatusOK, m)
			return
		}
	}
	writeError(w, &apiError{Status: http.StatusNotFound, Type: typeInvalidRequest, Param: "model", Code: "model_not_found",
		Message: "the fleet serves no model " + clip(name) + " now"})
}
