package npu

import (
	"context"
	"fmt"
	"runtime"

	"github.com/kiln-project/kiln/worker/axcl"
)

// Info is the card as the runtime sees it (kiln card info).
type Info struct {
	Library     string `json:"library"`
	Version     string `json:"runtime_version"`
	FullVersion string `json:"runtime_full_version"` // "" when the runtime has no axclrtGetFullVersion
	SoC         string `json:"soc"`
	Cards       []Card `json:"cards"`
}

// Card is one device of Info.
type Card struct {
	Index          int     `json:"index"`
	ID             int     `json:"id"` // PCIe bus number, the runtime's device id
	PCI            string  `json:"pci"`
	UID            string  `json:"uid"` // the chip's unique id, hex; "" when HealthUnknown
	Firmware       string  `json:"firmware"`
	TemperatureC   float64 `json:"temperature_c"`
	CMMUsedMiB     uint64  `json:"cmm_used_mib"`
	CMMTotalMiB    uint64  `json:"cmm_total_mib"`
	MemUsedMiB     uint64  `json:"mem_used_mib"`
	MemTotalMiB    uint64  `json:"mem_total_mib"`
	NPULoadPercent float64 `json:"npu_load_percent"`
	CPULoadPercent float64 `json:"cpu_load_percent"`
	// HealthUnknown: the runtime has no axclrtGetDeviceProperties (older
	// SDKs), so every field but Index and ID is unknown (zero).
	HealthUnknown bool `json:"health_unknown,omitempty"`
}

// CardFromProperties fills a Card from one properties sample.
func CardFromProperties(index int, id axcl.DeviceID, p *axcl.DeviceProperties) Card {
	return Card{
		Index:          index,
		ID:             int(id),
		PCI:            p.PCIAddress(),
		UID:            p.ChipID(),
		Firmware:       p.Firmware(),
		TemperatureC:   p.TemperatureC(),
		CMMUsedMiB:     p.CMMUsedBytes() >> 20,
		CMMTotalMiB:    p.CMMTotalBytes() >> 20,
		MemUsedMiB:     uint64(p.TotalMemKiB-min(p.FreeMemKiB, p.TotalMemKiB)) >> 10,
		MemTotalMiB:    uint64(p.TotalMemKiB) >> 10,
		NPULoadPercent: p.NPULoadPercent(),
		CPULoadPercent: p.CPULoadPercent(),
	}
}

// CardInfo loads the runtime at lib ("" means axcl.LibraryPath()) and
// reports its version and every card's health. It initialises the runtime
// for the call (reference counted, so an open Device in the same process
// is not disturbed) on a locked OS thread.
func CardInfo(ctx context.Context, lib string) (*Info, error) {
	rt, err := loadRuntime(lib)
	if err != nil {
		return nil, err
	}
	type result struct {
		info *Info
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		// Locked and never unlocked: the OS thread ends with the goroutine,
		// so no runtime binding (axclrtGetDeviceProperties sets and resets
		// the device on the calling thread) leaks to other goroutines.
		runtime.LockOSThread()
		info, err := cardInfo(rt)
		ch <- result{info, err}
	}()
	select {
	case r := <-ch:
		return r.info, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func cardInfo(rt *axcl.Runtime) (info *Info, err error) {
	if err := acquireInit(rt, ""); err != nil {
		return nil, fmt.Errorf("npu: init runtime %s: %w", rt.Path(), err)
	}
	defer func() {
		if ferr := releaseInit(rt); ferr != nil && err == nil {
			err = fmt.Errorf("npu: finalize runtime: %w", ferr)
		}
	}()
	v, err := rt.Version()
	if err != nil {
		return nil, err
	}
	info = &Info{Library: rt.Path(), Version: v.String(), FullVersion: rt.FullVersion(), SoC: rt.SocName()}
	ids, err := rt.DeviceList()
	if err != nil {
		return nil, fmt.Errorf("npu: list devices: %w", err)
	}
	for i, id := range ids {
		if !rt.HasDeviceProperties() {
			info.Cards = append(info.Cards, Card{Index: i, ID: int(id), HealthUnknown: true})
			continue
		}
		var p axcl.DeviceProperties
		if err := rt.DeviceProperties(id, &p); err != nil {
			return nil, fmt.Errorf("npu: properties of card %d (id %d): %w", i, id, err)
		}
		info.Cards = append(info.Cards, CardFromProperties(i, id, &p))
	}
	return info, nil
}

// Inspect opens the card described by cfg, reports the shape groups and
// tensors of the model file at path, and closes the card.
func Inspect(ctx context.Context, cfg Config, path string) (_ *ModelInfo, err error) {
	if cfg.SampleInterval == 0 {
		cfg.SampleInterval = -1
	}
	d, err := Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := d.Close(context.WithoutCancel(ctx)); cerr != nil && err == nil {
			err = cerr
		}
	}()
	return d.Inspect(ctx, path)
}
