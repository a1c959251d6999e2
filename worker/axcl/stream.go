package axcl

import (
	"fmt"
	"sync"

	"github.com/ebitengine/purego"
)

// Stream is an axclrtStream: work queued on it runs in order on the card.
type Stream uintptr

// Functions of axcl_rt_stream.h and the async calls of axcl_rt_memory.h and
// axcl_rt_engine.h. All optional: a runtime without them runs everything
// synchronously (HasStreams).
type streamFuncs struct {
	// axclError axclrtCreateStream(axclrtStream *stream);
	createStream func(s *Stream) int32
	// axclError axclrtDestroyStream(axclrtStream stream);
	destroyStream func(s Stream) int32
	// axclError axclrtSynchronizeStream(axclrtStream stream);
	syncStream func(s Stream) int32
	// axclError axclrtSynchronizeStreamWithTimeout(axclrtStream stream, int32_t timeout);
	syncStreamTimeout func(s Stream, timeoutMS int32) int32
	// axclError axclrtMemcpyAsync(void *dst, const void *src, size_t count, axclrtMemcpyKind kind, axclrtStream stream);
	memcpyAsyncSym uintptr
	// axclError axclrtEngineExecuteAsync(uint64_t modelId, uint64_t contextId, uint32_t group, axclrtEngineIO io, axclrtStream stream);
	executeAsyncSym uintptr
	// axclrtSynchronizeStreamWithTimeout, called through call4 (no allocation).
	syncTimeoutSym uintptr
	// axclrtEngineSet{Input,Output}BufferByIndex for BindBuffer (no allocation; always present).
	setInputSym, setOutputSym uintptr
}

func (f *streamFuncs) load(l *library) error {
	var setIn, setOut func(io IO, index uint32, buf DevicePtr, size uint64) int32
	f.setInputSym = l.optionalSym(&setIn, "axclrtEngineSetInputBufferByIndex")
	f.setOutputSym = l.optionalSym(&setOut, "axclrtEngineSetOutputBufferByIndex")
	var s streamFuncs
	s.setInputSym, s.setOutputSym = f.setInputSym, f.setOutputSym
	var memcpyAsync func(dst, src, count uintptr, kind MemcpyKind, s Stream) int32
	var executeAsync func(model ModelID, ctx EngineContext, group uint32, io IO, s Stream) int32
	ok := l.optional(&s.createStream, "axclrtCreateStream") &&
		l.optional(&s.destroyStream, "axclrtDestroyStream") &&
		l.optional(&s.syncStream, "axclrtSynchronizeStream") &&
		l.optional(&s.syncStreamTimeout, "axclrtSynchronizeStreamWithTimeout")
	if ok {
		s.memcpyAsyncSym = l.optionalSym(&memcpyAsync, "axclrtMemcpyAsync")
		s.executeAsyncSym = l.optionalSym(&executeAsync, "axclrtEngineExecuteAsync")
		ok = s.memcpyAsyncSym != 0 && s.executeAsyncSym != 0
		s.syncTimeoutSym, _ = purego.Dlsym(l.handle, "axclrtSynchronizeStreamWithTimeout")
	}
	if ok { // all or nothing
		*f = s
	}
	return nil
}

// optionalSym is optional returning the symbol's address (0 when absent),
// for calls made through call5.
func (l *library) optionalSym(fptr any, name string) uintptr {
	sym, err := purego.Dlsym(l.handle, name)
	if err != nil {
		return 0
	}
	purego.RegisterFunc(fptr, sym)
	return sym
}

// HasStreams reports whether the runtime exports streams, axclrtMemcpyAsync
// and axclrtEngineExecuteAsync (V3.10.2 does).
func (rt *Runtime) HasStreams() bool { return rt.executeAsyncSym != 0 }

func (rt *Runtime) needStreams(op string) error {
	if !rt.HasStreams() {
		return fmt.Errorf("axcl: %s not exported by %s: %w", op, rt.path, ErrUnsupported)
	}
	return nil
}

