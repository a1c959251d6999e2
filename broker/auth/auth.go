// Package auth owns the kiln account's users: the permissions of each role
// (controller, worker, observer, admin, and the broker's own in-process
// user), nkey generation, the TLS CA and server certificate, and the files
// `kiln broker init-auth` writes (docs/deploy.md §4): the nats-server
// include with the account and its users, each identity's seed and
// environment file, the leaf node login and, on request, TLS.
package auth

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
)

// DefaultAccount is the account that holds kiln's streams.
const DefaultAccount = "KILN"

// DefaultHub is the placeholder leaf-remote.conf names for the hub's leaf
// node listener when none is given: the operator edits it.
const DefaultHub = "HUB:7422"

// A Role is what an identity may do; Identity.Permissions spells it out.
type Role string

// The roles of kiln's users.
const (
	// RoleController submits and cancels jobs and reads its own replies
	// and results.
	RoleController Role = "controller"
	// RoleWorker takes jobs and publishes replies, results and events.
	RoleWorker Role = "worker"
	// RoleObserver reads events, the worker registry and queue depths.
	RoleObserver Role = "observer"
	// RoleAdmin may do anything in the account.
	RoleAdmin Role = "admin"
	// RoleGateway is an HTTP gateway (package gateway): a controller for
	// its own id and for each of its Clients (the client ids its API keys
	// map to), and an observer for the dashboard and metrics it serves.
	RoleGateway Role = "gateway"
)

// The names of the two identities every set has; a controller or observer
// cannot take them.
const (
	WorkerName = "worker"
	AdminName  = "admin"
)

// Identity is one user: its name (the client id of a controller,
// observer or gateway, and the name of its files) and role.
type Identity struct {
	Name string
	Role Role
	// Clients are the client ids a gateway submits jobs for besides its
	// own (its API keys' clients).
	Clients []string
}

// Config describes a set of users: the flags of `kiln broker init-auth`.
type Config struct {
	// Topology gives the subject prefix and the stream and bucket names
	// the permissions name.
	Topology topology.Config
	// Account holds kiln's streams and the users (default DefaultAccount).
	Account string
	// Controllers are the controllers' client ids: subject tokens other
	// than WorkerName and AdminName.
	Controllers []string
	// Observers are the observers' ids, tokens like Controllers.
	Observers []string
	// Gateways are the HTTP gateways' ids, tokens like Controllers; each
	// acts for itself and for GatewayClients.
	Gateways []string
	// GatewayClients are the client ids the gateways' API keys map to:
	// tokens, but not WorkerName or AdminName (a controller's id is fine:
	// its jobs then come through NATS and HTTP alike).
	GatewayClients []string
	// Hub is host:port of the hub's leaf node listener, for
	// leaf-remote.conf (default DefaultHub).
	Hub string
	// TLSHosts, when not empty, also makes a CA and a server certificate
	// for these host names and IP addresses (the first is the certificate's
	// common name).
	TLSHosts []string
}

// Set is a generated set of users: an nkey for each identity (the worker,
// admin, each controller, each observer) and the leaf nodes' password.
type Set struct {
	cfg          Config
	users        []user
	leafPassword string
	made         time.Time
}

type user struct {
	Identity
	seed   []byte
	public string
}

// New checks cfg's ids and makes a new key for every identity.
func New(cfg Config) (*Set, error) {
	cfg.Topology = cfg.Topology.WithDefaults()
	if cfg.Account == "" {
		cfg.Account = DefaultAccount
	}
	if cfg.Hub == "" {
		cfg.Hub = DefaultHub
	}
	ids, err := identities(cfg)
	if err != nil {
		return nil, err
	}
	s := &Set{cfg: cfg, made: time.Now()}
	for _, id := range ids {
		kp, err := nkeys.CreateUser()
		if err != nil {
			return nil, fmt.Errorf("nkey: %w", err)
		}
		seed, _ := kp.Seed()
		pub, _ := kp.PublicKey()
		s.users = append(s.users, user{Identity: id, seed: seed, public: pub})
	}
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	s.leafPassword = base64.RawURLEncoding.EncodeToString(b[:])
	return s, nil
}

// identities lists the worker, admin, controllers and observers of cfg.
func identities(cfg Config) ([]Identity, error) {
	ids := []Identity{{Name: WorkerName, Role: RoleWorker}, {Name: AdminName, Role: RoleAdmin}}
	for _, list := range []struct {
		names []string
		role  Role
	}{{cfg.Controllers, RoleController}, {cfg.Observers, RoleObserver}, {cfg.Gateways, RoleGateway}} {
		for _, n := range list.names {
			if err := checkID(n); err != nil {
				return nil, err
			}
			id := Identity{Name: n, Role: list.role}
			if list.role == RoleGateway {
				id.Clients = cfg.GatewayClients
			}
			ids = append(ids, id)
		}
	}
	for _, n := range cfg.GatewayClients {
		if err := checkID(n); err != nil {
			return nil, fmt.Errorf("gateway client: %w", err)
		}
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id.Name] {
			return nil, fmt.Errorf("id %q given twice", id.Name)
		}
		seen[id.Name] = true
	}
	return ids, nil
}

