package card

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/kiln-project/kiln/internal/pidlock"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/npu"
)

// Config configures a Card.
type Config struct {
	// Library is the path of libaxcl_rt.so ("" = axcl.LibraryPath():
	// $KILN_AXCL_LIB, else the default path).
	Library string
	// Index is the card's index on this host (not its PCIe bus id).
	Index int
	// ModelsDir is the folder of model packages, one sub-folder per model
	// (a missing folder holds no packages).
	ModelsDir string
	// Slots is the K/V slots of each chat model (llm.Options.Slots; 0:
	// one): that many of its jobs run at once. A chat package whose slots
	// do not fit the CMM budget beside what loaded before it does not load:
	// load_failed names the figures (llm.SlotBudgetError) and the other
	// packages serve.
	Slots int
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// EnumerateTimeout bounds the wait for a card that has not enumerated
	// yet, at open and after a reboot (default 60s, npu.Config).
	EnumerateTimeout time.Duration
}

// Card is what a worker process holds of its card: the device (none
// without a card runtime) and the models loaded on it. It implements
// worker.Device and worker.Loader: after a device fault Reset closes the
// device, opens it again and reloads the same packages; the handlers given
// to the worker stay valid (they call whichever model is loaded now).
type Card struct {
	log   *slog.Logger
	lib   string // "" without a card runtime
	index int
	slots int      // Config.Slots
	dir   string   // the models folder
	order []string // names of the packages served, in load order
	chat  map[string]worker.Handler[schema.ChatJob]
	image map[string]worker.Handler[schema.ImageJob]

	enumerate time.Duration // Config.EnumerateTimeout
	deviceID  axcl.DeviceID // the card's runtime id once opened (for Reboot)
	lost      error         // the card was found lost by a health check (Lost)
	chip      string        // the chip's unique id (ChipID), "" when unknown

	mu     sync.RWMutex // held for reading by a running handler, for writing by Reset
	dev    *npu.Device
	models map[string]*servedModel
	failed map[string]error // the packages that did not load, by name
	loaded bool             // the first Load has finished
	hold   *pidlock.Lock    // the card's lock (Hold), released by Close
}

// ErrPackage is matched by the load error of a package that no runtime
// recognises any more (it changed on disk since Open).
var ErrPackage = errors.New("card: not a model package")

var (
	_ worker.Device       = (*Card)(nil)
	_ worker.Loader       = (*Card)(nil)
	_ worker.ModelChecker = (*Card)(nil)

	_ worker.Capacity = (*onCard[schema.ChatJob])(nil)
)

// Open opens the card of cfg and finds the model packages in
// cfg.ModelsDir that a runtime of this build recognises. The packages load
// onto the card once the worker has started (Load, called by the worker: it
// registers and heartbeats "loading" meanwhile).
//
// Without a card runtime installed Open returns a Card without a device
// (Present is false): it serves no models. The caller closes the Card.
func Open(ctx context.Context, cfg Config) (*Card, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &Card{
		log:    cfg.Logger,
		index:  cfg.Index,
		slots:  cfg.Slots,
		dir:    cfg.ModelsDir,
		chat:   map[string]worker.Handler[schema.ChatJob]{},
		image:  map[string]worker.Handler[schema.ImageJob]{},
		models: map[string]*servedModel{},
		failed: map[string]error{},

		enumerate: cfg.EnumerateTimeout,
	}
	lib := cfg.Library
	if lib == "" {
		lib = axcl.LibraryPath()
	}
	if _, err := os.Stat(lib); errors.Is(err, os.ErrNotExist) {
		c.log.Warn("no card runtime: serving without a card", "lib", lib,
			"hint", "install the axclhost package (docs/card.md) or set KILN_AXCL_LIB; `make run` uses the simulator")
	} else {
		c.lib = lib
		if c.dev, err = c.openDevice(ctx); err != nil {
			return nil, err
		}
	}
	if err := c.findPackages(); err != nil {
		_ = c.Close(ctx)
		return nil, err
	}
	return c, nil
}

// Count is how many cards the runtime at library lists ("" =
// axcl.LibraryPath()); 0 without a card runtime installed.
func Count(ctx context.Context, library string) (int, error) {
	if library == "" {
		library = axcl.LibraryPath()
	}
	if _, err := os.Stat(library); errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	info, err := npu.CardInfo(ctx, library)
	if err != nil {
		return 0, fmt.Errorf("card: list cards: %w", err)
	}
	return len(info.Cards), nil
}

func (c *Card) openDevice(ctx context.Context) (*npu.Device, error) {
	dev, err := npu.Open(ctx, npu.Config{Library: c.lib, Index: c.index, Logger: c.log, EnumerateTimeout: c.enumerate})
	if err != nil {
		return nil, fmt.Errorf("card %d: %w", c.index, err)
	}
	c.deviceID = dev.ID()
	if p, err := dev.Properties(ctx); err == nil {
		c.chip = p.ChipID()
		c.log.Info("card open", "index", c.index, "device_id", dev.ID(), "lib", c.lib,
			"temp_c", float64(p.TemperatureMilliC)/1000, "cmm_total_mib", p.TotalCMMKiB/1024)
	}
	return dev, nil
}

