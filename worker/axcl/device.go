package axcl

import (
	"bytes"
	"fmt"
)

// Functions of axcl_rt_device.h.
type deviceFuncs struct {
	// axclError axclrtGetDeviceCount(uint32_t *count);
	getDeviceCount func(count *uint32) int32
	// axclError axclrtGetDeviceList(axclrtDeviceList *deviceList);
	getDeviceList func(list *deviceList) int32
	// axclError axclrtSetDevice(int32_t deviceId);
	setDevice func(id int32) int32
	// axclError axclrtResetDevice(int32_t deviceId);
	resetDevice func(id int32) int32
	// axclError axclrtGetDevice(int32_t *deviceId);
	getDevice func(id *int32) int32
	// axclError axclrtSynchronizeDevice(void);
	synchronizeDevice func() int32

	// Optional, newer SDKs only (the V2.25 API has none).

	// axclError axclrtGetDeviceProperties(int32_t deviceId, axclrtDeviceProperties *properties);
	getDeviceProperties func(id int32, props *DeviceProperties) int32
}

func (f *deviceFuncs) load(l *library) error {
	b := binder{lib: l}
	b.bind(&f.getDeviceCount, "axclrtGetDeviceCount")
	b.bind(&f.getDeviceList, "axclrtGetDeviceList")
	b.bind(&f.setDevice, "axclrtSetDevice")
	b.bind(&f.resetDevice, "axclrtResetDevice")
	b.bind(&f.getDevice, "axclrtGetDevice")
	b.bind(&f.synchronizeDevice, "axclrtSynchronizeDevice")
	if b.err != nil {
		return b.err
	}
	l.optional(&f.getDeviceProperties, "axclrtGetDeviceProperties")
	return nil
}

// DeviceCount is the number of cards the driver sees (axclrtGetDeviceCount).
func (rt *Runtime) DeviceCount() (int, error) {
	var n uint32
	if err := rt.check("axclrtGetDeviceCount", rt.getDeviceCount(&n)); err != nil {
		return 0, err
	}
	return int(n), nil
}

// DeviceList returns the device ids in the runtime's order (sorted). The
// ids are PCIe bus numbers: pass them, never their index, to the other
// device calls (axclrtGetDeviceList).
func (rt *Runtime) DeviceList() ([]DeviceID, error) {
	var list deviceList
	if err := rt.check("axclrtGetDeviceList", rt.getDeviceList(&list)); err != nil {
		return nil, err
	}
	if list.Num > MaxDeviceCount {
		return nil, fmt.Errorf("axcl: axclrtGetDeviceList: runtime reported %d devices (max %d)", list.Num, MaxDeviceCount)
	}
	ids := make([]DeviceID, list.Num)
	for i := range ids {
		ids[i] = DeviceID(list.Devices[i])
	}
	return ids, nil
}

// SetDevice activates a device and binds it to the calling OS thread
// (axclrtSetDevice). It is reference counted: pair it with ResetDevice.
func (rt *Runtime) SetDevice(id DeviceID) error {
	return rt.check("axclrtSetDevice", rt.setDevice(int32(id)))
}

// ResetDevice drops one reference to the device and unbinds it from the
// calling thread; the device's resources are released at zero
// (axclrtResetDevice).
func (rt *Runtime) ResetDevice(id DeviceID) error {
	return rt.check("axclrtResetDevice", rt.resetDevice(int32(id)))
}

// Device returns the device bound to the calling OS thread
// (axclrtGetDevice); [ErrNoActiveDevice] when there is none.
func (rt *Runtime) Device() (DeviceID, error) {
	var id int32
	if err := rt.check("axclrtGetDevice", rt.getDevice(&id)); err != nil {
		return 0, err
	}
	return DeviceID(id), nil
}

// SynchronizeDevice waits for all work of the active devices
// (axclrtSynchronizeDevice).
func (rt *Runtime) SynchronizeDevice() error {
	return rt.check("axclrtSynchronizeDevice", rt.synchronizeDevice())
}

