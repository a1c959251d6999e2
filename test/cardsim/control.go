package cardsim

import (
	"fmt"
	"sync"
	"testing"
	"unsafe"

	"github.com/ebitengine/purego"
)

// Control drives the simulator loaded in the test process through its own control symbols
// (kilnsim_*, not part of AXCL; README.md, "Controls"): the fault plan, the settings and the
// thermal model. They act on every simulated device of the process, so tests that use a Control
// must not run in parallel with other simulator tests.
//
// Tests reach the card itself through the real binding ([Control.Library] is the path to give
// worker/axcl or worker/npu); a Control only steers it.
type Control struct {
	path string
	*symbols
}

// symbols are the simulator's control functions, bound once per process.
type symbols struct {
	setFaults   func(spec string) int32
	config      func(spec string) int32
	setTempC    func(celsius int32) int32
	tempMC      func(device int32) int32
	sizeofProps func() int32
	lastError   func() string
	parseSpec   func(buf unsafe.Pointer, n uint64, errBuf unsafe.Pointer, errLen uint64) int32
	stats       func(out *Stats, n int32) int32
	resetStats  func()
}

var bound struct {
	once sync.Once
	sym  *symbols
	err  error
}

// bind opens the simulator at path (the one [Library] returns) and binds its control symbols.
func bind(path string) (*symbols, error) {
	bound.once.Do(func() {
		h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err != nil {
			bound.err = fmt.Errorf("cardsim: open %s: %w", path, err)
			return
		}
		s := &symbols{}
		for name, fn := range map[string]any{
			"kilnsim_set_faults":   &s.setFaults,
			"kilnsim_config":       &s.config,
			"kilnsim_set_temp_c":   &s.setTempC,
			"kilnsim_temp_mc":      &s.tempMC,
			"kilnsim_sizeof_props": &s.sizeofProps,
			"kilnsim_last_error":   &s.lastError,
			"kilnsim_parse_spec":   &s.parseSpec,
			"kilnsim_stats":        &s.stats,
			"kilnsim_reset_stats":  &s.resetStats,
		} {
			sym, err := purego.Dlsym(h, name)
			if err != nil {
				bound.err = fmt.Errorf("cardsim: %s lacks %s: %w", path, name, err)
				return
			}
			purego.RegisterFunc(fn, sym)
		}
		bound.sym = s
	})
	return bound.sym, bound.err
}

// Controls builds the simulator as [Library] does (skipping tb without a C compiler, or failing
// it under KILN_REQUIRE_SIM) and returns its controls. The methods that can be refused take the
// test to fail, and to undo the change at its end.
func Controls(tb testing.TB) *Control {
	tb.Helper()
	path := Library(tb)
	sym, err := bind(path)
	if err != nil {
		tb.Fatal(err)
	}
	return &Control{path: path, symbols: sym}
}

// Library is the path of the simulator (libaxcl_rt.so), for npu.Config.Library or axcl.Load.
func (c *Control) Library() string { return c.path }

// SetFaults replaces the fault plan (README.md, "Fault syntax"; "" clears it), restarts the
// fault counters and wakes hung executes. It fails tb if the plan is refused, and clears the
// plan when tb ends. The plan lasts until the runtime is initialised again (axclInit starts
// over from KILN_SIM_FAULTS).
func (c *Control) SetFaults(tb testing.TB, spec string) {
	tb.Helper()
	if c.setFaults(spec) != 0 {
		tb.Fatalf("cardsim: kilnsim_set_faults(%q) refused", spec)
	}
	tb.Cleanup(func() { c.setFaults("") })
}

// Config applies settings to the running simulator: "key=value,…" with the keys exec_us, prefill_exec_us,
// text_exec_us, unet_exec_us, vae_exec_us, nocompute, ambient_c, heat_c_per_s, cool_per_s, temp_file, log, hang_cap_ms, cmm_mib and
// props_us, and the latency model's sync_us, unpinned_us and bind_align (README.md, "Controls"). It fails tb if they are refused. undo, when not empty, is
// applied when tb ends. Settings hold until the runtime is initialised again (axclInit starts
// over from the defaults and the environment), so call Config once the card is open.
func (c *Control) Config(tb testing.TB, spec, undo string) {
	tb.Helper()
	if c.config(spec) != 0 {
		tb.Fatalf("cardsim: kilnsim_config(%q) refused", spec)
	}
	if undo != "" {
		tb.Cleanup(func() { c.config(undo) })
	}
}

// SetTempC sets the thermal model of every device to celsius; the model carries on from there.
// Like TempMC, SizeofProps and LastError it cannot be refused and may be called from any
// goroutine.
func (c *Control) SetTempC(celsius int) { c.setTempC(int32(celsius)) }

// TempMC returns the thermal model's temperature of device (an id, the PCIe bus number) in
// millidegrees Celsius, ignoring KILN_SIM_TEMP_FILE; -1 for an unknown device.
func (c *Control) TempMC(device int32) int32 { return c.tempMC(device) }

// SizeofProps is sizeof(axclrtDeviceProperties) as the C compiler laid the struct out (240).
func (c *Control) SizeofProps() int { return int(c.sizeofProps()) }

// LastError is the message of the last error the simulator returned on the calling OS thread.
func (c *Control) LastError() string { return c.lastError() }

// Stats counts the runtime calls of the process since the last ResetStats (or load), for
// benchmarks: how many calls waited for the card (a round trip each, sync_us in the latency
// model) and how much work went through streams instead.
type Stats struct {
	SyncCalls     uint64 // calls that waited for the card: the three below
	SyncExecutes  uint64 // axclrtEngineExecute
	SyncCopies    uint64 // axclrtMemcpy (not host to host), axclrtMemset
	StreamSyncs   uint64 // axclrtSynchronizeStream[WithTimeout], axclrtSynchronizeDevice
	AsyncExecutes uint64 // axclrtEngineExecuteAsync (queued)
	AsyncCopies   uint64 // axclrtMemcpyAsync (queued)
	Binds         uint64 // axclrtEngineSet{Input,Output}Buffer*
	Unpinned      uint64 // host<->device transfers of host memory not from axclrtMallocHost
	Pinned        uint64 // host<->device transfers of memory from axclrtMallocHost
}

// Sub is s − o, field by field.
func (s Stats) Sub(o Stats) Stats {
	return Stats{s.SyncCalls - o.SyncCalls, s.SyncExecutes - o.SyncExecutes, s.SyncCopies - o.SyncCopies,
		s.StreamSyncs - o.StreamSyncs, s.AsyncExecutes - o.AsyncExecutes, s.AsyncCopies - o.AsyncCopies,
		s.Binds - o.Binds, s.Unpinned - o.Unpinned, s.Pinned - o.Pinned}
}

// Stats reads the call counters (every device of the process).
func (c *Control) Stats() Stats {
	var s Stats
	c.stats(&s, int32(unsafe.Sizeof(s)/8))
	return s
}

// ResetStats zeroes the call counters.
func (c *Control) ResetStats() { c.resetStats() }
