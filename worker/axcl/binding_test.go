package axcl

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// session opens the runtime on the calling (locked) thread like the npu
// device thread does and returns the device id; cleanup is the caller's.
func session(t testing.TB, rt *Runtime) DeviceID {
	t.Helper()
	must(t, rt.Init(""))
	ids, err := rt.DeviceList()
	must(t, err)
	if len(ids) == 0 {
		t.Fatal("simulator lists no device")
	}
	must(t, rt.SetDevice(ids[0]))
	return ids[0]
}

// TestBindingWalk calls every bound function through the simulator in the
// order a worker does, checking what each returns.
func TestBindingWalk(t *testing.T) {
	t.Setenv("KILN_SIM_DEVICES", "3,1")
	rt, _ := simLib(t)
	path, spec := tinyLayer(t, t.TempDir())
	onThread(t, func(t testing.TB) {
		must(t, rt.Init(""))
		v, err := rt.Version()
		must(t, err)
		if v.Major != 3 || v.String() != "3.10.2" {
			t.Errorf("Version() = %v", v)
		}
		if !strings.HasPrefix(rt.FullVersion(), "V3.10.2") || rt.SocName() != "AX650N" {
			t.Errorf("FullVersion %q SocName %q", rt.FullVersion(), rt.SocName())
		}
		n, err := rt.DeviceCount()
		must(t, err)
		ids, err := rt.DeviceList()
		must(t, err)
		// Ids are bus numbers, sorted, not indexes.
		if n != 2 || !slices.Equal(ids, []DeviceID{1, 3}) {
			t.Fatalf("DeviceCount %d, DeviceList %v; want 2, [1 3]", n, ids)
		}
		id := ids[1]
		must(t, rt.SetDevice(id))
		if got, err := rt.Device(); err != nil || got != id {
			t.Fatalf("Device() = %d, %v", got, err)
		}
		ctx, err := rt.CreateContext(id)
		must(t, err)
		if cur, err := rt.CurrentContext(); err != nil || cur != ctx {
			t.Fatalf("CurrentContext() = %#x, %v; created %#x", cur, err, ctx)
		}
		must(t, rt.SetCurrentContext(ctx))
		must(t, rt.SynchronizeDevice())
		var p DeviceProperties
		must(t, rt.DeviceProperties(id, &p))
		if p.PCIBus != uint32(id) || p.TotalCMMKiB == 0 || p.FreeCMMKiB > p.TotalCMMKiB || p.TemperatureMilliC < 1000 ||
			!strings.Contains(p.Firmware(), "V3.10.2") {
			t.Errorf("properties: %+v", p)
		}

		must(t, rt.EngineInit(VNPUDisable))
		if k, err := rt.EngineVNPUKind(); err != nil || k != VNPUDisable {
			t.Fatalf("EngineVNPUKind() = %v, %v", k, err)
		}

		// Memory: every copy kind kiln uses, with offsets.
		a, err := rt.Malloc(4096, MallocHugeFirst)
		must(t, err)
		b, err := rt.MallocCached(4096, MallocNormalOnly)
		must(t, err)
		must(t, rt.Memset(a, 0x5A, 4096))
		src := bytes.Repeat([]byte("kiln"), 256)
		must(t, rt.CopyToDevice(a+100, src))
		must(t, rt.MemFlush(a, 4096))
		must(t, rt.CopyDevice(b, a, 4096))
		must(t, rt.MemInvalidate(b, 4096))
		got := make([]byte, 4096)
		must(t, rt.CopyFromDevice(got, b))
		want := bytes.Repeat([]byte{0x5A}, 4096)
		copy(want[100:], src)
		if !bytes.Equal(got, want) {
			t.Fatal("H2D, D2D, D2H round trip changed the bytes")
		}
		must(t, rt.Memcpy(uintptr(b)+8, uintptr(a)+100, 4, DeviceToDevice))
		small := make([]byte, 4)
		must(t, rt.CopyFromDevice(small, b+8))
		if string(small) != "kiln" {
			t.Fatalf("raw D2D copy: %q", small)
		}
		h2h := make([]byte, 4)
		must(t, rt.CopyHost(h2h, []byte("oven")))
		if string(h2h) != "oven" {
			t.Fatalf("CopyHost: %q", h2h)
		}
		if eq, err := rt.MemEqual(a, b, 16); err != nil && !errors.Is(err, ErrUnsupported) || err == nil && eq {
			t.Fatalf("MemEqual of different buffers = %v, %v", eq, err)
		}
		hp, err := rt.MallocHost(64)
		must(t, err)
		must(t, rt.Memcpy(uintptr(hp), uintptr(a)+100, 4, DeviceToHost))
		must(t, rt.FreeHost(hp))
		for _, kind := range []MemcpyKind{HostPhyToDevice, DeviceToHostPhy} {
			// The simulator has no physical host memory; the call still reaches C.
			if err := rt.Memcpy(uintptr(a), 0x1000, 16, kind); !errors.Is(err, ErrUnsupported) {
				t.Errorf("Memcpy(%v) on the simulator = %v, want ErrUnsupported", kind, err)
			}
		}

		// Models: from file and from device memory.
		id1, err := rt.LoadModel(path)
		must(t, err)
		file, err := os.ReadFile(path)
		must(t, err)
		mem, err := rt.Malloc(uint64(len(file)), MallocHugeFirst)
		must(t, err)
		must(t, rt.CopyToDevice(mem, file))
		id2, err := rt.LoadModelFromDevice(mem, uint64(len(file)))
		must(t, err)
		must(t, rt.Free(mem))
		if id1 == id2 {
			t.Fatalf("two loads returned the same id %d", id1)
		}
		must(t, rt.UnloadModel(id2))
		if u, err := rt.LoadedModelUsage(id1); err != nil || u.CMMBytes != spec.WeightBytes {
			t.Errorf("LoadedModelUsage = %+v, %v; want cmm %d", u, err, spec.WeightBytes)
		}
		if _, err := rt.ModelUsage(path); rt.HasModelUsage() && err != nil || !rt.HasModelUsage() && !errors.Is(err, ErrUnsupported) {
			t.Errorf("ModelUsage: %v (exported: %v)", err, rt.HasModelUsage())
		}
		if rt.CompilerVersion(id1) != spec.Compiler {
			t.Errorf("CompilerVersion = %q, want %q", rt.CompilerVersion(id1), spec.Compiler)
		}
		ectx, err := rt.CreateEngineContext(id1)
		must(t, err)
		info, err := rt.IOInfo(id1)
		must(t, err)
		groups, err := rt.Describe(info)
		must(t, err)
		if len(groups) != spec.Groups {
			t.Fatalf("Describe: %d groups, spec has %d", len(groups), spec.Groups)
		}
		for g := range groups {
			for i, tn := range groups[g].Inputs {
				st := spec.Inputs[i]
				if tn.Name != st.Name || int32(tn.DataType) != int32(st.DType) || !slices.Equal(tn.Dims, st.Dims[g]) ||
					tn.Size != uint64(st.Elems(g)*st.DType.Size()) || tn.Index != i {
					t.Errorf("group %d input %d = %+v, spec %+v", g, i, tn, st)
				}
				if j, err := rt.TensorIndex(info, Input, st.Name); err != nil || j != i {
					t.Errorf("TensorIndex(%s) = %d, %v", st.Name, j, err)
				}
			}
			for i, tn := range groups[g].Outputs {
				st := spec.Outputs[i]
				if tn.Name != st.Name || !slices.Equal(tn.Dims, st.Dims[g]) || tn.Size != uint64(st.Elems(g)*st.DType.Size()) {
					t.Errorf("group %d output %d = %+v, spec %+v", g, i, tn, st)
				}
				if j, err := rt.TensorIndex(info, Output, st.Name); err != nil || j != i {
					t.Errorf("TensorIndex(out %s) = %d, %v", st.Name, j, err)
				}
			}
		}

		// One IO for the decode group (0), buffers bound by index and by name.
		io, err := rt.CreateIO(info)
		must(t, err)
		var bufs []DevicePtr
		for _, dir := range []Direction{Input, Output} {
			list := groups[0].Inputs
			if dir == Output {
				list = groups[0].Outputs
			}
			for i, tn := range list {
				p, err := rt.Malloc(tn.Size, MallocHugeFirst)
				must(t, err)
				bufs = append(bufs, p)
				if i%2 == 0 {
					must(t, rt.SetBuffer(io, dir, i, p, tn.Size))
				} else {
					must(t, rt.SetBufferByName(io, dir, tn.Name, p, tn.Size))
				}
				if gp, gs, err := rt.Buffer(io, dir, i); err != nil || gp != p || gs != tn.Size {
					t.Errorf("Buffer(%v %d) = %#x %d %v", dir, i, gp, gs, err)
				}
				if gp, gs, err := rt.BufferByName(io, info, dir, tn.Name); err != nil || gp != p || gs != tn.Size {
					t.Errorf("BufferByName(%v %s) = %#x %d %v", dir, tn.Name, gp, gs, err)
				}
			}
		}
		// A decode step: hidden state in, position 0, mask allowing row 0.
		in := groups[0].Inputs
		hidden := make([]byte, in[0].Size)
		for i := 0; i < len(hidden); i += 2 {
			hidden[i+1] = 0x3F // bf16 ~0.5..1
			hidden[i] = byte(i)
		}
		must(t, rt.CopyToDevice(bufs[0], hidden))
		must(t, rt.Execute(id1, ectx, 0, io))
		outIdx := len(in) + 2 // "output"
		out := make([]byte, groups[0].Outputs[2].Size)
		must(t, rt.CopyFromDevice(out, bufs[outIdx]))
		if bytes.Equal(out, make([]byte, len(out))) {
			t.Error("execute left the output all zero")
		}

		for _, p := range bufs {
			must(t, rt.Free(p))
		}
		must(t, rt.DestroyIO(io))
		must(t, rt.DestroyIOInfo(info))
		must(t, rt.UnloadModel(id1))
		must(t, rt.Free(a))
		must(t, rt.Free(b))
		must(t, rt.EngineFinalize())
		must(t, rt.DestroyContext(ctx))
		must(t, rt.ResetDevice(id))
		must(t, rt.Finalize())
	})
}

