// Package gateway owns kiln's HTTP front door: an OpenAI-compatible API
// (POST /v1/chat/completions with SSE streaming, POST /v1/images/generations
// and /v1/images/edits, GET /v1/models, and the PNGs of image results) over
// the job queue, and the one HTTP server that other parts of kiln mount
// their handlers on (Config.Routes: the dashboard, /metrics).
//
// The gateway is a NATS client of the queue like any controller: it submits
// jobs with the kiln client library, under the client identity that the
// request's API key maps to (Config.Keys), so replies, stored results and
// cancels stay per client exactly as on NATS. It can run beside the broker
// (`kiln up`) or on any Pi (`kiln gateway`), and several gateways can serve
// one fleet. docs/gateway.md lists the fields it takes and refuses.
package gateway

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
)

// DefaultAddr is the address the gateway listens on when none is given:
// this host only, like the broker's default; ":8080" serves the network.
const DefaultAddr = "127.0.0.1:8080"

// DefaultRetryAfter is what a 429 (the queue refused the job) tells the
// client to wait, unless Config.RetryAfter says otherwise.
const DefaultRetryAfter = 2 * time.Second

// DefaultShutdownGrace is how long Run lets requests in progress finish
// after its context ends before it cancels them (and their jobs).
const DefaultShutdownGrace = 10 * time.Second

// Key is one API key and the client identity its requests run as.
type Key struct {
	// Secret is what the client sends as "Authorization: Bearer <Secret>".
	Secret string
	// Client is the kiln client id the key's jobs are submitted under
	// (client.WithClientID); "" submits them anonymously.
	Client string
}

// Config configures a Server.
type Config struct {
	// Conn is the gateway's own connection to the broker: its credentials
	// (a gateway identity of `kiln broker init-auth`) must let it publish
	// jobs and read results for every client of Keys. Required.
	Conn *nats.Conn
	// Topology gives the subject prefix and the stream and bucket names.
	Topology topology.Config
	// Addr is host:port for Run (default DefaultAddr).
	Addr string
	// Keys are the API keys. With none the gateway is open: every request
	// runs as ClientID, and Run logs that it is open.
	Keys []Key
	// ClientID is the identity of requests to an open gateway ("":
	// anonymous jobs).
	ClientID string
	// Routes are more handlers on the same server, by http.ServeMux
	// pattern ("GET /metrics", "/"). They are mounted as they are: the
	// API keys guard only the gateway's own /v1/ endpoints.
	Routes map[string]http.Handler
	// PublicURL is the base of the image URLs the gateway hands out
	// (response_format "url"), e.g. "https://kiln.local:8080"; empty: the
	// scheme and Host of each request.
	PublicURL string
	// RetryAfter is the Retry-After of a 429 (default DefaultRetryAfter).
	RetryAfter time.Duration
	// ShutdownGrace is how long Run lets requests finish once its context
	// ends (default DefaultShutdownGrace).
	ShutdownGrace time.Duration
	// Logger logs requests that failed for kiln's reasons and the
	// server's life (default slog.Default()).
	Logger *slog.Logger
}

// Server is the HTTP front door. Handler serves it; Run listens on
// Config.Addr.
type Server struct {
	cfg     Config
	log     *slog.Logger
	js      jetstream.JetStream
	handler http.Handler

	// clients holds one kiln client per identity, by client id.
	clients map[string]*client.Client
	// keys maps the SHA-256 of each secret to its client id, so that a
	// lookup compares digests, not secrets.
	keys map[[sha256.Size]byte]string

	mu       sync.Mutex
	registry *topology.Registry
}

// New checks cfg and makes the server's kiln clients.
func New(cfg Config) (*Server, error) {
	if cfg.Conn == nil {
		return nil, errors.New("gateway: Config.Conn is nil: the gateway needs a broker connection")
	}
	if cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = DefaultRetryAfter
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = DefaultShutdownGrace
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Topology = cfg.Topology.WithDefaults()
	cfg.PublicURL = strings.TrimRight(cfg.PublicURL, "/")
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "gateway"), js: js,
		clients: map[string]*client.Client{}, keys: map[[sha256.Size]byte]string{}}
	ids := []string{cfg.ClientID}
	if len(cfg.Keys) > 0 {
		ids = ids[:0]
		for i, k := range cfg.Keys {
			if k.Secret == "" {
				return nil, fmt.Errorf("gateway: key %d is empty", i+1)
			}
			sum := sha256.Sum256([]byte(k.Secret))
			if _, dup := s.keys[sum]; dup {
				return nil, fmt.Errorf("gateway: key %d is given twice", i+1)
			}
			s.keys[sum] = k.Client
			ids = append(ids, k.Client)
		}
	}
	for _, id := range ids {
		if _, ok := s.clients[id]; ok {
			continue
		}
		opts := []client.Option{client.WithPrefix(cfg.Topology.Prefix)}
		if id != "" {
			opts = append(opts, client.WithClientID(id))
		}
		c, err := client.New(cfg.Conn, opts...)
		if err != nil {
			return nil, fmt.Errorf("gateway: client %q: %w", id, err)
		}
		s.clients[id] = c
	}
	s.handler = s.routes()
	return s, nil
}

