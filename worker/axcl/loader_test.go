package axcl

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
)

func TestLibraryPath(t *testing.T) {
	t.Setenv(EnvLibrary, "")
	if got := LibraryPath(); got != "/usr/lib/axcl/libaxcl_rt.so" {
		t.Fatalf("LibraryPath() without env = %q", got)
	}
	t.Setenv(EnvLibrary, "/opt/sim/libaxcl_rt.so")
	if got := LibraryPath(); got != "/opt/sim/libaxcl_rt.so" {
		t.Fatalf("LibraryPath() with KILN_AXCL_LIB = %q", got)
	}
}

func TestLoadMissingLibrary(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "libaxcl_rt.so")
	t.Setenv(EnvLibrary, missing)
	for _, arg := range []string{"", missing} {
		_, err := Load(arg)
		if !errors.Is(err, ErrLibraryNotFound) {
			t.Fatalf("Load(%q) = %v, want ErrLibraryNotFound", arg, err)
		}
		msg := err.Error()
		for _, want := range []string{missing, "KILN_AXCL_LIB", "Raspberry Pi 5", "dtparam=pciex1", "pciex1-compat-pi5", "axclhost", ".deb"} {
			if !strings.Contains(msg, want) {
				t.Errorf("install hint lacks %q:\n%s", want, msg)
			}
		}
	}
}

func TestLoadNotALibrary(t *testing.T) {
	path := filepath.Join(t.TempDir(), "libaxcl_rt.so")
	if err := os.WriteFile(path, []byte("not an ELF file"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if err == nil || errors.Is(err, ErrLibraryNotFound) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Load(garbage) = %v", err)
	}
}

// buildLib compiles C source into a shared library with $CC, skipping the
// test without a compiler (failing it under KILN_REQUIRE_SIM, as the
// simulator does).
func buildLib(t *testing.T, name, src string, extra ...string) string {
	t.Helper()
	cc := cardsim.CC(t)
	dir := t.TempDir()
	c := filepath.Join(dir, name+".c")
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "lib"+name+".so")
	args := slices.Concat(cc[1:], []string{"-shared", "-fPIC", "-o", out, c}, extra)
	if b, err := exec.Command(cc[0], args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", cc[0], args, err, b)
	}
	return out
}

// A runtime that lacks a symbol kiln needs is refused with an error naming
// the symbol, never a panic.
func TestLoadMissingSymbol(t *testing.T) {
	lib := buildLib(t, "oldaxcl", `
#include <stdint.h>
int32_t axclInit(const char *c) { (void)c; return 0; }
int32_t axclFinalize(void) { return 0; }
`)
	rt, err := Load(lib)
	if rt != nil || err == nil {
		t.Fatalf("Load(lib without axclrtGetVersion) = %v, %v", rt, err)
	}
	var se *SymbolError
	if !errors.As(err, &se) || se.Symbol != "axclrtGetVersion" || se.Library != lib {
		t.Fatalf("error %v, want *SymbolError for axclrtGetVersion in %s", err, lib)
	}
	if !errors.Is(err, ErrMissingSymbol) || !strings.Contains(err.Error(), "axclrtGetVersion") {
		t.Fatalf("error %q does not name the symbol or match ErrMissingSymbol", err)
	}
}

// Optional symbols of newer SDKs are used when present: a library that
// adds axclrtGetErrorString and axclrtGetLastError on top of the simulator
// (whose symbols it reaches through its NEEDED entry).
func TestOptionalSymbols(t *testing.T) {
	sim := cardsim.Library(t)
	plain, err := Load(sim)
	must(t, err)
	if plain.HasErrorString() || plain.HasLastError() {
		t.Fatalf("the V3.10.2 simulator exports the newer error functions?")
	}
	lib := buildLib(t, "newaxcl", `
#include <stdint.h>
const char *axclrtGetErrorString(int32_t code) { return code == (int32_t)0x80300284u ? "no context, says the runtime" : "other"; }
int32_t axclrtGetLastError(void) { return (int32_t)0x80300781u; }
`, "-Wl,--no-as-needed", sim, "-Wl,-rpath,"+filepath.Dir(sim))
	rt, err := Load(lib)
	must(t, err)
	if !rt.HasErrorString() || !rt.HasLastError() {
		t.Fatal("optional symbols not found")
	}
	onThread(t, func(t testing.TB) {
		must(t, rt.Init(""))
		defer rt.Finalize()
		_, err := rt.CurrentContext()
		var ae *Error
		if !errors.As(err, &ae) || ae.Detail != "no context, says the runtime" || !strings.Contains(err.Error(), "(runtime: no context, says the runtime)") {
			t.Fatalf("error with runtime text: %v (detail %q)", err, ae.Detail)
		}
		// A lookup that returns 0 reports the runtime's last error.
		_, err = rt.NumTensors(IOInfo(0xdead), Input)
		if !errors.As(err, &ae) || ae.Code != CodeEngineInvalidIndex {
			t.Fatalf("NumTensors(bogus) with axclrtGetLastError = %v", err)
		}
		if rt.LastError() != CodeEngineInvalidIndex {
			t.Fatalf("LastError() = %v", rt.LastError())
		}
	})
}
