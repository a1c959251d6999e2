package auth

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/kiln-project/kiln/broker/topology"
)

// update rewrites testdata: go test ./broker/auth -run ConfFiles -update.
var update = flag.Bool("update", false, "rewrite testdata with what the code writes now")

// TestConfFilesAsWritten compares the includes of a set with fixed keys,
// time and password with testdata: what `kiln broker init-auth` writes.
// Brokers in the field run these files, so they change only on purpose
// (then regenerate testdata with -update and say why). Last changes: a
// controller publishes jobs, cancels and cancel keys under its own id only
// (kiln.jobs.*.*.*.<id>, kiln.cancel.<id>.*, $KV.kiln_cancel.<id>.*), a
// worker hears cancels of both shapes (kiln.cancel.>) and reads the worker
// registry (its janitor); the gateway role (a controller for itself and its
// API keys' clients, following their wakes and results, and an observer),
// with the controllers' subjects in the gateway's order (their own, then
// the shared ones).
func TestConfFilesAsWritten(t *testing.T) {
	for _, prefix := range []string{"kiln", "art"} {
		s := &Set{
			cfg:          Config{Topology: topology.Config{Prefix: prefix}.WithDefaults(), Account: DefaultAccount, Hub: DefaultHub},
			leafPassword: "LEAFPWD",
			made:         time.Date(2026, 12, 2, 21, 42, 27, 0, time.UTC),
		}
		ids := []Identity{{Name: WorkerName, Role: RoleWorker}, {Name: AdminName, Role: RoleAdmin}, {Name: "room-1", Role: RoleController},
			{Name: "room-2", Role: RoleController}, {Name: "lobby", Role: RoleObserver},
			{Name: "gateway", Role: RoleGateway, Clients: []string{"room-1", "kiosk"}}}
		for i, id := range ids {
			s.users = append(s.users, user{Identity: id, seed: []byte("SEED" + id.Name), public: "UPUB" + string(rune('A'+i))})
		}
		for file, got := range map[string]string{
			"auth-" + prefix + ".conf": s.serverConf(),
			"leaf-auth.conf":           s.leafAuthConf(),
			"leaf-remote.conf":         s.leafRemoteConf(),
		} {
			if *update {
				if err := os.WriteFile(filepath.Join("testdata", file), []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(filepath.Join("testdata", file))
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("%s differs from testdata:\n%s", file, got)
			}
		}
	}
}

func TestNewChecksIDs(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Controllers: []string{"worker"}}, `id "worker": want a subject token (letters, digits, '-', '_') other than worker and admin`},
		{Config{Observers: []string{"admin"}}, `id "admin": want a subject token`},
		{Config{Controllers: []string{"room.1"}}, `id "room.1": want a subject token`},
		{Config{Controllers: []string{"a", "b"}, Observers: []string{"a"}}, `id "a" given twice`},
	} {
		if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v): %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

func TestWrite(t *testing.T) {
	s, err := New(Config{Controllers: []string{"room-1"}, Observers: []string{"lobby"}, TLSHosts: []string{"pi1.local", "10.0.0.5"}})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "etc-kiln")
	written, err := s.Write(dir, &WriteOptions{SeedDir: "/etc/kiln"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range written {
		names = append(names, filepath.Base(p))
		st, err := os.Stat(p)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v, want 0600", p, err, st.Mode())
		}
	}
	want := []string{"admin.env", "admin.nk", "auth.conf", "ca.pem", "leaf-auth.conf", "leaf-remote.conf", "lobby.env", "lobby.nk",
		"room-1.env", "room-1.nk", "server-cert.pem", "server-key.pem", "tls.conf", "worker.env", "worker.nk"}
	if !slices.Equal(names, want) {
		t.Fatalf("wrote %v, want %v", names, want)
	}

	read := func(name string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	conf := read("auth.conf")
	for _, u := range s.users {
		kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(read(u.Name + ".nk"))))
		if err != nil {
			t.Fatalf("%s.nk: %v", u.Name, err)
		}
		pub, _ := kp.PublicKey()
		if !strings.Contains(conf, "nkey: "+pub+"\n") {
			t.Errorf("auth.conf does not list %s's key %s", u.Name, pub)
		}
	}
	if got := read("room-1.env"); got != "# kiln controller \"room-1\": systemd EnvironmentFile\nKILN_NKEY=/etc/kiln/room-1.nk\nKILN_CLIENT_ID=room-1\n" {
		t.Errorf("room-1.env:\n%s", got)
	}
	if got := read("worker.env"); got != "# kiln worker \"worker\": systemd EnvironmentFile\nKILN_NKEY=/etc/kiln/worker.nk\n" {
		t.Errorf("worker.env:\n%s", got)
	}
	if got := read("tls.conf"); !strings.Contains(got, `cert_file: "/etc/kiln/server-cert.pem"`) || !strings.Contains(got, `key_file: "/etc/kiln/server-key.pem"`) {
		t.Errorf("tls.conf:\n%s", got)
	}

	// The server certificate is the CA's, for every host given.
	block, _ := pem.Decode([]byte(read("server-cert.pem")))
	if block == nil {
		t.Fatal("server-cert.pem: no PEM block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(read("ca.pem"))) {
		t.Fatal("ca.pem: no certificate")
	}
	for _, host := range []string{"pi1.local", "10.0.0.5"} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: host}); err != nil {
			t.Errorf("server certificate for %s: %v", host, err)
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: "elsewhere.local"}); err == nil {
		t.Error("the server certificate verifies for a host it was not made for")
	}

	// A second set does not overwrite the first unless forced.
	again, err := New(Config{Controllers: []string{"room-1"}})
	if err != nil {
		t.Fatal(err)
	}
	var pathErr *fs.PathError
	if _, err := again.Write(dir, nil); !errors.As(err, &pathErr) || !errors.Is(err, fs.ErrExist) || filepath.Dir(pathErr.Path) != dir {
		t.Fatalf("writing over a set: %v, want a *fs.PathError wrapping fs.ErrExist", err)
	}
	if read("auth.conf") != conf {
		t.Fatal("a refused Write changed auth.conf")
	}
	if _, err := again.Write(dir, &WriteOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if read("auth.conf") == conf {
		t.Fatal("a forced Write left auth.conf as it was")
	}
}
