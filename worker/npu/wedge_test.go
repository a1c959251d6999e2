package npu

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/test/wait"
	"github.com/kiln-project/kiln/worker/axcl"
)

// The card goes OFFLINE at an execute: that execute fails with "not
// connected", the device is lost at once and nothing more reaches the card;
// the runtime's status callback says OFFLINE, and ONLINE once Reboot has
// brought the card back.
func TestOfflineStopsSubmitsAndRebootBringsTheCardBack(t *testing.T) {
	ctl := cardsim.Controls(t)
	lib := ctl.Library()
	t.Setenv(cardsim.EnvRebootMS, "100")
	d, err := Open(bg, Config{Library: lib, SampleInterval: -1})
	must(t, err)
	m, err := d.LoadModel(bg, layerFiles(t)[0], nil)
	must(t, err)
	var mu sync.Mutex
	var seen []axcl.DeviceStatus
	must(t, d.Runtime().WatchDeviceStatus(func(id axcl.DeviceID, s axcl.DeviceStatus) {
		mu.Lock()
		seen = append(seen, s)
		mu.Unlock()
	}))
	offline := ctl.Count(t, "offline_calls")
	ctl.SetFaults(t, "offline=1")
	err = d.Execute(bg, m, 0)
	if !errors.Is(err, axcl.ErrDeviceNotConnected) || !errors.Is(d.Err(), ErrLost) {
		t.Fatalf("execute on a card that goes offline = %v, device %v; want not connected and lost", err, d.Err())
	}
	if err := d.Execute(bg, m, 0); !errors.Is(err, ErrLost) {
		t.Fatalf("execute after OFFLINE = %v, want the LostError", err)
	}
	if n := ctl.Count(t, "offline_calls") - offline; n != 1 {
		t.Fatalf("%d calls reached the offline card, want 1 (the execute that found it offline)", n)
	}
	id := d.ID()
	_ = d.Close(bg)
	waitDone(t, d)
	must(t, Reboot(bg, RebootConfig{Library: lib, Device: id, Timeout: 10 * time.Second}))
	wait.For(t, 10*time.Second, 5*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if !slices.Equal(seen, []axcl.DeviceStatus{axcl.DeviceOffline, axcl.DeviceOnline}) {
			return errors.New("status callbacks so far: " + statuses(seen))
		}
		return nil
	})
	again, err := Open(bg, Config{Library: lib, SampleInterval: -1})
	must(t, err)
	m, err = again.LoadModel(bg, layerFiles(t)[0], nil)
	must(t, err)
	must(t, again.Execute(bg, m, 0))
	must(t, again.Close(bg))
}

func statuses(s []axcl.DeviceStatus) string {
	var out string
	for _, v := range s {
		out += v.String() + " "
	}
	return out
}

// A device thread stuck in a hung execute is woken by the card's reboot
// and tears down: the process can then exit without work in flight.
func TestRebootWakesAHungExecute(t *testing.T) {
	d, ctl, m := hangingDevice(t)
	if err := d.Execute(bg, m, 0); !errors.Is(err, ErrHung) {
		t.Fatalf("hung execute = %v", err)
	}
	if err := d.Close(bg); !errors.Is(err, ErrHung) {
		t.Fatalf("Close of a hung device = %v, want ErrHung", err)
	}
	must(t, Reboot(bg, RebootConfig{Library: ctl.Library(), Device: d.ID(), Timeout: 10 * time.Second}))
	waitDone(t, d)
}

// A runtime without axclrtRebootDevice: Reboot says so (ErrNoReboot), so
// the worker exits and the operator reboots by hand.
func TestRebootWithoutTheSymbol(t *testing.T) {
	lib := cardsim.NoRebootLibrary(t)
	if err := Reboot(bg, RebootConfig{Library: lib}); !errors.Is(err, ErrNoReboot) || !errors.Is(err, axcl.ErrUnsupported) {
		t.Fatalf("Reboot = %v, want ErrNoReboot", err)
	}
}