// codeOf asserts that err is an *Error with the given code and sentinel.
func codeOf(t testing.TB, what string, err error, code Code, sentinel error) {
	t.Helper()
	var ae *Error
	if !errors.As(err, &ae) {
		t.Errorf("%s: got %v, want *axcl.Error %v", what, err, code)
		return
	}
	if ae.Code != code {
		t.Errorf("%s: code %v (%s), want %v", what, ae.Code, ae.Error(), code)
	}
	if sentinel != nil && !errors.Is(err, sentinel) {
		t.Errorf("%s: %v does not match %v", what, err, sentinel)
	}
}

// TestErrorPaths drives every error the simulator produces and checks the
// typed error kiln sees.
func TestErrorPaths(t *testing.T) {
	rt, ctl := simLib(t)
	dir := t.TempDir()
	path, _ := tinyLayer(t, dir)
	bogus := filepath.Join(dir, "real.axmodel")
	must(t, os.WriteFile(bogus, []byte("not a kilnsim model"), 0o644))

	onThread(t, func(t testing.TB) {
		// Before axclInit.
		_, err := rt.DeviceCount()
		codeOf(t, "DeviceCount before Init", err, 0x80300101, ErrDevice)

		id := session(t, rt)
		defer func() {
			rt.ResetDevice(id)
			rt.Finalize()
		}()
		codeOf(t, "SetDevice(index instead of id)", rt.SetDevice(7), CodeDeviceInvalidID, ErrDeviceInvalidID)
		codeOf(t, "DestroyContext(bogus)", rt.DestroyContext(Context(0x1234)), 0x80300203, ErrInvalidParam)
		if err := rt.DestroyContext(0); !errors.Is(err, ErrZeroHandle) {
			t.Errorf("DestroyContext(0) = %v", err)
		}
		ctx, err := rt.CreateContext(id)
		must(t, err)
		defer rt.DestroyContext(ctx)
		must(t, rt.EngineInit(VNPUDisable))
		codeOf(t, "EngineInit(other kind)", rt.EngineInit(VNPUBigLittle), CodeEngineIllegalParam, ErrInvalidParam)

		_, err = rt.Malloc(1<<40, MallocHugeFirst)
		codeOf(t, "Malloc(1 TiB)", err, CodeMemoryNoMemory, ErrNoMemory)
		ctl.SetFaults(t, "fail_malloc=1")
		_, err = rt.Malloc(64, MallocHugeFirst)
		codeOf(t, "Malloc with fail_malloc", err, CodeMemoryNoMemory, ErrNoMemory)
		ctl.SetFaults(t, "")

		buf, err := rt.Malloc(64, MallocHugeFirst)
		must(t, err)
		defer rt.Free(buf)
		codeOf(t, "CopyFromDevice past the end", rt.CopyFromDevice(make([]byte, 65), buf), 0x80300503, ErrInvalidParam)
		codeOf(t, "Free(offset pointer)", rt.Free(buf+8), 0x80300581, nil)
		codeOf(t, "Memset(host address)", rt.Memset(DevicePtr(0x1000), 0, 4), 0x80300581, nil)

		_, err = rt.LoadModel(bogus)
		codeOf(t, "LoadModel(real .axmodel)", err, CodeEngineIllegalParam, ErrInvalidParam)
		_, err = rt.LoadModel(filepath.Join(dir, "missing.axmodel"))
		codeOf(t, "LoadModel(missing file)", err, 0x8030070B, nil)
		ctl.SetFaults(t, "fail_load=1")
		_, err = rt.LoadModel(path)
		codeOf(t, "LoadModel with fail_load", err, CodeEngineNoMemory, ErrNoMemory)
		ctl.SetFaults(t, "")

		m, err := rt.LoadModel(path)
		must(t, err)
		defer rt.UnloadModel(m)
		ectx, err := rt.CreateEngineContext(m)
		must(t, err)
		info, err := rt.IOInfo(m)
		must(t, err)
		defer rt.DestroyIOInfo(info)
		_, err = rt.TensorDims(info, Input, 9, 0)
		codeOf(t, "TensorDims(group 9)", err, CodeEngineInvalidIndex, ErrInvalidParam)
		_, err = rt.TensorDataType(info, Output, 9)
		codeOf(t, "TensorDataType(output 9)", err, CodeEngineInvalidIndex, ErrInvalidParam)
		if _, err := rt.TensorIndex(info, Input, "no_such_tensor"); !errors.Is(err, ErrNotFound) {
			t.Errorf("TensorIndex(unknown) = %v", err)
		}
		if _, err := rt.TensorName(info, Output, 99); !errors.Is(err, ErrNotFound) {
			t.Errorf("TensorName(99) = %v", err)
		}
		if _, err := rt.TensorSize(info, Input, 99, 0); !errors.Is(err, ErrNotFound) {
			t.Errorf("TensorSize(group 99) = %v", err)
		}
		if _, err := rt.NumTensors(IOInfo(0xdead), Input); !errors.Is(err, ErrNotFound) {
			t.Errorf("NumTensors(bogus) = %v", err)
		}
		if _, err := rt.NumTensors(0, Input); !errors.Is(err, ErrZeroHandle) {
			t.Errorf("NumTensors(0) = %v", err)
		}
		io, err := rt.CreateIO(info)
		must(t, err)
		defer rt.DestroyIO(io)
		codeOf(t, "Execute with nothing bound", rt.Execute(m, ectx, 0, io), CodeEngineIllegalParam, ErrInvalidParam)
		codeOf(t, "SetBuffer(host memory)", rt.SetBuffer(io, Input, 0, DevicePtr(0x1000), 4), CodeEngineIllegalParam, nil)
		codeOf(t, "SetBufferByName(unknown)", rt.SetBufferByName(io, Input, "nope", buf, 4), CodeEngineInvalidIndex, nil)
		codeOf(t, "Execute(group 9)", rt.Execute(m, ectx, 9, io), CodeEngineInvalidIndex, ErrInvalidParam)
		if err := rt.Execute(m, ectx, 0, 0); !errors.Is(err, ErrZeroHandle) {
			t.Errorf("Execute(io 0) = %v", err)
		}

		// Bind everything for group 0, then inject execute faults.
		groups, err := rt.Describe(info)
		must(t, err)
		var bufs []DevicePtr
		defer func() {
			for _, p := range bufs {
				rt.Free(p)
			}
		}()
		for _, dir := range []Direction{Input, Output} {
			list := groups[0].Inputs
			if dir == Output {
				list = groups[0].Outputs
			}
			for i, tn := range list {
				p, err := rt.Malloc(tn.Size, MallocHugeFirst)
				must(t, err)
				bufs = append(bufs, p)
				must(t, rt.SetBuffer(io, dir, i, p, tn.Size))
			}
		}
		must(t, rt.Execute(m, ectx, 0, io))
		ctl.SetFaults(t, "fail_execute=1")
		codeOf(t, "Execute with fail_execute", rt.Execute(m, ectx, 0, io), CodeEngineExecuteFail, ErrExecuteFail)
		must(t, rt.Execute(m, ectx, 0, io))
		ctl.Config(t, "hang_cap_ms=20", "")
		ctl.SetFaults(t, "hang_execute=1")
		codeOf(t, "Execute with hang_execute", rt.Execute(m, ectx, 0, io), CodeEngineTimeout, ErrTimeout)
		ctl.Config(t, "hang_cap_ms=300000", "")
		ctl.SetFaults(t, "lose_device=1")
		codeOf(t, "Execute with lose_device", rt.Execute(m, ectx, 0, io), CodeEngineUnexpectReply, ErrDeviceLost)
		_, err = rt.Malloc(64, MallocHugeFirst)
		codeOf(t, "Malloc on a lost device", err, 0x8030050A, ErrDeviceLost)
		codeOf(t, "SynchronizeDevice on a lost device", rt.SynchronizeDevice(), 0x8030010A, ErrDeviceLost)
		var p DeviceProperties
		codeOf(t, "DeviceProperties on a lost device", rt.DeviceProperties(id, &p), 0x8030010A, ErrDeviceLost)
	})

	// Fresh thread: no device, no context.
	onThread(t, func(t testing.TB) {
		_, err := rt.Device()
		codeOf(t, "Device() on a fresh thread", err, 0x80300185, ErrNoActiveDevice)
	})
}

