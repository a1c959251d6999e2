package card

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kiln-project/kiln/internal/pidlock"
)

// A worker holds its card's lock for its whole life; `kiln card` and `kiln
// models check`, which load models from a second process, take it for their
// run and so refuse a card a worker holds (a second process loading onto a
// card mid-graph is a wedge vector, card-field-notes.md §1.1 and §6.1.5).

// ErrCardHeld is matched by the error of Lock when another process holds
// the card.
var ErrCardHeld = errors.New("card: held by another kiln process")

// DefaultLockDir is where the card locks live when KILN_LOCK_DIR is unset:
// /run/kiln when it exists (the systemd units create it), else kiln in the
// temp folder.
func DefaultLockDir() string {
	if fi, err := os.Stat("/run/kiln"); err == nil && fi.IsDir() {
		return "/run/kiln"
	}
	return filepath.Join(os.TempDir(), "kiln")
}

// Lock takes the lock of card index in dir ("" = DefaultLockDir()), or
// says which process holds it. Release it when done with the card.
func Lock(dir string, index int) (*pidlock.Lock, error) {
	if dir == "" {
		dir = DefaultLockDir()
	}
	l, err := pidlock.Acquire(filepath.Join(dir, fmt.Sprintf("card%d.lock", index)))
	var held *pidlock.HeldError
	if errors.As(err, &held) {
		return nil, fmt.Errorf("%w: card %d is held by process %s (a kiln worker: stop it first, e.g. systemctl stop kiln-worker@%d; lock %s)",
			ErrCardHeld, index, held.PID, index, held.Path)
	}
	if err != nil {
		return nil, fmt.Errorf("card %d: lock: %w", index, err)
	}
	return l, nil
}
