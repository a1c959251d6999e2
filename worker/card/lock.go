package card

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kiln-project/kiln/internal/pidlock"
	"github.com/kiln-project/kiln/worker/npu"
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

// Lock takes the lock of the card whose chip id (npu.Card.UID) is chip in
// dir ("" = DefaultLockDir()), or says which process holds it; index is the
// card's index, named in messages, and the lock's key when the runtime
// cannot tell the chip id (chip ""). Keying by the chip id makes the lock
// follow the card, whatever its index on this host. Release it when done.
func Lock(dir string, index int, chip string) (*pidlock.Lock, error) {
	if dir == "" {
		dir = DefaultLockDir()
	}
	name := "card-" + chip + ".lock"
	if chip == "" {
		name = fmt.Sprintf("card%d.lock", index)
	}
	l, err := pidlock.Acquire(filepath.Join(dir, name))
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

// LockIndex takes the lock of card index of the runtime at lib ("" =
// axcl.LibraryPath()), asking the runtime for its chip id first (without
// touching the card's models): for the commands that use a card for a
// moment (kiln card inspect, reboot, probe, kiln models check).
func LockIndex(ctx context.Context, lib, dir string, index int) (*pidlock.Lock, error) {
	info, err := npu.CardInfo(ctx, lib)
	if err != nil {
		return nil, fmt.Errorf("card %d: %w", index, err)
	}
	chip := ""
	for _, c := range info.Cards {
		if c.Index == index {
			chip = c.UID
		}
	}
	return Lock(dir, index, chip)
}

// ChipID is the card's chip id as the runtime reported it at open ("" when
// it cannot tell, or without a card).
func (c *Card) ChipID() string { return c.chip }
