package broker_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/broker"
)

// TestMain lets this test binary stand in for a second kiln process that
// holds a store (KILN_TEST_HOLD_STORE=dir): it starts a broker there, says
// "ready" and runs until its stdin closes.
func TestMain(m *testing.M) {
	if dir := os.Getenv("KILN_TEST_HOLD_STORE"); dir != "" {
		b, err := broker.New(broker.Config{DontListen: true, StoreDir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err == nil {
			err = b.Start(context.Background())
		}
		if err != nil {
			println(err.Error())
			os.Exit(1)
		}
		println("ready")
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func newBroker(t *testing.T, dir string) *broker.Broker {
	t.Helper()
	b, err := broker.New(broker.Config{DontListen: true, StoreDir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSecondBrokerOnAStoreIsRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first := newBroker(t, dir)
	if err := first.Start(ctx(t)); err != nil {
		t.Fatal(err)
	}
	second := newBroker(t, dir)
	err := second.Start(ctx(t))
	if !errors.Is(err, broker.ErrStoreLocked) {
		t.Fatalf("second broker on %s: %v, want ErrStoreLocked", dir, err)
	}
	if !strings.Contains(err.Error(), "process "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("error does not name the holder's PID %d: %v", os.Getpid(), err)
	}
	if err := first.Shutdown(ctx(t)); err != nil {
		t.Fatal(err)
	}
	// Once the first has stopped, the store is free again.
	if err := second.Start(ctx(t)); err != nil {
		t.Fatalf("after the first stopped: %v", err)
	}
	_ = second.Shutdown(ctx(t))
}

func TestStoreHeldByAnotherProcess(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	holder := exec.Command(os.Args[0], "-test.run", "^$")
	holder.Env = append(os.Environ(), "KILN_TEST_HOLD_STORE="+dir)
	stdin, _ := holder.StdinPipe()
	stderr, _ := holder.StderrPipe()
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); _ = holder.Wait() })
	line, _ := bufio.NewReader(stderr).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		t.Fatalf("holder process: %q", line)
	}
	err := newBroker(t, dir).Start(ctx(t))
	if !errors.Is(err, broker.ErrStoreLocked) || !strings.Contains(err.Error(), "process "+strconv.Itoa(holder.Process.Pid)) {
		t.Fatalf("store held by process %d: %v", holder.Process.Pid, err)
	}
	// The holder dies without cleaning up (kill -9): the kernel drops its lock.
	_ = holder.Process.Kill()
	_ = holder.Wait()
	b := newBroker(t, dir)
	if err := b.Start(ctx(t)); err != nil {
		t.Fatalf("after the holder was killed: %v", err)
	}
	_ = b.Shutdown(ctx(t))
}