// findPackages picks the packages of c.dir that a runtime recognises and
// makes a handler for each, in the load order of loadOrder (order.go).
func (c *Card) findPackages() error {
	names, err := modelPackages(c.dir)
	if err != nil {
		return err
	}
	names, kept := loadOrder(c.dir, names)
	if !kept {
		c.log.Warn("more than one vision-language package: a vision encoder loads after another package's LLM layers, "+
			"which has dropped cards in the field (docs/card.md, load order)", "order", names)
	}
	for _, name := range names {
		rt := runtimeFor(filepath.Join(c.dir, name))
		if rt == nil {
			c.log.Warn("model package not served: no runtime in this build recognises it", "model", name, "folder", filepath.Join(c.dir, name))
			continue
		}
		if !c.Present() {
			c.log.Warn("model package not served: no card", "model", name, "runtime", rt.name)
			continue
		}
		c.order = append(c.order, name)
		switch rt.kind {
		case schema.KindChat:
			c.chat[name] = chatOn(c, name)
		case schema.KindImage:
			c.image[name] = imageOn(c, name)
		}
	}
	return nil
}

// Present reports whether a card runtime was found and the card opened.
// Without one the Card serves no models and has no status or temperatures
// to give; the worker then runs without a Device.
func (c *Card) Present() bool { return c.lib != "" }

// ChatHandlers are the handlers of the chat packages found by Open, by
// model name (a fresh map).
func (c *Card) ChatHandlers() map[string]worker.Handler[schema.ChatJob] {
	m := make(map[string]worker.Handler[schema.ChatJob], len(c.chat))
	for name, h := range c.chat {
		m[name] = h
	}
	return m
}

// ImageHandlers are ChatHandlers for the image packages.
func (c *Card) ImageHandlers() map[string]worker.Handler[schema.ImageJob] {
	m := make(map[string]worker.Handler[schema.ImageJob], len(c.image))
	for name, h := range c.image {
		m[name] = h
	}
	return m
}

// Load implements worker.Loader: it loads the packages found by Open onto
// the card, each on its own: a package that fails to load is logged and
// marked failed (ModelErr, heartbeats) and the others serve. Load fails
// only when the card itself fails meanwhile.
func (c *Card) Load(ctx context.Context) error {
	c.mu.RLock()
	dev := c.dev
	c.mu.RUnlock()
	models, failed, err := c.loadAll(ctx, dev)
	if err != nil && IsLost(err) && ctx.Err() == nil {
		// Wedged by a process that died with work in flight: the card loads
		// but does not execute. Reboot it and load again, once.
		c.log.Error("the card does not execute: rebooting it before serving", "err", err)
		dev, err = c.rebootAndOpen(ctx)
		if err == nil {
			models, failed, err = c.loadAll(ctx, dev)
		}
	}
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.models, c.failed, c.loaded = models, failed, true
	c.mu.Unlock()
	return nil
}

// loadAll loads every package of c.order onto dev. A package that fails
// to load is left out, its error in failed. When the device reports itself
// unusable after a failure the card is at fault, not the package: loadAll
// unloads what it loaded and returns the error.
func (c *Card) loadAll(ctx context.Context, dev *npu.Device) (models map[string]*servedModel, failed map[string]error, err error) {
	models, failed = map[string]*servedModel{}, map[string]error{}
	for _, name := range c.order {
		path := filepath.Join(c.dir, name)
		var m *servedModel
		err := fmt.Errorf("model %s: %w: no runtime recognises %s any more", name, ErrPackage, path)
		if rt := runtimeFor(path); rt != nil {
			m, err = c.loadModel(ctx, dev, rt, name, path)
		}
		if err == nil && len(models) == 0 {
			// The first package loaded: prove the card executes before
			// loading the rest onto it.
			if herr := c.healthCheck(ctx, dev); herr != nil {
				if m.close != nil {
					_ = m.close(ctx)
				}
				return nil, nil, herr
			}
		}
		if err == nil {
			models[name] = m
			continue
		}
		if derr := dev.Err(); derr != nil || ctx.Err() != nil {
			for _, m := range models {
				if m.close != nil {
					_ = m.close(ctx)
				}
			}
			return nil, nil, errors.Join(err, derr, ctx.Err())
		}
		c.log.Error("model package not served: it did not load", "model", name, "folder", path, "err", err)
		failed[name] = err
	}
	return models, failed, nil
}

func (c *Card) loadModel(ctx context.Context, dev *npu.Device, rt *modelRuntime, name, path string) (*servedModel, error) {
	start := time.Now()
	m, err := rt.open(ctx, dev, name, path, c.log, nil, c.slots)
	if err != nil {
		return nil, fmt.Errorf("model %s: %w", name, err)
	}
	_, slots := m.capacity()
	c.log.Info("model loaded", "model", name, "runtime", rt.name, "cmm_mib", m.cmmMiB, "slots", slots, "took", time.Since(start).Round(time.Millisecond))
	return m, nil
}

