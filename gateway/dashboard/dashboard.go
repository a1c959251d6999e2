// Package dashboard owns the gateway's live fleet dashboard at `/`: one
// page embedded in the binary (no CDN, no font or script from elsewhere:
// it works offline), kept up to date over server-sent events from a
// watch.Watcher — every card with its state, temperatures and their recent
// history, CMM, models and running job; queue depth per lane; recent jobs
// with their text or image — with cancel buttons and a small playground
// that streams a chat answer and shows an image with a step bar through
// the gateway's own OpenAI endpoints (the page is served beside them).
//
// The dashboard acts as one kiln identity: the client it is given (the
// gateway's). Its cancel buttons cancel that client's jobs, or any
// client's when Config.CancelAny says the identity may (an open broker, an
// admin). docs/dashboard.md says more.
package dashboard

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/gateway/watch"
	"github.com/kiln-project/kiln/schema"
)

//go:embed static
var static embed.FS

// Config configures the dashboard.
type Config struct {
	// Watcher is the fleet the page shows.
	Watcher *watch.Watcher
	// Client is the identity the dashboard acts as: its cancels are this
	// client's. (The playground calls the gateway's /v1/ endpoints, which
	// run as the gateway's client.)
	Client *client.Client
	// CancelAny lets the cancel buttons cancel any client's job, not only
	// Client's own: for an identity the broker lets cancel any job (an
	// open broker, an admin). An anonymous Client (no client id) may
	// cancel anonymous jobs only unless CancelAny is set.
	CancelAny bool
	// ReadOnly hides the cancel buttons and the playground, and refuses
	// cancels: for a gateway with API keys, whose /v1/ endpoints the
	// playground could not call without one and whose dashboard endpoints
	// take none.
	ReadOnly bool
	// Title heads the page (default "kiln").
	Title string
	// MinInterval is the shortest time between two updates sent to a page
	// (default 250 ms): changes in between are sent together.
	MinInterval time.Duration
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// Dashboard is the page and its endpoints, an http.Handler for `/`.
type Dashboard struct {
	cfg Config
	log *slog.Logger
	mux *http.ServeMux
}

// The paths the dashboard serves besides `/`.
const (
	PathEvents     = "/dashboard/events"
	PathCancel     = "/dashboard/cancel"
	pathJobImage   = "/dashboard/jobs/{id}/image"
	pathAssets     = "/dashboard/assets/"
	maxRequestBody = 64 << 10
)

// New makes the dashboard.
func New(cfg Config) (*Dashboard, error) {
	if cfg.Watcher == nil || cfg.Client == nil {
		return nil, errors.New("dashboard: Config needs a Watcher and a Client")
	}
	if cfg.Title == "" {
		cfg.Title = "kiln"
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = 250 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	d := &Dashboard{cfg: cfg, log: cfg.Logger.With("component", "dashboard"), mux: http.NewServeMux()}
	assets, err := fs.Sub(static, "static")
	if err != nil {
		return nil, err
	}
	d.mux.HandleFunc("GET /{$}", d.page)
	d.mux.Handle("GET "+pathAssets, http.StripPrefix(pathAssets, http.FileServerFS(assets)))
	d.mux.HandleFunc("GET "+PathEvents, d.events)
	d.mux.HandleFunc("GET "+pathJobImage, d.jobImage)
	d.mux.HandleFunc("POST "+PathCancel, d.cancel)
	return d, nil
}

// ServeHTTP serves the page, its assets and endpoints.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// Nothing the page loads may come from elsewhere: it must work offline.
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	d.mux.ServeHTTP(w, r)
}

func (d *Dashboard) page(w http.ResponseWriter, r *http.Request) {
	b, err := static.ReadFile("static/index.html")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(b)
}

// Identity is who the dashboard acts as, as the page is told.
type Identity struct {
	// Client is the client id ("" for anonymous).
	Client    string `json:"client"`
	CancelAny bool   `json:"cancel_any"`
	ReadOnly  bool   `json:"read_only"`
}

// view is one update of the page.
type view struct {
	watch.Snapshot
	Title    string   `json:"title"`
	Identity Identity `json:"identity"`
}

func (d *Dashboard) identity() Identity {
	return Identity{Client: d.cfg.Client.ID(), CancelAny: d.cfg.CancelAny, ReadOnly: d.cfg.ReadOnly}
}

// mayCancel is the rule the page shows and the cancel endpoint applies.
func (d *Dashboard) mayCancel(jobClient string) bool {
	return !d.cfg.ReadOnly && (d.cfg.CancelAny || jobClient == d.cfg.Client.ID())
}

// events streams the fleet to a page: one `fleet` event now and one after
// each change, at most every MinInterval.
func (d *Dashboard) events(w http.ResponseWriter, r *http.Request) {
	sse, ok := startSSE(w)
	if !ok {
		return
	}
	changes, stop := d.cfg.Watcher.Changes()
	defer stop()
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		if err := sse.send("fleet", view{Snapshot: d.cfg.Watcher.Snapshot(), Title: d.cfg.Title, Identity: d.identity()}); err != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(d.cfg.MinInterval):
		}
		for changed := false; !changed; {
			select {
			case <-r.Context().Done():
				return
			case <-changes:
				changed = true
			case <-keepalive.C:
				if sse.comment("keepalive") != nil {
					return
				}
			}
		}
	}
}

