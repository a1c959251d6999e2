package npu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"time"

	"github.com/kiln-project/kiln/worker/axcl"
)

// A card can wedge: a process that dies with work in flight can drop it off
// the link, later calls say "device … is not connected", and a load-only
// check still passes while every execute hangs. This file holds what the
// device thread does about it (card-field-notes.md §1): it waits for a
// card that has not enumerated yet, stops submitting once the card is gone
// (a failing call, or the runtime's OFFLINE callback), releases the runtime
// after a panic, proves the card executes (Canary) and reboots it (Reboot).

// More sentinels.
var (
	// ErrOffline is the cause of a LostError after the runtime reported
	// the card OFFLINE through its status callback.
	ErrOffline = errors.New("npu: the runtime reports the card offline")
	// ErrNoReboot: the runtime does not export axclrtRebootDevice. It also
	// matches axcl.ErrUnsupported.
	ErrNoReboot = fmt.Errorf("npu: the runtime cannot reboot the card: %w", axcl.ErrUnsupported)
	// ErrNotEnumerated: the card did not show up in the runtime's device
	// list in time.
	ErrNotEnumerated = errors.New("npu: card not enumerated")
	// ErrNoEngine: Canary found no model loaded on the card.
	ErrNoEngine = errors.New("npu: no engine loaded to execute")
)

// pollEvery is how often the enumeration waits poll the runtime (each poll
// may start the runtime over: about what a script polling axcl-smi does).
const pollEvery = 500 * time.Millisecond

// enumerate waits (bounded by EnumerateTimeout, logged) until the card of
// cfg.Index is listed and answers axclrtSetDevice, then leaves it set on
// the device thread. Only an empty list or "not connected" is waited for:
// an index past a non-empty list fails at once.
func (d *Device) enumerate() error {
	rt := d.rt
	start := time.Now()
	lastLog := time.Time{}
	for {
		ids, err := rt.DeviceList()
		if err != nil && !errors.Is(err, axcl.ErrDeviceNotConnected) {
			return fmt.Errorf("npu: list devices: %w", err)
		}
		if err == nil && len(ids) > 0 {
			if d.cfg.Index < 0 || d.cfg.Index >= len(ids) {
				return fmt.Errorf("npu: card index %d out of range: the runtime lists %d card(s) %v", d.cfg.Index, len(ids), ids)
			}
			d.id = ids[d.cfg.Index]
			err = rt.SetDevice(d.id)
			if err == nil {
				if !lastLog.IsZero() {
					d.log.Info("npu: card enumerated", "index", d.cfg.Index, "device", int(d.id), "after", time.Since(start).Round(time.Millisecond))
				}
				return nil
			}
			if !errors.Is(err, axcl.ErrDeviceNotConnected) {
				return fmt.Errorf("npu: set device %d: %w", d.id, err)
			}
		}
		waited := time.Since(start)
		if waited >= d.cfg.EnumerateTimeout {
			return fmt.Errorf("%w: card index %d not listed or not connected after %v (last: %v); check lspci and axcl-smi (docs/card.md)",
				ErrNotEnumerated, d.cfg.Index, d.cfg.EnumerateTimeout, err)
		}
		if time.Since(lastLog) >= 5*time.Second {
			d.log.Info("npu: waiting for the card to enumerate", "index", d.cfg.Index, "waited", waited.Round(time.Second),
				"limit", d.cfg.EnumerateTimeout)
			lastLog = time.Now()
		}
		select {
		case <-d.stop:
			return fmt.Errorf("npu: stopped while waiting for card index %d to enumerate", d.cfg.Index)
		case <-time.After(pollEvery):
		}
		// The runtime may enumerate only at axclInit: start it over when
		// this device is its only user.
		if err := reinit(rt, d.cfg.AXCLConfig); err != nil {
			return fmt.Errorf("npu: init runtime %s: %w", rt.Path(), err)
		}
	}
}

