package npu

import (
	"errors"
	"runtime"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/axcl"
)

// A runtime without axclrtGetFullVersion and axclrtGetDeviceProperties (the
// V2.25 API; the simulator built without them) loads through the real
// binding: the card opens, a model loads and executes, and the card's
// health and build string are reported unknown instead of failing.
func TestOldRuntimeWithoutOptionalSymbols(t *testing.T) {
	lib := cardsim.OldRuntimeLibrary(t)

	rt, err := axcl.Load(lib)
	must(t, err)
	if rt.HasFullVersion() || rt.HasDeviceProperties() || rt.FullVersion() != "" {
		t.Fatalf("old runtime: HasFullVersion %v, HasDeviceProperties %v, FullVersion %q",
			rt.HasFullVersion(), rt.HasDeviceProperties(), rt.FullVersion())
	}
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		var p axcl.DeviceProperties
		ch <- rt.DeviceProperties(0, &p)
	}()
	if err := <-ch; !errors.Is(err, axcl.ErrUnsupported) {
		t.Fatalf("DeviceProperties on a runtime without it = %v, want axcl.ErrUnsupported", err)
	}

	info, err := CardInfo(bg, lib)
	must(t, err)
	if info.Version != "3.10.2" || info.FullVersion != "" || len(info.Cards) != 1 || !info.Cards[0].HealthUnknown {
		t.Fatalf("CardInfo on the old runtime: %+v", info)
	}

	d, err := Open(bg, Config{Library: lib}) // the default sampler must not call the missing symbol
	must(t, err)
	defer func() { must(t, d.Close(bg)) }()
	if _, err := d.Properties(bg); !errors.Is(err, ErrNoProperties) || !errors.Is(err, axcl.ErrUnsupported) {
		t.Fatalf("Properties = %v, want ErrNoProperties", err)
	}
	if _, err := d.Refresh(bg); !errors.Is(err, ErrNoProperties) {
		t.Fatalf("Refresh = %v, want ErrNoProperties", err)
	}
	m, err := d.LoadModel(bg, layerFiles(t)[0], nil)
	must(t, err)
	for range 2 {
		must(t, d.Execute(bg, m, 0))
	}
	if d.Err() != nil {
		t.Fatalf("device unusable on the old runtime: %v", d.Err())
	}
}
