// Package wait owns waiting in tests: it polls a condition until it holds, the way nats-server's
// tests use checkFor, instead of a hand-written deadline loop in every test that waits for the
// system to catch up (a worker registering, a status changing, a stream electing a leader).
//
// Wait for conditions, not for time: the timeout only bounds a broken test, so make it generous.
// A condition reports why it does not hold yet as an error, and the last one is what a test
// that gives up prints.
package wait

import (
	"fmt"
	"testing"
	"time"
)

// For calls cond every interval until it returns nil. If timeout passes first, For fails tb
// (tb.Fatal) with the last error cond returned. cond runs on the calling goroutine, so it may use
// tb itself; call For from the test's goroutine.
func For(tb testing.TB, timeout, interval time.Duration, cond func() error) {
	tb.Helper()
	if err := Poll(timeout, interval, cond); err != nil {
		tb.Fatal(err)
	}
}

// Poll calls cond every interval until it returns nil, and then returns nil. If timeout passes
// first, it returns the last error cond returned, wrapped. It is For for a test that wants to
// report with tb.Error and go on.
func Poll(timeout, interval time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("gave up after %v: %w", timeout, err)
		}
		time.Sleep(interval)
	}
}
