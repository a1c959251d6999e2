package pidlock

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// A held lock refuses a second holder, naming the first's PID; released,
// it can be taken again.
func TestAcquireRefusesASecondHolder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "card0.lock")
	l, err := Acquire(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Acquire(path)
	var held *HeldError
	if !errors.Is(err, ErrLocked) || !errors.As(err, &held) || held.PID != strconv.Itoa(os.Getpid()) {
		t.Fatalf("second Acquire = %v, want ErrLocked naming process %d", err, os.Getpid())
	}
	l.Release()
	l.Release() // idempotent
	again, err := Acquire(path)
	if err != nil {
		t.Fatalf("Acquire after Release: %v", err)
	}
	again.Release()
	var none *Lock
	none.Release() // nil-safe
}
