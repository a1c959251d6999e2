package npu

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/axcl"
)

// TestQueuedWorkRunsAtSync: copies and executes queued on the device's
// stream happen in order and are waited for once; transfers use pinned
// memory; the round trips the simulator counts are the one sync.
func TestQueuedWorkRunsAtSync(t *testing.T) {
	b := setup(t, Config{SampleInterval: -1})
	m, err := b.dev.LoadModel(bg, layerFiles(t)[0], nil)
	must(t, err)
	// On the device thread: errors are returned, never t.Fatal.
	err = b.dev.Do(bg, func(th *Thread) (first error) {
		must := func(_ testing.TB, err error) {
			if err != nil && first == nil {
				first = err
			}
		}
		if !th.Async() {
			return errors.New("the simulator has no streams")
		}
		src, err := th.AllocHost(64)
		if err != nil {
			return err
		}
		dst, err := th.AllocHost(64)
		if err != nil {
			return err
		}
		for i := range src.Bytes() {
			src.Bytes()[i] = byte(i + 1)
		}
		a, err := th.Alloc(4096)
		if err != nil {
			return err
		}
		c, err := th.Alloc(4096)
		if err != nil {
			return err
		}
		b.ctl.ResetStats()
		must(t, th.WriteAsync(a, 2048, src, 0, 64))
		must(t, th.CopyAsync(c, 0, a, 2048, 64))
		must(t, th.ExecuteAsync(m, 0))
		must(t, th.ReadAsync(dst, 0, c, 0, 64))
		if bytes.Equal(dst.Bytes(), src.Bytes()) {
			t.Error("queued copies done before Sync")
		}
		must(t, th.Sync())
		if !bytes.Equal(dst.Bytes(), src.Bytes()) {
			t.Error("queued copies not done in order at Sync")
		}
		if s := b.ctl.Stats(); s != (cardsim.Stats{SyncCalls: 1, StreamSyncs: 1, AsyncCopies: 3, AsyncExecutes: 1, Pinned: 2}) {
			t.Errorf("stats %+v", s)
		}
		must(t, th.Sync()) // nothing queued: no round trip
		if s := b.ctl.Stats(); s.SyncCalls != 1 {
			t.Errorf("an empty Sync went to the card: %+v", s)
		}
		// Out of range: refused before anything is queued.
		if err := th.WriteAsync(a, 4090, src, 0, 64); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("write past the end: %v", err)
		}
		// A misaligned offset bind is refused by the runtime; an aligned one binds.
		if err := th.Rebind(m, 0, axcl.Output, 0, a, 64, 64); err == nil {
			t.Error("rebind at a 64-byte offset accepted")
		}
		must(t, th.Rebind(m, 0, axcl.Output, 0, a, 2048, 64))
		must(t, th.FreeHost(src))
		return first
	})
	must(t, err)
}

// TestHungSyncLosesTheDevice: a queued execute that never finishes ends the
// bounded sync (the runtime's timeout, or the watchdog if that comes
// first): the device is lost with ErrHung.
func TestHungSyncLosesTheDevice(t *testing.T) {
	b := setup(t, Config{SampleInterval: -1, ExecuteTimeout: 100 * time.Millisecond})
	m, err := b.dev.LoadModel(bg, layerFiles(t)[0], nil)
	must(t, err)
	b.ctl.SetFaults(t, "hang_execute=1")
	err = b.dev.Do(bg, func(th *Thread) error {
		if err := th.ExecuteAsync(m, 0); err != nil {
			return err
		}
		return th.Sync()
	})
	if !errors.Is(err, ErrHung) || !errors.Is(err, ErrLost) {
		t.Fatalf("sync of a hung execute = %v, want ErrHung and ErrLost", err)
	}
	if err := b.dev.Execute(bg, m, 0); !errors.Is(err, ErrLost) {
		t.Fatalf("execute after the hang = %v", err)
	}
}
