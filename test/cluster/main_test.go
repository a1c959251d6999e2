// Package cluster tests kiln on real brokers in their own processes: the
// kiln binary's `kiln broker` (nats-server, embedded) as a single node and
// as a 3-node JetStream cluster built from deploy/nats, workers in separate
// processes (this test binary re-executed with the echo handlers), kill -9
// of stream leaders and workers, broker permissions from `kiln broker
// init-auth`, and a bounded queue under load.
//
// KILN_CLUSTER_LOGDIR=DIR keeps every child process's full stderr in DIR
// (with KILN_DEBUG=1 the brokers log their Raft elections too).
package cluster

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/test/echo"
	"github.com/kiln-project/kiln/worker"
)

// Environment of a re-executed worker.
const (
	envRole    = "KILN_CLUSTER_ROLE"    // "worker"
	envURL     = "KILN_CLUSTER_URL"     // broker URLs, comma-separated
	envName    = "KILN_CLUSTER_NAME"    // worker name
	envNkey    = "KILN_CLUSTER_NKEY"    // seed file, "" for none
	envAckWait = "KILN_CLUSTER_ACKWAIT" // topology ack wait
	envTLSCA   = "KILN_CLUSTER_TLSCA"   // CA file of the broker's certificate, "" for none
)

// kilnBin is the kiln binary TestMain builds.
var kilnBin string

func TestMain(m *testing.M) {
	if os.Getenv(envRole) == "worker" {
		os.Exit(childWorker())
	}
	dir, err := os.MkdirTemp("", "kiln-cluster-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	kilnBin = filepath.Join(dir, "kiln")
	build := exec.Command("go", "build", "-o", kilnBin, "github.com/kiln-project/kiln/cmd/kiln")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building kiln:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// childWorker serves the echo model until SIGTERM, reconnecting across
// node loss like `kiln worker`.
func childWorker() int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	opts := []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond), nats.Name("worker")}
	if seed := os.Getenv(envNkey); seed != "" {
		o, err := nats.NkeyOptionFromSeed(seed)
		if err != nil {
			log.Error("nkey", "err", err)
			return 1
		}
		opts = append(opts, o)
	}
	if ca := os.Getenv(envTLSCA); ca != "" {
		opts = append(opts, nats.RootCAs(ca))
	}
	nc, err := nats.Connect(os.Getenv(envURL), opts...)
	if err != nil {
		log.Error("connect", "err", err)
		return 1
	}
	defer nc.Close()
	ack, _ := time.ParseDuration(os.Getenv(envAckWait))
	return echo.RunWorker(nc, worker.Config{
		Name:          os.Getenv(envName),
		Topology:      topology.Config{AckWait: ack, HeartbeatInterval: time.Second},
		ShutdownGrace: 5 * time.Second,
		Logger:        log,
	})
}

// proc is a child process, killed at test end.
type proc struct {
	name  string
	cmd   *exec.Cmd
	done  chan struct{} // closed when the process has ended
	ready chan struct{} // closed when a stderr line had the ready string

	mu   sync.Mutex
	tail []string // last stderr lines
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// kill sends SIGKILL and waits for the process to end.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (p *proc) lastLines() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

// wait returns once the process is ready; it fails the test if it exits
// first or takes more than 40 s.
func (p *proc) wait(t testing.TB) {
	t.Helper()
	select {
	case <-p.ready:
	case <-p.done:
		t.Fatalf("%s exited before it was ready (%v):\n%s", p.name, p.cmd.ProcessState, p.lastLines())
	case <-time.After(40 * time.Second):
		t.Fatalf("%s not ready after 40 s:\n%s", p.name, p.lastLines())
	}
}

// peakRSS is the process's peak resident memory (VmHWM) in bytes.
func (p *proc) peakRSS(t testing.TB) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid()))
	if err != nil {
		t.Fatalf("reading the memory of process %d: %v", p.pid(), err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM for process %d", p.pid())
	return 0
}

// start runs cmd without waiting; p.ready closes at the first stderr line
// that contains ready ("" never).
func start(t testing.TB, cmd *exec.Cmd, name, ready string) *proc {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), ready: make(chan struct{})}
	var once sync.Once
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		var logf *os.File
		if dir := os.Getenv("KILN_CLUSTER_LOGDIR"); dir != "" { // debugging: every line kept
			logf, _ = os.Create(filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".log"))
			defer logf.Close()
		}
		for sc.Scan() {
			line := sc.Text()
			if logf != nil {
				fmt.Fprintln(logf, line)
			}
			p.mu.Lock()
			// A route to a killed node fails every second: not worth keeping.
			if !strings.Contains(line, "Error trying to connect to route") {
				p.tail = append(p.tail, line)
				if len(p.tail) > 40 {
					p.tail = p.tail[1:]
				}
			}
			p.mu.Unlock()
			if ready != "" && strings.Contains(line, ready) {
				once.Do(func() { close(p.ready) })
			}
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			t.Logf("%s (pid %d) last stderr lines:\n%s", name, cmd.Process.Pid, p.lastLines())
		}
	})
	return p
}

