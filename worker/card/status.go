package card

import (
	"context"
	"errors"
	"time"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker/npu"
)

// errNoDevice is what the temperature sources say without a device.
var errNoDevice = errors.New("card: no card")

// device is the device held now (nil without a runtime, during a reset,
// after Close).
func (c *Card) device() *npu.Device {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.dev
}

// Status adds the card's health to a heartbeat: each model's state (why a
// package failed to load) and CMM,
// the card's temperature, NPU load and CMM use (worker.Config.StatusFunc).
func (c *Card) Status(hb *schema.Heartbeat) {
	c.mu.RLock()
	dev := c.dev
	for i := range hb.Models {
		info := &hb.Models[i]
		switch m, err := c.models[info.Name], c.failed[info.Name]; {
		case m != nil:
			info.CMMMiB, info.State = m.cmmMiB, schema.ModelReady
		case err != nil:
			info.State, info.Error = schema.ModelFailed, err.Error()
		case !c.loaded && dev != nil:
			info.State = schema.ModelLoading
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

// Temp is the card's Tj in °C from the device thread's latest sample (a
// thermal.Source for MonitorConfig.Card; it never calls the runtime).
func (c *Card) Temp(ctx context.Context) (float64, error) {
	dev := c.device()
	if dev == nil {
		return 0, errNoDevice
	}
	p, err := dev.Properties(ctx)
	if err != nil {
		return 0, err
	}
	return float64(p.TemperatureMilliC) / 1000, nil
}

// TempNow samples the card's Tj afresh on the device thread, between model
// calls (a thermal.Source for MonitorConfig.CardNow): the governor asks
// only when the card is near its pause threshold, before starting a job.
func (c *Card) TempNow(ctx context.Context) (float64, error) {
	dev := c.device()
	if dev == nil {
		return 0, errNoDevice
	}
	p, err := dev.Refresh(ctx)
	if err != nil {
		return 0, err
	}
	return float64(p.TemperatureMilliC) / 1000, nil
}
