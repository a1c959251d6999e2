package axcl

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestCodeTable(t *testing.T) {
	cases := []struct {
		code     Code
		name     string
		sentinel []error
		words    string // in the sentence
	}{
		{0x8030010B, "AXCL_ERR_DEVICE_OPEN", []error{ErrDeviceOpen, ErrDevice}, "/dev/axcl_host"},
		{0x80300181, "AXCL_ERR_DEVICE_NO_CONNECT", []error{ErrDeviceNotConnected, ErrDevice}, "no card"},
		{0x80300184, "AXCL_ERR_DEVICE_INVALID_ID", []error{ErrDeviceInvalidID, ErrInvalidParam}, "PCIe bus numbers"},
		{0x80300185, "AXCL_ERR_DEVICE_NO_ACTIVE_DEVICE", []error{ErrNoActiveDevice, ErrDevice}, "no active device"},
		{0x80300284, "AXCL_ERR_CONTEXT_NO_BIND_CONTEXT", []error{ErrNoContext}, "thread"},
		{0x80300383, "AXCL_ERR_STREAM_SYNC_TIMEOUT", []error{ErrTimeout}, "timed out"},
		{0x80300507, "AXCL_ERR_MEMORY_NO_MEMORY", []error{ErrNoMemory}, "out of memory"},
		{0x80300581, "AXCL_ERR_MEMORY_NOT_DEVICE_MEMORY", nil, "not device memory"},
		{0x80300703, "AXCL_ERR_ENGINE_ILLEGAL_PARAM", []error{ErrInvalidParam}, "refused"},
		{0x80300705, "AXCL_ERR_ENGINE_TIMEOUT", []error{ErrTimeout}, "timed out"},
		{0x80300707, "AXCL_ERR_ENGINE_NO_MEMORY", []error{ErrNoMemory}, "out of memory"},
		{0x8030070A, "AXCL_ERR_ENGINE_UNEXPECT_RESPONSE", []error{ErrDeviceLost}, "communication"},
		{0x8030070C, "AXCL_ERR_ENGINE_EXECUTE_FAIL", []error{ErrExecuteFail}, "execute"},
		{0x80300781, "AXCL_ERR_ENGINE_INVALID_INDEX", []error{ErrInvalidParam}, "out of range"},
		{0x8030050A, "AXCL_ERR_MEMORY_UNEXPECT_RESPONSE", []error{ErrDeviceLost}, "memory"},
		// Unknown ids and sub-modules are decoded from their parts.
		{0x80300C99, "AXCL_ERR_USRWORK_0x99", nil, "user work: unknown error id"},
		{0x80307705, "AXCL_ERR_SUB77_TIMEOUT", []error{ErrTimeout}, "sub-module 0x77"},
		{0x81300507, "AXCL_ERR_NATIVE_MEMORY_NO_MEMORY", []error{ErrNoMemory}, "native memory"},
		// Codes of the device-side native SDK (bits 23-16 are not 0x30).
		{0x80060118, "AX_ERR_NOMEM", []error{ErrNoMemory}, "NPU"},
		{0x801D0127, "AX_ERR_TIMED_OUT", []error{ErrTimeout}, "ENGINE"},
		{0x807F0199, "AX_ERR_0x99", nil, "module 0x7F"},
	}
	all := []error{ErrNoMemory, ErrTimeout, ErrNoContext, ErrNoActiveDevice, ErrDeviceOpen, ErrDeviceNotConnected,
		ErrDeviceInvalidID, ErrDevice, ErrDeviceLost, ErrExecuteFail, ErrInvalidParam, ErrUnsupported, ErrBusy}
	for _, c := range cases {
		t.Run(c.code.String(), func(t *testing.T) {
			if got := c.code.Name(); got != c.name {
				t.Errorf("Name() = %q, want %q", got, c.name)
			}
			if !strings.Contains(c.code.Sentence(), c.words) {
				t.Errorf("Sentence() = %q, want it to mention %q", c.code.Sentence(), c.words)
			}
			err := error(&Error{Op: "axclrtSomething", Code: c.code})
			msg := err.Error()
			for _, part := range []string{"axcl: axclrtSomething: ", fmt.Sprintf("0x%08X", uint32(c.code)), c.name} {
				if !strings.Contains(msg, part) {
					t.Errorf("Error() = %q lacks %q", msg, part)
				}
			}
			for _, s := range all {
				want := false
				for _, w := range c.sentinel {
					want = want || w == s
				}
				if got := errors.Is(err, s); got != want {
					t.Errorf("errors.Is(%v) = %v, want %v", s, got, want)
				}
			}
			wrapped := fmt.Errorf("outer: %w", err)
			var ae *Error
			if !errors.As(wrapped, &ae) || ae.Code != c.code {
				t.Errorf("errors.As through a wrap lost the code")
			}
		})
	}
}

