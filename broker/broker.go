// Package broker owns kiln's embedded NATS server: a single-node nats-server
// with JetStream, started in-process by `kiln up` and `kiln broker`, with
// the JetStream topology of package topology provisioned on start. It is
// the only kiln package that imports nats-server.
//
// The embedded broker syncs every write to disk before it acknowledges it
// (sync_interval: always): installations lose power, and an acknowledged job
// must survive that.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/kiln-project/kiln/broker/auth"
	"github.com/kiln-project/kiln/broker/topology"
)

// DefaultListen is the address the broker listens on when none is given.
const DefaultListen = "127.0.0.1:4222"

// ErrNotStarted is returned by calls that need a running broker.
var ErrNotStarted = errors.New("broker: not started")

// Config configures the embedded broker.
type Config struct {
	// Listen is host:port for clients (default DefaultListen; port 0 picks
	// a free one). Ignored when DontListen is set. When ConfigFile is set
	// and Listen is empty, the file's address is used.
	Listen string
	// DontListen serves only in-process connections (no TCP).
	DontListen bool
	// WebSocket, when set, is host:port of a NATS WebSocket listener (port
	// 0 picks a free one), for browsers on the queue (nats.ws, nats.js):
	// the same accounts, users and permissions as Listen. Plain ws:// unless
	// the config file's websocket block sets TLS; a config file's websocket
	// block is used as it is when WebSocket is empty. Off by default.
	WebSocket string
	// StoreDir is the JetStream store folder. Required unless ConfigFile
	// sets store_dir.
	StoreDir string
	// ConfigFile is an optional standard nats-server configuration file
	// (accounts, TLS, cluster routes, leaf nodes...). kiln forces
	// JetStream on; values given here override the file's.
	ConfigFile string
	// Leaf runs the server as a leaf node of a central broker (the config
	// file's leafnodes remotes): JetStream stays off here, so JetStream
	// requests travel to the hub that holds the queue, and nothing is
	// provisioned. StoreDir is not needed.
	Leaf bool
	// ServerName names the server (default: nats-server picks one).
	ServerName string
	// MaxPayload bounds one message (default 8 MiB).
	MaxPayload int32
	// NoSync turns off the sync to disk before every acknowledgement. Only
	// for benchmarks: with it, a power cut loses acknowledged jobs.
	NoSync bool
	// Account is the account that holds kiln's streams when the config
	// file defines accounts (default "KILN" when the file has it).
	Account string
	// Topology is provisioned on start. With Topology.Replicas 0 a
	// clustered broker uses min(3, number of routes): cluster configs list
	// every node in routes, itself included (see deploy/); a single server uses 1.
	Topology topology.Config
	// ReadyTimeout bounds the wait for the server to accept connections
	// (default 10 s).
	ReadyTimeout time.Duration
	// Logger receives the server's log (default slog.Default()). Debug and
	// trace lines are dropped unless the logger enables debug.
	Logger *slog.Logger
}

// Broker is a running embedded nats-server.
type Broker struct {
	cfg Config
	srv *server.Server
	log *slog.Logger

	// lock is held on the store folder while the server runs.
	lock *storeLock

	// internal is the broker's own in-process user (an nkey made at
	// start) when the config file turns authorization on; nil otherwise.
	internal nkeys.KeyPair
}

