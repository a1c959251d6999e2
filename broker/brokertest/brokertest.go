// Package brokertest starts real embedded kiln brokers for tests: a
// nats-server with JetStream on a random loopback port with its store in a
// temporary folder, the kiln topology provisioned, shut down at test end.
package brokertest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kiln-project/kiln/broker"
	"github.com/kiln-project/kiln/broker/topology"
)

// Options tune Run. The zero value is a default broker.
type Options struct {
	// Topology overrides topology defaults (e.g. a small MaxQueuedJobs).
	Topology topology.Config
	// StoreDir reuses a store folder (to restart a broker on the same
	// data); default a new temporary folder.
	StoreDir string
	// Listen is host:port; default 127.0.0.1 on a random port.
	Listen string
	// NoSync skips the sync to disk before acknowledgements (benchmarks only).
	NoSync bool
}

// Run starts a broker and registers its shutdown with tb.Cleanup.
func Run(tb testing.TB, o *Options) *broker.Broker {
	tb.Helper()
	if o == nil {
		o = &Options{}
	}
	dir := o.StoreDir
	if dir == "" {
		dir = tb.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := start(ctx, o, dir)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { shutdown(b) })
	return b
}

// Start starts a broker where there is no testing.TB (an Example, a
// TestMain, a benchmark harness): its store is o.StoreDir, else a new
// temporary folder. stop shuts the broker down and removes the folder
// Start made. o may be nil.
func Start(ctx context.Context, o *Options) (b *broker.Broker, stop func(), err error) {
	if o == nil {
		o = &Options{}
	}
	dir := o.StoreDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "kiln-broker-"); err != nil {
			return nil, nil, fmt.Errorf("brokertest: %w", err)
		}
	}
	if b, err = start(ctx, o, dir); err != nil {
		if o.StoreDir == "" {
			_ = os.RemoveAll(dir)
		}
		return nil, nil, err
	}
	return b, func() {
		shutdown(b)
		if o.StoreDir == "" {
			_ = os.RemoveAll(dir)
		}
	}, nil
}

// start starts a quiet broker with its store in dir.
func start(ctx context.Context, o *Options, dir string) (*broker.Broker, error) {
	listen := o.Listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	b, err := broker.New(broker.Config{
		Listen:   listen,
		StoreDir: dir,
		Topology: o.Topology,
		NoSync:   o.NoSync,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return nil, err
	}
	if err := b.Start(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

func shutdown(b *broker.Broker) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = b.Shutdown(ctx)
}

// Connect opens a TCP connection to b, closed at test end.
func Connect(tb testing.TB, b *broker.Broker, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(b.ClientURL(), opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// ConnectURL opens a connection to url, closed at test end.
func ConnectURL(tb testing.TB, url string, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	return nc
}