// DeviceProperties fills p with the card's health (axclrtGetDeviceProperties).
// On the real card this runs several shell commands on the device and takes
// tens to hundreds of milliseconds: call it between model calls, from the
// thread that owns the device (it sets and resets the device internally).
// [ErrUnsupported] when the runtime does not export it (older SDKs:
// HasDeviceProperties): the card's health is then unknown.
func (rt *Runtime) DeviceProperties(id DeviceID, p *DeviceProperties) error {
	if rt.getDeviceProperties == nil {
		return fmt.Errorf("axcl: axclrtGetDeviceProperties not exported by %s: %w", rt.path, ErrUnsupported)
	}
	return rt.check("axclrtGetDeviceProperties", rt.getDeviceProperties(int32(id), p))
}

// HasDeviceProperties reports whether the runtime exports
// axclrtGetDeviceProperties.
func (rt *Runtime) HasDeviceProperties() bool { return rt.getDeviceProperties != nil }

// DeviceProperties mirrors axclrtDeviceProperties (240 bytes, alignment 8;
// the layout is pinned by a test).
//
//	typedef struct axclrtDeviceProperties {
//	    char swVersion[64];
//	    uint64_t uid;
//	    uint32_t pciDomain;
//	    uint32_t pciBusID;
//	    uint32_t pciDeviceID;
//	    int32_t temperature;
//	    uint32_t totalMemSize;
//	    uint32_t freeMemSize;
//	    uint32_t totalCmmSize;
//	    uint32_t freeCmmSize;
//	    uint32_t cpuLoading;
//	    uint32_t npuLoading;
//	    uint32_t reserved[32];
//	} axclrtDeviceProperties;
type DeviceProperties struct {
	SoftwareVersion   [64]byte   // device firmware version, NUL-terminated
	UID               uint64     // chip unique id
	PCIDomain         uint32     // PCI domain
	PCIBus            uint32     // PCI bus
	PCIDevice         uint32     // PCI slot
	TemperatureMilliC int32      // SoC Tj in millidegrees Celsius
	TotalMemKiB       uint32     // device Linux RAM total, KiB
	FreeMemKiB        uint32     // device Linux RAM free, KiB
	TotalCMMKiB       uint32     // CMM (NPU memory) total, KiB
	FreeCMMKiB        uint32     // CMM free, KiB
	CPULoad           uint32     // device CPU load in 1/100 % (0–10000)
	NPULoad           uint32     // NPU utilisation in 1/100 % (0–10000)
	Reserved          [32]uint32 // reserved
}

// Firmware is SoftwareVersion up to its NUL.
func (p *DeviceProperties) Firmware() string {
	b := p.SoftwareVersion[:]
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// ChipID is the chip's unique id (UID) in hex, e.g. "4b494c4e00000001".
func (p *DeviceProperties) ChipID() string { return fmt.Sprintf("%016x", p.UID) }

// TemperatureC is the temperature in degrees Celsius.
func (p *DeviceProperties) TemperatureC() float64 { return float64(p.TemperatureMilliC) / 1000 }

// CPULoadPercent is the device CPU load in percent.
func (p *DeviceProperties) CPULoadPercent() float64 { return float64(p.CPULoad) / 100 }

// NPULoadPercent is the NPU utilisation in percent.
func (p *DeviceProperties) NPULoadPercent() float64 { return float64(p.NPULoad) / 100 }

// CMMTotalBytes is the card's CMM size in bytes.
func (p *DeviceProperties) CMMTotalBytes() uint64 { return uint64(p.TotalCMMKiB) * 1024 }

// CMMFreeBytes is the free CMM in bytes.
func (p *DeviceProperties) CMMFreeBytes() uint64 { return uint64(p.FreeCMMKiB) * 1024 }

// CMMUsedBytes is the used CMM in bytes.
func (p *DeviceProperties) CMMUsedBytes() uint64 {
	if p.FreeCMMKiB > p.TotalCMMKiB {
		return 0
	}
	return uint64(p.TotalCMMKiB-p.FreeCMMKiB) * 1024
}

// PCIAddress is the card's PCI address as lspci prints it, e.g. 0001:01:00.0.
func (p *DeviceProperties) PCIAddress() string {
	return fmt.Sprintf("%04x:%02x:%02x.0", p.PCIDomain, p.PCIBus, p.PCIDevice)
}
