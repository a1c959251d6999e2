package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/kiln-project/kiln/broker/auth"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
)

// options are the connection options every command that dials a broker
// uses: credentials, TLS, the inbox of its identity, reconnects.
func (c *connFlags) options() ([]nats.Option, error) {
	var opts []nats.Option
	if c.nkey != "" {
		o, err := nats.NkeyOptionFromSeed(c.nkey)
		if err != nil {
			return nil, fmt.Errorf("nkey seed %s: %w", c.nkey, err)
		}
		opts = append(opts, o)
	}
	if c.tlsCA != "" {
		opts = append(opts, nats.RootCAs(c.tlsCA))
	}
	if c.clientID != "" {
		if !schema.ValidToken(c.clientID) {
			return nil, fmt.Errorf("client id %q is not a subject token (letters, digits, '-', '_')", c.clientID)
		}
		// Broker permissions give each identity its own inboxes
		// (_INBOX.<id>.>) so that nobody reads another's API replies.
		opts = append(opts, nats.CustomInboxPrefix(topology.InboxPrefix(c.clientID)))
	}
	return opts, nil
}

// errNoCreds is what a refused connection gets as a hint.
var errNoCreds = errors.New("the broker wants credentials: --nkey/$KILN_NKEY (from `kiln broker init-auth`)")

func runInitAuth(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "broker init-auth", "DIR")
	controllers := fs.String("controllers", "controller-1", "controller client ids, comma-separated (each reads only its own replies and results)")
	observers := fs.String("observers", "observer", "observer ids, comma-separated (read events, the worker registry and queue depths)")
	gateways := fs.String("gateways", "gateway", "HTTP gateway ids, comma-separated (kiln gateway: a controller for itself and --gateway-clients, and an observer)")
	gatewayClients := fs.String("gateway-clients", "", "client ids the gateways' API keys map to, comma-separated (each key's jobs, replies and results are that client's)")
	prefix := fs.String("prefix", getenv(envPrefix, schema.DefaultPrefix), "subject prefix ($"+envPrefix+")")
	account := fs.String("account", auth.DefaultAccount, "account that holds kiln's streams")
	force := fs.Bool("force", false, "overwrite existing files")
	hub := fs.String("hub", auth.DefaultHub, "host:port of the hub's leaf node listener, for leaf-remote.conf")
	seedDir := fs.String("seed-dir", "", "folder the seed files are in at run time, for the .env files (default DIR)")
	tlsHosts := fs.String("tls", "", "also make a CA and a server certificate for these host names/IPs, comma-separated (tls.conf)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errUsage
	}
	dir := fs.Arg(0)
	set, err := auth.New(auth.Config{
		Topology:       topology.Config{Prefix: *prefix},
		Account:        *account,
		Controllers:    splitList(*controllers),
		Observers:      splitList(*observers),
		Gateways:       splitList(*gateways),
		GatewayClients: splitList(*gatewayClients),
		Hub:            *hub,
		TLSHosts:       splitList(*tlsHosts),
	})
	if err != nil {
		return err
	}
	written, err := set.Write(dir, &auth.WriteOptions{SeedDir: *seedDir, Force: *force})
	var exists *os.PathError
	if errors.As(err, &exists) && errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s exists (--force overwrites; every process then needs its new files)", exists.Path)
	}
	if err != nil {
		return err
	}
	for _, f := range written {
		fmt.Fprintln(e.stdout, "wrote", f)
	}
	fmt.Fprintf(e.stdout, "\nbroker: `include %s` in the nats-server config (deploy/nats/*.conf do), or `kiln broker --config`\n",
		filepath.Join(dir, "auth.conf"))
	fmt.Fprintln(e.stdout, "each process: its <id>.env (KILN_NKEY, KILN_CLIENT_ID) as systemd EnvironmentFile, or the same flags")
	return nil
}

// splitList splits a comma-separated flag value, dropping blanks.
func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}
