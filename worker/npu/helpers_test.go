package npu

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/axcl"
)

type bundle struct {
	lib string
	ctl *cardsim.Control
	dev *Device
}

// setup opens the simulated card. The device is closed at cleanup and the
// test fails if the teardown reports an error.
func setup(t testing.TB, cfg Config) *bundle {
	t.Helper()
	ctl := cardsim.Controls(t)
	cfg.Library = ctl.Library()
	d, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(context.Background()); err != nil && !errors.Is(err, ErrHung) {
			t.Errorf("Close: %v", err)
		}
	})
	return &bundle{lib: cfg.Library, ctl: ctl, dev: d}
}

// hangingDevice opens the simulated card with a 100 ms ExecuteTimeout and
// loads a layer whose next execute hangs (up to the simulator's cap, 300 s,
// unless woken). The test closes the device itself.
func hangingDevice(t *testing.T) (*Device, *cardsim.Control, *Model) {
	t.Helper()
	ctl := cardsim.Controls(t)
	d, err := Open(bg, Config{Library: ctl.Library(), SampleInterval: -1, ExecuteTimeout: 100 * time.Millisecond})
	must(t, err)
	m, err := d.LoadModel(bg, layerFiles(t)[0], nil)
	must(t, err)
	ctl.SetFaults(t, "hang_execute=1")
	return d, ctl, m
}

// tinySpec is a small simulated Qwen3-style layer: hidden 16, kv_dim 8,
// context 63, prefill 16, three shape groups (decode, prefill without and
// with 16 rows of history).
func tinySpec() cardsim.LLMSpec {
	return cardsim.LLMSpec{
		Name: "tiny", Arch: "tiny", ModelDir: "tiny", Layers: 2, Hidden: 16, KVDim: 8, Vocab: 64,
		MaxCtx: 63, Prefill: 16, Histories: []int{0, 16}, Seed: 7, LayerWeightBytes: 1 << 20,
	}
}

func writeSpec(t testing.TB, dir, name string, spec *cardsim.ModelSpec) string {
	t.Helper()
	b, err := spec.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// layerFiles writes the layers of tinySpec and returns their paths.
func layerFiles(t testing.TB) []string {
	t.Helper()
	s := tinySpec()
	dir := t.TempDir()
	var out []string
	for i := range s.Layers {
		out = append(out, writeSpec(t, dir, s.LayerFile(i), s.LayerSpec(i)))
	}
	return out
}

// runtimeFinalized reports whether the simulator's runtime has been
// finalised (axclrtGetDeviceCount fails before axclInit).
func runtimeFinalized(t testing.TB, lib string) bool {
	t.Helper()
	rt, err := axcl.Load(lib)
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		_, err := rt.DeviceCount()
		ch <- err
	}()
	return <-ch != nil
}

// waitDone waits for the device thread to finish its teardown; the bound
// only keeps a broken test from hanging forever.
func waitDone(t testing.TB, d *Device) {
	t.Helper()
	select {
	case <-d.Done():
	case <-time.After(60 * time.Second):
		t.Fatal("device thread never finished its teardown")
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestMain keeps the device's lifecycle logs out of test and benchmark
// output (KILN_TEST_LOG=1 shows them).
func TestMain(m *testing.M) {
	if os.Getenv("KILN_TEST_LOG") == "" {
		slog.SetDefault(slog.New(slog.DiscardHandler))
	}
	os.Exit(m.Run())
}
