package axcl

import (
	"runtime"
	"testing"
)

// BenchmarkExecute is one axclrtEngineExecute through the binding on a
// locked thread against the no-compute simulator: the binding's own cost.
func BenchmarkExecute(b *testing.B) {
	b.Setenv("KILN_SIM_NOCOMPUTE", "1")
	rt, _ := simLib(b)
	path, _ := tinyLayer(b, b.TempDir())
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	must(b, rt.Init(""))
	defer rt.Finalize()
	ids, err := rt.DeviceList()
	must(b, err)
	must(b, rt.SetDevice(ids[0]))
	defer rt.ResetDevice(ids[0])
	_, err = rt.CreateContext(ids[0])
	must(b, err)
	must(b, rt.EngineInit(VNPUDisable))
	m, err := rt.LoadModel(path)
	must(b, err)
	ectx, err := rt.CreateEngineContext(m)
	must(b, err)
	info, err := rt.IOInfo(m)
	must(b, err)
	groups, err := rt.Describe(info)
	must(b, err)
	io, err := rt.CreateIO(info)
	must(b, err)
	for _, dir := range []Direction{Input, Output} {
		for i := range len(groups[0].Inputs) + len(groups[0].Outputs) {
			if dir == Input && i >= len(groups[0].Inputs) || dir == Output && i >= len(groups[0].Outputs) {
				break
			}
			tn := groups[0].Tensor(dir, i)
			p, err := rt.Malloc(tn.Size, MallocHugeFirst)
			must(b, err)
			must(b, rt.SetBuffer(io, dir, i, p, tn.Size))
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := rt.Execute(m, ectx, 0, io); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCopy measures the copy helpers on 4 KiB: device to device goes
// through the allocation-free path, host copies through purego's
// reflection-based call (Go memory must be passed as a pointer).
func BenchmarkCopy(b *testing.B) {
	rt, _ := simLib(b)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	must(b, rt.Init(""))
	defer rt.Finalize()
	ids, err := rt.DeviceList()
	must(b, err)
	must(b, rt.SetDevice(ids[0]))
	defer rt.ResetDevice(ids[0])
	ctx, err := rt.CreateContext(ids[0])
	must(b, err)
	x, err := rt.Malloc(4096, MallocHugeFirst)
	must(b, err)
	y, err := rt.Malloc(4096, MallocHugeFirst)
	must(b, err)
	host := make([]byte, 4096)
	// Sub-benchmarks run on their own goroutines: each binds the context
	// to its thread first (the thread rule).
	run := func(name string, op func() error) {
		b.Run(name, func(b *testing.B) {
			runtime.LockOSThread()
			must(b, rt.SetCurrentContext(ctx))
			b.ReportAllocs()
			for b.Loop() {
				if err := op(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	run("d2d", func() error { return rt.CopyDevice(y, x, 4096) })
	run("h2d", func() error { return rt.CopyToDevice(x, host) })
	run("d2h", func() error { return rt.CopyFromDevice(host, x) })
}
