package npu

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/axcl"
)

func TestOpenClose(t *testing.T) {
	t.Setenv("KILN_SIM_DEVICES", "1,4")
	lib := cardsim.Library(t)
	d, err := Open(context.Background(), Config{Library: lib, Index: 1, SampleInterval: -1})
	must(t, err)
	// Index 1 of the sorted list [1 4] is the card on bus 4.
	if d.ID() != 4 {
		t.Errorf("ID() = %d, want the bus number 4", d.ID())
	}
	p, err := d.Properties(context.Background())
	must(t, err)
	if p.PCIBus != 4 || p.TotalCMMKiB != 7040<<10 || p.SampledAt.IsZero() {
		t.Errorf("properties at open: bus %d cmm %d KiB sampled %v", p.PCIBus, p.TotalCMMKiB, p.SampledAt)
	}
	if d.Budget() != 7040<<20 {
		t.Errorf("Budget() = %d, want the card's CMM total", d.Budget())
	}
	if runtimeFinalized(t, lib) {
		t.Fatal("runtime not initialised while the device is open")
	}
	must(t, d.Close(context.Background()))
	must(t, d.Close(context.Background())) // again: no-op
	if !runtimeFinalized(t, lib) {
		t.Fatal("Close did not finalise the runtime")
	}
	if err := d.Do(context.Background(), func(*Thread) error { return nil }); !errors.Is(err, ErrStopped) {
		t.Fatalf("Do after Close = %v, want ErrStopped", err)
	}
	if _, err := d.Properties(context.Background()); !errors.Is(err, ErrStopped) {
		t.Fatalf("Properties after Close = %v", err)
	}
}

func TestOpenFailureTearsDown(t *testing.T) {
	lib := cardsim.Library(t)
	_, err := Open(context.Background(), Config{Library: lib, Index: 5})
	if err == nil || !strings.Contains(err.Error(), "card index 5 out of range") {
		t.Fatalf("Open(index 5) = %v", err)
	}
	if !runtimeFinalized(t, lib) {
		t.Fatal("a failed Open left the runtime initialised")
	}
	_, err = Open(context.Background(), Config{Library: "/nonexistent/libaxcl_rt.so"})
	if !errors.Is(err, axcl.ErrLibraryNotFound) {
		t.Fatalf("Open(missing library) = %v", err)
	}
}

// The thread rule: a runtime call from another OS thread fails with the
// no-context error; the same call through the device thread succeeds.
func TestThreadRule(t *testing.T) {
	b := setup(t, Config{SampleInterval: -1})
	rt := b.dev.Runtime()
	// The test goroutine cannot be on the device thread: that one is locked
	// to its own goroutine.
	_, err := rt.Malloc(64, axcl.MallocHugeFirst)
	var ae *axcl.Error
	if !errors.Is(err, axcl.ErrNoContext) || !errors.As(err, &ae) || ae.Code != 0x80300284 {
		t.Fatalf("Malloc off the device thread = %v, want 0x80300284", err)
	}
	must(t, b.dev.Do(context.Background(), func(th *Thread) error {
		p, err := th.Runtime().Malloc(64, axcl.MallocHugeFirst)
		if err != nil {
			return err
		}
		return th.Runtime().Free(p)
	}))
}

func TestDoPanicCarriesStack(t *testing.T) {
	b := setup(t, Config{SampleInterval: -1})
	var got any
	func() {
		defer func() { got = recover() }()
		b.dev.Do(context.Background(), func(*Thread) error { panic("kiln boom") })
	}()
	pe, ok := got.(*PanicError)
	if !ok || pe.Value != "kiln boom" || !strings.Contains(string(pe.Stack), "TestDoPanicCarriesStack") ||
		!strings.Contains(string(pe.Stack), "(*Device).serve") {
		t.Fatalf("recovered %#v", got)
	}
	// The panic released the runtime (a process that dies holding it can
	// wedge the card): the device is closed and the card opens again.
	<-b.dev.Done()
	if err := b.dev.Do(context.Background(), func(*Thread) error { return nil }); !errors.Is(err, ErrStopped) {
		t.Fatalf("Do after a panic on the device thread: %v, want ErrStopped", err)
	}
	again, err := Open(context.Background(), Config{Library: b.lib, SampleInterval: -1})
	if err != nil {
		t.Fatalf("Open after the panic: %v", err)
	}
	must(t, again.Close(context.Background()))
}

// ctx matters while the work is queued, not once it runs.
func TestDoContext(t *testing.T) {
	b := setup(t, Config{SampleInterval: -1})
	started, release := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		b.dev.Do(context.Background(), func(*Thread) error {
			close(started)
			<-release
			return nil
		})
	}()
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	if err := b.dev.Do(ctx, func(*Thread) error { ran = true; return nil }); !errors.Is(err, context.Canceled) || ran {
		t.Fatalf("Do with a cancelled ctx behind busy work = %v (ran %v)", err, ran)
	}
	close(release)
	wg.Wait()
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	err := b.dev.Do(ctx, func(*Thread) error {
		cancel() // cancelling once running changes nothing
		return errors.New("finished anyway")
	})
	if err == nil || err.Error() != "finished anyway" {
		t.Fatalf("Do cancelled while running = %v", err)
	}
}

// Close with a cancelled context still tears everything down.
func TestCloseCancelledContext(t *testing.T) {
	lib := cardsim.Library(t)
	d, err := Open(context.Background(), Config{Library: lib, SampleInterval: -1})
	must(t, err)
	_, err = d.LoadModel(context.Background(), layerFiles(t)[0], nil)
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d.Close(ctx)
	waitDone(t, d)
	if !runtimeFinalized(t, lib) {
		t.Fatal("teardown did not run after Close with a cancelled context")
	}
}

func TestPropertiesSampler(t *testing.T) {
	b := setup(t, Config{SampleInterval: 5 * 1e6}) // 5 ms
	first, err := b.dev.Properties(context.Background())
	must(t, err)
	for {
		p, err := b.dev.Properties(context.Background())
		must(t, err)
		if p.SampledAt.After(first.SampledAt) {
			break
		}
		// Busy work through the thread; samples only happen between requests.
		must(t, b.dev.Do(context.Background(), func(*Thread) error { return nil }))
	}
	p, err := b.dev.Refresh(context.Background())
	must(t, err)
	if p.TotalCMMKiB == 0 || p.PCIBus != uint32(b.dev.ID()) {
		t.Fatalf("Refresh() = %+v", p)
	}
}

// Many goroutines hammer the device while it closes: every call returns
// nil or ErrStopped, nothing deadlocks, the teardown runs.
func TestConcurrentCallsAndClose(t *testing.T) {
	lib := cardsim.Library(t)
	d, err := Open(context.Background(), Config{Library: lib, SampleInterval: 1e6})
	must(t, err)
	m, err := d.LoadModel(context.Background(), layerFiles(t)[0], nil)
	must(t, err)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				var err error
				if (w+i)%2 == 0 {
					err = d.Execute(context.Background(), m, i%m.Groups())
				} else {
					err = d.Do(context.Background(), func(th *Thread) error {
						buf, _ := m.Buffer(0, In("indices"))
						return th.Write(buf, 0, []byte{byte(i), 0, 0, 0})
					})
				}
				if errors.Is(err, ErrStopped) {
					return
				}
				if err != nil {
					errs <- err
					return
				}
				if w == 0 && i == 300 {
					go d.Close(context.Background())
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("call during close: %v", err)
	}
	waitDone(t, d)
	if !runtimeFinalized(t, lib) {
		t.Fatal("teardown did not run")
	}
}