// checkID refuses an id that is not a subject token or is a reserved name.
func checkID(n string) error {
	if !schema.ValidToken(n) || n == WorkerName || n == AdminName {
		return fmt.Errorf("id %q: want a subject token (letters, digits, '-', '_') other than %s and %s", n, WorkerName, AdminName)
	}
	return nil
}

// WriteOptions tune Set.Write; nil means the defaults.
type WriteOptions struct {
	// SeedDir is the folder the files are in at run time, which the .env
	// files and tls.conf name (default: the folder written to).
	SeedDir string
	// Force overwrites existing files. Without it Write writes nothing when
	// one exists, and returns a *fs.PathError wrapping fs.ErrExist.
	Force bool
}

// Write writes the set into dir (made 0700 if missing), every file 0600:
// auth.conf (the account and its users, to include in the broker's config),
// leaf-auth.conf and leaf-remote.conf, for each identity <id>.nk (its seed)
// and <id>.env (naming the seed, for a systemd EnvironmentFile), and with
// TLSHosts ca.pem, server-cert.pem, server-key.pem and tls.conf. It returns
// the paths written, sorted.
func (s *Set) Write(dir string, o *WriteOptions) ([]string, error) {
	if o == nil {
		o = &WriteOptions{}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	seedDir := o.SeedDir
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
	if len(s.cfg.TLSHosts) > 0 {
		tf, err := tlsFiles(s.cfg.TLSHosts, abs)
		if err != nil {
			return nil, err
		}
		maps.Copy(files, tf)
	}
	for _, u := range s.users {
		files[u.Name+".nk"] = append(append([]byte{}, u.seed...), '\n')
		files[u.Name+".env"] = []byte(u.envFile(abs))
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	if !o.Force {
		for _, n := range names {
			p := filepath.Join(dir, n)
			if _, err := os.Stat(p); err == nil {
				return nil, &fs.PathError{Op: "write", Path: p, Err: fs.ErrExist}
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

// envFile is u's systemd EnvironmentFile: its seed in seedDir and, but for
// the worker, its client id.
func (u user) envFile(seedDir string) string {
	env := fmt.Sprintf("# kiln %s %q: systemd EnvironmentFile\nKILN_NKEY=%s\n", u.Role, u.Name, filepath.Join(seedDir, u.Name+".nk"))
	if u.Role != RoleWorker {
		env += "KILN_CLIENT_ID=" + u.Name + "\n"
	}
	return env
}

// serverConf is the nats-server include with the kiln account and its users.
func (s *Set) serverConf() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# kiln accounts and users, written by `kiln broker init-auth` on %s.\n", s.made.UTC().Format(time.RFC3339))
	b.WriteString("# Public nkeys only: the seeds (<id>.nk) stay with the processes that use them.\n")
	fmt.Fprintf(&b, "accounts {\n  %s {\n    jetstream: enabled\n    users: [\n", s.cfg.Account)
	for _, u := range s.users {
		fmt.Fprintf(&b, "      # %s %s", u.Role, u.Name)
		if len(u.Clients) > 0 {
			fmt.Fprintf(&b, " (for %s)", strings.Join(u.Clients, ", "))
		}
		fmt.Fprintf(&b, "\n      {\n        nkey: %s\n", u.public)
		if p := u.Permissions(s.cfg.Topology); p != nil {
			fmt.Fprintf(&b, "        permissions: {\n          publish: { allow: %s }\n          subscribe: { allow: %s }\n",
				confList(p.Publish), confList(p.Subscribe))
			if p.AllowResponses {
				b.WriteString("          allow_responses: true\n")
			}
			b.WriteString("        }\n")
		}
		b.WriteString("      }\n")
	}
	b.WriteString("    ]\n  }\n}\n")
	return b.String()
}

// leafAuthConf is the include for the hub's leafnodes { } block: the user
// leaf nodes log in as.
func (s *Set) leafAuthConf() string {
	return fmt.Sprintf("# Include inside the hub's leafnodes { } block: the user leaf nodes log in as.\n"+
		"authorization {\n  user: leaf\n  password: %q\n  account: %s\n}\n", s.leafPassword, s.cfg.Account)
}

// leafRemoteConf is the include for a leaf Pi's leafnodes { } block: the
// hub to join and the login.
func (s *Set) leafRemoteConf() string {
	return fmt.Sprintf("# Include inside a leaf Pi's leafnodes { } block (deploy/nats/leaf.conf does).\n"+
		"remotes: [\n  { url: \"nats-leaf://leaf:%s@%s\", account: %s }\n]\n", s.leafPassword, s.cfg.Hub, s.cfg.Account)
}

func confList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
