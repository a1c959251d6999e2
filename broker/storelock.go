package broker

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

// ErrStoreLocked is returned by Start when another process (or another
// Broker in this one) holds the store folder: two servers on one store
// corrupt it.
var ErrStoreLocked = errors.New("broker: store in use")

// storeLockName is the lock file in the store folder; it holds the PID of
// the process that holds it.
const storeLockName = "kiln.lock"

// storeLock is an exclusive flock on <store>/kiln.lock, held for the life of
// the broker and released by the kernel when the process dies, so a crash
// never leaves a stale lock behind.
type storeLock struct {
	f    *os.File
	once sync.Once
}

// lockStore takes the store's lock or says who holds it.
func lockStore(dir string) (*storeLock, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("broker: store folder: %w", err)
	}
	path := filepath.Join(dir, storeLockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("broker: store lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			pid := string(bytes.TrimSpace(holder))
			if _, perr := strconv.Atoi(pid); perr != nil {
				pid = "unknown"
			}
			return nil, fmt.Errorf("%w: %s is held by process %s (another kiln up or kiln broker); stop it or use another KILN_DATA",
				ErrStoreLocked, dir, pid)
		}
		return nil, fmt.Errorf("broker: store lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &storeLock{f: f}, nil
}

// release drops the lock (nil-safe).
func (l *storeLock) release() {
	if l == nil {
		return
	}
	l.once.Do(func() {
		_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
		l.f.Close()
	})
}
