package axcl

import (
	"errors"
	"fmt"
)

// Code is an axclError as an unsigned 32-bit value. Failures have bit 31
// set, so as the C int32_t they are negative.
//
// Runtime codes are laid out as
//
//	| 1 | module (7 bits) | 0x30 (AX_ID_AXCL) | sub-module | error id |
//
// Codes whose bits 23–16 are not 0x30 come from the device-side native SDK:
//
//	| 1 | 0000000 | module id | sub-module | error id |
type Code uint32

// Success is AXCL_SUCC.
const Success Code = 0

// Layout constants of runtime codes (axcl_base.h).
const (
	idAXCL = 0x30

	moduleRuntime = 0x00
	moduleNative  = 0x01
	moduleLite    = 0x02
)

// Runtime sub-modules (axcl_base.h).
const (
	SubDevice  = 0x01
	SubContext = 0x02
	SubStream  = 0x03
	SubTask    = 0x04
	SubMemory  = 0x05
	SubConfig  = 0x06
	SubEngine  = 0x07
	SubSyslog  = 0x08
	SubSysctrl = 0x09
	SubLatency = 0x0A
	SubP2P     = 0x0B
	SubUsrwork = 0x0C
)

// Generic error ids shared by every sub-module (AXCL_ERROR_E).
const (
	idFail             = 0x01
	idNullPointer      = 0x02
	idIllegalParam     = 0x03
	idUnsupport        = 0x04
	idTimeout          = 0x05
	idBusy             = 0x06
	idNoMemory         = 0x07
	idEncode           = 0x08
	idDecode           = 0x09
	idUnexpectResponse = 0x0A
	idOpen             = 0x0B
	idExecuteFail      = 0x0C
)

// RuntimeCode builds a runtime error code from a sub-module and an error id
// (AXCL_DEF_RUNTIME_ERR).
func RuntimeCode(sub, id uint8) Code {
	return Code(0x80000000 | moduleRuntime<<24 | idAXCL<<16 | uint32(sub)<<8 | uint32(id))
}

// Well-known codes (the header macros' values; a test recomputes them).
const (
	CodeDeviceOpen          Code = 0x8030010B // AXCL_ERR_DEVICE_OPEN
	CodeDeviceQuery         Code = 0x80300180 // AXCL_ERR_DEVICE_QUERY_DEVICE
	CodeDeviceNoConnect     Code = 0x80300181 // AXCL_ERR_DEVICE_NO_CONNECT
	CodeDeviceNotActive     Code = 0x80300183 // AXCL_ERR_DEVICE_NOT_ACTIVE
	CodeDeviceInvalidID     Code = 0x80300184 // AXCL_ERR_DEVICE_INVALID_ID
	CodeDeviceNoActive      Code = 0x80300185 // AXCL_ERR_DEVICE_NO_ACTIVE_DEVICE
	CodeContextNoBind       Code = 0x80300284 // AXCL_ERR_CONTEXT_NO_BIND_CONTEXT
	CodeMemoryNoMemory      Code = 0x80300507 // AXCL_ERR_MEMORY_NO_MEMORY
	CodeEngineIllegalParam  Code = 0x80300703 // AXCL_ERR_ENGINE_ILLEGAL_PARAM
	CodeEngineTimeout       Code = 0x80300705 // AXCL_ERR_ENGINE_TIMEOUT
	CodeEngineNoMemory      Code = 0x80300707 // AXCL_ERR_ENGINE_NO_MEMORY
	CodeEngineUnexpectReply Code = 0x8030070A // AXCL_ERR_ENGINE_UNEXPECT_RESPONSE
	CodeEngineExecuteFail   Code = 0x8030070C // AXCL_ERR_ENGINE_EXECUTE_FAIL
	CodeEngineInvalidIndex  Code = 0x80300781 // AXCL_ERR_ENGINE_INVALID_INDEX
)

// IsAXCL reports whether c is a runtime-side code (bits 23–16 = 0x30).
func (c Code) IsAXCL() bool { return c>>16&0xFF == idAXCL }

// Native reports whether c comes from the device-side native SDK.
func (c Code) Native() bool { return c != Success && !c.IsAXCL() }

// Module is bits 30–24 of a runtime code (0 runtime, 1 native, 2 lite), or
// the native module id (bits 23–16) of a native code.
func (c Code) Module() uint8 {
	if c.IsAXCL() {
		return uint8(c >> 24 & 0x7F)
	}
	return uint8(c >> 16)
}

