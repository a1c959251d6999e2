package axcl

import "fmt"

// Opaque handles and ids of the runtime. Each is its own type so that a
// context can never be passed where an IO handle is expected.
type (
	// Context is an axclrtContext: a runtime context bound to OS threads.
	Context uintptr
	// IOInfo is an axclrtEngineIOInfo: the tensor description of a model.
	IOInfo uintptr
	// IO is an axclrtEngineIO: the set of buffers bound to a model's tensors
	// for one shape group.
	IO uintptr
	// DevicePtr is an address in the card's memory (CMM). It cannot be
	// dereferenced on the host.
	DevicePtr uintptr
	// HostPtr is host memory allocated by axclrtMallocHost.
	HostPtr uintptr
	// DeviceID is a runtime device id: the card's PCIe bus number, not an
	// index. Take it from [Runtime.DeviceList].
	DeviceID int32
	// ModelID identifies a loaded model (uint64_t modelId).
	ModelID uint64
	// EngineContext identifies an engine context of a model (uint64_t
	// contextId). It is not a runtime [Context].
	EngineContext uint64
)

// MallocPolicy is axclrtMemMallocPolicy. The runtime documents it as unused.
type MallocPolicy int32

// axclrtMemMallocPolicy values.
const (
	MallocHugeFirst  MallocPolicy = 0 // AXCL_MEM_MALLOC_HUGE_FIRST
	MallocHugeOnly   MallocPolicy = 1 // AXCL_MEM_MALLOC_HUGE_ONLY
	MallocNormalOnly MallocPolicy = 2 // AXCL_MEM_MALLOC_NORMAL_ONLY
	MallocSizeAlign  MallocPolicy = 3 // AXCL_MEM_MALLOC_SIZE_ALIGN
)

// MemcpyKind is axclrtMemcpyKind: the direction of a copy.
type MemcpyKind int32

// axclrtMemcpyKind values.
const (
	HostToHost      MemcpyKind = 0 // AXCL_MEMCPY_HOST_TO_HOST
	HostToDevice    MemcpyKind = 1 // AXCL_MEMCPY_HOST_TO_DEVICE
	DeviceToHost    MemcpyKind = 2 // AXCL_MEMCPY_DEVICE_TO_HOST
	DeviceToDevice  MemcpyKind = 3 // AXCL_MEMCPY_DEVICE_TO_DEVICE
	HostPhyToDevice MemcpyKind = 4 // AXCL_MEMCPY_HOST_PHY_TO_DEVICE
	DeviceToHostPhy MemcpyKind = 5 // AXCL_MEMCPY_DEVICE_TO_HOST_PHY
)

func (k MemcpyKind) String() string {
	switch k {
	case HostToHost:
		return "host-to-host"
	case HostToDevice:
		return "host-to-device"
	case DeviceToHost:
		return "device-to-host"
	case DeviceToDevice:
		return "device-to-device"
	case HostPhyToDevice:
		return "host-phy-to-device"
	case DeviceToHostPhy:
		return "device-to-host-phy"
	}
	return fmt.Sprintf("MemcpyKind(%d)", int32(k))
}

// VNPUKind is axclrtEngineVNpuKind: how the NPU cores are partitioned.
type VNPUKind int32

// axclrtEngineVNpuKind values.
const (
	VNPUDisable   VNPUKind = 0 // AXCL_VNPU_DISABLE
	VNPUEnable    VNPUKind = 1 // AXCL_VNPU_ENABLE
	VNPUBigLittle VNPUKind = 2 // AXCL_VNPU_BIG_LITTLE
	VNPULittleBig VNPUKind = 3 // AXCL_VNPU_LITTLE_BIG
)

func (k VNPUKind) String() string {
	switch k {
	case VNPUDisable:
		return "disable"
	case VNPUEnable:
		return "enable"
	case VNPUBigLittle:
		return "big-little"
	case VNPULittleBig:
		return "little-big"
	}
	return fmt.Sprintf("VNPUKind(%d)", int32(k))
}

