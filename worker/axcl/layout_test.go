package axcl

import (
	"testing"
	"unsafe"

	"github.com/kiln-project/kiln/test/cardsim"
)

// The numbers come from compiling the V3.10.2 headers with gcc on LP64
// (research/axcl-api.md §2.2); identical on aarch64 and x86_64.
func TestStructLayout(t *testing.T) {
	var p DeviceProperties
	checks := []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(axclrtDeviceProperties)", unsafe.Sizeof(p), 240},
		{"alignof(axclrtDeviceProperties)", unsafe.Alignof(p), 8},
		{"swVersion", unsafe.Offsetof(p.SoftwareVersion), 0},
		{"uid", unsafe.Offsetof(p.UID), 64},
		{"pciDomain", unsafe.Offsetof(p.PCIDomain), 72},
		{"pciBusID", unsafe.Offsetof(p.PCIBus), 76},
		{"pciDeviceID", unsafe.Offsetof(p.PCIDevice), 80},
		{"temperature", unsafe.Offsetof(p.TemperatureMilliC), 84},
		{"totalMemSize", unsafe.Offsetof(p.TotalMemKiB), 88},
		{"freeMemSize", unsafe.Offsetof(p.FreeMemKiB), 92},
		{"totalCmmSize", unsafe.Offsetof(p.TotalCMMKiB), 96},
		{"freeCmmSize", unsafe.Offsetof(p.FreeCMMKiB), 100},
		{"cpuLoading", unsafe.Offsetof(p.CPULoad), 104},
		{"npuLoading", unsafe.Offsetof(p.NPULoad), 108},
		{"reserved", unsafe.Offsetof(p.Reserved), 112},
		{"sizeof(axclrtDeviceList)", unsafe.Sizeof(deviceList{}), 1028},
		{"alignof(axclrtDeviceList)", unsafe.Alignof(deviceList{}), 4},
		{"deviceList.devices", unsafe.Offsetof(deviceList{}.Devices), 4},
		{"sizeof(axclrtEngineIODims)", unsafe.Sizeof(Dims{}), 132},
		{"alignof(axclrtEngineIODims)", unsafe.Alignof(Dims{}), 4},
		{"dims.dims", unsafe.Offsetof(Dims{}.Dims), 4},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, header says %d", c.name, c.got, c.want)
		}
	}
	for name, size := range map[string]uintptr{
		"MallocPolicy": unsafe.Sizeof(MallocPolicy(0)), "MemcpyKind": unsafe.Sizeof(MemcpyKind(0)),
		"VNPUKind": unsafe.Sizeof(VNPUKind(0)), "DataType": unsafe.Sizeof(DataType(0)),
		"DataLayout": unsafe.Sizeof(DataLayout(0)), "DeviceID": unsafe.Sizeof(DeviceID(0)),
	} {
		if size != 4 {
			t.Errorf("%s is %d bytes; C enums and int32_t are 4", name, size)
		}
	}
}

// The simulator is compiled from its own copy of the header structs; it
// reports sizeof(axclrtDeviceProperties) as the C compiler sees it (it
// always exports kilnsim_sizeof_props: a missing probe fails the test).
func TestStructLayoutMatchesCompiler(t *testing.T) {
	ctl := cardsim.Controls(t)
	if got, want := ctl.SizeofProps(), int(unsafe.Sizeof(DeviceProperties{})); got != want {
		t.Fatalf("C sizeof(axclrtDeviceProperties) = %d, Go mirror = %d", got, want)
	}
}

func TestDataTypeBits(t *testing.T) {
	for dt, bits := range map[DataType]int{TypeBF16: 16, TypeFP32: 32, TypeUint8: 8, TypeInt4: 4, TypeFP64: 64, TypeNone: 0, DataType(99): 0} {
		if got := dt.Bits(); got != bits {
			t.Errorf("%v.Bits() = %d, want %d", dt, got, bits)
		}
	}
	if TypeBF16.String() != "bf16" || LayoutNCHW.String() != "nchw" || DataType(99).String() != "DataType(99)" {
		t.Errorf("names: %v %v %v", TypeBF16, LayoutNCHW, DataType(99))
	}
}
