package npu

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/kiln-project/kiln/worker/axcl"
)

// CopyCost is what MeasureCopies found: the median wall time of one call,
// in µs, for a copy of Bytes bytes.
type CopyCost struct {
	Bytes  int `json:"bytes"`
	Rounds int `json:"rounds"`
	// Synchronous calls: each waits for the card (one PCIe round trip).
	D2DSyncUS        float64 `json:"d2d_sync_us"`
	H2DPinnedSyncUS  float64 `json:"h2d_pinned_sync_us"`
	H2DUnpinnedUS    float64 `json:"h2d_unpinned_sync_us"`
	D2HPinnedSyncUS  float64 `json:"d2h_pinned_sync_us"`
	D2HUnpinnedUS    float64 `json:"d2h_unpinned_sync_us"`
	EmptySyncUS      float64 `json:"stream_sync_us"`                 // a sync after one queued copy
	QueuedCopyUS     float64 `json:"queued_copy_us"`                 // per copy: 32 queued D2D copies and one sync, divided by 32
	Streams          bool    `json:"streams"`                        // the runtime has streams (else queued = synchronous)
	PropertiesSample float64 `json:"properties_sample_us,omitempty"` // one axclrtGetDeviceProperties
}

// MeasureCopies times small copies on the card, rounds times each, on the
// device thread: the cost of one synchronous round trip (the number the
// decode benchmarks' latency model needs; research/card-field-notes.md
// §3.2 has only estimates) against copies queued on the stream.
func (d *Device) MeasureCopies(ctx context.Context, bytes, rounds int) (*CopyCost, error) {
	if bytes < 1 || bytes > 1<<20 || rounds < 1 || rounds > 10000 {
		return nil, fmt.Errorf("npu: measure copies: %d bytes × %d rounds (1 B … 1 MiB, 1 … 10000): %w", bytes, rounds, ErrOutOfRange)
	}
	c := &CopyCost{Bytes: bytes, Rounds: rounds}
	err := d.Do(ctx, func(t *Thread) (err error) {
		n := uint64(bytes)
		a, err := t.Alloc(n)
		if err != nil {
			return err
		}
		defer t.Free(a)
		b, err := t.Alloc(n)
		if err != nil {
			return err
		}
		defer t.Free(b)
		h, err := t.AllocHost(n)
		if err != nil {
			return err
		}
		defer t.FreeHost(h)
		goMem := make([]byte, bytes)
		rt := t.d.rt
		hp := uintptr(h.ptr)
		for _, m := range []struct {
			to *float64
			op func() error
		}{
			{&c.D2DSyncUS, func() error { return t.Copy(b, 0, a, 0, n) }},
			{&c.H2DPinnedSyncUS, func() error { return t.noted(rt.Memcpy(uintptr(a.ptr), hp, n, axcl.HostToDevice)) }},
			{&c.H2DUnpinnedUS, func() error { return t.Write(a, 0, goMem) }},
			{&c.D2HPinnedSyncUS, func() error { return t.noted(rt.Memcpy(hp, uintptr(a.ptr), n, axcl.DeviceToHost)) }},
			{&c.D2HUnpinnedUS, func() error { return t.Read(goMem, a, 0) }},
			{&c.EmptySyncUS, func() error {
				if err := t.CopyAsync(b, 0, a, 0, n); err != nil {
					return err
				}
				return t.Sync()
			}},
			{&c.QueuedCopyUS, func() error {
				for range 32 {
					if err := t.CopyAsync(b, 0, a, 0, n); err != nil {
						return err
					}
				}
				return t.Sync()
			}},
		} {
			if *m.to, err = medianUS(rounds, m.op); err != nil {
				return err
			}
		}
		c.QueuedCopyUS /= 32
		c.Streams = t.Async()
		if rt.HasDeviceProperties() {
			// Tens to hundreds of ms each on a card: a few rounds.
			c.PropertiesSample, err = medianUS(min(rounds, 5), func() error {
				var p axcl.DeviceProperties
				return t.noted(rt.DeviceProperties(t.d.id, &p))
			})
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// noted passes err on after marking the device lost when it says so.
func (t *Thread) noted(err error) error {
	t.d.noteError(err)
	return err
}

// medianUS runs op rounds times and returns the median wall time in µs.
func medianUS(rounds int, op func() error) (float64, error) {
	ts := make([]float64, 0, rounds)
	for range rounds {
		start := time.Now()
		if err := op(); err != nil {
			return 0, err
		}
		ts = append(ts, float64(time.Since(start).Nanoseconds())/1e3)
	}
	slices.Sort(ts)
	return ts[len(ts)/2], nil
}