// onCard is the handler of model name on c: it runs whichever instance of
// the model is loaded now, and says how many of its jobs may run at once
// (worker.Capacity: a chat model's K/V slots).
type onCard[T any] struct {
	c      *Card
	name   string
	handle func(*servedModel) worker.Handler[T] // the model's handler of T; nil when it serves none
}

// Handle implements worker.Handler.
func (h *onCard[T]) Handle(ctx context.Context, job *worker.Job[T]) (*schema.Result, error) {
	h.c.mu.RLock()
	defer h.c.mu.RUnlock()
	m := h.c.models[h.name]
	if m == nil || h.handle(m) == nil {
		return nil, h.c.notLoaded(h.name)
	}
	return h.handle(m).Handle(ctx, job)
}

// Capacity implements worker.Capacity: the loaded model's slots (one while
// it is not loaded: the worker fetches nothing for it then anyway).
func (h *onCard[T]) Capacity() (used, total int) {
	h.c.mu.RLock()
	defer h.c.mu.RUnlock()
	if m := h.c.models[h.name]; m != nil {
		return m.capacity()
	}
	return 0, 1
}

// capacity is the model's slots: used and total (0 and 1 for a model that
// runs one job at a time).
func (m *servedModel) capacity() (used, total int) {
	if m.slots == nil {
		return 0, 1
	}
	return m.slots()
}

// chatOn is the chat handler of model name on c.
func chatOn(c *Card, name string) worker.Handler[schema.ChatJob] {
	return &onCard[schema.ChatJob]{c: c, name: name, handle: func(m *servedModel) worker.Handler[schema.ChatJob] { return m.chat }}
}

// notLoaded is a handler's error for a model not loaded now (c.mu held):
// the job goes back to the queue for a card that serves the model.
func (c *Card) notLoaded(name string) error {
	if err := c.failed[name]; err != nil {
		return fmt.Errorf("model %s is not served on this card: its package did not load: %w", name, err)
	}
	return fmt.Errorf("model %s is not loaded on the card", name)
}

// imageOn is chatOn for image models.
func imageOn(c *Card, name string) worker.Handler[schema.ImageJob] {
	return &onCard[schema.ImageJob]{c: c, name: name, handle: func(m *servedModel) worker.Handler[schema.ImageJob] { return m.image }}
}

// MaxJobs is the most jobs the card's packages run at once (worker.Config.MaxJobs):
// Config.Slots for each chat package, one for each image package.
func (c *Card) MaxJobs() int {
	n := 0
	for _, name := range c.order {
		if _, ok := c.chat[name]; ok {
			n += max(c.slots, 1)
		} else {
			n++
		}
	}
	return max(n, 1)
}

// Reset implements worker.Device: unload the models, close the device,
// open it again and load the same packages. The lock is held only to swap
// the device and models, so heartbeats (status, temperatures) go on while
// the packages load; no job runs meanwhile (the worker does not fetch).
func (c *Card) Reset(ctx context.Context) error {
	c.mu.Lock()
	if err := c.unloadLocked(ctx); err != nil {
		c.log.Warn("unload card for reset", "err", err)
	}
	c.dev, c.models, c.loaded = nil, map[string]*servedModel{}, false
	c.mu.Unlock()
	dev, err := c.openDevice(ctx)
	if err != nil {
		return err
	}
	models, failed, err := c.loadAll(ctx, dev)
	if err != nil {
		if cerr := dev.Close(ctx); cerr != nil {
			c.log.Warn("close card", "err", cerr)
		}
		if IsLost(err) {
			c.mu.Lock()
			c.lost = err
			c.mu.Unlock()
		}
		return err
	}
	c.mu.Lock()
	c.dev, c.models, c.failed, c.loaded = dev, models, failed, true
	c.mu.Unlock()
	return nil
}

// ModelErr implements worker.ModelChecker: why the package of model did
// not load on the last Load or Reset (nil when it serves, or is still
// loading). The worker fetches no job for such a model.
func (c *Card) ModelErr(kind, model string) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.failed[model]
}

// Close unloads the models (newest first) and closes the device. It waits
// for a running handler to return.
func (c *Card) Close(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.unloadLocked(ctx)
	c.dev, c.models = nil, map[string]*servedModel{}
	c.hold.Release()
	return err
}

// Hold gives the Card the card's lock (Lock) to release on Close.
func (c *Card) Hold(l *pidlock.Lock) { c.hold = l }

// unloadLocked unloads the models (newest first) and closes the device
// (c.mu held).
func (c *Card) unloadLocked(ctx context.Context) error {
	var errs []error
	for i := len(c.order) - 1; i >= 0; i-- {
		if m := c.models[c.order[i]]; m != nil && m.close != nil {
			if err := m.close(ctx); err != nil {
				errs = append(errs, fmt.Errorf("unload model %s: %w", c.order[i], err))
			}
		}
	}
	if c.dev != nil {
		if err := c.dev.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("close card %d: %w", c.index, err))
		}
	}
	return errors.Join(errs...)
}