// ModelKind is axclrtEngineModelKind: how many NPU cores a model uses.
type ModelKind int32

// axclrtEngineModelKind values.
const (
	Model1Core ModelKind = 0 // AXCL_MODEL_TYPE_1CORE
	Model2Core ModelKind = 1 // AXCL_MODEL_TYPE_2CORE
	Model3Core ModelKind = 2 // AXCL_MODEL_TYPE_3CORE
)

// DataType is axclrtEngineDataType: the element type of a tensor.
type DataType int32

// axclrtEngineDataType values.
const (
	TypeNone   DataType = 0
	TypeInt4   DataType = 1
	TypeUint4  DataType = 2
	TypeInt8   DataType = 3
	TypeUint8  DataType = 4
	TypeInt16  DataType = 5
	TypeUint16 DataType = 6
	TypeInt32  DataType = 7
	TypeUint32 DataType = 8
	TypeInt64  DataType = 9
	TypeUint64 DataType = 10
	TypeFP4    DataType = 11
	TypeFP8    DataType = 12
	TypeFP16   DataType = 13
	TypeBF16   DataType = 14
	TypeFP32   DataType = 15
	TypeFP64   DataType = 16
)

var dataTypeNames = [...]string{"none", "int4", "uint4", "int8", "uint8", "int16", "uint16",
	"int32", "uint32", "int64", "uint64", "fp4", "fp8", "fp16", "bf16", "fp32", "fp64"}

var dataTypeBits = [...]int{0, 4, 4, 8, 8, 16, 16, 32, 32, 64, 64, 4, 8, 16, 16, 32, 64}

func (t DataType) String() string {
	if t >= 0 && int(t) < len(dataTypeNames) {
		return dataTypeNames[t]
	}
	return fmt.Sprintf("DataType(%d)", int32(t))
}

// MarshalText writes the type's name, e.g. "bf16".
func (t DataType) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// Bits is the size of one element in bits, 0 for [TypeNone] and unknown
// types.
func (t DataType) Bits() int {
	if t >= 0 && int(t) < len(dataTypeBits) {
		return dataTypeBits[t]
	}
	return 0
}

// DataLayout is axclrtEngineDataLayout.
type DataLayout int32

// axclrtEngineDataLayout values.
const (
	LayoutNone DataLayout = 0
	LayoutNHWC DataLayout = 1
	LayoutNCHW DataLayout = 2
)

func (l DataLayout) String() string {
	switch l {
	case LayoutNone:
		return "none"
	case LayoutNHWC:
		return "nhwc"
	case LayoutNCHW:
		return "nchw"
	}
	return fmt.Sprintf("DataLayout(%d)", int32(l))
}

// MarshalText writes the layout's name, e.g. "nchw".
func (l DataLayout) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// Header constants.
const (
	MaxDeviceCount = 256 // AXCL_MAX_DEVICE_COUNT
	MaxDims        = 32  // AXCLRT_ENGINE_MAX_DIM_CNT
)

// Dims mirrors axclrtEngineIODims (132 bytes, alignment 4).
//
//	typedef struct axclrtEngineIODims {
//	    int32_t dimCount;
//	    int32_t dims[AXCLRT_ENGINE_MAX_DIM_CNT];
//	} axclrtEngineIODims;
type Dims struct {
	Count int32
	Dims  [MaxDims]int32
}

// Slice returns the used dimensions. A count outside 0..32 yields nil.
func (d *Dims) Slice() []int {
	if d.Count < 0 || d.Count > MaxDims {
		return nil
	}
	out := make([]int, d.Count)
	for i := range out {
		out[i] = int(d.Dims[i])
	}
	return out
}

// deviceList mirrors axclrtDeviceList (1028 bytes, alignment 4).
//
//	typedef struct axclrtDeviceList {
//	    uint32_t num;
//	    int32_t devices[AXCL_MAX_DEVICE_COUNT];
//	} axclrtDeviceList;
type deviceList struct {
	Num     uint32
	Devices [MaxDeviceCount]int32
}
