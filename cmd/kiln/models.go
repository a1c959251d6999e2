package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/npu"
	"github.com/kiln-project/kiln/worker/thermal"
)

// modelRuntime turns one kind of model package into a handler.
type modelRuntime struct {
	// name says which runtime it is in logs ("llm", "sd").
	name string
	// kind is the kind of job its packages serve (schema.KindChat, KindImage).
	kind string
	// detect reports whether the package folder is one this runtime serves.
	detect func(dir string) bool
	// open loads the package onto the card.
	open func(ctx context.Context, dev *npu.Device, model, dir string, log *slog.Logger) (*servedModel, error)
}

// servedModel is a package resident on the card with its handler.
type servedModel struct {
	chat   worker.Handler[schema.ChatJob]
	image  worker.Handler[schema.ImageJob]
	cmmMiB int
	close  func(context.Context) error
}

// modelRuntimes lists the runtimes in the order they are asked.
func modelRuntimes() []modelRuntime {
	llm, sd := llmRuntime(), sdRuntime()
	llm.kind, sd.kind = schema.KindChat, schema.KindImage
	return []modelRuntime{llm, sd}
}

// card is what a worker process holds of its card: the device (nil without
// a card runtime) and the models loaded on it. It is the worker's
// worker.Device: after a device fault Reset closes the device, opens it
// again and reloads the same packages; the handlers given to the worker
// stay valid (they call whichever model is loaded now).
type card struct {
	log   *slog.Logger
	lib   string
	index int
	dir   string // the models folder

	mu     sync.RWMutex // held for reading by a running handler, for writing by Reset
	dev    *npu.Device
	models map[string]*servedModel
	order  []string // model names in load order
}

// openCard opens card index on the runtime at lib ("" = KILN_AXCL_LIB or the
// default path). Without a runtime installed it returns a card without a
// device: the worker then serves no card models.
func openCard(ctx context.Context, e *env, lib string, index int) (*card, error) {
	c := &card{log: e.log, index: index, models: map[string]*servedModel{}}
	if lib == "" {
		lib = axcl.LibraryPath()
	}
	if _, err := os.Stat(lib); errors.Is(err, os.ErrNotExist) {
		e.log.Warn("no card runtime: serving without a card", "lib", lib,
			"hint", "install the axclhost package (docs/card.md) or set KILN_AXCL_LIB; `make run` uses the simulator")
		return c, nil
	}
	c.lib = lib
	dev, err := c.openDevice(ctx)
	if err != nil {
		return nil, err
	}
	c.dev = dev
	return c, nil
}

func (c *card) openDevice(ctx context.Context) (*npu.Device, error) {
	dev, err := npu.Open(ctx, npu.Config{Library: c.lib, Index: c.index, Logger: c.log})
	if err != nil {
		return nil, fmt.Errorf("card %d: %w", c.index, err)
	}
	if p, err := dev.Properties(ctx); err == nil {
		c.log.Info("card open", "index", c.index, "device_id", dev.ID(), "lib", c.lib,
			"temp_c", float64(p.TemperatureMilliC)/1000, "cmm_total_mib", p.TotalCMMKiB/1024)
	}
	return dev, nil
}

// load finds every package in dir that a runtime recognises and puts its
// handler into cfg. The packages load onto the card once the worker has
// started (Load, called by the worker: it registers and heartbeats
// "loading" meanwhile).
func (c *card) load(_ context.Context, dir string, cfg *worker.Config) error {
	c.dir = dir
	names, err := modelPackages(dir)
	if err != nil {
		return err
	}
	for _, name := range names {
		rt := runtimeFor(filepath.Join(dir, name))
		if rt == nil {
			c.log.Warn("model package not served: no runtime in this build recognises it", "model", name, "folder", filepath.Join(dir, name))
			continue
		}
		if c.dev == nil {
			c.log.Warn("model package not served: no card", "model", name, "runtime", rt.name)
			continue
		}
		c.order = append(c.order, name)
		switch rt.kind {
		case schema.KindChat:
			cfg.Chat[name] = chatOn(c, name)
		case schema.KindImage:
			cfg.Image[name] = imageOn(c, name)
		}
	}
	return nil
}

func runtimeFor(path string) *modelRuntime {
	for _, r := range modelRuntimes() {
		if r.detect(path) {
			return &r
		}
	}
	return nil
}

// Load implements worker.Loader: it loads the packages found by load onto
// the card.
func (c *card) Load(ctx context.Context) error {
	c.mu.RLock()
	dev := c.dev
	c.mu.RUnlock()
	models, err := c.loadAll(ctx, dev)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.models = models
	c.mu.Unlock()
	return nil
}

