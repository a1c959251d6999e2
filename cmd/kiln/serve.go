package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/kiln-project/kiln/broker"
	"github.com/kiln-project/kiln/broker/janitor"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/gateway"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/card"
)

// workerFlags are the flags of the commands that run a worker.
type workerFlags struct {
	card   int
	name   string
	models string
	lib    string
	lock   string
	grace  time.Duration
	slots  *int
	temp   thermalFlags
}

func (w *workerFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&w.card, "card", 0, "index of the card on this host, not the PCIe bus id (kiln up without it serves every card)")
	fs.StringVar(&w.name, "name", "", "worker name (default <host>-card<N>)")
	fs.StringVar(&w.models, "models", getenv(envModels, defaultModels), "folder of model packages, one sub-folder per model ($"+envModels+")")
	fs.StringVar(&w.lib, "lib", getenv(envAXCLLib, axcl.DefaultLibraryPath), "path of libaxcl_rt.so ($"+envAXCLLib+")")
	fs.StringVar(&w.lock, "lock-dir", getenv(envLockDir, ""), "folder of the per-card locks ($"+envLockDir+"; unset: /run/kiln when it exists, else $TMPDIR/kiln)")
	fs.DurationVar(&w.grace, "grace", worker.DefaultShutdownGrace, "on stop, how long the running jobs may finish before those still running are handed back")
	w.slots = slotsFlag(fs)
	w.temp.register(fs)
}

// workerConfig opens card index, finds the model packages it serves and
// builds the worker's configuration (name "" = the default
// <host>-card<index>). The caller closes the card.
func (w *workerFlags) workerConfig(ctx context.Context, e *env, topo topology.Config, index int, name string) (worker.Config, *card.Card, error) {
	if err := checkSlots(*w.slots); err != nil {
		return worker.Config{}, nil, err
	}
	c, err := card.Open(ctx, card.Config{Library: w.lib, Index: index, ModelsDir: w.models, Slots: *w.slots, Logger: e.log.With("card", index)})
	if err != nil {
		return worker.Config{}, nil, err
	}
	if c.Present() {
		// Nothing is loaded before the worker starts: a card another worker
		// holds is refused here, before this one touches its models.
		lock, err := card.Lock(w.lock, index, c.ChipID())
		if err != nil {
			closeCard(e, c)
			return worker.Config{}, nil, err
		}
		c.Hold(lock)
	}
	cfg := worker.Config{
		Name:          name,
		Card:          index,
		Version:       version,
		Topology:      topo,
		ShutdownGrace: w.grace,
		MaxJobs:       c.MaxJobs(),
		Chat:          c.ChatHandlers(),
		Image:         c.ImageHandlers(),
		StatusFunc:    c.Status,
		Logger:        e.log,
	}
	if c.Present() {
		cfg.Device = c
	}
	if cfg.Thermal, err = w.temp.config(c, e.log); err != nil {
		closeCard(e, c)
		return cfg, nil, err
	}
	return cfg, c, nil
}

// upCards lists the cards kiln up serves: --card when given, else every
// card the runtime lists (card 0 alone when it lists one or none, or no
// runtime is installed: the worker then serves without a card).
func (w *workerFlags) upCards(ctx context.Context, fs *flag.FlagSet) ([]int, error) {
	if flagGiven(fs, "card") {
		return []int{w.card}, nil
	}
	n, err := card.Count(ctx, w.lib)
	if err != nil {
		return nil, err
	}
	if n <= 1 {
		return []int{w.card}, nil
	}
	if w.name != "" {
		return nil, fmt.Errorf("--name names one worker and this host has %d cards: give --card too, or leave --name out (each worker is <host>-card<N>)", n)
	}
	cards := make([]int, n)
	for i := range cards {
		cards[i] = i
	}
	return cards, nil
}

// flagGiven reports whether the flag name was set on the command line.
func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

func closeCard(e *env, c *card.Card) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Close(ctx); err != nil {
		e.log.Warn("close card", "err", err)
	}
}

func (b *brokerFlags) start(ctx context.Context, e *env, prefix string) (*broker.Broker, error) {
	if b.config == "" {
		if err := os.MkdirAll(b.data, 0o755); err != nil {
			return nil, fmt.Errorf("store folder: %w", err)
		}
	}
	data := b.data
	if abs, err := filepath.Abs(data); err == nil {
		data = abs
	}
	br, err := broker.New(broker.Config{
		Listen:     b.listen,
		WebSocket:  b.websocket,
		StoreDir:   data,
		ConfigFile: b.config,
		Account:    b.account,
		Leaf:       b.leaf,
		Topology:   topology.Config{Prefix: prefix, MaxQueuedJobs: b.queueMax, JobMaxAge: b.jobMaxAge, Replicas: b.replicas},
		Logger:     e.log,
	})
	if err != nil {
		return nil, err
	}
	if err := br.Start(ctx); err != nil {
		return nil, err
	}
	return br, nil
}

