package cardsim

import (
	"fmt"
	"sync"
	"testing"

	"github.com/ebitengine/purego"
)

// The card's life beyond one call (README.md, "Card life"): reboots, the OFFLINE fault, the
// wedge a killed process leaves, late enumeration and the load log. Environment variables (read
// at every axclInit; also kilnsim_config keys, lower case without the prefix):
const (
	// EnvRebootMS is how long a rebooted card stays off the bus (ms, default 0).
	EnvRebootMS = "KILN_SIM_REBOOT_MS"
	// EnvEnumDelayMS is how long after the process's first axclInit the card enumerates
	// (ms, default 0): until then the device list is empty and SetDevice says 0x80300181.
	EnvEnumDelayMS = "KILN_SIM_ENUM_DELAY_MS"
	// EnvStateDir is the folder where the card's state outlives the process: a process that dies
	// mid-execute leaves the card wedged for the next one, until a reboot.
	EnvStateDir = "KILN_SIM_STATE_DIR"
	// EnvLoadLog is a file that gets a line per engine load ("load KIND NAME PATH") and per
	// reboot ("reboot ID").
	EnvLoadLog = "KILN_SIM_LOAD_LOG"
	// EnvLoadOrderDrop set to 1 makes an engine built by pulsar2 build (ONNX: SD, vision) that
	// loads after an llm_build engine (LLM layer, post) on the same card drop the card (OFFLINE),
	// as seen in the field.
	EnvLoadOrderDrop = "KILN_SIM_LOAD_ORDER_DROP"
)

// NoStatusCallback leaves axclrtRegisterDeviceStatusCallback out, as the public V3.10.2
// library has it (card-field-notes.md §1.3).
const NoStatusCallback = "KILNSIM_NO_STATUS_CALLBACK"

// NoReboot leaves axclrtRebootDevice out: a runtime without the software rescue.
const NoReboot = "KILNSIM_NO_REBOOT"

var noCallbackLib, noRebootLib built

// NoRebootLibrary is [Library] built without axclrtRebootDevice.
func NoRebootLibrary(tb testing.TB) string {
	tb.Helper()
	return noRebootLib.get(tb, NoReboot)
}

// NoCallbackLibrary is [Library] built without axclrtRegisterDeviceStatusCallback.
func NoCallbackLibrary(tb testing.TB) string {
	tb.Helper()
	return noCallbackLib.get(tb, NoStatusCallback)
}

var counter struct {
	once sync.Once
	fn   func(name string) int64
	err  error
}

// Count returns a counter of the card's life in this process: "reboots", "offline_calls"
// (calls refused because the device was OFFLINE, teardown calls excepted) or
// "wedged_executes". Like the other controls it acts on every simulated device of the process.
func (c *Control) Count(tb testing.TB, name string) int64 {
	tb.Helper()
	counter.once.Do(func() {
		h, err := purego.Dlopen(c.path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err != nil {
			counter.err = err
			return
		}
		sym, err := purego.Dlsym(h, "kilnsim_count")
		if err != nil {
			counter.err = fmt.Errorf("cardsim: %s lacks kilnsim_count: %w", c.path, err)
			return
		}
		purego.RegisterFunc(&counter.fn, sym)
	})
	if counter.err != nil {
		tb.Fatal(counter.err)
	}
	n := counter.fn(name)
	if n < 0 {
		tb.Fatalf("cardsim: no counter %q", name)
	}
	return n
}