func (d *Dashboard) jobImage(w http.ResponseWriter, r *http.Request) {
	img, mime, ok := d.cfg.Watcher.Image(r.URL.Query().Get("client"), r.PathValue("id"))
	if !ok {
		http.Error(w, "no image for this job (not a recent image job)", http.StatusNotFound)
		return
	}
	if mime == "" {
		mime = "image/png"
	}
	w.Header().Set("Content-Type", mime)
	w.Header().Set("Cache-Control", "private, max-age=3600")
	_, _ = w.Write(img)
}

// cancelRequest is the body of POST /dashboard/cancel.
type cancelRequest struct {
	ID     string `json:"id"`
	Client string `json:"client"`
}

func (d *Dashboard) cancel(w http.ResponseWriter, r *http.Request) {
	var req cancelRequest
	if !d.readJSON(w, r, &req) {
		return
	}
	if param, msg := req.check(); param != "" {
		httpError(w, http.StatusBadRequest, param, msg)
		return
	}
	if !d.mayCancel(req.Client) {
		httpError(w, http.StatusForbidden, "client", fmt.Sprintf("the dashboard acts as client %q and may cancel its own jobs only", d.cfg.Client.ID()))
		return
	}
	if err := d.cfg.Client.CancelFor(r.Context(), req.Client, req.ID); err != nil {
		d.log.Warn("cancel refused", "job", req.ID, "client", req.Client, "err", err)
		httpError(w, http.StatusBadGateway, "", err.Error())
		return
	}
	d.log.Info("job cancelled from the dashboard", "job", req.ID, "client", req.Client, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, map[string]any{"id": req.ID, "cancelled": true})
}

// check names the field of req that is wrong and why ("" when none is).
func (req cancelRequest) check() (param, msg string) {
	if !schema.ValidToken(req.ID) {
		return "id", "id must be a job id (letters, digits, '-' and '_', at most 128 bytes)"
	}
	if req.Client != "" && !schema.ValidToken(req.Client) {
		return "client", "client must be a client id (letters, digits, '-' and '_', at most 128 bytes), or empty for an anonymous job"
	}
	return "", ""
}

// readJSON decodes a small JSON body strictly into v, after checking that
// the request is the page's own (JSON from this origin: a form on another
// site cannot send it). It answers the error itself.
func (d *Dashboard) readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if d.cfg.ReadOnly {
		httpError(w, http.StatusForbidden, "", "the dashboard is read-only")
		return false
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		httpError(w, http.StatusUnsupportedMediaType, "", "want Content-Type application/json")
		return false
	}
	if o := r.Header.Get("Origin"); o != "" {
		if u, err := url.Parse(o); err != nil || u.Host != r.Host {
			httpError(w, http.StatusForbidden, "", "cross-origin request refused")
			return false
		}
	}
	if err := decodeBody(r.Body, v); err != nil {
		httpError(w, http.StatusBadRequest, "", err.Error())
		return false
	}
	return true
}

// decodeBody decodes one JSON value of at most maxRequestBody bytes into v,
// refusing fields v does not have and anything after the value.
func decodeBody(body io.Reader, v any) error {
	b, err := io.ReadAll(io.LimitReader(body, maxRequestBody+1))
	if err != nil {
		return fmt.Errorf("reading the body: %w", err)
	}
	if len(b) > maxRequestBody {
		return fmt.Errorf("body over %d bytes", maxRequestBody)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad JSON body: %w", err)
	}
	if dec.More() {
		return errors.New("bad JSON body: data after the JSON value")
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// httpError answers with an error in the gateway's (OpenAI's) shape.
func httpError(w http.ResponseWriter, status int, param, msg string) {
	e := map[string]any{"message": msg, "type": "invalid_request_error"}
	if param != "" {
		e["param"] = param
	}
	writeJSON(w, status, map[string]any{"error": e})
}
