package axcl

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/ebitengine/purego"
)

// DefaultLibraryPath is where the axclhost package installs the runtime.
const DefaultLibraryPath = "/usr/lib/axcl/libaxcl_rt.so"

// EnvLibrary names the environment variable that overrides the library path.
const EnvLibrary = "KILN_AXCL_LIB"

// InstallHint tells a person how to get the runtime onto a Raspberry Pi 5.
const InstallHint = `kiln needs the AXCL host runtime of the M5Stack LLM-8850 card (Debian package axclhost).
On a Raspberry Pi 5:
  1. /boot/firmware/config.txt: add "dtparam=pciex1" and "dtparam=pciex1_gen=3", and under [all]
     "dtoverlay=pciex1-compat-pi5,no-mip"; update the EEPROM bootloader if older than 2023-12-06; reboot.
  2. sudo apt install dkms linux-headers-$(uname -r), then the axcl .deb from M5Stack/Axera:
     sudo apt install ./axcl_host_aarch64_V*.deb   (or M5Stack's apt repo: sudo apt install axclhost)
  3. check: lspci shows "Axera Semiconductor Co., Ltd Device 0650"; axcl-smi lists the card.
Or set KILN_AXCL_LIB (or --lib) to the path of libaxcl_rt.so, e.g. the card simulator built by "make sim".`

// LibraryPath is the path [Load] uses when given "": KILN_AXCL_LIB when set,
// else [DefaultLibraryPath].
func LibraryPath() string {
	if p := os.Getenv(EnvLibrary); p != "" {
		return p
	}
	return DefaultLibraryPath
}

// Runtime is a loaded libaxcl_rt.so with every symbol resolved. Its methods
// are safe to call from any goroutine as far as Go is concerned; the runtime
// itself binds devices and contexts to OS threads (see the package doc).
type Runtime struct {
	path   string
	handle uintptr

	runtimeFuncs
	deviceFuncs
	contextFuncs
	memoryFuncs
	engineFuncs
	engineIOFuncs
	streamFuncs
	rebootFuncs
}

// library resolves symbols of one dlopen handle.
type library struct {
	handle uintptr
	path   string
}

// bind resolves name and registers it into fptr, a pointer to a func
// variable. A missing symbol is a *SymbolError.
func (l *library) bind(fptr any, name string) (uintptr, error) {
	sym, err := purego.Dlsym(l.handle, name)
	if err != nil {
		return 0, &SymbolError{Symbol: name, Library: l.path, Err: err}
	}
	purego.RegisterFunc(fptr, sym)
	return sym, nil
}

// optional binds name when the library has it and reports whether it did.
func (l *library) optional(fptr any, name string) bool {
	sym, err := purego.Dlsym(l.handle, name)
	if err != nil {
		return false
	}
	purego.RegisterFunc(fptr, sym)
	return true
}

// binder collects the first error of a run of binds.
type binder struct {
	lib *library
	err error
}

func (b *binder) bind(fptr any, name string) uintptr {
	if b.err != nil {
		return 0
	}
	sym, err := b.lib.bind(fptr, name)
	b.err = err
	return sym
}

// Load opens the runtime library at path ("" means [LibraryPath]) and
// resolves every symbol kiln uses. A missing file wraps
// [ErrLibraryNotFound] and carries [InstallHint]; a missing symbol is a
// [*SymbolError] naming it. Loading does not initialise the runtime: call
// [Runtime.Init] on the thread that will own the device.
func Load(path string) (*Runtime, error) {
	if path == "" {
		path = LibraryPath()
	}
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s does not exist\n%s", ErrLibraryNotFound, path, InstallHint)
		}
		return nil, fmt.Errorf("axcl: runtime library %s: %w", path, err)
	}
	h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
	if err != nil {
		return nil, fmt.Errorf("axcl: cannot load %s (if its dependencies are missing run sudo ldconfig, "+
			"or reinstall the axclhost package): %w", path, err)
	}
	rt := &Runtime{path: path, handle: h}
	lib := &library{handle: h, path: path}
	for _, load := range []func(*library) error{
		rt.runtimeFuncs.load,
		rt.deviceFuncs.load,
		rt.contextFuncs.load,
		rt.memoryFuncs.load,
		rt.engineFuncs.load,
		rt.engineIOFuncs.load,
		rt.streamFuncs.load,
		rt.rebootFuncs.load,
	} {
		if err := load(lib); err != nil {
			_ = purego.Dlclose(h)
			return nil, err
		}
	}
	return rt, nil
}

// Path is the file the runtime was loaded from.
func (rt *Runtime) Path() string { return rt.path }

// HasErrorString reports whether the runtime exports axclrtGetErrorString
// (newer SDKs); errors then carry the runtime's own text in Detail.
func (rt *Runtime) HasErrorString() bool { return rt.getErrorString != nil }

// HasLastError reports whether the runtime exports axclrtGetLastError.
func (rt *Runtime) HasLastError() bool { return rt.getLastError != nil }
