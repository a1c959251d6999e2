package broker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kiln-project/kiln/internal/pidlock"
)

// ErrStoreLocked is returned by Start when another process (or another
// Broker in this one) holds the store folder: two servers on one store
// corrupt it.
var ErrStoreLocked = errors.New("broker: store in use")

// storeLockName is the lock file in the store folder; it holds the PID of
// the process that holds it.
const storeLockName = "kiln.lock"

// storeLock is the store's pidlock, held for the life of the broker.
type storeLock = pidlock.Lock

// lockStore takes the store's lock or says who holds it.
func lockStore(dir string) (*storeLock, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("broker: store folder: %w", err)
	}
	l, err := pidlock.Acquire(filepath.Join(dir, storeLockName))
	var held *pidlock.HeldError
	if errors.As(err, &held) {
		return nil, fmt.Errorf("%w: %s is held by process %s (another kiln up or kiln broker); stop it or use another KILN_DATA",
			ErrStoreLocked, dir, held.PID)
	}
	if err != nil {
		return nil, fmt.Errorf("broker: store lock: %w", err)
	}
	return l, nil
}
