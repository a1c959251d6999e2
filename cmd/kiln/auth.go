package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/kiln-project/kiln/broker"
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
		opts = append(opts, nats.CustomInboxPrefix("_INBOX."+c.clientID))
	}
	return opts, nil
}

// Roles of `kiln broker init-auth`.
const (
	roleController = "controller"
	roleWorker     = "worker"
	roleObserver   = "observer"
	roleAdmin      = "admin"
)

// identity is one user that init-auth writes.
type identity struct {
	name string // client id and file name
	role string
}

func runInitAuth(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "broker init-auth", "DIR")
	controllers := fs.String("controllers", "controller-1", "controller client ids, comma-separated (each reads only its own replies and results)")
	observers := fs.String("observers", "observer", "observer ids, comma-separated (read events, the worker registry and queue depths)")
	prefix := fs.String("prefix", getenv(envPrefix, schema.DefaultPrefix), "subject prefix ($"+envPrefix+")")
	account := fs.String("account", broker.DefaultAccount, "account that holds kiln's streams")
	force := fs.Bool("force", false, "overwrite existing files")
	hub := fs.String("hub", "HUB:7422", "host:port of the hub's leaf node listener, for leaf-remote.conf")
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
	ids := []identity{{name: "worker", role: roleWorker}, {name: "admin", role: roleAdmin}}
	for _, list := range []struct{ names, role string }{{*controllers, roleController}, {*observers, roleObserver}} {
		for _, n := range strings.Split(list.names, ",") {
			if n = strings.TrimSpace(n); n == "" {
				continue
			}
			if !schema.ValidToken(n) || n == "worker" || n == "admin" {
				return fmt.Errorf("id %q: want a subject token (letters, digits, '-', '_') other than worker and admin", n)
			}
			ids = append(ids, identity{name: n, role: list.role})
		}
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id.name] {
			return fmt.Errorf("id %q given twice", id.name)
		}
		seen[id.name] = true
	}
	set, err := newAuthSet(topology.Config{Prefix: *prefix}.WithDefaults(), *account, *hub, ids)
	if err != nil {
		return err
	}
	if *tlsHosts != "" {
		for _, h := range strings.Split(*tlsHosts, ",") {
			if h = strings.TrimSpace(h); h != "" {
				set.tlsHosts = append(set.tlsHosts, h)
			}
		}
	}
	written, err := set.write(dir, *seedDir, *force)
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

// authSet is a generated set of users: the server's include file and each
// identity's seed.
type authSet struct {
	topo     topology.Config
	account  string
	hub      string
	tlsHosts []string
	users    []authUser
	leafPwd  string
}

type authUser struct {
	identity
	seed   []byte
	public string
}

func newAuthSet(topo topology.Config, account, hub string, ids []identity) (*authSet, error) {
	s := &authSet{topo: topo, account: account, hub: hub}
	for _, id := range ids {
		kp, err := nkeys.CreateUser()
		if err != nil {
			return nil, fmt.Errorf("nkey: %w", err)
		}
		seed, _ := kp.Seed()
		pub, _ := kp.PublicKey()
		s.users = append(s.users, authUser{identity: id, seed: seed, public: pub})
	}
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	s.leafPwd = base64.RawURLEncoding.EncodeToString(b[:])
	return s, nil
}