// New validates cfg and prepares a broker; Start runs it.
func New(cfg Config) (*Broker, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxPayload <= 0 {
		cfg.MaxPayload = 8 << 20
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	if cfg.StoreDir == "" && cfg.ConfigFile == "" && !cfg.Leaf {
		return nil, errors.New("broker: StoreDir is required (KILN_DATA or --data)")
	}
	return &Broker{cfg: cfg, log: cfg.Logger.With("component", "broker")}, nil
}

func (b *Broker) options() (*server.Options, error) {
	opts := &server.Options{}
	if b.cfg.ConfigFile != "" {
		o, err := server.ProcessConfigFile(b.cfg.ConfigFile)
		if err != nil {
			return nil, fmt.Errorf("broker: config file %s: %w", b.cfg.ConfigFile, err)
		}
		opts = o
	}
	opts.JetStream = !b.cfg.Leaf
	opts.NoSigs = true
	if err := b.addInternalUser(opts); err != nil {
		return nil, err
	}
	if b.cfg.StoreDir != "" {
		opts.StoreDir = b.cfg.StoreDir
	}
	if b.cfg.ServerName != "" {
		opts.ServerName = b.cfg.ServerName
	}
	if b.cfg.ConfigFile == "" || b.cfg.MaxPayload != 8<<20 || opts.MaxPayload == 0 {
		opts.MaxPayload = b.cfg.MaxPayload
	}
	if opts.SyncInterval == 0 {
		opts.SyncAlways = !b.cfg.NoSync
	}
	if b.cfg.DontListen {
		opts.DontListen = true
	} else if b.cfg.Listen != "" || b.cfg.ConfigFile == "" {
		listen := b.cfg.Listen
		if listen == "" {
			listen = DefaultListen
		}
		host, p, err := hostPort("listen", listen)
		if err != nil {
			return nil, err
		}
		opts.Host, opts.Port = host, p
	}
	if b.cfg.WebSocket != "" {
		host, p, err := hostPort("websocket", b.cfg.WebSocket)
		if err != nil {
			return nil, err
		}
		opts.Websocket.Host, opts.Websocket.Port = host, p
		opts.Websocket.NoTLS = opts.Websocket.TLSConfig == nil
	}
	return opts, nil
}

// hostPort splits a listen address; port 0 becomes the server's "pick a
// free port".
func hostPort(what, addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("broker: %s address %q: %w", what, addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return "", 0, fmt.Errorf("broker: %s address %q: port must be 0..65535", what, addr)
	}
	if p == 0 {
		p = server.RANDOM_PORT
	}
	return host, p, nil
}

// Start runs the server, waits until it accepts connections and provisions
// the topology. On error the server is shut down.
func (b *Broker) Start(ctx context.Context) error {
	opts, err := b.options()
	if err != nil {
		return err
	}
	if opts.JetStream && opts.StoreDir != "" {
		if b.lock, err = lockStore(opts.StoreDir); err != nil {
			return err
		}
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		b.lock.Release()
		return fmt.Errorf("broker: %w", err)
	}
	srv.SetLoggerV2(&slogLogger{log: b.log}, b.log.Enabled(ctx, slog.LevelDebug), false, false)
	go srv.Start()
	if !srv.ReadyForConnections(b.cfg.ReadyTimeout) {
		srv.Shutdown()
		b.lock.Release()
		return fmt.Errorf("broker: not ready for connections after %s (is %s:%d free?)", b.cfg.ReadyTimeout, opts.Host, opts.Port)
	}
	b.srv = srv
	if b.cfg.Leaf {
		b.log.Info("broker ready", "url", b.ClientURL(), "leaf", true, "auth", b.internal != nil)
		return nil
	}
	topo := b.cfg.Topology
	if topo.Replicas == 0 {
		topo.Replicas = 1
		if srv.JetStreamIsClustered() {
			topo.Replicas = min(3, max(len(opts.Routes), 1))
		}
	}
	nc, err := b.Connect()
	if err != nil {
		b.Shutdown(ctx)
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Shutdown(ctx)
		return fmt.Errorf("broker: %w", err)
	}
	if err := topology.Provision(ctx, js, topo); err != nil {
		b.Shutdown(ctx)
		return fmt.Errorf("broker: %w", err)
	}
	if ws := b.WebSocketURL(); ws != "" {
		b.log.Info("NATS websocket listener open", "url", ws, "tls", opts.Websocket.TLSConfig != nil, "auth", b.internal != nil)
	}
	b.log.Info("broker ready", "url", b.ClientURL(), "store", opts.StoreDir, "sync_always", opts.SyncAlways,
		"replicas", topo.Replicas, "clustered", srv.JetStreamIsClustered(), "auth", b.internal != nil)
	return nil
}

// ClientURL is the URL clients connect to ("" when DontListen is set).
func (b *Broker) ClientURL() string {
	if b.srv == nil || b.cfg.DontListen {
		return ""
	}
	return b.srv.ClientURL()
}

// WebSocketURL is the URL browsers connect to over NATS WebSocket
// (ws://host:port, wss:// with TLS), or "" when no websocket listener is open.
func (b *Broker) WebSocketURL() string {
	if b.srv == nil {
		return ""
	}
	ports := b.srv.PortsInfo(time.Second)
	if ports == nil || len(ports.WebSocket) == 0 {
		return ""
	}
	return ports.WebSocket[0]
}

// Server is the embedded server, for tests and diagnostics.
func (b *Broker) Server() *server.Server { return b.srv }

// Connect opens an in-process connection (no socket) to the broker. When
// the config file turns authorization on, it connects as the broker's own
// user: full rights in the kiln account, in-process connections only, an
// nkey made at start and never written down.
func (b *Broker) Connect(opts ...nats.Option) (*nats.Conn, error) {
	if b.srv == nil {
		return nil, ErrNotStarted
	}
	opts = append([]nats.Option{nats.InProcessServer(b.srv), nats.Name("kiln-inprocess")}, opts...)
	if kp := b.internal; kp != nil {
		pub, _ := kp.PublicKey()
		opts = append(opts, nats.Nkey(pub, kp.Sign))
	}
	nc, err := nats.Connect("", opts...)
	if err != nil {
		return nil, fmt.Errorf("broker: in-process connection: %w", err)
	}
	return nc, nil
}

// Shutdown stops the server and waits for it to finish, or for ctx.
// Calling it again, or before Start, is a no-op.
func (b *Broker) Shutdown(ctx context.Context) error {
	srv := b.srv
	if srv == nil {
		return nil
	}
	done := make(chan struct{})
	go func() {
		srv.Shutdown()
		srv.WaitForShutdown()
		close(done)
	}()
	select {
	case <-done:
		b.lock.Release()
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// addInternalUser gives the broker a user of its own for its in-process
// connections (provisioning, `kiln up`'s worker) when opts has users: with
// authorization on, an in-process connection must authenticate too
// (auth.InProcessUser).
func (b *Broker) addInternalUser(opts *server.Options) error {
	if len(opts.Users) == 0 && len(opts.Nkeys) == 0 {
		return nil
	}
	var acc *server.Account
	want := b.cfg.Account
	for _, a := range opts.Accounts {
		if a.Name == want || (want == "" && a.Name == DefaultAccount) {
			acc = a
		}
	}
	if acc == nil && want != "" {
		return fmt.Errorf("broker: account %q is not in the config file", want)
	}
	u, kp, err := auth.InProcessUser(acc)
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	b.internal = kp
	opts.Nkeys = append(opts.Nkeys, u)
	return nil
}

// DefaultAccount is the account name `kiln broker init-auth` writes.
const DefaultAccount = auth.DefaultAccount

// slogLogger adapts slog to nats-server's Logger. The server's notices (its
// start banner) go to debug: kiln logs what matters itself.
type slogLogger struct{ log *slog.Logger }

func (l *slogLogger) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *slogLogger) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l *slogLogger) Fatalf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *slogLogger) Errorf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *slogLogger) Debugf(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *slogLogger) Tracef(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
