package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/npu"
)

// modelRuntime turns one kind of model package into a handler.
type modelRuntime struct {
	// name says which runtime it is in logs ("llm", "sd").
	name string
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
func modelRuntimes() []modelRuntime { return []modelRuntime{llmRuntime(), sdRuntime()} }

// card is what a worker process holds of its card: the device (nil without
// a card runtime) and the models loaded on it.
type card struct {
	dev    *npu.Device
	models []*servedModel
	log    *slog.Logger
}

// openCard opens card index on the runtime at lib ("" = KILN_AXCL_LIB or the
// default path). Without a runtime installed it returns a card without a
// device: the worker then serves no card models.
func openCard(ctx context.Context, e *env, lib string, index int) (*card, error) {
	c := &card{log: e.log}
	if lib == "" {
		lib = axcl.LibraryPath()
	}
	if _, err := os.Stat(lib); errors.Is(err, os.ErrNotExist) {
		e.log.Warn("no card runtime: serving without a card", "lib", lib,
			"hint", "install the axclhost package (docs/card.md) or set KILN_AXCL_LIB; `make run` uses the simulator")
		return c, nil
	}
	dev, err := npu.Open(ctx, npu.Config{Library: lib, Index: index, Logger: e.log})
	if err != nil {
		return nil, fmt.Errorf("card %d: %w", index, err)
	}
	c.dev = dev
	if p, err := dev.Properties(ctx); err == nil {
		e.log.Info("card open", "index", index, "device_id", dev.ID(), "lib", lib,
			"temp_c", float64(p.TemperatureMilliC)/1000, "cmm_total_mib", p.TotalCMMKiB/1024)
	}
	return c, nil
}

// load loads every package in dir that a runtime recognises into cfg.
func (c *card) load(ctx context.Context, dir string, cfg *worker.Config) error {
	names, err := modelPackages(dir)
	if err != nil {
		return err
	}
	for _, name := range names {
		path := filepath.Join(dir, name)
		var rt *modelRuntime
		for _, r := range modelRuntimes() {
			if r.detect(path) {
				rt = &r
				break
			}
		}
		if rt == nil {
			c.log.Warn("model package not served: no runtime in this build recognises it", "model", name, "folder", path)
			continue
		}
		if c.dev == nil {
			c.log.Warn("model package not served: no card", "model", name, "runtime", rt.name)
			continue
		}
		start := time.Now()
		m, err := rt.open(ctx, c.dev, name, path, c.log)
		if err != nil {
			return fmt.Errorf("model %s: %w", name, err)
		}
		c.models = append(c.models, m)
		if m.chat != nil {
			cfg.Chat[name] = m.chat
		}
		if m.image != nil {
			cfg.Image[name] = m.image
		}
		c.log.Info("model loaded", "model", name, "runtime", rt.name, "cmm_mib", m.cmmMiB, "took", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// status adds the card's health to a heartbeat.
func (c *card) status(hb *schema.Heartbeat) {
	if c.dev == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	p, err := c.dev.Properties(ctx)
	if err != nil {
		return
	}
	hb.CardTempC = float64(p.TemperatureMilliC) / 1000
	hb.NPUUtil = float64(p.NPULoad) / 100
	hb.CMMTotalMiB = int(p.TotalCMMKiB / 1024)
	hb.CMMUsedMiB = int((p.TotalCMMKiB - p.FreeCMMKiB) / 1024)
}

// close unloads the models and closes the device.
func (c *card) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, m := range c.models {
		if m.close != nil {
			if err := m.close(ctx); err != nil {
				c.log.Warn("unload model", "err", err)
			}
		}
	}
	if c.dev != nil {
		if err := c.dev.Close(ctx); err != nil {
			c.log.Warn("close card", "err", err)
		}
	}
}