// write writes auth.conf, leaf-auth.conf, leaf-remote.conf and per
// identity <id>.nk (the seed, 0600) and <id>.env (naming the seed in
// seedDir, where it is at run time).
func (s *authSet) write(dir, seedDir string, force bool) ([]string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if seedDir == "" {
		seedDir = dir
	}
	abs, err := filepath.Abs(seedDir)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{
		"auth.conf":        []byte(s.serverConf()),
		"leaf-auth.conf":   []byte(s.leafAuthConf()),
		"leaf-remote.conf": []byte(s.leafRemoteConf()),
	}
	if len(s.tlsHosts) > 0 {
		tf, err := tlsFiles(s.tlsHosts, abs)
		if err != nil {
			return nil, err
		}
		maps.Copy(files, tf)
	}
	for _, u := range s.users {
		files[u.name+".nk"] = append(append([]byte{}, u.seed...), '\n')
		env := fmt.Sprintf("# kiln %s %q: systemd EnvironmentFile\nKILN_NKEY=%s\n", u.role, u.name, filepath.Join(abs, u.name+".nk"))
		if u.role != roleWorker {
			env += "KILN_CLIENT_ID=" + u.name + "\n"
		}
		files[u.name+".env"] = []byte(env)
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	if !force {
		for _, n := range names {
			if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
				return nil, fmt.Errorf("%s exists (--force overwrites; every process then needs its new files)", filepath.Join(dir, n))
			}
		}
	}
	for _, n := range names {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, files[n], 0o600); err != nil {
			return nil, err
		}
		if err := os.Chmod(p, 0o600); err != nil {
			return nil, err
		}
	}
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = filepath.Join(dir, n)
	}
	return out, nil
}

// serverConf is the nats-server include with the kiln account and its users.
func (s *authSet) serverConf() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# kiln accounts and users, written by `kiln broker init-auth` on %s.\n", time.Now().UTC().Format(time.RFC3339))
	b.WriteString("# Public nkeys only: the seeds (<id>.nk) stay with the processes that use them.\n")
	fmt.Fprintf(&b, "accounts {\n  %s {\n    jetstream: enabled\n    users: [\n", s.account)
	for _, u := range s.users {
		pub, sub := s.permissions(u.identity)
		fmt.Fprintf(&b, "      # %s %s\n      {\n        nkey: %s\n", u.role, u.name, u.public)
		if pub != nil {
			fmt.Fprintf(&b, "        permissions: {\n          publish: { allow: %s }\n          subscribe: { allow: %s }\n", confList(pub), confList(sub))
			if u.role == roleWorker {
				// answers to the requests it serves (`nats micro`): the requester's inbox, once
				b.WriteString("          allow_responses: true\n")
			}
			b.WriteString("        }\n")
		}
		b.WriteString("      }\n")
	}
	b.WriteString("    ]\n  }\n}\n")
	return b.String()
}

func (s *authSet) leafAuthConf() string {
	return fmt.Sprintf("# Include inside the hub's leafnodes { } block: the user leaf nodes log in as.\n"+
		"authorization {\n  user: leaf\n  password: %q\n  account: %s\n}\n", s.leafPwd, s.account)
}

func (s *authSet) leafRemoteConf() string {
	return fmt.Sprintf("# Include inside a leaf Pi's leafnodes { } block (deploy/nats/leaf.conf does).\n"+
		"remotes: [\n  { url: \"nats-leaf://leaf:%s@%s\", account: %s }\n]\n", s.leafPwd, s.hub, s.account)
}