// Sub is the sub-module (bits 15–8).
func (c Code) Sub() uint8 { return uint8(c >> 8) }

// ID is the error id (bits 7–0).
func (c Code) ID() uint8 { return uint8(c) }

func (c Code) String() string { return fmt.Sprintf("0x%08X", uint32(c)) }

// Name is the header name of the code, e.g. "AXCL_ERR_ENGINE_EXECUTE_FAIL",
// or a name built from its parts when the header has none for it.
func (c Code) Name() string {
	name, _ := c.describe()
	return name
}

// Sentence says in words what the code means.
func (c Code) Sentence() string {
	_, s := c.describe()
	return s
}

// Sentinels that callers branch on. An [*Error] matches the sentinels of its
// code's class with errors.Is.
var (
	// ErrNoMemory: the card is out of CMM or host memory (generic id
	// NO_MEMORY in any sub-module, or native AX_ERR_NOMEM/NOBUF).
	ErrNoMemory = errors.New("axcl: out of memory")
	// ErrTimeout: an operation on the card timed out (generic TIMEOUT,
	// stream sync timeout, native AX_ERR_TIMED_OUT).
	ErrTimeout = errors.New("axcl: timeout")
	// ErrNoContext: the calling OS thread has no bound context
	// (0x80300284). Runtime calls must come from the thread that created the
	// context.
	ErrNoContext = errors.New("axcl: no context bound to the calling thread")
	// ErrNoActiveDevice: the calling OS thread has no device (0x80300185).
	ErrNoActiveDevice = errors.New("axcl: no device bound to the calling thread")
	// ErrDeviceOpen: /dev/axcl_host cannot be opened: the driver is not
	// loaded (0x8030010B).
	ErrDeviceOpen = errors.New("axcl: cannot open /dev/axcl_host")
	// ErrDeviceNotConnected: the driver sees no card (0x80300181).
	ErrDeviceNotConnected = errors.New("axcl: no card connected")
	// ErrDeviceInvalidID: the id is not in the device list (0x80300184);
	// device ids are PCIe bus numbers, not indexes.
	ErrDeviceInvalidID = errors.New("axcl: invalid device id")
	// ErrDevice: a failure of the device sub-module (codes 0x803001xx
	// other than an invalid id).
	ErrDevice = errors.New("axcl: device failure")
	// ErrDeviceLost: communication with the card failed
	// (UNEXPECT_RESPONSE, ENCODE or DECODE in any sub-module). The runtime
	// has no "device lost" code; these are what calls return once the card
	// stops answering. Treat the card as gone until it is reset.
	ErrDeviceLost = errors.New("axcl: card not answering")
	// ErrExecuteFail: the card failed to run the operation (EXECUTE_FAIL).
	ErrExecuteFail = errors.New("axcl: execution failed on the card")
	// ErrInvalidParam: an argument was refused (ILLEGAL_PARAM, NULL_POINTER,
	// invalid index, native ILLEGAL_PARAM/NULL_PTR).
	ErrInvalidParam = errors.New("axcl: invalid parameter")
	// ErrUnsupported: the runtime does not support the operation.
	ErrUnsupported = errors.New("axcl: not supported")
	// ErrBusy: the module is busy.
	ErrBusy = errors.New("axcl: busy")
	// ErrNotFound: a tensor name or index does not exist in the model. It is
	// returned by the lookups that signal "not found" with -1 or NULL
	// rather than with a code.
	ErrNotFound = errors.New("axcl: not found")
	// ErrZeroHandle: a zero handle was passed where the runtime needs a live
	// one. The call is refused before reaching C.
	ErrZeroHandle = errors.New("axcl: zero handle")
	// ErrLibraryNotFound: the runtime library file does not exist.
	ErrLibraryNotFound = errors.New("axcl: runtime library not found")
	// ErrMissingSymbol: the library lacks a symbol kiln needs.
	ErrMissingSymbol = errors.New("axcl: symbol missing from runtime library")
)

// Error is a failed runtime call.
type Error struct {
	Op     string // C function, e.g. "axclrtEngineExecute"
	Code   Code   // the axclError
	Detail string // the runtime's own text (axclrtGetErrorString), when the SDK has it
}

