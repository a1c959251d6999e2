package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"

	"github.com/nats-io/nats.go"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/gateway/dashboard"
	"github.com/kiln-project/kiln/gateway/metrics"
	"github.com/kiln-project/kiln/gateway/watch"
)

// fleetRoutes makes what the gateway serves beside its API, from one watch
// of the fleet on nc: GET /metrics and the dashboard at `/`. The dashboard
// acts as clientID ("" anonymous); cancelAny lets it cancel any client's
// job (the identity may: kiln up's in-process connection, an admin). A
// gateway with a client id is a gateway identity of init-auth, which may
// follow only its own and its API keys' clients' jobs: the watch follows
// those; an anonymous one follows every job.
// A gateway with API keys gets a read-only dashboard: its cancel buttons
// and playground would act without a key. The returned func stops the
// watch.
func (g *gatewayFlags) fleetRoutes(ctx context.Context, e *env, nc *nats.Conn, topo topology.Config, clientID string, cancelAny bool) (map[string]http.Handler, func(), error) {
	opts := []client.Option{client.WithPrefix(topo.WithDefaults().Prefix)}
	if clientID != "" {
		opts = append(opts, client.WithClientID(clientID))
	}
	c, err := client.New(nc, opts...)
	if err != nil {
		return nil, nil, err
	}
	var follow []string
	if clientID != "" {
		keys, err := g.apiKeys(clientID)
		if err != nil {
			c.Close()
			return nil, nil, err
		}
		follow = []string{clientID}
		for _, k := range keys {
			if k.Client != "" && !slices.Contains(follow, k.Client) {
				follow = append(follow, k.Client)
			}
		}
	}
	w, err := watch.Start(ctx, watch.Config{Conn: nc, Client: c, Topology: topo, Clients: follow, Logger: e.log})
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("dashboard: %w", err)
	}
	stop := func() { w.Stop(); c.Close() }
	m, err := metrics.New(metrics.Config{Watcher: w, Process: true})
	if err != nil {
		stop()
		return nil, nil, err
	}
	title := "kiln"
	if host, err := os.Hostname(); err == nil {
		title += " · " + host
	}
	d, err := dashboard.New(dashboard.Config{Watcher: w, Client: c, CancelAny: cancelAny, ReadOnly: g.hasKeys(), Title: title, Logger: e.log})
	if err != nil {
		stop()
		return nil, nil, err
	}
	return map[string]http.Handler{"GET /metrics": m, "/": d}, stop, nil
}

// hasKeys reports whether API keys guard the gateway.
func (g *gatewayFlags) hasKeys() bool { return g.keys != "" || g.keysFile != "" }
