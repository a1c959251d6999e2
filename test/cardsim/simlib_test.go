package cardsim

import (
	"runtime"
	"sync"
	"testing"
	"unsafe"

	"github.com/ebitengine/purego"
)

// sim binds the simulator through purego directly (the real binding lives in worker/axcl).
type sim struct {
	Init                func(cfg unsafe.Pointer) int32
	Finalize            func() int32
	GetVersion          func(a, b, c *int32) int32
	GetSocName          func() string
	GetDeviceCount      func(n *uint32) int32
	GetDeviceList       func(l *deviceList) int32
	SetDevice           func(id int32) int32
	ResetDevice         func(id int32) int32
	GetDevice           func(id *int32) int32
	CreateContext       func(ctx *uintptr, id int32) int32
	DestroyContext      func(ctx uintptr) int32
	SetCurrentContext   func(ctx uintptr) int32
	GetCurrentContext   func(ctx *uintptr) int32
	GetDeviceProperties func(id int32, p *[240]byte) int32
	Malloc              func(p *uintptr, size uintptr, policy int32) int32
	Free                func(p uintptr) int32
	Memset              func(p uintptr, v uint8, n uintptr) int32
	MemcpyH2D           func(dst uintptr, src unsafe.Pointer, n uintptr, kind int32) int32
	MemcpyD2H           func(dst unsafe.Pointer, src uintptr, n uintptr, kind int32) int32
	MemcpyD2D           func(dst, src uintptr, n uintptr, kind int32) int32
	MemcpyH2H           func(dst, src unsafe.Pointer, n uintptr, kind int32) int32

	EngineInit          func(kind int32) int32
	EngineFinalize      func() int32
	LoadFromFile        func(path string, id *uint64) int32
	LoadFromMem         func(dev uintptr, size uint64, id *uint64) int32
	Unload              func(id uint64) int32
	Usage               func(id uint64, sys, cmm *int64) int32
	CompilerVersion     func(id uint64) string
	EngineCreateContext func(id uint64, ctx *uint64) int32
	GetIOInfo           func(id uint64, info *uintptr) int32
	DestroyIOInfo       func(info uintptr) int32
	GroupsCount         func(info uintptr, n *int32) int32
	NumInputs           func(info uintptr) uint32
	NumOutputs          func(info uintptr) uint32
	InputSize           func(info uintptr, group, index uint32) uint64
	OutputSize          func(info uintptr, group, index uint32) uint64
	InputName           func(info uintptr, index uint32) string
	OutputName          func(info uintptr, index uint32) string
	InputIndex          func(info uintptr, name string) int32
	OutputIndex         func(info uintptr, name string) int32
	InputDims           func(info uintptr, group, index uint32, dims *ioDims) int32
	OutputDims          func(info uintptr, group, index uint32, dims *ioDims) int32
	InputDataType       func(info uintptr, index uint32, t *int32) int32
	CreateIO            func(info uintptr, io *uintptr) int32
	DestroyIO           func(io uintptr) int32
	SetInput            func(io uintptr, index uint32, buf uintptr, size uint64) int32
	SetOutput           func(io uintptr, index uint32, buf uintptr, size uint64) int32
	GetInput            func(io uintptr, index uint32, buf *uintptr, size *uint64) int32
	Execute             func(id, ctx uint64, group uint32, io uintptr) int32

	*symbols // the simulator's own kilnsim_* controls (control.go)
}

type deviceList struct {
	Num     uint32
	Devices [256]int32
}

type ioDims struct {
	Count int32
	Dims  [32]int32
}

var simOnce struct {
	sync.Once
	s   *sim
	err error
}

