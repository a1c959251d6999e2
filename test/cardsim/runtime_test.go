package cardsim

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/kiln-project/kiln/test/wait"
)

func TestDevicePropertiesLayout(t *testing.T) {
	c := openCard(t, "")
	if n := c.sizeofProps(); n != 240 {
		t.Fatalf("sizeof(axclrtDeviceProperties) = %d, want 240", n)
	}
	c.setTempC(55)
	var p [240]byte
	c.ok("properties", c.GetDeviceProperties(c.dev, &p))
	le := binary.LittleEndian
	sw := string(p[:strings.IndexByte(string(p[:64]), 0)])
	if !strings.HasPrefix(sw, "Ax_Version V3.10.2") {
		t.Errorf("swVersion = %q", sw)
	}
	if uid := le.Uint64(p[64:]); uid == 0 {
		t.Error("uid is 0")
	}
	if bus := le.Uint32(p[76:]); bus != uint32(c.dev) {
		t.Errorf("pciBusID = %d, want the device id %d", bus, c.dev)
	}
	if temp := int32(le.Uint32(p[84:])); temp < 54900 || temp > 55100 {
		t.Errorf("temperature = %d m°C, want about 55000 after kilnsim_set_temp_c(55)", temp)
	}
	if total := le.Uint32(p[96:]); total != 7040*1024 {
		t.Errorf("totalCmmSize = %d KiB, want %d", total, 7040*1024)
	}
	free0 := le.Uint32(p[100:])
	c.malloc(100 << 20)
	c.ok("properties", c.GetDeviceProperties(c.dev, &p))
	if free1 := le.Uint32(p[100:]); free0-free1 != 100*1024 {
		t.Errorf("freeCmmSize went from %d to %d KiB after a 100 MiB malloc", free0, free1)
	}
	if load := le.Uint32(p[108:]); load > 10000 {
		t.Errorf("npuLoading = %d, want 0..10000", load)
	}
	var a, b, v int32
	c.ok("version", c.GetVersion(&a, &b, &v))
	if a != 3 || b != 10 || v != 2 || c.GetSocName() != "AX650N" {
		t.Errorf("version %d.%d.%d soc %q", a, b, v, c.GetSocName())
	}
}

func TestDeviceIDIsBusNumber(t *testing.T) {
	c := openCard(t, "")
	if c.dev == 0 {
		t.Fatal("the default device id is 0; it must be a bus number (1) so index/id confusion is caught")
	}
	c.want("SetDevice(0)", c.SetDevice(0), errDeviceInvalidID)
	var p [240]byte
	c.want("GetDeviceProperties(0)", c.GetDeviceProperties(0, &p), errDeviceInvalidID)
	var ctx uintptr
	c.want("CreateContext(0)", c.CreateContext(&ctx, 0), errDeviceInvalidID)
}

// otherThread runs fn on a fresh OS thread that has never bound anything.
func otherThread(fn func()) {
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		defer close(done)
		fn()
	}()
	<-done
}

func TestThreadRule(t *testing.T) {
	c := openCard(t, "")
	buf := c.malloc(64)
	var noCtx, noDev, malloc, copyErr, bound, afterBind, exec int32
	var id int32
	otherThread(func() {
		var ctx uintptr
		noCtx = c.GetCurrentContext(&ctx)
		noDev = c.GetDevice(&id)
		var p uintptr
		malloc = c.Malloc(&p, 64, 0)
		b := make([]byte, 64)
		copyErr = c.MemcpyD2H(unsafe.Pointer(&b[0]), buf, 64, 2)
		exec = c.Execute(0x100, 0x100<<16|1, 0, 0)
		bound = c.SetCurrentContext(c.ctx)
		afterBind = c.MemcpyD2H(unsafe.Pointer(&b[0]), buf, 64, 2)
	})
	c.want("GetCurrentContext on an unbound thread", noCtx, errNoBindContext)
	c.want("GetDevice on an unbound thread", noDev, errNoActiveDevice)
	c.want("Malloc on an unbound thread", malloc, errNoBindContext)
	c.want("Memcpy on an unbound thread", copyErr, errNoBindContext)
	c.want("Execute on an unbound thread", exec, errNoBindContext)
	c.ok("SetCurrentContext on the other thread", bound)
	c.ok("Memcpy after SetCurrentContext", afterBind)
	var got int32
	c.ok("GetDevice on the bound thread", c.GetDevice(&got))
	if got != c.dev {
		t.Fatalf("GetDevice = %d, want %d", got, c.dev)
	}
}

