// Package e2e tests kiln across processes: a real embedded broker, workers
// and clients in separate processes (this test binary re-executed in a
// role), kill -9 and SIGTERM of workers mid-job, kill -9 of the broker
// mid-stream.
package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kiln-project/kiln/broker"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/echo"
	"github.com/kiln-project/kiln/worker"
)

// Environment of a re-executed child.
const (
	envRole    = "KILN_E2E_ROLE"    // broker, worker or client
	envURL     = "KILN_E2E_URL"     // broker URL
	envListen  = "KILN_E2E_LISTEN"  // broker: host:port
	envData    = "KILN_E2E_DATA"    // broker: store folder
	envName    = "KILN_E2E_NAME"    // worker name / client id
	envAckWait = "KILN_E2E_ACKWAIT" // topology ack wait
	envGrace   = "KILN_E2E_GRACE"   // worker shutdown grace
	envJobs    = "KILN_E2E_JOBS"    // client: jobs to run
	envSlots   = "KILN_E2E_SLOTS"   // worker: echo jobs run at once (default 1)
)

func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case "broker":
		os.Exit(childBroker())
	case "worker":
		os.Exit(childWorker())
	case "client":
		os.Exit(childClient())
	}
	os.Exit(m.Run())
}

func childTopology() topology.Config {
	ack, _ := time.ParseDuration(os.Getenv(envAckWait))
	return topology.Config{AckWait: ack, HeartbeatInterval: time.Second}
}

// childBroker runs the embedded broker on KILN_E2E_LISTEN with its store in
// KILN_E2E_DATA, as `kiln broker --listen … --data …` does, prints "ready"
// once it accepts connections with the topology in place, and serves until
// SIGTERM.
func childBroker() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	b, err := broker.New(broker.Config{Listen: os.Getenv(envListen), StoreDir: os.Getenv(envData), Topology: childTopology(),
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))})
	if err == nil {
		err = b.Start(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Shutdown(sctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// childWorker serves the echo model until SIGTERM, like `kiln worker`, and
// reconnects at once (and forever) to a broker that went away.
func childWorker() int {
	nc, err := nats.Connect(os.Getenv(envURL), nats.ReconnectWait(20*time.Millisecond), nats.MaxReconnects(-1))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer nc.Close()
	grace, _ := time.ParseDuration(os.Getenv(envGrace))
	cfg := worker.Config{Name: os.Getenv(envName), Topology: childTopology(), ShutdownGrace: grace}
	if n, _ := strconv.Atoi(os.Getenv(envSlots)); n > 1 {
		cfg.Chat = map[string]worker.Handler[schema.ChatJob]{"echo": echo.Slots(echo.Chat, n)}
		cfg.MaxJobs = n
	}
	return echo.RunWorker(nc, cfg)
}

// childClient runs KILN_E2E_JOBS chat jobs one after another and checks
// that each answer is its own.
func childClient() int {
	nc, err := nats.Connect(os.Getenv(envURL))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer nc.Close()
	c, err := client.New(nc, client.WithClientID(os.Getenv(envName)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	n, _ := strconv.Atoi(os.Getenv(envJobs))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range n {
		words := fmt.Sprintf("%s job %d", os.Getenv(envName), i)
		var streamed strings.Builder
		res, err := c.Chat(ctx, &schema.ChatJob{JobHeader: schema.JobHeader{Model: "echo"},
			Messages: []schema.Message{{Role: "user", Content: words}}}, func(ev schema.Event) error {
			streamed.WriteString(ev.Text)
			return nil
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if res.Text != "echo: "+words || streamed.String() != res.Text {
			fmt.Fprintf(os.Stderr, "job %d: got %q, streamed %q\n", i, res.Text, streamed.String())
			return 1
		}
	}
	return 0
}

// child starts this test binary in a role; it is killed at test end.
func child(t *testing.T, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd
}