func loadSim(tb testing.TB) *sim {
	tb.Helper()
	path := Library(tb)
	simOnce.Do(func() {
		h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_LOCAL)
		if err != nil {
			simOnce.err = err
			return
		}
		s := &sim{}
		reg := func(fn any, name string) { purego.RegisterLibFunc(fn, h, name) }
		reg(&s.Init, "axclInit")
		reg(&s.Finalize, "axclFinalize")
		reg(&s.GetVersion, "axclrtGetVersion")
		reg(&s.GetSocName, "axclrtGetSocName")
		reg(&s.GetDeviceCount, "axclrtGetDeviceCount")
		reg(&s.GetDeviceList, "axclrtGetDeviceList")
		reg(&s.SetDevice, "axclrtSetDevice")
		reg(&s.ResetDevice, "axclrtResetDevice")
		reg(&s.GetDevice, "axclrtGetDevice")
		reg(&s.CreateContext, "axclrtCreateContext")
		reg(&s.DestroyContext, "axclrtDestroyContext")
		reg(&s.SetCurrentContext, "axclrtSetCurrentContext")
		reg(&s.GetCurrentContext, "axclrtGetCurrentContext")
		reg(&s.GetDeviceProperties, "axclrtGetDeviceProperties")
		reg(&s.Malloc, "axclrtMalloc")
		reg(&s.Free, "axclrtFree")
		reg(&s.Memset, "axclrtMemset")
		reg(&s.MemcpyH2D, "axclrtMemcpy")
		reg(&s.MemcpyD2H, "axclrtMemcpy")
		reg(&s.MemcpyD2D, "axclrtMemcpy")
		reg(&s.MemcpyH2H, "axclrtMemcpy")
		reg(&s.EngineInit, "axclrtEngineInit")
		reg(&s.EngineFinalize, "axclrtEngineFinalize")
		reg(&s.LoadFromFile, "axclrtEngineLoadFromFile")
		reg(&s.LoadFromMem, "axclrtEngineLoadFromMem")
		reg(&s.Unload, "axclrtEngineUnload")
		reg(&s.Usage, "axclrtEngineGetUsageFromModelId")
		reg(&s.CompilerVersion, "axclrtEngineGetModelCompilerVersion")
		reg(&s.EngineCreateContext, "axclrtEngineCreateContext")
		reg(&s.GetIOInfo, "axclrtEngineGetIOInfo")
		reg(&s.DestroyIOInfo, "axclrtEngineDestroyIOInfo")
		reg(&s.GroupsCount, "axclrtEngineGetShapeGroupsCount")
		reg(&s.NumInputs, "axclrtEngineGetNumInputs")
		reg(&s.NumOutputs, "axclrtEngineGetNumOutputs")
		reg(&s.InputSize, "axclrtEngineGetInputSizeByIndex")
		reg(&s.OutputSize, "axclrtEngineGetOutputSizeByIndex")
		reg(&s.InputName, "axclrtEngineGetInputNameByIndex")
		reg(&s.OutputName, "axclrtEngineGetOutputNameByIndex")
		reg(&s.InputIndex, "axclrtEngineGetInputIndexByName")
		reg(&s.OutputIndex, "axclrtEngineGetOutputIndexByName")
		reg(&s.InputDims, "axclrtEngineGetInputDims")
		reg(&s.OutputDims, "axclrtEngineGetOutputDims")
		reg(&s.InputDataType, "axclrtEngineGetInputDataType")
		reg(&s.CreateIO, "axclrtEngineCreateIO")
		reg(&s.DestroyIO, "axclrtEngineDestroyIO")
		reg(&s.SetInput, "axclrtEngineSetInputBufferByIndex")
		reg(&s.SetOutput, "axclrtEngineSetOutputBufferByIndex")
		reg(&s.GetInput, "axclrtEngineGetInputBufferByIndex")
		reg(&s.Execute, "axclrtEngineExecute")
		if s.symbols, err = bind(path); err != nil {
			simOnce.err = err
			return
		}
		simOnce.s = s
	})
	if simOnce.err != nil {
		tb.Fatalf("dlopen simulator: %v", simOnce.err)
	}
	return simOnce.s
}

// Error codes the tests expect (research/axcl-api.md §3).
const (
	errDeviceInvalidID   = 0x80300184
	errNoActiveDevice    = 0x80300185
	errDeviceLost        = 0x8030010A
	errNoBindContext     = 0x80300284
	errMemIllegal        = 0x80300503
	errMemUnsupport      = 0x80300504
	errMemNoMemory       = 0x80300507
	errMemLost           = 0x8030050A
	errNotDeviceMemory   = 0x80300581
	errEngineIllegal     = 0x80300703
	errEngineTimeout     = 0x80300705
	errEngineNoMemory    = 0x80300707
	errEngineLost        = 0x8030070A
	errEngineOpen        = 0x8030070B
	errEngineExecuteFail = 0x8030070C
	errEngineIndex       = 0x80300781
	errConfigIllegal     = 0x80300603
)

func code(r int32) uint32 { return uint32(r) }

// card is an initialised simulator bound to device 1 on the test's own OS thread. The test
// goroutine stays locked, so its thread (and the thread-local binding) ends with the test.
type card struct {
	*sim
	t   testing.TB
	dev int32
	ctx uintptr
}