func (e *Error) Error() string {
	name, sentence := e.Code.describe()
	s := fmt.Sprintf("axcl: %s: %s %s: %s", e.Op, e.Code, name, sentence)
	if e.Detail != "" && e.Detail != sentence {
		s += " (runtime: " + e.Detail + ")"
	}
	return s
}

// Is matches the sentinel of the code's class.
func (e *Error) Is(target error) bool {
	for _, s := range e.Code.classes() {
		if s == target {
			return true
		}
	}
	return false
}

// classes lists the sentinels that c matches.
func (c Code) classes() []error {
	var out []error
	if c == Success {
		return nil
	}
	if c.Native() {
		switch c.ID() {
		case 0x18, 0x19: // AX_ERR_NOMEM, AX_ERR_NOBUF
			out = append(out, ErrNoMemory)
		case 0x27: // AX_ERR_TIMED_OUT
			out = append(out, ErrTimeout)
		case 0x0A, 0x0B: // AX_ERR_ILLEGAL_PARAM, AX_ERR_NULL_PTR
			out = append(out, ErrInvalidParam)
		case 0x14: // AX_ERR_NOT_SUPPORT
			out = append(out, ErrUnsupported)
		case 0x11: // AX_ERR_BUSY
			out = append(out, ErrBusy)
		}
		return out
	}
	switch c {
	case CodeContextNoBind:
		return []error{ErrNoContext}
	case CodeDeviceNoActive:
		return []error{ErrNoActiveDevice, ErrDevice}
	case CodeDeviceOpen:
		return []error{ErrDeviceOpen, ErrDevice}
	case CodeDeviceNoConnect:
		return []error{ErrDeviceNotConnected, ErrDevice}
	case CodeDeviceInvalidID:
		return []error{ErrDeviceInvalidID, ErrInvalidParam}
	case CodeEngineInvalidIndex:
		return []error{ErrInvalidParam}
	}
	if c.Sub() == SubStream && c.ID() == 0x83 { // STREAM_SYNC_TIMEOUT
		return []error{ErrTimeout}
	}
	switch c.ID() {
	case idNoMemory:
		out = append(out, ErrNoMemory)
	case idTimeout:
		out = append(out, ErrTimeout)
	case idExecuteFail:
		out = append(out, ErrExecuteFail)
	case idIllegalParam, idNullPointer:
		out = append(out, ErrInvalidParam)
	case idUnsupport:
		out = append(out, ErrUnsupported)
	case idBusy:
		out = append(out, ErrBusy)
	case idUnexpectResponse, idEncode, idDecode:
		out = append(out, ErrDeviceLost)
	}
	if c.Sub() == SubDevice {
		out = append(out, ErrDevice)
	}
	return out
}

var subNames = map[uint8]string{
	SubDevice: "DEVICE", SubContext: "CONTEXT", SubStream: "STREAM", SubTask: "TASK",
	SubMemory: "MEMORY", SubConfig: "CONFIG", SubEngine: "ENGINE", SubSyslog: "SYSLOG",
	SubSysctrl: "SYSCTRL", SubLatency: "LATENCY", SubP2P: "P2P", SubUsrwork: "USRWORK",
}

var subWords = map[uint8]string{
	SubDevice: "device", SubContext: "context", SubStream: "stream", SubTask: "task",
	SubMemory: "memory", SubConfig: "configuration", SubEngine: "engine", SubSyslog: "log",
	SubSysctrl: "system control", SubLatency: "latency", SubP2P: "peer-to-peer", SubUsrwork: "user work",
}

type idText struct{ name, sentence string }

var genericIDs = map[uint8]idText{
	idFail:             {"FAIL", "the operation failed"},
	idNullPointer:      {"NULL_POINTER", "a null pointer was passed"},
	idIllegalParam:     {"ILLEGAL_PARAM", "an argument was refused"},
	idUnsupport:        {"UNSUPPORT", "the operation is not supported"},
	idTimeout:          {"TIMEOUT", "the operation timed out"},
	idBusy:             {"BUSY", "the module is busy"},
	idNoMemory:         {"NO_MEMORY", "out of memory"},
	idEncode:           {"ENCODE", "encoding the message to the card failed"},
	idDecode:           {"DECODE", "decoding the card's reply failed"},
	idUnexpectResponse: {"UNEXPECT_RESPONSE", "the card sent an unexpected reply (communication with the card failed)"},
	idOpen:             {"OPEN", "opening failed"},
	idExecuteFail:      {"EXECUTE_FAIL", "the card failed to execute the operation"},
}

