package axcl

import (
	"runtime"
	"testing"
)

// BenchmarkExecute is one axclrtEngineExecute through the binding on a
// locked thread against the no-compute simulator: the binding's own cost.
func BenchmarkExecute(b *testing.B) {
	l := benchLayer(b)
	rt := l.rt
	ectx, err := rt.CreateEngineContext(l.model)
	must(b, err)
	bind := func(dir Direction, tensors []Tensor) {
		for i, tn := range tensors {
			p, err := rt.Malloc(tn.Size, MallocHugeFirst)
			must(b, err)
			must(b, rt.SetBuffer(l.io, dir, i, p, tn.Size))
		}
	}
	bind(Input, l.group.Inputs)
	bind(Output, l.group.Outputs)
	b.ReportAllocs()
	for b.Loop() {
		if err := rt.Execute(l.model, ectx, 0, l.io); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCopy measures the copy helpers on 4 KiB: device to device goes
// through the allocation-free path, host copies through purego's
// reflection-based call (Go memory must be passed as a pointer).
func BenchmarkCopy(b *testing.B) {
	rt, ctx := benchCard(b)
	x, err := rt.Malloc(4096, MallocHugeFirst)
	must(b, err)
	y, err := rt.Malloc(4096, MallocHugeFirst)
	must(b, err)
	host := make([]byte, 4096)
	runOn(b, rt, ctx, "d2d", func(int) error { return rt.CopyDevice(y, x, 4096) })
	runOn(b, rt, ctx, "h2d", func(int) error { return rt.CopyToDevice(x, host) })
	runOn(b, rt, ctx, "d2h", func(int) error { return rt.CopyFromDevice(host, x) })
}

// BenchmarkBind weighs the two ways decode can point a layer's K/V outputs
// at the token's cache row: rebinding the decode IO per token
// (rebind_by_index: one allocation-free axclrtEngineSetOutputBufferByIndex
// at a 2 KiB-aligned row offset; set_buffer is the same call through
// purego's reflective path), or one IO per row made at load (per_row_io:
// creating an IO and binding all its tensors, paid context × layers times,
// with no bind per token).
func BenchmarkBind(b *testing.B) {
	l := benchLayer(b)
	rt, ctx, io, info, g := l.rt, l.ctx, l.io, l.info, l.group
	const rows = 256
	cache, err := rt.Malloc(rows*2048, MallocHugeFirst)
	must(b, err)
	run := func(name string, op func(i int) error) { runOn(b, rt, ctx, name, op) }
	row := func(i int) DevicePtr { return cache + DevicePtr(i%rows*2048) }
	run("rebind_by_index", func(i int) error { return rt.BindBuffer(io, Output, 0, row(i), 64) })
	run("set_buffer", func(i int) error { return rt.SetBuffer(io, Output, 0, row(i), 64) })
	run("per_row_io", func(i int) error {
		rio, err := rt.CreateIO(info)
		if err != nil {
			return err
		}
		for j := range g.Inputs {
			if err := rt.BindBuffer(rio, Input, j, cache, g.Inputs[j].Size); err != nil {
				return err
			}
		}
		for j := range g.Outputs {
			if err := rt.BindBuffer(rio, Output, j, row(i), g.Outputs[j].Size); err != nil {
				return err
			}
		}
		return rt.DestroyIO(rio)
	})
}

// layerBench is the simulator's tiny layer model loaded on the benchmark's
// card (no compute), with its first shape group and one IO made for it.
type layerBench struct {
	rt    *Runtime
	ctx   Context
	model ModelID
	info  IOInfo
	group ShapeGroup
	io    IO
}

func benchLayer(b *testing.B) layerBench {
	b.Helper()
	b.Setenv("KILN_SIM_NOCOMPUTE", "1")
	rt, ctx := benchCard(b)
	path, _ := tinyLayer(b, b.TempDir())
	must(b, rt.EngineInit(VNPUDisable))
	m, err := rt.LoadModel(path)
	must(b, err)
	info, err := rt.IOInfo(m)
	must(b, err)
	groups, err := rt.Describe(info)
	must(b, err)
	io, err := rt.CreateIO(info)
	must(b, err)
	return layerBench{rt: rt, ctx: ctx, model: m, info: info, group: groups[0], io: io}
}

// benchCard loads the simulator and makes a context on its first card,
// current on the benchmark's thread, which stays locked until the benchmark
// ends; then the device is reset and the runtime finalized.
func benchCard(b *testing.B) (*Runtime, Context) {
	b.Helper()
	rt, _ := simLib(b)
	runtime.LockOSThread()
	b.Cleanup(runtime.UnlockOSThread)
	must(b, rt.Init(""))
	b.Cleanup(func() { rt.Finalize() })
	ids, err := rt.DeviceList()
	must(b, err)
	must(b, rt.SetDevice(ids[0]))
	b.Cleanup(func() { rt.ResetDevice(ids[0]) })
	ctx, err := rt.CreateContext(ids[0])
	must(b, err)
	return rt, ctx
}

// runOn runs op as the sub-benchmark name, i counting its calls from 0.
// Sub-benchmarks run on their own goroutines: each binds ctx to its thread
// first (the thread rule).
func runOn(b *testing.B, rt *Runtime, ctx Context, name string, op func(i int) error) {
	b.Run(name, func(b *testing.B) {
		runtime.LockOSThread()
		must(b, rt.SetCurrentContext(ctx))
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if err := op(i); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
