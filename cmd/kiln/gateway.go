package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/gateway"
)

// Environment of the HTTP gateway (docs/gateway.md).
const (
	envGateway         = "KILN_GATEWAY"           // kiln up / gateway: listen address; kiln up: off = no gateway
	envGatewayKeys     = "KILN_GATEWAY_KEYS"      // API keys: client:key, comma-separated
	envGatewayKeysFile = "KILN_GATEWAY_KEYS_FILE" // API keys, one client:key a line
	envGatewayURL      = "KILN_GATEWAY_URL"       // the gateway's public base URL, for image URLs
)

// gatewayOff is the value of --gateway that turns kiln up's gateway off.
const gatewayOff = "off"

// gatewayFlags are the flags of the commands that run the HTTP gateway.
type gatewayFlags struct {
	addr, keys, keysFile, publicURL string
}

func (g *gatewayFlags) register(fs *flag.FlagSet, up bool) {
	what := "HTTP address of the OpenAI-compatible gateway ($" + envGateway + ")"
	if up {
		what = "HTTP address of the OpenAI-compatible gateway, or off ($" + envGateway + ")"
	}
	fs.StringVar(&g.addr, "gateway", getenv(envGateway, gateway.DefaultAddr), what)
	fs.StringVar(&g.keys, "gateway-keys", getenv(envGatewayKeys, ""), "gateway API keys as client:key, comma-separated; a bare key runs as the gateway's own client id ($"+envGatewayKeys+"; none: the gateway is open)")
	fs.StringVar(&g.keysFile, "gateway-keys-file", getenv(envGatewayKeysFile, ""), "file of gateway API keys, one client:key a line ($"+envGatewayKeysFile+")")
	fs.StringVar(&g.publicURL, "gateway-url", getenv(envGatewayURL, ""), "base URL clients reach the gateway at, for image URLs ($"+envGatewayURL+"; unset: the Host of each request)")
}

// off reports whether kiln up runs no gateway.
func (g *gatewayFlags) off() bool { return strings.EqualFold(strings.TrimSpace(g.addr), gatewayOff) }

// listen takes the gateway's address.
func (g *gatewayFlags) listen() (net.Listener, error) {
	l, err := net.Listen("tcp", g.addr)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w (--gateway or $%s picks another address; for kiln up, off runs none)", err, envGateway)
	}
	return l, nil
}

// server makes the gateway on nc, its requests running as clientID when
// no keys are given, serving routes beside its API (fleetRoutes).
func (g *gatewayFlags) server(e *env, nc *nats.Conn, topo topology.Config, clientID string, routes map[string]http.Handler) (*gateway.Server, error) {
	if g.off() {
		return nil, fmt.Errorf("--gateway %s: give an address to listen on", gatewayOff)
	}
	keys, err := g.apiKeys(clientID)
	if err != nil {
		return nil, err
	}
	return gateway.New(gateway.Config{Conn: nc, Topology: topo, Addr: g.addr, Keys: keys, ClientID: clientID,
		PublicURL: g.publicURL, Routes: routes, Logger: e.log})
}

// apiKeys reads the API keys of --gateway-keys and --gateway-keys-file; a
// bare key runs as clientID.
func (g *gatewayFlags) apiKeys(clientID string) ([]gateway.Key, error) {
	keys, err := gateway.ParseKeys(g.keys, clientID)
	if err != nil {
		return nil, fmt.Errorf("--gateway-keys: %w", err)
	}
	if g.keysFile != "" {
		more, err := gateway.ReadKeysFile(g.keysFile, clientID)
		if err != nil {
			return nil, fmt.Errorf("--gateway-keys-file: %w", err)
		}
		keys = append(keys, more...)
	}
	return keys, nil
}

func runGateway(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "gateway", "")
	var cf connFlags
	var gf gatewayFlags
	cf.register(fs)
	gf.register(fs, false)
	if err := parse(fs, args); err != nil {
		return err
	}
	opts, err := cf.options()
	if err != nil {
		return err
	}
	// A key mapped to a client the broker does not let this identity act
	// for: the broker refuses its publishes asynchronously; say so.
	refused := nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		e.log.Warn("the broker refused the gateway (is every key's client in init-auth --gateway-clients?)", "err", err)
	})
	nc, err := connect(ctx, cf.url, "kiln-gateway", append(opts, nats.MaxReconnects(-1), refused)...)
	if err != nil {
		return err
	}
	defer nc.Close()
	// An anonymous gateway is an admin or on an open broker: its dashboard may cancel any job.
	routes, stop, err := gf.fleetRoutes(ctx, e, nc, cf.topology(), cf.clientID, cf.clientID == "")
	if err != nil {
		return err
	}
	defer stop()
	gw, err := gf.server(e, nc, cf.topology(), cf.clientID, routes)
	if err != nil {
		return err
	}
	l, err := gf.listen()
	if err != nil {
		return err
	}
	return gw.Serve(ctx, l)
}