func TestCodeParts(t *testing.T) {
	c := Code(0x8030070C)
	if c.Native() || !c.IsAXCL() || c.Module() != 0 || c.Sub() != SubEngine || c.ID() != 0x0C {
		t.Fatalf("runtime code parts: native=%v module=%d sub=%d id=%d", c.Native(), c.Module(), c.Sub(), c.ID())
	}
	n := Code(0x80060118)
	if !n.Native() || n.Module() != 0x06 || n.Sub() != 0x01 || n.ID() != 0x18 {
		t.Fatalf("native code parts: native=%v module=%d sub=%d id=%d", n.Native(), n.Module(), n.Sub(), n.ID())
	}
	for want, got := range map[Code]Code{
		CodeDeviceOpen:          RuntimeCode(SubDevice, idOpen),
		CodeDeviceQuery:         RuntimeCode(SubDevice, 0x80),
		CodeDeviceNoConnect:     RuntimeCode(SubDevice, 0x81),
		CodeDeviceNotActive:     RuntimeCode(SubDevice, 0x83),
		CodeDeviceInvalidID:     RuntimeCode(SubDevice, 0x84),
		CodeDeviceNoActive:      RuntimeCode(SubDevice, 0x85),
		CodeContextNoBind:       RuntimeCode(SubContext, 0x84),
		CodeMemoryNoMemory:      RuntimeCode(SubMemory, idNoMemory),
		CodeEngineIllegalParam:  RuntimeCode(SubEngine, idIllegalParam),
		CodeEngineTimeout:       RuntimeCode(SubEngine, idTimeout),
		CodeEngineNoMemory:      RuntimeCode(SubEngine, idNoMemory),
		CodeEngineUnexpectReply: RuntimeCode(SubEngine, idUnexpectResponse),
		CodeEngineExecuteFail:   RuntimeCode(SubEngine, idExecuteFail),
		CodeEngineInvalidIndex:  RuntimeCode(SubEngine, 0x81),
	} {
		if got != want {
			t.Errorf("AXCL_DEF_RUNTIME_ERR gives %v, constant says %v", got, want)
		}
	}
	if Success.Name() != "AXCL_SUCC" || Success.Native() {
		t.Fatalf("Success: %q native=%v", Success.Name(), Success.Native())
	}
	// A code as the C int32_t is negative; check() must see it as the same code.
	var rt *Runtime
	raw := uint32(0x8030070C)
	err := rt.check("axclrtX", int32(raw))
	var ae *Error
	if !errors.As(err, &ae) || ae.Code != 0x8030070C {
		t.Fatalf("check(negative int32) = %v", err)
	}
	if rt.check("axclrtX", 0) != nil {
		t.Fatal("check(0) is not nil")
	}
}

// Error codes come from outside (the runtime or the card); whatever their
// bits, describing them must not panic and must keep the documented format.
func FuzzCode(f *testing.F) {
	for _, c := range []uint32{0, 0x8030010B, 0x80300284, 0x8030070C, 0x80060118, 0x807F0199, 0xFFFFFFFF, 0x00300101, 0x82300C0C} {
		f.Add(c)
	}
	f.Fuzz(func(t *testing.T, raw uint32) {
		c := Code(raw)
		if c.Name() == "" || c.Sentence() == "" {
			t.Fatalf("%v: empty name or sentence", c)
		}
		msg := (&Error{Op: "op", Code: c}).Error()
		if !strings.HasPrefix(msg, "axcl: op: "+fmt.Sprintf("0x%08X ", raw)) {
			t.Fatalf("message %q", msg)
		}
		if c != Success && c.Native() == c.IsAXCL() {
			t.Fatalf("%v is both or neither native and runtime", c)
		}
		for _, s := range c.classes() {
			if !errors.Is(&Error{Code: c}, s) {
				t.Fatalf("%v: class %v not matched by errors.Is", c, s)
			}
		}
	})
}

// Device properties are bytes written by the card; the helpers must cope
// with any content.
func FuzzDeviceProperties(f *testing.F) {
	f.Add([]byte("Ax_Version V3.10.2\x00"), uint32(7208960), uint32(7190084), int32(41000), uint32(150))
	f.Add(make([]byte, 64), uint32(0), uint32(5), int32(-1), uint32(0xFFFFFFFF))
	f.Add([]byte(strings.Repeat("x", 80)), uint32(1), uint32(1), int32(120000), uint32(10000))
	f.Fuzz(func(t *testing.T, ver []byte, total, free uint32, temp int32, load uint32) {
		var p DeviceProperties
		copy(p.SoftwareVersion[:], ver)
		p.TotalCMMKiB, p.FreeCMMKiB, p.TemperatureMilliC, p.NPULoad = total, free, temp, load
		fw := p.Firmware()
		if len(fw) > 64 || strings.IndexByte(fw, 0) >= 0 {
			t.Fatalf("Firmware() = %q", fw)
		}
		if p.CMMUsedBytes() > p.CMMTotalBytes() {
			t.Fatalf("used %d > total %d", p.CMMUsedBytes(), p.CMMTotalBytes())
		}
		if got := p.TemperatureC() * 1000; got < float64(temp)-0.5 || got > float64(temp)+0.5 {
			t.Fatalf("TemperatureC() = %v for %d m°C", p.TemperatureC(), temp)
		}
		_ = p.PCIAddress()
	})
}

// Dims come from the runtime; Slice must reject counts outside 0..32.
func FuzzDims(f *testing.F) {
	f.Add(int32(3), int32(1))
	f.Add(int32(-1), int32(0))
	f.Add(int32(33), int32(5))
	f.Fuzz(func(t *testing.T, count, v int32) {
		d := Dims{Count: count}
		for i := range d.Dims {
			d.Dims[i] = v
		}
		s := d.Slice()
		if count < 0 || count > MaxDims {
			if s != nil {
				t.Fatalf("count %d gave %v", count, s)
			}
			return
		}
		if len(s) != int(count) {
			t.Fatalf("count %d gave %d dims", count, len(s))
		}
	})
}
