package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/kiln-project/kiln/broker"
	"github.com/kiln-project/kiln/broker/janitor"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker"
)

// workerFlags are the flags of the commands that run a worker.
type workerFlags struct {
	card   int
	name   string
	models string
	lib    string
	grace  time.Duration
	temp   thermalFlags
}

func (w *workerFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&w.card, "card", 0, "index of the card on this host (not the PCIe bus id)")
	fs.StringVar(&w.name, "name", "", "worker name (default <host>-card<N>)")
	fs.StringVar(&w.models, "models", getenv(envModels, defaultModels), "folder of model packages, one sub-folder per model ($"+envModels+")")
	fs.StringVar(&w.lib, "lib", getenv(envAXCLLib, ""), "path of libaxcl_rt.so ($"+envAXCLLib+"; default /usr/lib/axcl/libaxcl_rt.so)")
	fs.DurationVar(&w.grace, "grace", 30*time.Second, "on stop, how long the running job may finish before it is handed back")
	w.temp.register(fs)
}

// workerConfig opens the card, loads the model packages found on it and
// builds the worker's configuration. The caller closes the card.
func (w *workerFlags) workerConfig(ctx context.Context, e *env, topo topology.Config) (worker.Config, *card, error) {
	cfg := worker.Config{
		Name:          w.name,
		Card:          w.card,
		Version:       version,
		Topology:      topo,
		ShutdownGrace: w.grace,
		Chat:          map[string]worker.Handler[schema.ChatJob]{},
		Image:         map[string]worker.Handler[schema.ImageJob]{},
		Logger:        e.log,
	}
	c, err := openCard(ctx, e, w.lib, w.card)
	if err != nil {
		return cfg, nil, err
	}
	if err := c.load(ctx, w.models, &cfg); err != nil {
		c.close()
		return cfg, nil, err
	}
	cfg.StatusFunc = c.status
	if cfg.Thermal, err = w.temp.config(c); err != nil {
		c.close()
		return cfg, nil, err
	}
	if c.dev != nil {
		cfg.Device = c
	}
	return cfg, c, nil
}

// modelPackages lists the sub-folders of dir (a missing dir is no packages).
func modelPackages(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("models folder %s: %w", dir, err)
	}
	var names []string
	for _, en := range entries {
		if en.IsDir() && schema.ValidToken(en.Name()) {
			names = append(names, en.Name())
		}
	}
	sort.Strings(names)
	return names, nil
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
	prefix := fs.String("prefix", getenv(envPrefix, schema.DefaultPrefix), "subject prefix ($"+envPrefix+")")
	bf.register(fs)
	wf.register(fs)
	grace := unservedGrace(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	br, err := bf.start(ctx, e, *prefix)
	if err != nil {
		return err
	}
	defer shutdownBroker(e, br)
	jan, jnc, err := brokerJanitor(br, e, topology.Config{Prefix: *prefix}, *grace)
	if err != nil {
		return err
	}
	defer jnc.Close()
	nc, err := br.Connect(nats.Name("kiln-up-worker"))
	if err != nil {
		return err
	}
	defer nc.Close()
	cfg, c, err := wf.workerConfig(ctx, e, topology.Config{Prefix: *prefix, JobMaxAge: bf.jobMaxAge})
	if err != nil {
		return err
	}
	defer c.close()
	w, err := worker.New(nc, cfg)
	if err != nil {
		return err
	}
	e.log.Info("kiln up", "url", br.ClientURL(), "worker", w.Name())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return w.Run(gctx) })
	g.Go(func() error { return jan.Run(gctx) })
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
	cfg, c, err := wf.workerConfig(ctx, e, cf.topology())
	if err != nil {
		return err
	}
	defer c.close()
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
