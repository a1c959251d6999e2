package axcl

import (
	"path/filepath"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
)

// The status callback is optional and found under either spelling: the
// V3.10.2 header's comment says axclRegisterDeviceStatusCallback, newer
// runtimes export axclrtRegisterDeviceStatusCallback. A registered Go
// function gets the device and status the runtime passes.
func TestStatusCallbackSpellings(t *testing.T) {
	sim := cardsim.NoCallbackLibrary(t)
	plain, err := Load(sim)
	must(t, err)
	if plain.HasStatusCallback() || !plain.HasReboot() {
		t.Fatalf("simulator without the callback: callback %v, reboot %v", plain.HasStatusCallback(), plain.HasReboot())
	}
	lib := buildLib(t, "oldspelling", `
#include <stdint.h>
typedef void (*cb_t)(int32_t, int32_t, void *);
int32_t axclRegisterDeviceStatusCallback(cb_t cb, void *data) { cb(3, 1, data); return 0; }
`, "-Wl,--no-as-needed", sim, "-Wl,-rpath,"+filepath.Dir(sim))
	rt, err := Load(lib)
	must(t, err)
	if !rt.HasStatusCallback() {
		t.Fatal("axclRegisterDeviceStatusCallback not found")
	}
	var got []DeviceStatus
	var ids []DeviceID
	must(t, rt.WatchDeviceStatus(func(id DeviceID, s DeviceStatus) { ids, got = append(ids, id), append(got, s) }))
	if len(got) != 1 || got[0] != DeviceOffline || ids[0] != 3 {
		t.Fatalf("callback got devices %v statuses %v, want device 3 offline", ids, got)
	}
}