// loadAll loads every package of c.order onto dev; on an error it unloads
// what it loaded.
func (c *card) loadAll(ctx context.Context, dev *npu.Device) (map[string]*servedModel, error) {
	models := map[string]*servedModel{}
	for _, name := range c.order {
		path := filepath.Join(c.dir, name)
		var m *servedModel
		err := fmt.Errorf("model %s: no runtime recognises %s any more", name, path)
		if rt := runtimeFor(path); rt != nil {
			m, err = c.loadModel(ctx, dev, rt, name, path)
		}
		if err != nil {
			for _, m := range models {
				if m.close != nil {
					_ = m.close(ctx)
				}
			}
			return nil, err
		}
		models[name] = m
	}
	return models, nil
}

func (c *card) loadModel(ctx context.Context, dev *npu.Device, rt *modelRuntime, name, path string) (*servedModel, error) {
	start := time.Now()
	m, err := rt.open(ctx, dev, name, path, c.log)
	if err != nil {
		return nil, fmt.Errorf("model %s: %w", name, err)
	}
	c.log.Info("model loaded", "model", name, "runtime", rt.name, "cmm_mib", m.cmmMiB, "took", time.Since(start).Round(time.Millisecond))
	return m, nil
}

// chatOn is the chat handler of model name on c: it runs whichever
// instance of the model is loaded now.
func chatOn(c *card, name string) worker.Handler[schema.ChatJob] {
	return worker.HandlerFunc[schema.ChatJob](func(ctx context.Context, job *worker.Job[schema.ChatJob]) (*schema.Result, error) {
		c.mu.RLock()
		defer c.mu.RUnlock()
		m := c.models[name]
		if m == nil || m.chat == nil {
			return nil, fmt.Errorf("model %s is not loaded on the card", name)
		}
		return m.chat.Handle(ctx, job)
	})
}

// imageOn is chatOn for image models.
func imageOn(c *card, name string) worker.Handler[schema.ImageJob] {
	return worker.HandlerFunc[schema.ImageJob](func(ctx context.Context, job *worker.Job[schema.ImageJob]) (*schema.Result, error) {
		c.mu.RLock()
		defer c.mu.RUnlock()
		m := c.models[name]
		if m == nil || m.image == nil {
			return nil, fmt.Errorf("model %s is not loaded on the card", name)
		}
		return m.image.Handle(ctx, job)
	})
}

// Fault implements worker.Device: an error of the card runtime, a lost or
// closed device, or any error while the device reports itself unusable.
func (c *card) Fault(err error) bool {
	var ae *axcl.Error
	if errors.As(err, &ae) || errors.Is(err, npu.ErrLost) || errors.Is(err, npu.ErrStopped) {
		return true
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.dev != nil && c.dev.Err() != nil
}

// Lost implements worker.Device: a hung execute or a card that stopped
// answering (npu.ErrLost). The process exits so that systemd restarts it.
func (c *card) Lost() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.dev == nil {
		return nil
	}
	if err := c.dev.Err(); errors.Is(err, npu.ErrLost) {
		return err
	}
	return nil
}

// Reset implements worker.Device: unload the models, close the device,
// open it again and load the same packages. The lock is held only to swap
// the device and models, so heartbeats (status, temperatures) go on while
// the packages load; no job runs meanwhile (the worker does not fetch).
func (c *card) Reset(ctx context.Context) error {
	c.mu.Lock()
	c.unloadLocked(ctx)
	c.dev, c.models = nil, map[string]*servedModel{}
	c.mu.Unlock()
	dev, err := c.openDevice(ctx)
	if err != nil {
		return err
	}
	models, err := c.loadAll(ctx, dev)
	if err != nil {
		if cerr := dev.Close(ctx); cerr != nil {
			c.log.Warn("close card", "err", cerr)
		}
		return err
	}
	c.mu.Lock()
	c.dev, c.models = dev, models
	c.mu.Unlock()
	return nil
}

// temp is the card's Tj from the device thread's latest sample (a
// thermal.Source; it never calls the runtime).
func (c *card) temp(ctx context.Context) (float64, error) {
	c.mu.RLock()
	dev := c.dev
	c.mu.RUnlock()
	if dev == nil {
		return 0, errors.New("no card")
	}
	p, err := dev.Properties(ctx)
	if err != nil {
		return 0, err
	}
	return float64(p.TemperatureMilliC) / 1000, nil
}

// status adds the card's health to a heartbeat.
func (c *card) status(hb *schema.Heartbeat) {
	c.mu.RLock()
	dev := c.dev
	for i := range hb.Models {
		if m := c.models[hb.Models[i].Name]; m != nil {
			hb.Models[i].CMMMiB = m.cmmMiB
		}
	}
	c.mu.RUnlock()
	if dev == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	p, err := dev.Properties(ctx)
	if err != nil {
		return
	}
	hb.CardTempC = float64(p.TemperatureMilliC) / 1000
	hb.NPUUtil = float64(p.NPULoad) / 100
	hb.CMMTotalMiB = int(p.TotalCMMKiB / 1024)
	hb.CMMUsedMiB = int((p.TotalCMMKiB - p.FreeCMMKiB) / 1024)
}