// freePort reserves a loopback port below the kernel's ephemeral range
// (which starts at 32768): a port from "listen on :0" could be handed to
// some outgoing connection as its source port before the broker binds it.
func freePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		port := 20000 + mrand.IntN(12000)
		if portsGiven[port] {
			continue
		}
		portsGiven[port] = true
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		l.Close()
		return port
	}
	t.Fatal("no free port in 20000-32000")
	return 0
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{} // never hand out a port twice
)

// node is one `kiln broker` process and how to start it again.
type node struct {
	name string
	port int
	url  string
	args []string
	env  []string
	p    *proc
}

// kilnTry runs a kiln sub-command to completion and returns its output.
func kilnTry(t testing.TB, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, kilnBin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// kiln runs a kiln sub-command to completion.
func kiln(t testing.TB, env []string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, kilnBin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kiln %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// start starts (or restarts) n and waits until it has provisioned.
func (n *node) start(t testing.TB) {
	t.Helper()
	n.launch(t)
	n.p.wait(t)
}

func (n *node) launch(t testing.TB) {
	cmd := exec.Command(kilnBin, append([]string{"broker", "--listen", fmt.Sprintf("127.0.0.1:%d", n.port)}, n.args...)...)
	cmd.Env = append(os.Environ(), append([]string{"KILN_LOG_FORMAT=json"}, n.env...)...)
	n.p = start(t, cmd, "broker "+n.name, "broker ready")
}

// singleNode is a `kiln broker` on its own; extra are more flags.
func singleNode(t testing.TB, extra ...string) *node {
	t.Helper()
	n := &node{name: "single", port: freePort(t), args: append([]string{"--data", t.TempDir()}, extra...)}
	n.url = fmt.Sprintf("nats://127.0.0.1:%d", n.port)
	n.start(t)
	return n
}

// startCluster starts three `kiln broker` processes configured by
// deploy/nats/cluster.conf (including authDir/auth.conf, from `kiln broker
// init-auth`) on loopback ports, and waits until each has provisioned.
func startCluster(t testing.TB, authDir string, extra ...string) []*node {
	t.Helper()
	conf := filepath.Join(authDir, "cluster.conf")
	src, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "nats", "cluster.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, src, 0o600); err != nil {
		t.Fatal(err)
	}
	var routes []string
	var nodes []*node
	for i := range 3 {
		cport := freePort(t)
		routes = append(routes, fmt.Sprintf("KILN_ROUTE_%d=nats-route://127.0.0.1:%d", i+1, cport))
		n := &node{name: fmt.Sprintf("n%d", i+1), port: freePort(t)}
		n.url = fmt.Sprintf("nats://127.0.0.1:%d", n.port)
		n.args = append([]string{"--config", conf, "--data", t.TempDir()}, extra...)
		n.env = []string{"KILN_NODE=" + n.name, fmt.Sprintf("KILN_CLUSTER_LISTEN=127.0.0.1:%d", cport)}
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		n.env = append(n.env, routes...)
		n.launch(t)
	}
	for _, n := range nodes { // each provisions once the meta leader is elected
		n.p.wait(t)
	}
	return nodes
}

func urls(nodes []*node) string {
	var u []string
	for _, n := range nodes {
		u = append(u, n.url)
	}
	return strings.Join(u, ",")
}

// startWorker starts an echo worker process on urls; nkey is its seed file
// ("" for none), env more of its environment. It returns once the process
// runs (not yet registered).
func startWorker(t testing.TB, urls, name, nkey string, ackWait time.Duration, env ...string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"=worker", envURL+"="+urls, envName+"="+name,
		envNkey+"="+nkey, envAckWait+"="+ackWait.String())
	cmd.Env = append(cmd.Env, env...)
	return start(t, cmd, "worker "+name, "")
}

func repoRoot(t testing.TB) string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}
