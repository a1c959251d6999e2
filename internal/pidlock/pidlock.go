// Package pidlock owns kiln's exclusive process locks: an flock on a file
// that holds the PID of the process that holds it. The kernel drops the
// lock when the process dies, so a crash never leaves a stale lock behind.
// The broker locks its store folder with it, a worker its card.
package pidlock

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
)

// ErrLocked is matched by the error of Lock when another process (or
// another Lock in this one) holds the file.
var ErrLocked = errors.New("pidlock: held by another process")

// HeldError says who holds a lock.
type HeldError struct {
	Path string
	PID  string // the holder's PID as the file says, "unknown" when unreadable
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("%s is held by process %s", e.Path, e.PID)
}

// Is matches ErrLocked.
func (e *HeldError) Is(target error) bool { return target == ErrLocked }

// Lock is a held lock.
type Lock struct {
	f    *os.File
	once sync.Once
}

// Acquire takes the exclusive lock of path (creating it and its folder)
// without waiting, and writes this process's PID into it. When someone
// else holds it the error is a *HeldError (matching ErrLocked).
func Acquire(path string) (*Lock, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("pidlock: folder of %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("pidlock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &HeldError{Path: path, PID: Holder(path)}
		}
		return nil, fmt.Errorf("pidlock: %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &Lock{f: f}, nil
}

// Holder is the PID written in the lock file at path, "unknown" when it
// cannot be read.
func Holder(path string) string {
	b, _ := os.ReadFile(path)
	pid := string(bytes.TrimSpace(b))
	if _, err := strconv.Atoi(pid); err != nil {
		return "unknown"
	}
	return pid
}

// Release drops the lock (nil-safe, idempotent).
func (l *Lock) Release() {
	if l == nil {
		return
	}
	l.once.Do(func() {
		_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
		l.f.Close()
	})
}
