package card

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/npu"
)

// What the card supervisor does about a wedged card (card-field-notes.md
// §1, docs/card.md "When the card wedges"):
//
//   - a health check after every load and reset executes one engine, not
//     only loads it: a wedged card loads but does not execute;
//   - a card found wedged while loading at start (a previous process died
//     with work in flight) is rebooted and loaded again, once;
//   - a lost card (OFFLINE, not connected, not answering, a hung execute)
//     gets nothing more submitted; the worker reboots it (Reboot) and exits
//     non-zero, and systemd starts a fresh process on the rebooted card.
//     The field rule is to exit rather than reload in the same process
//     (woolcoxm card_tools README: "The process exits; systemd/ops restarts
//     it"), and the runtime's state after a reboot under a live process is
//     unknown, so kiln exits.

var _ worker.Rebooter = (*Card)(nil)

// healthCheck executes one engine of dev (npu.Device.Canary). A failure
// while the device reports itself lost is returned as the LostError
// (IsLost); any other failure is a fault.
func (c *Card) healthCheck(ctx context.Context, dev *npu.Device) error {
	start := time.Now()
	name, err := dev.Canary(ctx)
	if errors.Is(err, npu.ErrNoEngine) {
		return nil
	}
	if err != nil {
		if derr := dev.Err(); derr != nil {
			return fmt.Errorf("card %d: health check (execute %s): %w", c.index, name, derr)
		}
		return fmt.Errorf("card %d: health check (execute %s): %w", c.index, name, err)
	}
	c.log.Info("card health check: executes", "engine", name, "took", time.Since(start).Round(time.Microsecond))
	return nil
}

// rebootAndOpen closes the device, reboots the card and opens it again.
func (c *Card) rebootAndOpen(ctx context.Context) (*npu.Device, error) {
	c.mu.Lock()
	if c.dev != nil {
		if err := c.dev.Close(ctx); err != nil {
			c.log.Warn("close card before its reboot", "err", err)
		}
		c.dev = nil
	}
	c.mu.Unlock()
	if err := c.reboot(ctx); err != nil {
		return nil, err
	}
	dev, err := c.openDevice(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.dev = dev
	c.mu.Unlock()
	return dev, nil
}

// Reboot implements worker.Rebooter: it unloads the models, closes the
// device (a device thread stuck in a hung call is left to the reboot,
// which wakes it) and reboots the card, waiting for it to come back. The
// Card serves nothing afterwards; the worker exits.
func (c *Card) Reboot(ctx context.Context) error {
	c.mu.Lock()
	if err := c.unloadLocked(ctx); err != nil {
		c.log.Warn("unload card before its reboot", "err", err)
	}
	c.dev, c.models = nil, map[string]*servedModel{}
	c.mu.Unlock()
	return c.reboot(ctx)
}

func (c *Card) reboot(ctx context.Context) error {
	if c.lib == "" {
		return nil
	}
	return npu.Reboot(ctx, npu.RebootConfig{
		Library: c.lib, Device: c.deviceID, Index: c.index, Timeout: c.enumerate, Logger: c.log,
	})
}