// TestThreadRule: contexts are per OS thread. The thread that set up the
// device can allocate; another OS thread gets the no-context error.
func TestThreadRule(t *testing.T) {
	rt, _ := simLib(t)
	var id DeviceID
	onThread(t, func(t testing.TB) {
		id = session(t, rt)
		_, err := rt.CreateContext(id)
		must(t, err)
		p, err := rt.Malloc(64, MallocHugeFirst)
		must(t, err)
		must(t, rt.Free(p))
	})
	defer onThread(t, func(testing.TB) { rt.Finalize() })
	onThread(t, func(t testing.TB) {
		_, err := rt.CurrentContext()
		codeOf(t, "CurrentContext on another thread", err, CodeContextNoBind, ErrNoContext)
		_, err = rt.Malloc(64, MallocHugeFirst)
		codeOf(t, "Malloc on another thread", err, CodeContextNoBind, ErrNoContext)
		codeOf(t, "EngineFinalize on another thread", rt.EngineFinalize(), CodeContextNoBind, ErrNoContext)
	})
}

// TestInitAndEngineStateErrors covers the errors of calls made in the wrong
// state: a bad configuration at init, resetting an inactive device, engine
// calls before axclrtEngineInit.
func TestInitAndEngineStateErrors(t *testing.T) {
	rt, _ := simLib(t)
	path, _ := tinyLayer(t, t.TempDir())
	t.Setenv("KILN_SIM_FAULTS", "explode=yes")
	onThread(t, func(t testing.TB) {
		codeOf(t, "Init with a bad simulator configuration", rt.Init(""), 0x80300603, ErrInvalidParam)
	})
	t.Setenv("KILN_SIM_FAULTS", "")
	onThread(t, func(t testing.TB) {
		must(t, rt.Init(""))
		defer rt.Finalize()
		ids, err := rt.DeviceList()
		must(t, err)
		codeOf(t, "ResetDevice of an inactive device", rt.ResetDevice(ids[0]), CodeDeviceNotActive, ErrDevice)
		must(t, rt.SetDevice(ids[0]))
		defer rt.ResetDevice(ids[0])
		ctx, err := rt.CreateContext(ids[0])
		must(t, err)
		defer rt.DestroyContext(ctx)
		_, err = rt.EngineVNPUKind()
		codeOf(t, "EngineVNPUKind before EngineInit", err, RuntimeCode(SubEngine, 0x01), nil)
		_, err = rt.LoadModel(path)
		codeOf(t, "LoadModel before EngineInit", err, RuntimeCode(SubEngine, 0x01), nil)
		p, err := rt.Malloc(64, MallocHugeFirst)
		must(t, err)
		defer rt.Free(p)
		codeOf(t, "FreeHost(device memory)", rt.FreeHost(HostPtr(p)), 0x80300503, ErrInvalidParam)
	})
}