// specific holds the module-specific ids (0x80 and up) and codes whose
// meaning is more precise than the generic id (axcl-api.md §3).
var specific = map[Code]idText{
	CodeDeviceOpen:                      {"AXCL_ERR_DEVICE_OPEN", "cannot open /dev/axcl_host: the axcl host driver is not loaded (check lspci, reinstall the axclhost package, reboot)"},
	CodeDeviceQuery:                     {"AXCL_ERR_DEVICE_QUERY_DEVICE", "querying the driver for devices failed"},
	CodeDeviceNoConnect:                 {"AXCL_ERR_DEVICE_NO_CONNECT", "the driver sees no card (on a Pi 5 check the pciex1 lines in config.txt)"},
	RuntimeCode(SubDevice, 0x82):        {"AXCL_ERR_DEVICE_PROBE", "probing the card failed"},
	CodeDeviceNotActive:                 {"AXCL_ERR_DEVICE_NOT_ACTIVE", "the device is not active"},
	CodeDeviceInvalidID:                 {"AXCL_ERR_DEVICE_INVALID_ID", "the device id is not in the device list (ids are PCIe bus numbers, not indexes)"},
	CodeDeviceNoActive:                  {"AXCL_ERR_DEVICE_NO_ACTIVE_DEVICE", "the calling thread has no active device"},
	RuntimeCode(SubDevice, 0x86):        {"AXCL_ERR_DEVICE_PORT_ALLOCATE", "the driver could not allocate message ports for this process"},
	CodeDeviceReboot:                    {"AXCL_ERR_DEVICE_REBOOT", "rebooting the card failed"},
	RuntimeCode(SubDevice, 0x88):        {"AXCL_ERR_DEVICE_PORT_DESTROY", "the driver could not free this process's message ports"},
	RuntimeCode(SubContext, 0x81):       {"AXCL_ERR_CONTEXT_CREATE", "creating the context failed"},
	RuntimeCode(SubContext, 0x82):       {"AXCL_ERR_CONTEXT_DESTROY", "destroying the context failed"},
	RuntimeCode(SubContext, 0x83):       {"AXCL_ERR_CONTEXT_BIND_THREAD", "binding the context to the thread failed"},
	CodeContextNoBind:                   {"AXCL_ERR_CONTEXT_NO_BIND_CONTEXT", "the calling thread has no bound context (runtime calls must come from the thread that owns the device)"},
	RuntimeCode(SubStream, 0x83):        {"AXCL_ERR_STREAM_SYNC_TIMEOUT", "synchronizing the stream timed out"},
	RuntimeCode(SubMemory, 0x81):        {"AXCL_ERR_MEMORY_NOT_DEVICE_MEMORY", "the address is not device memory"},
	CodeEngineInvalidIndex:              {"AXCL_ERR_ENGINE_INVALID_INDEX", "the tensor or shape-group index is out of range"},
	RuntimeCode(SubEngine, idUnsupport): {"AXCL_ERR_ENGINE_AXCL_UNSUPPORTED", "the engine does not support the operation"},
}

var nativeModules = map[uint8]string{
	0x06: "NPU", 0x0B: "SYS", 0x10: "DMA", 0x11: "VIN", 0x1D: "ENGINE",
}