// CreateStream creates a stream on the device bound to the calling thread
// (axclrtCreateStream).
func (rt *Runtime) CreateStream() (Stream, error) {
	if err := rt.needStreams("axclrtCreateStream"); err != nil {
		return 0, err
	}
	var s Stream
	if err := rt.check("axclrtCreateStream", rt.createStream(&s)); err != nil {
		return 0, err
	}
	return s, nil
}

// DestroyStream destroys a stream (axclrtDestroyStream).
func (rt *Runtime) DestroyStream(s Stream) error {
	if s == 0 {
		return &HandleError{Op: "axclrtDestroyStream", Handle: "stream"}
	}
	return rt.check("axclrtDestroyStream", rt.destroyStream(s))
}

// SynchronizeStream waits for the work queued on s; timeoutMS < 0 waits
// without bound (axclrtSynchronizeStream[WithTimeout]). A timeout matches
// [ErrTimeout]. It allocates nothing when it succeeds.
func (rt *Runtime) SynchronizeStream(s Stream, timeoutMS int32) error {
	if s == 0 {
		return &HandleError{Op: "axclrtSynchronizeStream", Handle: "stream"}
	}
	if timeoutMS < 0 {
		return rt.check("axclrtSynchronizeStream", rt.syncStream(s))
	}
	return rt.check("axclrtSynchronizeStreamWithTimeout", call4(rt.syncTimeoutSym, uintptr(s), uintptr(uint32(timeoutMS)), 0, 0))
}

// MemcpyAsync queues a copy of count bytes on s (axclrtMemcpyAsync). Like
// Memcpy, dst and src are not Go memory: device addresses or host memory
// from MallocHost, which must stay valid until the stream is synchronised.
// It allocates nothing.
func (rt *Runtime) MemcpyAsync(dst, src uintptr, count uint64, kind MemcpyKind, s Stream) error {
	if s == 0 {
		return &HandleError{Op: "axclrtMemcpyAsync", Handle: "stream"}
	}
	return rt.check("axclrtMemcpyAsync", call5(rt.memcpyAsyncSym, dst, src, uintptr(count), uintptr(kind), uintptr(s)))
}

// ExecuteAsync queues shape group group of the model on s
// (axclrtEngineExecuteAsync). The buffers bound to io must stay as they are
// until the stream is synchronised. It allocates nothing.
func (rt *Runtime) ExecuteAsync(id ModelID, ctx EngineContext, group uint32, io IO, s Stream) error {
	if io == 0 || s == 0 {
		return &HandleError{Op: "axclrtEngineExecuteAsync", Handle: "io or stream"}
	}
	return rt.check("axclrtEngineExecuteAsync", call5(rt.executeAsyncSym, uintptr(id), uintptr(ctx), uintptr(group), uintptr(io), uintptr(s)))
}

// BindBuffer is SetBuffer for the hot path: it binds buf (size bytes) to
// tensor index of io and allocates nothing.
func (rt *Runtime) BindBuffer(io IO, dir Direction, index int, buf DevicePtr, size uint64) error {
	op, sym := "axclrtEngineSetInputBufferByIndex", rt.setInputSym
	if dir == Output {
		op, sym = "axclrtEngineSetOutputBufferByIndex", rt.setOutputSym
	}
	if io == 0 || buf == 0 {
		return &HandleError{Op: op, Handle: "io or buffer"}
	}
	if index < 0 {
		return fmt.Errorf("axcl: %s: index %d: %w", op, index, ErrInvalidParam)
	}
	return rt.check(op, call4(sym, uintptr(io), uintptr(uint32(index)), uintptr(buf), uintptr(size)))
}

type argBlock5 [5]uintptr

var arg5Pool = sync.Pool{New: func() any { return new(argBlock5) }}

// call5 is call4 with five arguments.
func call5(fn, a0, a1, a2, a3, a4 uintptr) int32 {
	a := arg5Pool.Get().(*argBlock5)
	a[0], a[1], a[2], a[3], a[4] = a0, a1, a2, a3, a4
	r, _, _ := purego.SyscallN(fn, a[:]...)
	arg5Pool.Put(a)
	return int32(uint32(r))
}
