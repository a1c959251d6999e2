package wait

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestForReturnsOnceTheConditionHolds(t *testing.T) {
	calls := 0
	For(t, time.Minute, time.Millisecond, func() error {
		if calls++; calls < 3 {
			return fmt.Errorf("call %d", calls)
		}
		return nil
	})
	if calls != 3 {
		t.Fatalf("cond called %d times, want 3 (until it held, not after)", calls)
	}
}

func TestPollGivesUpWithTheLastError(t *testing.T) {
	errNotYet := errors.New("not yet")
	calls := 0
	err := Poll(0, time.Millisecond, func() error {
		calls++
		return fmt.Errorf("call %d: %w", calls, errNotYet)
	})
	if !errors.Is(err, errNotYet) || calls != 1 || err.Error() != "gave up after 0s: call 1: not yet" {
		t.Fatalf("Poll = %v after %d calls, want the first call's error", err, calls)
	}
}