var nativeIDs = map[uint8]idText{
	0x01: {"AX_ERR_INVALID_MODID", "invalid module id"},
	0x02: {"AX_ERR_INVALID_DEVID", "invalid device id"},
	0x03: {"AX_ERR_INVALID_GRPID", "invalid group id"},
	0x04: {"AX_ERR_INVALID_CHNID", "invalid channel id or handle"},
	0x05: {"AX_ERR_INVALID_PIPEID", "invalid pipe id"},
	0x0A: {"AX_ERR_ILLEGAL_PARAM", "an argument was refused"},
	0x0B: {"AX_ERR_NULL_PTR", "a null pointer was passed"},
	0x0C: {"AX_ERR_BAD_ADDR", "bad address"},
	0x10: {"AX_ERR_SYS_NOTREADY", "the system is not ready"},
	0x11: {"AX_ERR_BUSY", "busy"},
	0x12: {"AX_ERR_NOT_INIT", "not initialised"},
	0x13: {"AX_ERR_NOT_CONFIG", "not configured"},
	0x14: {"AX_ERR_NOT_SUPPORT", "not supported"},
	0x15: {"AX_ERR_NOT_PERM", "operation not permitted"},
	0x16: {"AX_ERR_EXIST", "already exists"},
	0x17: {"AX_ERR_UNEXIST", "does not exist"},
	0x18: {"AX_ERR_NOMEM", "out of memory on the card"},
	0x19: {"AX_ERR_NOBUF", "no buffer available"},
	0x1A: {"AX_ERR_NOT_MATCH", "mismatch"},
	0x20: {"AX_ERR_BUF_EMPTY", "buffer empty"},
	0x21: {"AX_ERR_BUF_FULL", "buffer full"},
	0x22: {"AX_ERR_QUEUE_EMPTY", "queue empty"},
	0x23: {"AX_ERR_QUEUE_FULL", "queue full"},
	0x27: {"AX_ERR_TIMED_OUT", "timed out"},
	0x28: {"AX_ERR_FLOW_END", "end of flow"},
	0x29: {"AX_ERR_UNKNOWN", "unknown error"},
}

func (c Code) describe() (name, sentence string) {
	if c == Success {
		return "AXCL_SUCC", "success"
	}
	if t, ok := specific[c]; ok {
		return t.name, t.sentence
	}
	if c.Native() {
		mod, ok := nativeModules[c.Module()]
		if !ok {
			mod = fmt.Sprintf("module 0x%02X", c.Module())
		}
		t, ok := nativeIDs[c.ID()]
		if !ok {
			t = idText{fmt.Sprintf("AX_ERR_0x%02X", c.ID()), "unknown native error"}
		}
		return t.name, fmt.Sprintf("device-side SDK error in %s (sub-module %d): %s", mod, c.Sub(), t.sentence)
	}
	var module string
	switch c.Module() {
	case moduleRuntime:
		module = ""
	case moduleNative:
		module = "NATIVE_"
	case moduleLite:
		module = "LITE_"
	default:
		module = fmt.Sprintf("MODULE%d_", c.Module())
	}
	sub, ok := subNames[c.Sub()]
	if !ok {
		sub = fmt.Sprintf("SUB%02X", c.Sub())
	}
	word := subWords[c.Sub()]
	if word == "" {
		word = fmt.Sprintf("sub-module 0x%02X", c.Sub())
	}
	if module != "" {
		word = moduleWord(module) + word
	}
	if t, ok := genericIDs[c.ID()]; ok {
		return "AXCL_ERR_" + module + sub + "_" + t.name, word + ": " + t.sentence
	}
	return fmt.Sprintf("AXCL_ERR_%s%s_0x%02X", module, sub, c.ID()), word + ": unknown error id"
}

func moduleWord(module string) string {
	switch module {
	case "NATIVE_":
		return "native "
	case "LITE_":
		return "lite "
	}
	return module
}

// check turns an axclError into nil or an *Error for op.
func (rt *Runtime) check(op string, ret int32) error {
	if ret == 0 {
		return nil
	}
	return rt.newError(op, Code(uint32(ret)))
}

func (rt *Runtime) newError(op string, code Code) *Error {
	e := &Error{Op: op, Code: code}
	if rt != nil && rt.getErrorString != nil {
		e.Detail = rt.getErrorString(int32(code))
	}
	return e
}

// SymbolError reports a symbol that the runtime library does not export.
type SymbolError struct {
	Symbol  string
	Library string
	Err     error // the dlsym error
}

func (e *SymbolError) Error() string {
	return fmt.Sprintf("axcl: %s does not export %s (runtime too old or not libaxcl_rt.so?): %v", e.Library, e.Symbol, e.Err)
}

// Is matches [ErrMissingSymbol].
func (e *SymbolError) Is(target error) bool { return target == ErrMissingSymbol }

func (e *SymbolError) Unwrap() error { return e.Err }

// HandleError is a call refused in Go because a handle was zero.
type HandleError struct {
	Op     string // C function that was not called
	Handle string // which handle, e.g. "context", "io"
}

func (e *HandleError) Error() string {
	return "axcl: " + e.Op + ": zero " + e.Handle + " handle"
}

// Is matches [ErrZeroHandle].
func (e *HandleError) Is(target error) bool { return target == ErrZeroHandle }
