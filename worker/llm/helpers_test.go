package llm

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/npu"
)

// TestMain keeps lifecycle logs out of test output (KILN_TEST_LOG=1 shows them).
// It also removes the packages written once per test binary.
func TestMain(m *testing.M) {
	if os.Getenv("KILN_TEST_LOG") == "" {
		slog.SetDefault(slog.New(slog.DiscardHandler))
	}
	code := m.Run()
	if packagesRoot != "" {
		_ = os.RemoveAll(packagesRoot)
	}
	os.Exit(code)
}

// packagesRoot holds the packages written once per test binary; TestMain
// removes it. It outlives every test (a test's TempDir would not: the
// first test to write a package would take it away from the others, and
// from the next run under -count).
var (
	packagesRoot     string
	packagesRootOnce sync.Once
	packagesRootErr  error
)

// packagesDir is packagesRoot, made the first time it is asked for.
func packagesDir() (string, error) {
	packagesRootOnce.Do(func() { packagesRoot, packagesRootErr = os.MkdirTemp("", "kiln-llm-packages-") })
	return packagesRoot, packagesRootErr
}

// oncePackage is a simulated package written the first time a test asks for
// it, with its cacheless reference.
type oncePackage struct {
	once sync.Once
	dir  string
	ref  *cardsim.Reference
	err  error
}

// get writes spec under name the first time and returns its folder and
// reference.
func (p *oncePackage) get(t testing.TB, name string, spec func() cardsim.LLMSpec) (string, *cardsim.Reference) {
	t.Helper()
	p.once.Do(func() {
		var root string
		if root, p.err = packagesDir(); p.err != nil {
			return
		}
		p.dir = filepath.Join(root, name)
		if p.err = cardsim.WriteLLMPackage(p.dir, spec()); p.err == nil {
			p.ref, p.err = cardsim.LoadReference(p.dir)
		}
	})
	if p.err != nil {
		t.Fatal(p.err)
	}
	return p.dir, p.ref
}

// testSpec is TinyQwen3 with two layers and a 639-token context whose
// prefill groups (history 0, 128, 256, 384) end before it, so long prompts
// also take the decode-group path.
func testSpec() cardsim.LLMSpec {
	s := cardsim.TinyQwen3()
	s.Name = "qwen3-test"
	s.Layers = 2
	s.MaxCtx = 639
	s.Histories = []int{0, 128, 256, 384}
	s.TokenizerDir = "../tokenize/testdata/qwen3"
	return s
}

var testPkg oncePackage

// testPackage writes the test package once per test binary and returns its
// folder and the cacheless reference.
func testPackage(t testing.TB) (string, *cardsim.Reference) {
	t.Helper()
	return testPkg.get(t, "qwen3-test", testSpec)
}

// openDevice opens the simulated card; it is closed at cleanup.
func openDevice(t testing.TB) *npu.Device {
	t.Helper()
	lib := cardsim.Library(t)
	dev, err := npu.Open(context.Background(), npu.Config{Library: lib, SampleInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dev.Close(context.Background()); err != nil && !errors.Is(err, npu.ErrLost) {
			t.Errorf("close device: %v", err)
		}
	})
	return dev
}

var sharedModel struct {
	once sync.Once
	m    *Model
	err  error
}

// loadTest returns the test package loaded on the simulated card: with nil
// options one model shared by the tests of this binary (its prefix cache
// emptied), else a model of its own.
func loadTest(t testing.TB, opts *Options) (*Model, *cardsim.Reference, *npu.Device) {
	t.Helper()
	dir, ref := testPackage(t)
	if opts == nil {
		sharedModel.once.Do(func() {
			var dev *npu.Device
			dev, sharedModel.err = npu.Open(context.Background(), npu.Config{Library: cardsim.Library(t), SampleInterval: -1})
			if sharedModel.err == nil {
				sharedModel.m, sharedModel.err = Load(context.Background(), dev, dir, nil)
			}
		})
		if sharedModel.err != nil {
			t.Fatal(sharedModel.err)
		}
		m := sharedModel.m
		m.mu.Lock()
		m.prefixes = newPrefixCache(m.opts.PrefixCacheBytes, m.opts.PrefixCacheEntries)
		m.mu.Unlock()
		return m, ref, m.dev
	}
	dev := openDevice(t)
	m, err := Load(context.Background(), dev, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(context.Background()); err != nil {
			t.Errorf("close model: %v", err)
		}
	})
	return m, ref, dev
}