func TestMemcpyKinds(t *testing.T) {
	c := openCard(t, "")
	a, b := c.malloc(256), c.malloc(256)
	host := make([]byte, 256)
	for i := range host {
		host[i] = byte(i)
	}
	c.put(a, host)
	// D2D at an offset inside both buffers (how the LLM runtime appends K/V rows).
	c.ok("D2D at offset", c.MemcpyD2D(b+64, a+16, 32, 3))
	got := c.get(b, 256)
	for i := 0; i < 32; i++ {
		if got[64+i] != byte(16+i) {
			t.Fatalf("D2D at offset: byte %d = %d, want %d", 64+i, got[64+i], 16+i)
		}
	}
	if got[63] != 0 || got[96] != 0 {
		t.Fatal("D2D wrote outside [64, 96)")
	}
	p := unsafe.Pointer(&host[0])
	c.want("H2D with a device source", c.MemcpyD2D(b, a, 16, 1), errMemIllegal)
	c.want("D2H with a host source", c.MemcpyH2H(p, p, 16, 2), errNotDeviceMemory)
	c.want("H2D with a host destination", c.MemcpyH2H(p, p, 16, 1), errNotDeviceMemory)
	c.want("D2D with a host source", c.MemcpyH2D(a, p, 16, 3), errNotDeviceMemory)
	c.want("H2H with device memory", c.MemcpyD2D(a, b, 16, 0), errMemIllegal)
	c.want("D2H past the end", c.MemcpyD2H(p, a+250, 16, 2), errMemIllegal)
	c.want("HOST_PHY_TO_DEVICE", c.MemcpyH2D(a, p, 16, 4), errMemUnsupport)
	c.ok("H2H", c.MemcpyH2H(unsafe.Pointer(&host[128]), p, 16, 0))
	if host[128] != 0 || host[143] != 15 {
		t.Fatal("H2H did not copy")
	}
	c.ok("free", c.Free(b))
	c.want("D2H from a freed buffer", c.MemcpyD2H(p, b, 16, 2), errNotDeviceMemory)
	c.want("free twice", c.Free(b), errNotDeviceMemory)
	c.ok("memset", c.Memset(a, 7, 256))
	if got := c.get(a, 256); got[0] != 7 || got[255] != 7 {
		t.Fatal("memset did not fill")
	}
	runtime.KeepAlive(host)
}

func TestCMMLimit(t *testing.T) {
	c := openCard(t, "")
	var p1, p2 uintptr
	c.ok("malloc 4000 MiB", c.Malloc(&p1, 4000<<20, 0))
	c.want("malloc another 4000 MiB", c.Malloc(&p2, 4000<<20, 0), errMemNoMemory)
	dir := t.TempDir()
	s := TinyQwen3()
	s.LayerWeightBytes = 3100 << 20
	spec := s.LayerSpec(0)
	path := writeSpec(t, dir, "big.axmodel", spec)
	var id uint64
	c.want("load a model past the CMM", c.LoadFromFile(path, &id), errEngineNoMemory)
	c.ok("free", c.Free(p1))
	c.ok("load after free", c.LoadFromFile(path, &id))
	var sys, cmm int64
	c.ok("usage", c.Usage(id, &sys, &cmm))
	if cmm != 3100<<20 {
		t.Fatalf("usage cmm = %d, want %d", cmm, 3100<<20)
	}
	c.ok("unload", c.Unload(id))
	c.ok("malloc after unload", c.Malloc(&p2, 4000<<20, 0))
}

