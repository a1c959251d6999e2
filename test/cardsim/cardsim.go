// Package cardsim owns the card simulator: a C shared library that exports the subset of the
// AXCL runtime (libaxcl_rt.so, SDK V3.10.2) that kiln uses, with the same symbol names,
// signatures, struct layouts and error codes, plus generators of simulated model packages
// (a Qwen3-shaped chat model, the full Qwen3-4B shape, SD 1.5 LCM) and a Go reference of the
// simulated LLM that needs no KV cache.
//
// Pointing KILN_AXCL_LIB at the library built by [Build] runs the real binding, the real device
// thread and the real LLM and SD loops on any Linux machine. Tests get the library with
// [Library] and steer it (fault plan, settings, temperature) with [Controls]. The simulated
// models compute a real, tiny attention (so a wrong KV offset, mask or position changes the
// output) and cheap deterministic functions for SD; see README.md in this folder for the file
// format, every control and the exact math of each op.
package cardsim

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
)

//go:embed csrc/*.c csrc/*.h
var csrc embed.FS

// ErrNoCompiler is returned by [Build] when no C compiler is found.
var ErrNoCompiler = errors.New("cardsim: no C compiler found (set CC or install cc)")

// CFlags are the compiler flags [Build] uses. -ffp-contract=off keeps every float operation
// individually rounded, which the Go reference relies on.
var CFlags = []string{"-shared", "-fPIC", "-O2", "-ffp-contract=off", "-fvisibility=hidden", "-std=gnu11"}

func compiler() ([]string, error) {
	cc := strings.Fields(os.Getenv("CC"))
	if len(cc) == 0 {
		cc = []string{"cc"}
	}
	if _, err := exec.LookPath(cc[0]); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoCompiler, err)
	}
	return cc, nil
}

func sources() (names []string, err error) {
	err = fs.WalkDir(csrc, "csrc", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			names = append(names, p)
		}
		return err
	})
	sort.Strings(names)
	return names, err
}

// Defines that build variants of the simulator from the one C source tree (pass them to
// [Build]; [OldRuntimeLibrary] builds with both).
const (
	// NoFullVersion leaves axclrtGetFullVersion out, as the V2.25 API (pyaxcl) has it.
	NoFullVersion = "KILNSIM_NO_FULLVERSION"
	// NoDeviceProperties leaves axclrtGetDeviceProperties out, as the V2.25 API has it.
	NoDeviceProperties = "KILNSIM_NO_DEVICE_PROPERTIES"
	// NoStreams leaves the stream calls out (axclrt*Stream*, axclrtMemcpyAsync,
	// axclrtEngineExecuteAsync): a runtime on which kiln runs everything synchronously.
	NoStreams = "KILNSIM_NO_STREAMS"
)

// Build compiles the simulator with $CC (default cc) into outPath (e.g.
// build/cardsim/libaxcl_rt.so), creating its folder, with each of defines given as -D (e.g.
// [NoFullVersion]). The C sources are embedded, so Build works from any working directory.
func Build(ctx context.Context, outPath string, defines ...string) error {
	cc, err := compiler()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "cardsim-src-")
	if err != nil {
		return fmt.Errorf("cardsim: %w", err)
	}
	defer os.RemoveAll(dir)
	names, err := sources()
	if err != nil {
		return fmt.Errorf("cardsim: %w", err)
	}
	var cfiles []string
	for _, n := range names {
		b, err := csrc.ReadFile(n)
		if err != nil {
			return fmt.Errorf("cardsim: %w", err)
		}
		p := filepath.Join(dir, filepath.Base(n))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return fmt.Errorf("cardsim: %w", err)
		}
		if strings.HasSuffix(n, ".c") {
			cfiles = append(cfiles, p)
		}
	}
	abs, err := filepath.Abs(outPath)
	if err != nil {
		return fmt.Errorf("cardsim: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
		return fmt.Errorf("cardsim: %w", err)
	}
	// A unique temporary name: several test binaries may build the same library at once.
	tf, err := os.CreateTemp(filepath.Dir(abs), ".libaxcl-*.tmp")
	if err != nil {
		return fmt.Errorf("cardsim: %w", err)
	}
	tmp := tf.Name()
	tf.Close()
	args := append(slices.Clone(cc[1:]), CFlags...)
	for _, d := range defines {
		args = append(args, "-D"+d)
	}
	args = append(append(args, "-o", tmp), cfiles...)
	args = append(args, "-lm", "-lpthread")
	cmd := exec.CommandContext(ctx, cc[0], args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("cardsim: %s %s: %w\n%s", cc[0], strings.Join(args, " "), err, out)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("cardsim: %w", err)
	}
	if err := os.Rename(tmp, abs); err != nil {
		return fmt.Errorf("cardsim: %w", err)
	}
	return nil
}

