package card

import (
	"errors"

	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/npu"
)

// IsFault reports whether err is a device fault: an error of the card
// runtime (*axcl.Error), a lost card (npu.ErrLost) or a closed device
// (npu.ErrStopped). After one the worker hands the job back and resets the
// card; any other error of a handler is the job's or the package's.
func IsFault(err error) bool {
	var ae *axcl.Error
	return errors.As(err, &ae) || errors.Is(err, npu.ErrLost) || errors.Is(err, npu.ErrStopped)
}

// IsLost reports whether err says the card is lost (npu.ErrLost: a hung
// execute, a card that stopped answering). A lost card does not come back
// with a reset: the process exits so that systemd restarts it.
func IsLost(err error) bool { return errors.Is(err, npu.ErrLost) }

// Fault implements worker.Device: IsFault, or any error while the device
// reports itself unusable.
func (c *Card) Fault(err error) bool {
	if IsFault(err) {
		return true
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.dev != nil && c.dev.Err() != nil
}

// Lost implements worker.Device: the device's error when the card is lost
// (IsLost). The worker then stops and the process exits.
func (c *Card) Lost() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.lost != nil {
		return c.lost
	}
	if c.dev == nil {
		return nil
	}
	if err := c.dev.Err(); IsLost(err) {
		return err
	}
	return nil
}