// Handler is the gateway's whole HTTP API, with Config.Routes mounted
// beside it.
func (s *Server) Handler() http.Handler { return s.handler }

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /v1/chat/completions", s.api(s.chatCompletions))
	mux.Handle("POST /v1/images/generations", s.api(s.imageGenerations))
	mux.Handle("POST /v1/images/edits", s.api(s.imageEdits))
	mux.Handle("GET /v1/images/{file}", s.api(s.imageFile))
	mux.Handle("GET /v1/models", s.api(s.models))
	mux.Handle("GET /v1/models/{model}", s.api(s.model))
	mux.Handle("/v1/", s.api(func(w http.ResponseWriter, r *http.Request, _ *caller) {
		writeError(w, &apiError{Status: http.StatusNotFound, Type: typeInvalidRequest, Code: "unknown_url",
			Message: fmt.Sprintf("kiln's gateway has no %s %s (docs/gateway.md lists its endpoints)", r.Method, r.URL.Path)})
	}))
	patterns := make([]string, 0, len(s.cfg.Routes))
	for p := range s.cfg.Routes {
		patterns = append(patterns, p)
	}
	sort.Strings(patterns)
	for _, p := range patterns {
		mux.Handle(p, s.cfg.Routes[p])
	}
	return mux
}

// caller is who made a request: the kiln client of its API key.
type caller struct {
	id     string // client id ("" anonymous)
	client *client.Client
}

// api wraps a /v1/ handler: it finds the caller's identity from the API key
// and refuses a request without a valid one.
func (s *Server) api(h func(http.ResponseWriter, *http.Request, *caller)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := s.authorize(r)
		if err != nil {
			writeError(w, err)
			return
		}
		h(w, r, c)
	})
}

func (s *Server) authorize(r *http.Request) (*caller, *apiError) {
	if len(s.keys) == 0 {
		return &caller{id: s.cfg.ClientID, client: s.clients[s.cfg.ClientID]}, nil
	}
	secret, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || secret == "" {
		secret = r.Header.Get("Api-Key") // Azure-style clients
	}
	if secret == "" {
		return nil, &apiError{Status: http.StatusUnauthorized, Type: typeInvalidRequest, Code: "missing_api_key",
			Message: "this gateway needs an API key: send Authorization: Bearer <key>"}
	}
	id, ok := s.keys[sha256.Sum256([]byte(strings.TrimSpace(secret)))]
	if !ok {
		return nil, &apiError{Status: http.StatusUnauthorized, Type: typeInvalidRequest, Code: "invalid_api_key",
			Message: "the API key is not one this gateway knows"}
	}
	return &caller{id: id, client: s.clients[id]}, nil
}

// Run serves on Config.Addr until ctx ends, then shuts down gracefully:
// requests in progress get Config.ShutdownGrace to finish, after which
// they (and their jobs) are cancelled.
func (s *Server) Run(ctx context.Context) error {
	l, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	return s.Serve(ctx, l)
}

// Serve is Run on a listener of the caller's; it closes l.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	base, cancelAll := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancelAll(nil)
	hs := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute, // keep-alive connections of clients that went quiet
		BaseContext:       func(net.Listener) context.Context { return base },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	if len(s.keys) == 0 {
		id := s.cfg.ClientID
		if id == "" {
			id = "(anonymous)"
		}
		s.log.Warn("gateway is open: no API keys, every request runs as one client", "client", id)
	}
	s.log.Info("gateway listening", "addr", l.Addr().String(), "keys", len(s.keys))
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(l) }()
	select {
	case err := <-errc:
		s.close()
		return fmt.Errorf("gateway: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownGrace)
	defer cancel()
	err := hs.Shutdown(sctx)
	if err != nil {
		// Streams still running past the grace: cancel them and their jobs.
		cancelAll(errShutdown)
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = hs.Shutdown(cctx)
		if err != nil {
			_ = hs.Close()
		}
	}
	<-errc
	s.close()
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("gateway: shutdown: %w", err)
	}
	return nil
}

func (s *Server) close() {
	for _, c := range s.clients {
		c.Close()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.registry != nil {
		s.registry.Stop()
		s.registry = nil
	}
}

// workers mirrors the worker registry, starting the watch on first use.
func (s *Server) workers(ctx context.Context) (*topology.Registry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.registry != nil {
		return s.registry, nil
	}
	r, err := topology.WatchRegistry(ctx, s.js, s.cfg.Topology)
	if err != nil {
		return nil, err
	}
	s.registry = r
	return r, nil
}

// limitBody bounds a request body before anything reads it.
func limitBody(w http.ResponseWriter, r *http.Request, n int64) io.Reader {
	return http.MaxBytesReader(w, r.Body, n)
}