// sourceHash identifies the embedded sources, the compiler, the flags and the defines.
func sourceHash(defines ...string) string {
	h := sha256.New()
	names, _ := sources()
	for _, n := range names {
		b, _ := csrc.ReadFile(n)
		fmt.Fprintf(h, "%s %d\n", n, len(b))
		h.Write(b)
	}
	fmt.Fprintf(h, "CC=%s %s\n", os.Getenv("CC"), strings.Join(CFlags, " "))
	if len(defines) > 0 {
		fmt.Fprintf(h, "-D %s\n", strings.Join(defines, " -D "))
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// built caches one build per variant (its defines) per test process.
type built struct {
	once sync.Once
	path string
	err  error
}

var (
	lib    built
	oldLib built
)

// EnvRequireSim names the environment variable that makes a missing C compiler fail the tests
// that need the simulator instead of skipping them: KILN_REQUIRE_SIM=1 (CI sets it, so a
// simulator that cannot be built never passes as a run of skips).
const EnvRequireSim = "KILN_REQUIRE_SIM"

// simRequired reports whether KILN_REQUIRE_SIM is set (to anything but "" or "0").
func simRequired() bool {
	v := os.Getenv(EnvRequireSim)
	return v != "" && v != "0"
}

// noCompiler skips tb for a missing C compiler, or fails it under KILN_REQUIRE_SIM.
func noCompiler(tb testing.TB, err error) {
	tb.Helper()
	if simRequired() {
		tb.Fatalf("%v (%s is set: the simulator is required)", err, EnvRequireSim)
	}
	tb.Skipf("%v (set %s=1 to fail instead)", err, EnvRequireSim)
}

// CC returns the C compiler command ($CC split into fields, default cc) for tests that build
// their own shared libraries. Without a compiler it skips tb, or fails it when KILN_REQUIRE_SIM
// is set.
func CC(tb testing.TB) []string {
	tb.Helper()
	cc, err := compiler()
	if err != nil {
		noCompiler(tb, err)
	}
	return cc
}

// Library builds the simulator once per test process and returns the path of the .so. The
// result is cached by content in the OS temp folder, so several test binaries share one build.
// It fails tb when the build fails. When no C compiler is installed (and no cached build
// exists) it skips tb, or fails it when KILN_REQUIRE_SIM is set.
func Library(tb testing.TB) string {
	tb.Helper()
	return lib.get(tb)
}

// OldRuntimeLibrary is [Library] built without the symbols that older runtimes (the V2.25
// API) lack: axclrtGetFullVersion and axclrtGetDeviceProperties ([NoFullVersion],
// [NoDeviceProperties]).
func OldRuntimeLibrary(tb testing.TB) string {
	tb.Helper()
	return oldLib.get(tb, NoFullVersion, NoDeviceProperties)
}

// NoStreamsLibrary is [Library] built without the stream calls ([NoStreams]).
func NoStreamsLibrary(tb testing.TB) string {
	tb.Helper()
	return noStreamsLib.get(tb, NoStreams)
}

var noStreamsLib built

func (b *built) get(tb testing.TB, defines ...string) string {
	tb.Helper()
	b.once.Do(func() {
		p := filepath.Join(os.TempDir(), "kiln-cardsim-"+sourceHash(defines...), "libaxcl_rt.so")
		if _, err := os.Stat(p); err == nil {
			b.path = p
			return
		}
		b.err = Build(context.Background(), p, defines...)
		b.path = p
	})
	if errors.Is(b.err, ErrNoCompiler) {
		noCompiler(tb, fmt.Errorf("cardsim: simulator not built: %w", b.err))
	}
	if b.err != nil {
		tb.Fatalf("cardsim: %v", b.err)
	}
	return b.path
}
