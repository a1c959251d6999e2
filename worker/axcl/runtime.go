package axcl

import "fmt"

// Functions of axcl.h and axcl_rt.h: process-wide init and version.
type runtimeFuncs struct {
	// axclError axclInit(const char *config);
	init func(config string) int32
	// axclError axclFinalize(void);
	finalize func() int32
	// axclError axclrtGetVersion(int32_t *major, int32_t *minor, int32_t *patch);
	getVersion func(major, minor, patch *int32) int32
	// const char *axclrtGetSocName(void);
	getSocName func() string

	// Optional, newer SDKs only (the V2.25 API has no axclrtGetFullVersion).

	// const char *axclrtGetFullVersion(void);
	getFullVersion func() string

	// const char *axclrtGetErrorString(axclError error);
	getErrorString func(code int32) string
	// axclError axclrtGetLastError(void);
	getLastError func() int32
}

func (f *runtimeFuncs) load(l *library) error {
	b := binder{lib: l}
	b.bind(&f.init, "axclInit")
	b.bind(&f.finalize, "axclFinalize")
	b.bind(&f.getVersion, "axclrtGetVersion")
	b.bind(&f.getSocName, "axclrtGetSocName")
	if b.err != nil {
		return b.err
	}
	l.optional(&f.getFullVersion, "axclrtGetFullVersion")
	l.optional(&f.getErrorString, "axclrtGetErrorString")
	l.optional(&f.getLastError, "axclrtGetLastError")
	return nil
}

// Init initialises the runtime once per process (axclInit). config is the
// path of an axcl.json or "" for the defaults.
func (rt *Runtime) Init(config string) error {
	return rt.check("axclInit", rt.init(config))
}

// Finalize releases the runtime (axclFinalize). Call it once, last.
func (rt *Runtime) Finalize() error {
	return rt.check("axclFinalize", rt.finalize())
}

// Version is the runtime version triple.
type Version struct{ Major, Minor, Patch int }

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch) }

// Version reports the runtime version (axclrtGetVersion).
func (rt *Runtime) Version() (Version, error) {
	var major, minor, patch int32
	if err := rt.check("axclrtGetVersion", rt.getVersion(&major, &minor, &patch)); err != nil {
		return Version{}, err
	}
	return Version{int(major), int(minor), int(patch)}, nil
}

// FullVersion is the runtime's build string, e.g. "V3.10.2_20251215140224"
// (axclrtGetFullVersion); "" when the runtime does not export it (older
// SDKs: HasFullVersion).
func (rt *Runtime) FullVersion() string {
	if rt.getFullVersion == nil {
		return ""
	}
	return rt.getFullVersion()
}

// HasFullVersion reports whether the runtime exports axclrtGetFullVersion.
func (rt *Runtime) HasFullVersion() bool { return rt.getFullVersion != nil }

// SocName is the chip name, e.g. "AX650N" (axclrtGetSocName).
func (rt *Runtime) SocName() string { return rt.getSocName() }

// LastError returns the calling thread's last runtime error when the SDK
// exports axclrtGetLastError, else [Success].
func (rt *Runtime) LastError() Code {
	if rt.getLastError == nil {
		return Success
	}
	return Code(uint32(rt.getLastError()))
}
