package axcl

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/ebitengine/purego"
	"github.com/kiln-project/kiln/test/cardsim"
)

// simLib builds the card simulator (skipping without a C compiler) and
// loads it through the real binding.
func simLib(t testing.TB) (*Runtime, *simControl) {
	t.Helper()
	path := cardsim.Library(t)
	rt, err := Load(path)
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	return rt, loadSimControl(t, path)
}

// simControl holds the simulator's own control symbols (not part of AXCL).
type simControl struct {
	setFaults func(spec string) int32
	config    func(spec string) int32
	setTempC  func(c int32) int32
}

func loadSimControl(t testing.TB, path string) *simControl {
	t.Helper()
	h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
	if err != nil {
		t.Fatal(err)
	}
	c := &simControl{}
	for name, fptr := range map[string]any{
		"kilnsim_set_faults": &c.setFaults,
		"kilnsim_config":     &c.config,
		"kilnsim_set_temp_c": &c.setTempC,
	} {
		sym, err := purego.Dlsym(h, name)
		if err != nil {
			t.Fatalf("simulator lacks %s: %v", name, err)
		}
		purego.RegisterFunc(fptr, sym)
	}
	return c
}

func (c *simControl) faults(t testing.TB, spec string) {
	t.Helper()
	if c.setFaults(spec) != 0 {
		t.Fatalf("kilnsim_set_faults(%q) refused", spec)
	}
	t.Cleanup(func() { c.setFaults("") })
}

func (c *simControl) set(t testing.TB, spec string) {
	t.Helper()
	if c.config(spec) != 0 {
		t.Fatalf("kilnsim_config(%q) refused", spec)
	}
}

// onThread runs fn on a fresh goroutine locked to its OS thread, like the
// npu device thread, and waits for it. The thread exits afterwards, taking
// its runtime binding with it.
func onThread(t testing.TB, fn func()) {
	t.Helper()
	done := make(chan any, 1)
	go func() {
		runtime.LockOSThread()
		defer func() { done <- recover() }()
		fn()
	}()
	if p := <-done; p != nil {
		panic(p)
	}
}

// tinyLayer writes a simulated LLM layer with three shape groups (decode,
// prefill without and with history) and returns its path and spec.
func tinyLayer(t testing.TB, dir string) (string, *cardsim.ModelSpec) {
	t.Helper()
	s := cardsim.LLMSpec{
		Name: "tiny", Arch: "tiny", ModelDir: "tiny", Layers: 1, Hidden: 16, KVDim: 8, Vocab: 64,
		MaxCtx: 63, Prefill: 16, Histories: []int{0, 16}, Seed: 7, LayerWeightBytes: 1 << 20,
	}
	spec := s.LayerSpec(0)
	b, err := spec.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, s.LayerFile(0))
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, spec
}

// must fails the test on err.
func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
