package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-project/kiln/test/wait"
)

// envFile reads KEY=VALUE lines, mapping the installed paths (/etc/kiln,
// /var/lib/kiln) into root.
func envFile(t *testing.T, root, name string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "etc", "kiln", name))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		for _, dir := range []string{"/etc/kiln", "/var/lib/kiln"} {
			if strings.HasPrefix(v, dir) {
				v = root + v
			}
		}
		env[k] = v
	}
	return env
}

// TestInstallSinglePi installs with deploy/install.sh into a folder (as on
// a Pi, without systemctl), then runs what the units run with the
// environment files the script wrote: the broker, a worker with its seed,
// and `kiln chat` as the controller init-auth made.
func TestInstallSinglePi(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	cmd := exec.Command(filepath.Join(repoRoot(t), "deploy", "install.sh"), "--binary", kilnBin, "--role", "single", "--cards", "2", "--root", root)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("install.sh: %v\n%s", err, out)
	}
	for _, f := range []string{"usr/local/bin/kiln", "etc/systemd/system/kiln-broker.service", "etc/systemd/system/kiln-worker@.service",
		"etc/kiln/single.conf", "etc/kiln/auth.conf", "etc/kiln/broker.env", "etc/kiln/worker.env", "etc/kiln/worker.nk", "etc/kiln/controller-1.nk"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("install.sh did not write %s", f)
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "etc/kiln/worker.nk")); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("the worker's seed is readable by others: %v %v", fi.Mode(), err)
	}
	if !strings.Contains(string(out), "systemctl daemon-reload && systemctl enable --now kiln-broker.service kiln-worker@0.service kiln-worker@1.service") {
		t.Errorf("install.sh output does not say how to start the units:\n%s", out)
	}
	if sa, err := exec.LookPath("systemd-analyze"); err == nil {
		for _, unit := range []string{"kiln-broker.service", "kiln-worker@.service"} {
			// The only complaint allowed: the binary is not at /usr/local/bin on this machine.
			vout, _ := exec.Command(sa, "verify", filepath.Join(root, "etc/systemd/system", unit)).CombinedOutput()
			for _, line := range strings.Split(strings.TrimSpace(string(vout)), "\n") {
				if line != "" && !strings.Contains(line, "/usr/local/bin/kiln") {
					t.Errorf("systemd-analyze verify %s: %s", unit, line)
				}
			}
		}
	}

	// What kiln-broker.service runs, with broker.env (the port moved off 4222).
	be := envFile(t, root, "broker.env")
	n := &node{name: "installed", port: freePort(t)}
	n.url = fmt.Sprintf("nats://127.0.0.1:%d", n.port)
	n.env = []string{"KILN_CONFIG=" + be["KILN_CONFIG"], "KILN_DATA=" + be["KILN_DATA"]}
	n.start(t)
	// What kiln-worker@0.service runs with worker.env: here the echo worker.
	we := envFile(t, root, "worker.env")
	startWorker(t, n.url, "card0", we["KILN_NKEY"], 10*time.Second)
	ce := envFile(t, root, "controller-1.env")
	// The worker may not have registered yet.
	wait.For(t, 30*time.Second, 200*time.Millisecond, func() error {
		cmd := exec.CommandContext(t.Context(), filepath.Join(root, "usr/local/bin/kiln"), "chat", "--model", "echo", "installed and running")
		cmd.Env = append(os.Environ(), "KILN_NATS_URL="+n.url, "KILN_NKEY="+ce["KILN_NKEY"], "KILN_CLIENT_ID="+ce["KILN_CLIENT_ID"])
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "echo: installed and running") {
			return fmt.Errorf("kiln chat as controller-1: %v\n%s", err, out)
		}
		return nil
	})
}

// TestInstallClusterNodes installs the three nodes of a cluster as the
// walk-through does: the first makes the credentials, the others refuse to
// start without a copy of them, then each gets its own node name and the
// same three routes.
func TestInstallClusterNodes(t *testing.T) {
	t.Parallel()
	script := filepath.Join(repoRoot(t), "deploy", "install.sh")
	install := func(root, node string) ([]byte, error) {
		return exec.Command(script, "--binary", kilnBin, "--role", "cluster", "--node", node,
			"--peers", "pi1.local,pi2.local,pi3.local", "--cards", "1", "--root", root).CombinedOutput()
	}
	pi1 := t.TempDir()
	if out, err := install(pi1, "pi1"); err != nil {
		t.Fatalf("install on pi1: %v\n%s", err, out)
	}
	pi2 := t.TempDir()
	if out, err := install(pi2, "pi2"); err == nil || !strings.Contains(string(out), "copy its /etc/kiln here") {
		t.Fatalf("install on pi2 without pi1's credentials: %v\n%s", err, out)
	}
	if out, err := exec.Command("cp", "-a", filepath.Join(pi1, "etc", "kiln"), filepath.Join(pi2, "etc")).CombinedOutput(); err != nil {
		t.Fatalf("copying /etc/kiln: %v %s", err, out)
	}
	if err := os.Remove(filepath.Join(pi2, "etc", "kiln", "broker.env")); err != nil { // pi1's node name
		t.Fatal(err)
	}
	if out, err := install(pi2, "pi2"); err != nil {
		t.Fatalf("install on pi2: %v\n%s", err, out)
	}
	for node, root := range map[string]string{"pi1": pi1, "pi2": pi2} {
		be := envFile(t, root, "broker.env")
		if be["KILN_NODE"] != node || be["KILN_ROUTE_1"] != "nats-route://pi1.local:6222" || be["KILN_ROUTE_3"] != "nats-route://pi3.local:6222" ||
			be["KILN_CONFIG"] != root+"/etc/kiln/cluster.conf" {
			t.Errorf("%s broker.env: %v", node, be)
		}
		we := envFile(t, root, "worker.env")
		if !strings.Contains(we["KILN_NATS_URL"], "nats://pi2.local:4222") {
			t.Errorf("%s worker.env: %v", node, we)
		}
	}
	a1, _ := os.ReadFile(filepath.Join(pi1, "etc", "kiln", "auth.conf"))
	a2, _ := os.ReadFile(filepath.Join(pi2, "etc", "kiln", "auth.conf"))
	if len(a1) == 0 || string(a1) != string(a2) {
		t.Error("the nodes do not share one auth.conf")
	}
}