// tempNow samples the card's Tj afresh on the device thread (between
// model calls): the governor asks only when the card is near its pause
// threshold, before starting a job.
func (c *card) tempNow(ctx context.Context) (float64, error) {
	c.mu.RLock()
	dev := c.dev
	c.mu.RUnlock()
	if dev == nil {
		return 0, errors.New("no card")
	}
	p, err := dev.Refresh(ctx)
	if err != nil {
		return 0, err
	}
	return float64(p.TemperatureMilliC) / 1000, nil
}

// close unloads the models and closes the device.
func (c *card) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.unloadLocked(ctx)
}

// unloadLocked unloads the models (newest first) and closes the device
// (c.mu held).
func (c *card) unloadLocked(ctx context.Context) {
	for i := len(c.order) - 1; i >= 0; i-- {
		if m := c.models[c.order[i]]; m != nil && m.close != nil {
			if err := m.close(ctx); err != nil {
				c.log.Warn("unload model", "model", c.order[i], "err", err)
			}
		}
	}
	if c.dev != nil {
		if err := c.dev.Close(ctx); err != nil {
			c.log.Warn("close card", "err", err)
		}
	}
}

// Environment of the thermal governor (each has a flag of the same meaning).
const (
	envGovernor = "KILN_GOVERNOR"  // "off" disables the thermal governor
	envSoCZone  = "KILN_SOC_ZONE"  // thermal zone file of the host SoC
	envCardTemp = "KILN_CARD_TEMP" // card thresholds pause,resume,critical °C
	envSoCTemp  = "KILN_SOC_TEMP"  // SoC thresholds pause,resume,critical °C
)

// thermalFlags configure the thermal governor (DESIGN §8, docs/thermal.md).
type thermalFlags struct {
	governor bool
	zone     string
	card     string
	soc      string
	interval time.Duration
}

func (t *thermalFlags) register(fs *flag.FlagSet) {
	def := thermal.DefaultConfig()
	lim := func(l thermal.Limits) string { return fmt.Sprintf("%g,%g,%g", l.PauseC, l.ResumeC, l.CriticalC) }
	fs.BoolVar(&t.governor, "governor", getenv(envGovernor, "on") != "off", "pause taking jobs when the card or the SoC is hot ($"+envGovernor+"=off disables)")
	fs.StringVar(&t.zone, "soc-zone", getenv(envSoCZone, thermal.DefaultZone), "thermal zone file of the host SoC, millidegrees ($"+envSoCZone+"; \"\" leaves the SoC out)")
	fs.StringVar(&t.card, "card-temp", getenv(envCardTemp, lim(def.Card)), "card pause,resume,critical °C (critical 0 = none) ($"+envCardTemp+")")
	fs.StringVar(&t.soc, "soc-temp", getenv(envSoCTemp, lim(def.SoC)), "SoC pause,resume,critical °C ($"+envSoCTemp+")")
	fs.DurationVar(&t.interval, "thermal-interval", 2*time.Second, "how often the governor looks at the temperatures")
}

// config returns the governor's configuration for card c, nil when off.
func (t *thermalFlags) config(c *card) (*thermal.MonitorConfig, error) {
	if !t.governor {
		return nil, nil
	}
	var lim thermal.Config
	var err error
	if lim.Card, err = parseLimits(t.card); err != nil {
		return nil, fmt.Errorf("-card-temp: %w", err)
	}
	if lim.SoC, err = parseLimits(t.soc); err != nil {
		return nil, fmt.Errorf("-soc-temp: %w", err)
	}
	if err := lim.Validate(); err != nil {
		return nil, err
	}
	mc := &thermal.MonitorConfig{Limits: &lim, Interval: t.interval, Logger: c.log}
	if c.dev != nil {
		mc.Card, mc.CardNow = c.temp, c.tempNow
	}
	if t.zone != "" {
		mc.SoC = thermal.ZoneSource(t.zone)
	}
	return mc, nil
}

// parseLimits parses "pause,resume[,critical]".
func parseLimits(s string) (thermal.Limits, error) {
	parts := strings.Split(s, ",")
	if len(parts) < 2 || len(parts) > 3 {
		return thermal.Limits{}, fmt.Errorf("%q: want pause,resume[,critical] in °C", s)
	}
	var v [3]float64
	for i, p := range parts {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil {
			return thermal.Limits{}, fmt.Errorf("%q: %w", s, err)
		}
		v[i] = f
	}
	return thermal.Limits{PauseC: v[0], ResumeC: v[1], CriticalC: v[2]}, nil
}