func confList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// permissions returns what id may publish and subscribe to; nil for full
// rights (admin).
//
//   - controllers publish jobs and cancels, read the worker registry (the
//     "no live worker" check) and their own results, and subscribe to their
//     own reply subjects and inboxes only;
//   - workers take jobs and publish replies, results, events and their
//     registry entry;
//   - observers read events, the registry and queue depths.
func (s *authSet) permissions(id identity) (pub, sub []string) {
	t := s.topo
	p := t.Prefix
	jobs, results, events := t.JobsStream(), t.ResultsStream(), t.EventsStream()
	workersKV, cancelKV := "KV_"+t.WorkersBucket(), "KV_"+t.CancelBucket()
	readKV := func(stream string) []string {
		return []string{
			"$JS.API.STREAM.INFO." + stream,
			"$JS.API.CONSUMER.CREATE." + stream, "$JS.API.CONSUMER.CREATE." + stream + ".>",
			"$JS.API.CONSUMER.DELETE." + stream + ".>", "$JS.API.CONSUMER.INFO." + stream + ".>",
			"$JS.API.CONSUMER.MSG.NEXT." + stream + ".>",
			"$JS.API.DIRECT.GET." + stream + ".>", "$JS.API.STREAM.MSG.GET." + stream,
		}
	}
	inbox := "_INBOX." + id.name + ".>"
	switch id.role {
	case roleController:
		pub = []string{
			p + ".jobs.>", p + ".cancel.*", "$KV." + t.CancelBucket() + ".*",
			"$JS.API.INFO", "$JS.API.STREAM.INFO." + cancelKV, "$JS.API.STREAM.INFO." + results,
			"$JS.API.DIRECT.GET." + results + "." + p + ".results.*." + id.name,
			"$JS.FC.>",
		}
		pub = append(pub, readKV(workersKV)...)
		sub = []string{p + ".reply." + id.name + ".>", inbox}
	case roleWorker:
		pub = []string{
			p + ".reply.>", "_INBOX.>", p + ".results.>", p + ".events.>",
			"$KV." + t.WorkersBucket() + ".*",
			"$JS.API.INFO", "$JS.API.STREAM.INFO.*",
			"$JS.API.CONSUMER.CREATE." + jobs + ".>", "$JS.API.CONSUMER.INFO." + jobs + ".>",
			"$JS.API.CONSUMER.MSG.NEXT." + jobs + ".>", "$JS.ACK." + jobs + ".>",
			"$JS.API.STREAM.MSG.GET." + jobs, "$JS.API.STREAM.MSG.DELETE." + jobs,
			"$JS.API.DIRECT.GET." + results + ".>", "$JS.API.STREAM.MSG.GET." + results,
			"$JS.FC.>",
		}
		pub = append(pub, readKV(cancelKV)...)
		pub = append(pub, readKV(workersKV)...) // the janitor: what the fleet serves
		sub = []string{
			p + ".wake.>", p + ".cancel.*", "_INBOX.>",
			"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + jobs + ".*",
			"$SRV.>", p + ".status.*", // the NATS micro-service framework: `nats micro ls`, status requests
		}
	case roleObserver:
		pub = []string{"$JS.API.INFO", "$JS.API.STREAM.INFO." + jobs, "$JS.API.CONSUMER.LIST." + jobs, "$JS.FC.>",
			"$SRV.>", p + ".status.*"}
		pub = append(pub, readKV(workersKV)...)
		pub = append(pub, readKV(events)...)
		sub = []string{p + ".events.>", inbox}
	case roleAdmin:
		return nil, nil
	}
	return pub, sub
}

// errNoCreds is what a refused connection gets as a hint.
var errNoCreds = errors.New("the broker wants credentials: --nkey/$KILN_NKEY (from `kiln broker init-auth`)")

// tlsFiles makes a CA and a server certificate for hosts (names or IP
// addresses) and returns ca.pem, server-cert.pem, server-key.pem and the
// nats-server include tls.conf naming them in seedDir.
func tlsFiles(hosts []string, seedDir string) (map[string][]byte, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	serial := func() *big.Int {
		n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
		return n
	}
	ca := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "kiln broker CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("tls: CA: %w", err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	srv := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			srv.IPAddresses = append(srv.IPAddresses, ip)
		} else {
			srv.DNSNames = append(srv.DNSNames, h)
		}
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("tls: server certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		return nil, err
	}
	return map[string][]byte{
		"ca.pem":          pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		"server-cert.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}),
		"server-key.pem":  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		"tls.conf": []byte(fmt.Sprintf("# Client connections over TLS (`kiln broker init-auth --tls`): include it in\n"+
			"# the broker's config; clients use tls:// URLs and --tls-ca %s.\n"+
			"tls {\n  cert_file: %q\n  key_file: %q\n  timeout: 5\n}\n",
			filepath.Join(seedDir, "ca.pem"), filepath.Join(seedDir, "server-cert.pem"), filepath.Join(seedDir, "server-key.pem"))),
	}, nil
}