func runUp(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "up", "")
	var bf brokerFlags
	var wf workerFlags
	var gf gatewayFlags
	prefix := fs.String("prefix", getenv(envPrefix, schema.DefaultPrefix), "subject prefix ($"+envPrefix+")")
	bf.register(fs)
	wf.register(fs)
	gf.register(fs, true)
	grace := unservedGrace(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	cards, err := wf.upCards(ctx, fs)
	if err != nil {
		return err
	}
	br, err := bf.start(ctx, e, *prefix)
	if err != nil {
		return err
	}
	defer shutdownBroker(e, br)
	var gl net.Listener // the gateway's address, taken before the models load: a busy port fails at once
	if !gf.off() {
		if gl, err = gf.listen(); err != nil {
			return err
		}
		defer gl.Close()
	}
	jan, jnc, err := brokerJanitor(br, e, topology.Config{Prefix: *prefix}, *grace)
	if err != nil {
		return err
	}
	defer jnc.Close()
	workers := make([]*worker.Worker, 0, len(cards))
	for _, index := range cards {
		cfg, c, err := wf.workerConfig(ctx, e, topology.Config{Prefix: *prefix, JobMaxAge: bf.jobMaxAge}, index, wf.name)
		if err != nil {
			return err
		}
		defer closeCard(e, c)
		nc, err := br.Connect(nats.Name("kiln-up-worker"))
		if err != nil {
			return err
		}
		defer nc.Close()
		w, err := worker.New(nc, cfg)
		if err != nil {
			return err
		}
		e.log.Info("kiln up", "url", br.ClientURL(), "worker", w.Name())
		workers = append(workers, w)
	}
	var gw *gateway.Server
	if gl != nil {
		gnc, err := br.Connect(nats.Name("kiln-gateway"))
		if err != nil {
			return err
		}
		defer gnc.Close()
		topo := topology.Config{Prefix: *prefix}
		// The broker's own in-process user may cancel any client's job.
		routes, stop, err := gf.fleetRoutes(ctx, e, gnc, topo, "", true)
		if err != nil {
			return err
		}
		defer stop()
		if gw, err = gf.server(e, gnc, topo, "", routes); err != nil {
			return err
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, w := range workers {
		g.Go(func() error { return w.Run(gctx) })
	}
	g.Go(func() error { return jan.Run(gctx) })
	if gw != nil {
		g.Go(func() error { return gw.Serve(gctx, gl) })
	}
	return g.Wait()
}

// brokerJanitor makes the janitor that runs beside the broker, on its own
// connection (the caller closes it): it answers the jobs no worker will
// take (broker/janitor).
func brokerJanitor(br *broker.Broker, e *env, topo topology.Config, grace time.Duration) (*janitor.Janitor, *nats.Conn, error) {
	nc, err := br.Connect(nats.Name("kiln-janitor"))
	if err != nil {
		return nil, nil, err
	}
	jan, err := janitor.New(nc, janitor.Config{Topology: topo, Grace: grace, Logger: e.log})
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return jan, nc, nil
}

func runBroker(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 && args[0] == "init-auth" {
		return runInitAuth(ctx, e, args[1:])
	}
	fs := newFlags(e, "broker", "[init-auth DIR]")
	var bf brokerFlags
	prefix := fs.String("prefix", getenv(envPrefix, schema.DefaultPrefix), "subject prefix ($"+envPrefix+")")
	bf.register(fs)
	grace := unservedGrace(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	br, err := bf.start(ctx, e, *prefix)
	if err != nil {
		return err
	}
	defer shutdownBroker(e, br)
	if bf.leaf { // no queue here: the hub's janitor answers
		<-ctx.Done()
		return nil
	}
	jan, jnc, err := brokerJanitor(br, e, topology.Config{Prefix: *prefix}, *grace)
	if err != nil {
		return err
	}
	defer jnc.Close()
	return jan.Run(ctx)
}

func runWorker(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "worker", "")
	var cf connFlags
	var wf workerFlags
	cf.register(fs)
	wf.register(fs)
	grace := unservedGrace(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, c, err := wf.workerConfig(ctx, e, cf.topology(), wf.card, wf.name)
	if err != nil {
		return err
	}
	defer closeCard(e, c)
	opts, err := cf.options()
	if err != nil {
		return err
	}
	nc, err := connect(ctx, cf.url, "kiln-worker", append(opts, nats.MaxReconnects(-1))...)
	if err != nil {
		return err
	}
	defer nc.Close()
	w, err := worker.New(nc, cfg)
	if err != nil {
		return err
	}
	// Against an external broker the workers' janitors are the only ones.
	jan, err := janitor.New(nc, janitor.Config{Topology: cf.topology(), Grace: *grace, Logger: e.log})
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return w.Run(gctx) })
	g.Go(func() error { return jan.Run(gctx) })
	return g.Wait()
}

func shutdownBroker(e *env, br *broker.Broker) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := br.Shutdown(ctx); err != nil {
		e.log.Warn("broker shutdown", "err", err)
	}
}

// connect dials the broker, retrying until ctx ends if it is not up yet.
func connect(ctx context.Context, url, name string, opts ...nats.Option) (*nats.Conn, error) {
	opts = append([]nats.Option{nats.Name(name), nats.ReconnectWait(time.Second)}, opts...)
	var last error
	for {
		nc, err := nats.Connect(url, opts...)
		if err == nil {
			return nc, nil
		}
		if errors.Is(err, nats.ErrAuthorization) {
			return nil, fmt.Errorf("connect %s: %w (%w)", url, err, errNoCreds)
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect %s: %w", url, last)
		case <-time.After(time.Second):
		}
	}
}
