package axcl

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
)

// simLib builds the card simulator (skipping without a C compiler, failing
// under KILN_REQUIRE_SIM) and loads it through the real binding.
func simLib(t testing.TB) (*Runtime, *cardsim.Control) {
	t.Helper()
	ctl := cardsim.Controls(t)
	rt, err := Load(ctl.Library())
	if err != nil {
		t.Fatalf("Load(%s): %v", ctl.Library(), err)
	}
	return rt, ctl
}

// onThread runs fn on a fresh goroutine locked to its OS thread, like the
// npu device thread, and waits for it. The thread exits afterwards, taking
// its runtime binding with it. fn's t is not the test's: its Fatal records
// the failure and ends fn's goroutine, and onThread then stops the test
// from the test's own goroutine.
func onThread(t testing.TB, fn func(t testing.TB)) {
	t.Helper()
	done := make(chan any, 1)
	returned := false
	go func() {
		runtime.LockOSThread()
		defer func() { done <- recover() }()
		fn(threadT{t})
		returned = true
	}()
	if p := <-done; p != nil {
		panic(p)
	}
	if !returned {
		t.FailNow()
	}
}

// threadT is the testing.TB of a function onThread runs: FailNow, Fatal
// and Fatalf mark the test failed and end the calling goroutine, which is
// not the test's (testing allows t.Fatal only there).
type threadT struct{ testing.TB }

func (t threadT) FailNow() {
	t.TB.Fail()
	runtime.Goexit()
}

func (t threadT) Fatal(args ...any) {
	t.TB.Helper()
	t.TB.Error(args...)
	runtime.Goexit()
}

func (t threadT) Fatalf(format string, args ...any) {
	t.TB.Helper()
	t.TB.Errorf(format, args...)
	runtime.Goexit()
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