func openCard(t testing.TB, config string) *card {
	t.Helper()
	s := loadSim(t)
	runtime.LockOSThread() // never unlocked: the thread exits with the test goroutine
	if r := s.Init(nil); r != 0 {
		t.Fatalf("axclInit: %#x %s", code(r), s.lastError())
	}
	t.Cleanup(func() {
		s.Finalize()
		s.setFaults("")
		s.config("exec_us=0,nocompute=0,ambient_c=40,heat_c_per_s=2.5,cool_per_s=0.05,temp_file=,hang_cap_ms=300000,cmm_mib=7040,props_us=0")
	})
	if config != "" && s.config(config) != 0 {
		t.Fatalf("kilnsim_config(%q) failed", config)
	}
	c := &card{sim: s, t: t}
	var l deviceList
	if r := s.GetDeviceList(&l); r != 0 || l.Num == 0 {
		t.Fatalf("device list: %#x, %d devices", code(r), l.Num)
	}
	c.dev = l.Devices[0]
	if r := s.CreateContext(&c.ctx, c.dev); r != 0 {
		t.Fatalf("create context: %#x %s", code(r), s.lastError())
	}
	if r := s.EngineInit(0); r != 0 {
		t.Fatalf("engine init: %#x %s", code(r), s.lastError())
	}
	return c
}

func (c *card) ok(what string, r int32) {
	c.t.Helper()
	if r != 0 {
		c.t.Fatalf("%s: %#x %s", what, code(r), c.lastError())
	}
}

func (c *card) want(what string, r int32, want uint32) {
	c.t.Helper()
	if code(r) != want {
		c.t.Fatalf("%s: got %#x, want %#x (%s)", what, code(r), want, c.lastError())
	}
}

func (c *card) malloc(n int) uintptr {
	c.t.Helper()
	var p uintptr
	c.ok("malloc", c.Malloc(&p, uintptr(n), 0))
	return p
}

func (c *card) put(dev uintptr, b []byte) {
	c.t.Helper()
	if len(b) == 0 {
		return
	}
	c.ok("memcpy H2D", c.MemcpyH2D(dev, unsafe.Pointer(&b[0]), uintptr(len(b)), 1))
}

func (c *card) get(dev uintptr, n int) []byte {
	c.t.Helper()
	b := make([]byte, n)
	c.ok("memcpy D2H", c.MemcpyD2H(unsafe.Pointer(&b[0]), dev, uintptr(n), 2))
	return b
}

// model is a loaded model with one IO per shape group and device buffers of each group's sizes.
type model struct {
	id, ctx uint64
	info    uintptr
	spec    *ModelSpec
	io      []uintptr
	in, out [][]uintptr // [group][index]
}

func (c *card) load(path string, spec *ModelSpec) *model {
	c.t.Helper()
	m := &model{spec: spec}
	c.ok("load "+path, c.LoadFromFile(path, &m.id))
	c.ok("engine context", c.EngineCreateContext(m.id, &m.ctx))
	c.ok("io info", c.GetIOInfo(m.id, &m.info))
	var g int32
	c.ok("groups", c.GroupsCount(m.info, &g))
	for grp := 0; grp < int(g); grp++ {
		var io uintptr
		c.ok("create io", c.CreateIO(m.info, &io))
		m.io = append(m.io, io)
		var ins, outs []uintptr
		for i := uint32(0); i < c.NumInputs(m.info); i++ {
			p := c.malloc(int(c.InputSize(m.info, uint32(grp), i)))
			c.ok("set input", c.SetInput(io, i, p, c.InputSize(m.info, uint32(grp), i)))
			ins = append(ins, p)
		}
		for i := uint32(0); i < c.NumOutputs(m.info); i++ {
			p := c.malloc(int(c.OutputSize(m.info, uint32(grp), i)))
			c.ok("set output", c.SetOutput(io, i, p, c.OutputSize(m.info, uint32(grp), i)))
			outs = append(outs, p)
		}
		m.in = append(m.in, ins)
		m.out = append(m.out, outs)
	}
	return m
}

func u16bytes(v []uint16) []byte {
	b := make([]byte, 2*len(v))
	for i, x := range v {
		b[2*i], b[2*i+1] = byte(x), byte(x>>8)
	}
	return b
}

func bytesU16(b []byte) []uint16 {
	v := make([]uint16, len(b)/2)
	for i := range v {
		v[i] = uint16(b[2*i]) | uint16(b[2*i+1])<<8
	}
	return v
}

func u32bytes(v []uint32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(x), byte(x>>8), byte(x>>16), byte(x>>24)
	}
	return b
}