// reinit finalises and initialises rt again when the caller holds its only
// init reference; otherwise it does nothing.
func reinit(rt *axcl.Runtime, config string) error {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.inits[rt] != 1 {
		return nil
	}
	_ = rt.Finalize()
	if err := rt.Init(config); err != nil {
		delete(shared.inits, rt)
		return err
	}
	return nil
}

// watchStatus registers the device for the runtime's status callback
// (optional: runtimes without it report a lost card only by failing calls).
func (d *Device) watchStatus() {
	shared.mu.Lock()
	if shared.devices == nil {
		shared.devices = map[*Device]struct{}{}
	}
	shared.devices[d] = struct{}{}
	shared.mu.Unlock()
	rt := d.rt
	err := rt.WatchDeviceStatus(func(id axcl.DeviceID, s axcl.DeviceStatus) { statusChanged(rt, id, s) })
	if err != nil && !errors.Is(err, axcl.ErrUnsupported) {
		d.log.Warn("npu: device status callback not registered", "device", int(d.id), "err", err)
	}
}

// unwatch drops the device from the status registry (teardown).
func (d *Device) unwatch() {
	shared.mu.Lock()
	delete(shared.devices, d)
	shared.mu.Unlock()
}

// statusChanged is the runtime's status callback: an OFFLINE card is lost
// at once, so that nothing more is submitted to it.
func statusChanged(rt *axcl.Runtime, id axcl.DeviceID, s axcl.DeviceStatus) {
	shared.mu.Lock()
	var devs []*Device
	for d := range shared.devices {
		if d.rt == rt && d.id == id {
			devs = append(devs, d)
		}
	}
	shared.mu.Unlock()
	for _, d := range devs {
		d.log.Warn("npu: device status", "device", int(id), "status", s.String())
		if s == axcl.DeviceOffline {
			d.markLost(fmt.Errorf("%w (device %d)", ErrOffline, id), false)
		}
	}
}

// releaseAfterPanic tears the runtime down after a function run on the
// device thread panicked (device thread only): the state of the card's
// runtime is unknown and a process that dies holding it can wedge the card.
// Calls made afterwards return ErrStopped; the caller of the panicking
// function gets the panic back (Do).
func (d *Device) releaseAfterPanic() {
	d.log.Error("npu: a function panicked on the device thread: releasing the runtime", "device", int(d.id))
	d.stopOnce.Do(func() { close(d.stop) })
	d.teardown()
}

// refuse answers a request without running it (device thread, after a
// panic).
func (d *Device) refuse(r *request) {
	r.err = ErrStopped
	r.done <- struct{}{}
	r.fin.Store(true)
}

// Canary executes one engine on the card: the first model loaded, in its
// smallest shape group, with whatever its buffers hold. It proves the card
// executes and not only loads (a wedged card passes a load-only check,
// card-field-notes.md §1.2); run it between requests, after a load or a
// reset. ErrNoEngine without a model loaded. It returns the model's name.
func (d *Device) Canary(ctx context.Context) (string, error) {
	var name string
	err := d.Do(ctx, func(t *Thread) error {
		if len(d.models) == 0 {
			return ErrNoEngine
		}
		m := d.models[0]
		name = m.name
		return t.Execute(m, m.SmallestGroup())
	})
	return name, err
}

// smallestGroup is the shape group with the fewest input bytes.
func smallestGroup(groups []axcl.ShapeGroup) int {
	best, bestSize := 0, uint64(0)
	for g, grp := range groups {
		var n uint64
		for _, t := range grp.Inputs {
			n += t.Size
		}
		if g == 0 || n < bestSize {
			best, bestSize = g, n
		}
	}
	return best
}