func writeSpec(t *testing.T, dir, name string, s *ModelSpec) string {
	t.Helper()
	b, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestModelFiles(t *testing.T) {
	c := openCard(t, "")
	dir := t.TempDir()
	real := filepath.Join(dir, "real.axmodel")
	os.WriteFile(real, []byte("\x00AXMODEL-like bytes that are not a simulator spec"), 0o644)
	var id uint64
	c.want("load a non-simulator model", c.LoadFromFile(real, &id), errEngineIllegal)
	c.want("load a missing file", c.LoadFromFile(filepath.Join(dir, "missing.axmodel"), &id), errEngineOpen)

	s := TinyQwen3()
	spec := s.LayerSpec(0)
	b, _ := spec.Marshal()
	dev := c.malloc(len(b))
	c.put(dev, b)
	c.ok("load from device memory", c.LoadFromMem(dev, uint64(len(b)), &id))
	c.want("load from host memory", c.LoadFromMem(uintptr(unsafe.Pointer(&b[0])), uint64(len(b)), &id), errEngineIllegal)
	if v := c.CompilerVersion(id); v != "5.1-kilnsim" {
		t.Errorf("compiler version %q", v)
	}
	var info uintptr
	c.ok("io info", c.GetIOInfo(id, &info))
	var g int32
	c.ok("groups", c.GroupsCount(info, &g))
	if int(g) != 1+len(s.Histories) || c.NumInputs(info) != 5 || c.NumOutputs(info) != 3 {
		t.Fatalf("groups %d inputs %d outputs %d", g, c.NumInputs(info), c.NumOutputs(info))
	}
	if c.InputName(info, 2) != "mask" || c.OutputName(info, 2) != "output" || c.InputIndex(info, "K_cache") != 3 || c.OutputIndex(info, "nope") != -1 {
		t.Fatal("names and indexes do not follow the spec")
	}
	var dims ioDims
	c.ok("dims", c.InputDims(info, 0, 2, &dims))
	if dims.Count != 3 || dims.Dims[2] != int32(s.MaxCtx+1) {
		t.Fatalf("decode mask dims %v", dims.Dims[:dims.Count])
	}
	c.ok("dims", c.InputDims(info, 2, 2, &dims))
	if dims.Dims[1] != 128 || dims.Dims[2] != int32(s.Histories[1]+128) {
		t.Fatalf("prefill mask dims %v", dims.Dims[:dims.Count])
	}
	if n := c.InputSize(info, 0, 3); n != uint64(s.MaxCtx*s.KVDim*2) {
		t.Fatalf("decode K_cache size %d", n)
	}
	var dt int32
	c.ok("dtype", c.InputDataType(info, 1, &dt))
	if DType(dt) != Uint32 {
		t.Fatalf("indices dtype %d", dt)
	}
	c.want("dims of a bad index", c.InputDims(info, 0, 9, &dims), errEngineIndex)
	c.want("dims of a bad group", c.InputDims(info, 99, 0, &dims), errEngineIndex)
	var io uintptr
	c.ok("create io", c.CreateIO(info, &io))
	c.want("bind a host buffer", c.SetInput(io, 0, uintptr(unsafe.Pointer(&b[0])), 8), errEngineIllegal)
	c.want("bind a bad index", c.SetInput(io, 7, dev, 8), errEngineIndex)
	var ctx uint64
	c.ok("engine context", c.EngineCreateContext(id, &ctx))
	c.want("execute with unbound buffers", c.Execute(id, ctx, 0, io), errEngineIllegal)
	c.want("execute a bad group", c.Execute(id, ctx, 42, io), errEngineIndex)
	c.want("execute with another model's context", c.Execute(id, ctx+7, 0, io), errEngineIllegal)
	runtime.KeepAlive(b)
}

func TestFaults(t *testing.T) {
	c := openCard(t, "")
	dir := t.TempDir()
	s := smallLLM()
	if err := WriteLLMPackage(dir, s); err != nil {
		t.Fatal(err)
	}
	post := c.load(filepath.Join(dir, s.ModelDir, s.PostFile()), s.PostSpec())
	if c.setFaults("fail_execute=2,lose_device=4") != 0 {
		t.Fatal("set faults")
	}
	exec := func() int32 { return c.Execute(post.id, post.ctx, 0, post.io[0]) }
	c.ok("execute 1", exec())
	c.want("execute 2", exec(), errEngineExecuteFail)
	c.ok("execute 3", exec())
	c.want("execute 4 loses the device", exec(), errEngineLost)
	c.want("execute after loss", exec(), errEngineLost)
	var p uintptr
	c.want("malloc after loss", c.Malloc(&p, 16, 0), errMemLost)
	var props [240]byte
	c.want("properties after loss", c.GetDeviceProperties(c.dev, &props), errDeviceLost)
	// recovery: destroy the context (the last reference resets the device), bind again.
	c.ok("destroy context", c.DestroyContext(c.ctx))
	c.ok("create context", c.CreateContext(&c.ctx, c.dev))
	c.ok("engine init", c.EngineInit(0))
	post = c.load(filepath.Join(dir, s.ModelDir, s.PostFile()), s.PostSpec())
	c.ok("execute after reset", exec())

	if c.setFaults("bogus=1") == 0 {
		t.Fatal("a bad fault spec was accepted")
	}
	if c.setFaults("fail_load=1") != 0 {
		t.Fatal("set faults")
	}
	var id uint64
	c.want("fail_load", c.LoadFromFile(filepath.Join(dir, s.ModelDir, s.PostFile()), &id), errEngineNoMemory)
}

func TestHangEndsOnReset(t *testing.T) {
	c := openCard(t, "")
	dir := t.TempDir()
	s := smallLLM()
	if err := WriteLLMPackage(dir, s); err != nil {
		t.Fatal(err)
	}
	post := c.load(filepath.Join(dir, s.ModelDir, s.PostFile()), s.PostSpec())
	c.setFaults("hang_execute=1")
	done := make(chan int32)
	go func() {
		runtime.LockOSThread()
		if r := c.SetCurrentContext(c.ctx); r != 0 {
			done <- r
			return
		}
		done <- c.Execute(post.id, post.ctx, 0, post.io[0])
	}()
	select {
	case r := <-done:
		t.Fatalf("hung execute returned %#x before the reset", code(r))
	case <-time.After(50 * time.Millisecond):
	}
	c.ok("destroy context", c.DestroyContext(c.ctx)) // last reference: device reset wakes the hang
	c.want("hung execute", <-done, errEngineTimeout)
}

func TestThermalModel(t *testing.T) {
	c := openCard(t, "exec_us=5000,heat_c_per_s=200,cool_per_s=0")
	dir := t.TempDir()
	s := smallLLM()
	if err := WriteLLMPackage(dir, s); err != nil {
		t.Fatal(err)
	}
	post := c.load(filepath.Join(dir, s.ModelDir, s.PostFile()), s.PostSpec())
	temp := func() int32 {
		var p [240]byte
		c.ok("properties", c.GetDeviceProperties(c.dev, &p))
		return int32(binary.LittleEndian.Uint32(p[84:]))
	}
	c.setTempC(40)
	before := temp()
	for i := 0; i < 10; i++ {
		c.ok("execute", c.Execute(post.id, post.ctx, 0, post.io[0]))
	}
	var p [240]byte
	c.ok("properties", c.GetDeviceProperties(c.dev, &p))
	hot := int32(binary.LittleEndian.Uint32(p[84:]))
	if hot <= before {
		t.Fatalf("temperature did not rise under load: %d -> %d m°C", before, hot)
	}
	if load := binary.LittleEndian.Uint32(p[108:]); load == 0 {
		t.Error("npuLoading is 0 after busy executes")
	}
	c.config("cool_per_s=5,heat_c_per_s=0")
	c.setTempC(90)
	wait.For(t, 10*time.Second, 5*time.Millisecond, func() error {
		if cooled := temp(); cooled >= 90000 {
			return fmt.Errorf("temperature did not fall while idle: %d m°C", cooled)
		}
		return nil
	})

	// The temperature file overrides the model; an unreadable file falls back to it.
	f := filepath.Join(t.TempDir(), "temp")
	os.WriteFile(f, []byte("77.5\n"), 0o644)
	c.config("temp_file=" + f)
	if got := temp(); got != 77500 {
		t.Fatalf("temperature with file = %d, want 77500", got)
	}
	os.WriteFile(f, []byte("81"), 0o644)
	if got := temp(); got != 81000 {
		t.Fatalf("temperature is not re-read: %d, want 81000", got)
	}
	os.Remove(f)
	if got := temp(); got == 81000 || got > 90000 {
		t.Fatalf("temperature without the file = %d, want the model's", got)
	}
}
