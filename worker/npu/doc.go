// Package npu owns one AX650N card: a single goroutine locked to its OS
// thread that makes every runtime call, the models resident on the card and
// their device buffers.
//
// # Why one thread
//
// The AXCL runtime binds a device and a context to the calling OS thread.
// A call from any other thread fails with axcl.ErrNoContext. Go moves
// goroutines between threads at will, so [Open] starts one goroutine that
// calls runtime.LockOSThread and owns the device from axclInit to
// axclFinalize. Everything else sends it work: [Device.Do] runs a function
// on that thread (its context only matters while the work is queued; a
// panic is re-raised in the caller with the device thread's stack;
// [ErrStopped] after Close). [Device.Execute] is the allocation-free fast
// path for one engine execute.
//
// # Lifecycle
//
// Open: axclInit (reference counted per process), pick the card by index
// from the device list (ids are PCIe bus numbers), axclrtSetDevice,
// axclrtCreateContext, axclrtEngineInit, a first properties sample. Close
// tears down in reverse — free buffers, destroy IO and IO info, unload
// models, engine finalize, destroy context, reset device, axclFinalize —
// whatever happened before: a normal stop, a cancelled caller context (the
// teardown continues on the device thread after Close returns), a device
// error. A failed Open tears down what it set up.
//
// # Faults
//
// An execute that does not return within Config.ExecuteTimeout is hung:
// its caller gets an error matching [ErrHung] and [ErrLost], the device is
// marked lost, and every later call fails fast with [ErrLost]. A runtime
// error saying the card stopped answering (axcl.ErrDeviceLost) also marks
// it lost. Close still returns; when the device thread is stuck in the
// runtime the teardown runs if and when the call comes back.
//
// # Memory
//
// Device memory (CMM) is charged against a budget: Config.CMMBudget or the
// card's CMM total. [Device.LoadModel] checks the model's need before
// loading and refuses with a [*BudgetError] naming the model, the need and
// what is free. A model gets one IO per shape group and a device buffer for
// every input and output sized for that group, except the tensors the
// caller binds to its own buffers or asks to share across groups
// ([LoadOptions]).
//
// # Health
//
// axclrtGetDeviceProperties is slow on the real card (it runs shell
// commands on the device), so the device thread samples it between
// requests every Config.SampleInterval, never in the middle of one;
// [Device.Properties] returns the latest sample.
package npu