// RebootConfig configures Reboot.
type RebootConfig struct {
	// Library is the path of libaxcl_rt.so ("" = axcl.LibraryPath()).
	Library string
	// AXCLConfig is the axcl.json passed to axclInit; "" for the defaults.
	AXCLConfig string
	// Device is the card's runtime device id (its PCIe bus number) when
	// known; 0 takes the id of card Index from the device list.
	Device axcl.DeviceID
	// Index is the card's index, used when Device is 0.
	Index int
	// Timeout bounds the wait for the card to come back. Default 60s (the
	// vendor's sample waits 60 s, card-field-notes.md §1.3).
	Timeout time.Duration
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// Reboot reboots a card's firmware (axclrtRebootDevice: every model,
// buffer and context on it is gone) and waits, bounded by cfg.Timeout,
// until the card is listed again and answers axclrtSetDevice (checked with
// SetDevice + ResetDevice, as axcl-smi's reboot does). Close every Device
// on the card first; a device thread stuck in a hung call is woken by the
// reboot. ErrNoReboot when the runtime cannot reboot, ErrNotEnumerated
// when the card does not come back in time. It runs on an OS thread of its
// own.
func Reboot(ctx context.Context, cfg RebootConfig) error {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	rt, err := loadRuntime(cfg.Library)
	if err != nil {
		return err
	}
	if !rt.HasReboot() {
		return fmt.Errorf("%w (%s has no axclrtRebootDevice; reboot by hand: docs/card.md)", ErrNoReboot, rt.Path())
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		done <- reboot(ctx, rt, cfg)
	}()
	return <-done
}

func reboot(ctx context.Context, rt *axcl.Runtime, cfg RebootConfig) (err error) {
	if err := acquireInit(rt, cfg.AXCLConfig); err != nil {
		return fmt.Errorf("npu: init runtime %s: %w", rt.Path(), err)
	}
	defer func() {
		if rerr := releaseInit(rt); rerr != nil && err == nil {
			err = fmt.Errorf("npu: finalize runtime after the reboot: %w", rerr)
		}
	}()
	id := cfg.Device
	if id == 0 {
		ids, err := rt.DeviceList()
		if err != nil {
			return fmt.Errorf("npu: reboot: list devices: %w", err)
		}
		if cfg.Index < 0 || cfg.Index >= len(ids) {
			return fmt.Errorf("npu: reboot: card index %d not listed (%d card(s) %v): reboot it by hand (docs/card.md)", cfg.Index, len(ids), ids)
		}
		id = ids[cfg.Index]
	}
	start := time.Now()
	cfg.Logger.Warn("npu: rebooting the card", "device", int(id))
	if err := rt.RebootDevice(id); err != nil {
		return fmt.Errorf("npu: reboot device %d: %w", id, err)
	}
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("npu: waiting for device %d to come back after its reboot: %w", id, ctx.Err())
		case <-time.After(pollEvery):
		}
		if err := reinit(rt, cfg.AXCLConfig); err != nil {
			return fmt.Errorf("npu: init runtime %s: %w", rt.Path(), err)
		}
		ids, lerr := rt.DeviceList()
		if lerr == nil && slices.Contains(ids, id) {
			if serr := rt.SetDevice(id); serr == nil {
				_ = rt.ResetDevice(id)
				cfg.Logger.Info("npu: card back after its reboot", "device", int(id), "after", time.Since(start).Round(time.Millisecond))
				return nil
			}
		}
		if time.Since(start) >= cfg.Timeout {
			return fmt.Errorf("%w: device %d did not come back within %v of its reboot: power-cycle it (docs/card.md)", ErrNotEnumerated, id, cfg.Timeout)
		}
	}
}

// CloseAll closes every device open in the process (Close: each stops
// taking work and tears down once its running call returns, never in the
// middle of one) and waits, bounded by ctx, until they have. For a forced
// stop: the process may exit afterwards without leaving work in flight.
func CloseAll(ctx context.Context) error {
	shared.mu.Lock()
	devs := make([]*Device, 0, len(shared.devices))
	for d := range shared.devices {
		devs = append(devs, d)
	}
	shared.mu.Unlock()
	var errs []error
	for _, d := range devs {
		errs = append(errs, d.Close(ctx))
	}
	return errors.Join(errs...)
}

// SmallestGroup is the model's shape group with the fewest input bytes:
// the cheapest one to execute as a check.
func (m *Model) SmallestGroup() int { return smallestGroup(m.desc) }

// Models are the models loaded on the device, in load order. Do not keep
// the slice.
func (t *Thread) Models() []*Model { return t.d.models }
