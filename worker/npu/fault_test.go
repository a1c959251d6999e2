package npu

import (
	"errors"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/axcl"
)

func TestFaultFailedExecute(t *testing.T) {
	b := setup(t, Config{SampleInterval: -1})
	m, err := b.dev.LoadModel(bg, layerFiles(t)[0], nil)
	must(t, err)
	b.ctl.SetFaults(t, "fail_execute=2")
	must(t, b.dev.Execute(bg, m, 0))
	err = b.dev.Execute(bg, m, 0)
	var ae *axcl.Error
	if !errors.As(err, &ae) || ae.Code != 0x8030070C || ae.Op != "axclrtEngineExecute" || !errors.Is(err, axcl.ErrExecuteFail) {
		t.Fatalf("injected execute failure = %v, want *axcl.Error 0x8030070C", err)
	}
	// A failed execute is not a lost card.
	if b.dev.Err() != nil {
		t.Fatalf("device marked unusable after one failed execute: %v", b.dev.Err())
	}
	must(t, b.dev.Execute(bg, m, 0))
}

// A hung execute is bounded by ExecuteTimeout: the caller gets ErrHung, the
// device is lost, later calls fail fast, Close returns, and the teardown
// runs once the runtime call comes back.
func TestFaultHungExecute(t *testing.T) {
	d, ctl, m := hangingDevice(t)
	lib := ctl.Library()
	err := d.Execute(bg, m, 0)
	if !errors.Is(err, ErrHung) || !errors.Is(err, ErrLost) {
		t.Fatalf("hung execute = %v, want ErrHung and ErrLost", err)
	}
	var le *LostError
	if !errors.As(err, &le) || le.Device != d.ID() {
		t.Fatalf("hung execute error %v is not a LostError for device %d", err, d.ID())
	}
	if err := d.Do(bg, func(*Thread) error { t.Error("work reached a lost device"); return nil }); !errors.Is(err, ErrLost) {
		t.Fatalf("Do on a lost device = %v", err)
	}
	if err := d.Execute(bg, m, 0); !errors.Is(err, ErrLost) {
		t.Fatalf("Execute on a lost device = %v", err)
	}
	if _, err := d.Properties(bg); !errors.Is(err, ErrLost) {
		t.Fatalf("Properties of a lost device = %v", err)
	}
	if err := d.Close(bg); !errors.Is(err, ErrHung) {
		t.Fatalf("Close of a hung device = %v, want it to return at once with ErrHung", err)
	}
	select {
	case <-d.Done():
		t.Fatal("teardown finished while the runtime call is still hung")
	default:
	}
	// Wake the simulator's hung call (on a real card: the runtime's own
	// timeout or a reset); the device thread then tears down.
	ctl.SetFaults(t, "")
	waitDone(t, d)
	if !runtimeFinalized(t, lib) {
		t.Fatal("teardown after the hung call returned did not finalise the runtime")
	}
}

// A card that stops answering marks the device lost; teardown still runs.
func TestFaultLostDevice(t *testing.T) {
	ctl := cardsim.Controls(t)
	lib := ctl.Library()
	d, err := Open(bg, Config{Library: lib, SampleInterval: -1})
	must(t, err)
	m, err := d.LoadModel(bg, layerFiles(t)[0], nil)
	must(t, err)
	ctl.SetFaults(t, "lose_device=1")
	err = d.Execute(bg, m, 0)
	var ae *axcl.Error
	if !errors.As(err, &ae) || ae.Code != 0x8030070A || !errors.Is(err, axcl.ErrDeviceLost) {
		t.Fatalf("execute on a lost card = %v, want *axcl.Error 0x8030070A", err)
	}
	if !errors.Is(d.Err(), ErrLost) {
		t.Fatalf("Err() after the card stopped answering = %v", d.Err())
	}
	if err := d.Do(bg, func(*Thread) error { return nil }); !errors.Is(err, ErrLost) || !errors.Is(err, axcl.ErrDeviceLost) {
		t.Fatalf("Do after loss = %v", err)
	}
	must(t, d.Close(bg))
	waitDone(t, d)
	if !runtimeFinalized(t, lib) {
		t.Fatal("teardown of a lost device did not finalise the runtime")
	}
}

// Temperature from CardInfo rises while models execute (the simulator's
// thermal model heats with NPU busy time). Only the direction is checked.
func TestTemperatureRisesUnderLoad(t *testing.T) {
	b := setup(t, Config{SampleInterval: -1})
	b.ctl.Config(t, "exec_us=20000,heat_c_per_s=40,cool_per_s=0.01", "exec_us=0,heat_c_per_s=2.5,cool_per_s=0.05")
	m, err := b.dev.LoadModel(bg, layerFiles(t)[0], nil)
	must(t, err)
	before, err := CardInfo(bg, b.lib)
	must(t, err)
	for range 20 {
		must(t, b.dev.Execute(bg, m, 0))
	}
	after, err := CardInfo(bg, b.lib)
	must(t, err)
	if len(before.Cards) != 1 || len(after.Cards) != 1 {
		t.Fatalf("cards: %d then %d", len(before.Cards), len(after.Cards))
	}
	if after.Cards[0].TemperatureC <= before.Cards[0].TemperatureC {
		t.Fatalf("temperature %.3f °C before, %.3f °C after 20 executes", before.Cards[0].TemperatureC, after.Cards[0].TemperatureC)
	}
	if after.Cards[0].NPULoadPercent <= 0 {
		t.Errorf("NPU load %.2f %% after executes", after.Cards[0].NPULoadPercent)
	}
	p, err := b.dev.Refresh(bg)
	must(t, err)
	if p.TemperatureMilliC <= int32(before.Cards[0].TemperatureC*1000) {
		t.Errorf("device sample %d m°C not above %v °C", p.TemperatureMilliC, before.Cards[0].TemperatureC)
	}
}

func TestCardInfo(t *testing.T) {
	t.Setenv("KILN_SIM_DEVICES", "1,3")
	lib := cardsim.Library(t)
	info, err := CardInfo(bg, lib)
	must(t, err)
	if info.Version != "3.10.2" || info.SoC != "AX650N" || info.Library != lib || info.FullVersion == "" {
		t.Errorf("runtime: %+v", info)
	}
	if len(info.Cards) != 2 || info.Cards[0].ID != 1 || info.Cards[1].ID != 3 || info.Cards[1].Index != 1 {
		t.Fatalf("cards: %+v", info.Cards)
	}
	for _, c := range info.Cards {
		if c.CMMTotalMiB != 7040 || c.CMMUsedMiB > c.CMMTotalMiB || c.TemperatureC < 1 || c.PCI == "" || c.Firmware == "" {
			t.Errorf("card %+v", c)
		}
	}
	if !runtimeFinalized(t, lib) {
		t.Error("CardInfo left the runtime initialised")
	}
	if _, err := CardInfo(bg, "/nonexistent/libaxcl_rt.so"); !errors.Is(err, axcl.ErrLibraryNotFound) {
		t.Fatalf("CardInfo(missing library) = %v", err)
	}
}
