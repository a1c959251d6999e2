package axcl

import (
	"fmt"
	"sync"

	"github.com/ebitengine/purego"
)

// Card rescue: the firmware reboot and the device status callback.
//
// Both are optional symbols. The public V3.10.2 libaxcl_rt.so (arm64)
// exports axclrtRebootDevice but not axclrtRegisterDeviceStatusCallback,
// and its public header declares neither (nm -D of
// out/axcl_linux_arm64/lib/libaxcl_rt.so in AXERA-TECH/axcl-runtime); the
// callback type and AXCL_DEVICE_STATUS_E are in its axcl_rt_type.h. Newer
// runtimes (axclhost 3.6.5-m5stack1) export both (card-field-notes.md §1.3).
type rebootFuncs struct {
	// axclError axclrtRebootDevice(int32_t deviceId);
	rebootDevice func(id int32) int32
	// axclError axclrtRegisterDeviceStatusCallback(axclrtDeviceStatusCallback callback, void *userdata);
	registerStatus func(callback, userdata uintptr) int32
}

func (f *rebootFuncs) load(l *library) error {
	l.optional(&f.rebootDevice, "axclrtRebootDevice")
	if !l.optional(&f.registerStatus, "axclrtRegisterDeviceStatusCallback") {
		// The V3.10.2 header's comment spells it without "rt".
		l.optional(&f.registerStatus, "axclRegisterDeviceStatusCallback")
	}
	return nil
}

// CodeDeviceReboot is AXCL_ERR_DEVICE_REBOOT: the reboot ioctl failed.
const CodeDeviceReboot Code = 0x80300187

// HasReboot reports whether the runtime exports axclrtRebootDevice.
func (rt *Runtime) HasReboot() bool { return rt.rebootDevice != nil }

// RebootDevice reboots the card's firmware (axclrtRebootDevice, what
// `axcl-smi reboot` calls): every context, buffer and model on it is gone
// and the card enumerates again after a few seconds (the vendor allows
// 60 s). It is not axclrtResetDevice, which only drops a reference.
// [ErrUnsupported] when the runtime does not export it.
func (rt *Runtime) RebootDevice(id DeviceID) error {
	if rt.rebootDevice == nil {
		return fmt.Errorf("axcl: axclrtRebootDevice not exported by %s: %w", rt.path, ErrUnsupported)
	}
	return rt.check("axclrtRebootDevice", rt.rebootDevice(int32(id)))
}

// DeviceStatus is AXCL_DEVICE_STATUS_E.
type DeviceStatus int32

// AXCL_DEVICE_STATUS_E values (axcl_rt_type.h).
const (
	DeviceOnline  DeviceStatus = 0 // AXCL_DEVICE_STATUS_ONLINE
	DeviceOffline DeviceStatus = 1 // AXCL_DEVICE_STATUS_OFFLINE
)

func (s DeviceStatus) String() string {
	switch s {
	case DeviceOnline:
		return "online"
	case DeviceOffline:
		return "offline"
	}
	return fmt.Sprintf("status %d", int32(s))
}

// HasStatusCallback reports whether the runtime exports
// axclrtRegisterDeviceStatusCallback.
func (rt *Runtime) HasStatusCallback() bool { return rt.registerStatus != nil }

// statusWatch is the one C callback of the process (purego callbacks are
// never freed) and the Go functions it calls, by runtime.
var statusWatch struct {
	once sync.Once
	cb   uintptr
	mu   sync.Mutex
	next uintptr
	fns  map[uintptr]func(DeviceID, DeviceStatus) // by userdata
	rts  map[*Runtime]uintptr
}

// onStatus is called by the runtime, on a thread of its own.
func onStatus(device int32, status int32, userdata uintptr) {
	statusWatch.mu.Lock()
	fn := statusWatch.fns[userdata]
	statusWatch.mu.Unlock()
	if fn != nil {
		fn(DeviceID(device), DeviceStatus(status))
	}
}

// WatchDeviceStatus registers fn with the runtime's device status callback
// (axclrtRegisterDeviceStatusCallback): the runtime calls it, on a thread
// of its own, when a card goes OFFLINE or comes back ONLINE. fn must return
// quickly and must not call the runtime. A later call replaces fn. Call it
// after Init (again after every Init). [ErrUnsupported] when the runtime
// does not export the symbol: the caller then learns of a lost card only
// from failing calls.
func (rt *Runtime) WatchDeviceStatus(fn func(DeviceID, DeviceStatus)) error {
	if rt.registerStatus == nil {
		return fmt.Errorf("axcl: axclrtRegisterDeviceStatusCallback not exported by %s: %w", rt.path, ErrUnsupported)
	}
	statusWatch.once.Do(func() {
		statusWatch.cb = purego.NewCallback(onStatus)
		statusWatch.fns = map[uintptr]func(DeviceID, DeviceStatus){}
		statusWatch.rts = map[*Runtime]uintptr{}
	})
	statusWatch.mu.Lock()
	key, ok := statusWatch.rts[rt]
	if !ok {
		statusWatch.next++
		key = statusWatch.next
		statusWatch.rts[rt] = key
	}
	statusWatch.fns[key] = fn
	statusWatch.mu.Unlock()
	return rt.check("axclrtRegisterDeviceStatusCallback", rt.registerStatus(statusWatch.cb, key))
}
