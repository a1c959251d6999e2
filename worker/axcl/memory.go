package axcl

import (
	"fmt"
	"unsafe"
)

// Functions of axcl_rt_memory.h. axclrtMemcpy is registered three times
// with different Go signatures so that Go memory is always passed as a
// pointer (kept alive for the call) and device addresses as integers.
type memoryFuncs struct {
	// axclError axclrtMalloc(void **devPtr, size_t size, axclrtMemMallocPolicy policy);
	malloc func(p *DevicePtr, size uintptr, policy MallocPolicy) int32
	// axclError axclrtMallocCached(void **devPtr, size_t size, axclrtMemMallocPolicy policy);
	mallocCached func(p *DevicePtr, size uintptr, policy MallocPolicy) int32
	// axclError axclrtFree(void *devPtr);
	free func(p DevicePtr) int32
	// axclError axclrtMemFlush(void *devPtr, size_t size);
	memFlush func(p DevicePtr, size uintptr) int32
	// axclError axclrtMemInvalidate(void *devPtr, size_t size);
	memInvalidate func(p DevicePtr, size uintptr) int32
	// axclError axclrtMallocHost(void **hostPtr, size_t size);
	mallocHost func(p *HostPtr, size uintptr) int32
	// axclError axclrtFreeHost(void *hostPtr);
	freeHost func(p HostPtr) int32
	// axclError axclrtMemset(void *devPtr, uint8_t value, size_t count);
	memset func(p DevicePtr, value uint8, count uintptr) int32
	// axclError axclrtMemcpy(void *dstPtr, const void *srcPtr, size_t count, axclrtMemcpyKind kind);
	memcpySym uintptr
	// axclrtMemcpy with a Go source (host to device, host to host).
	memcpyFromGo func(dst uintptr, src unsafe.Pointer, count uintptr, kind MemcpyKind) int32
	// axclrtMemcpy with a Go destination (device to host).
	memcpyToGo func(dst unsafe.Pointer, src uintptr, count uintptr, kind MemcpyKind) int32
	// axclrtMemcpy between two Go buffers (host to host).
	memcpyGoGo func(dst, src unsafe.Pointer, count uintptr, kind MemcpyKind) int32
	// axclError axclrtMemcmp(const void *devPtr1, const void *devPtr2, size_t count);
	memcmp func(a, b DevicePtr, count uintptr) int32
}

func (f *memoryFuncs) load(l *library) error {
	b := binder{lib: l}
	b.bind(&f.malloc, "axclrtMalloc")
	b.bind(&f.mallocCached, "axclrtMallocCached")
	b.bind(&f.free, "axclrtFree")
	b.bind(&f.mallocHost, "axclrtMallocHost")
	b.bind(&f.freeHost, "axclrtFreeHost")
	b.bind(&f.memset, "axclrtMemset")
	f.memcpySym = b.bind(&f.memcpyFromGo, "axclrtMemcpy")
	b.bind(&f.memcpyToGo, "axclrtMemcpy")
	b.bind(&f.memcpyGoGo, "axclrtMemcpy")
	if b.err != nil {
		return b.err
	}
	// Cache maintenance and compare are not used by kiln's models; probe them.
	l.optional(&f.memFlush, "axclrtMemFlush")
	l.optional(&f.memInvalidate, "axclrtMemInvalidate")
	l.optional(&f.memcmp, "axclrtMemcmp")
	return nil
}

// Malloc allocates size bytes of non-cached device memory (axclrtMalloc).
func (rt *Runtime) Malloc(size uint64, policy MallocPolicy) (DevicePtr, error) {
	var p DevicePtr
	if err := rt.check("axclrtMalloc", rt.malloc(&p, uintptr(size), policy)); err != nil {
		return 0, err
	}
	return p, nil
}

// MallocCached allocates cached device memory (axclrtMallocCached); the
// caller flushes and invalidates it.
func (rt *Runtime) MallocCached(size uint64, policy MallocPolicy) (DevicePtr, error) {
	var p DevicePtr
	if err := rt.check("axclrtMallocCached", rt.mallocCached(&p, uintptr(size), policy)); err != nil {
		return 0, err
	}
	return p, nil
}

// Free releases device memory (axclrtFree).
func (rt *Runtime) Free(p DevicePtr) error {
	if p == 0 {
		return &HandleError{Op: "axclrtFree", Handle: "device pointer"}
	}
	return rt.check("axclrtFree", rt.free(p))
}

// MemFlush writes back the cache of cached device memory (axclrtMemFlush).
// [ErrUnsupported] when the runtime lacks the symbol.
func (rt *Runtime) MemFlush(p DevicePtr, size uint64) error {
	if rt.memFlush == nil {
		return fmt.Errorf("axcl: axclrtMemFlush not exported by %s: %w", rt.path, ErrUnsupported)
	}
	return rt.check("axclrtMemFlush", rt.memFlush(p, uintptr(size)))
}

// MemInvalidate drops the cache of cached device memory
// (axclrtMemInvalidate). [ErrUnsupported] when the runtime lacks the symbol.
func (rt *Runtime) MemInvalidate(p DevicePtr, size uint64) error {
	if rt.memInvalidate == nil {
		return fmt.Errorf("axcl: axclrtMemInvalidate not exported by %s: %w", rt.path, ErrUnsupported)
	}
	return rt.check("axclrtMemInvalidate", rt.memInvalidate(p, uintptr(size)))
}

// MemEqual compares two device buffers (axclrtMemcmp, which succeeds only
// when they are equal). [ErrUnsupported] when the runtime lacks the symbol.
func (rt *Runtime) MemEqual(a, b DevicePtr, size uint64) (bool, error) {
	if rt.memcmp == nil {
		return false, fmt.Errorf("axcl: axclrtMemcmp not exported by %s: %w", rt.path, ErrUnsupported)
	}
	return rt.memcmp(a, b, uintptr(size)) == 0, nil
}

// MallocHost allocates host memory through the runtime (axclrtMallocHost).
func (rt *Runtime) MallocHost(size uint64) (HostPtr, error) {
	var p HostPtr
	if err := rt.check("axclrtMallocHost", rt.mallocHost(&p, uintptr(size))); err != nil {
		return 0, err
	}
	return p, nil
}

// FreeHost releases memory from MallocHost (axclrtFreeHost).
func (rt *Runtime) FreeHost(p HostPtr) error {
	if p == 0 {
		return &HandleError{Op: "axclrtFreeHost", Handle: "host pointer"}
	}
	return rt.check("axclrtFreeHost", rt.freeHost(p))
}

// Memset fills count bytes of device memory with value (axclrtMemset).
func (rt *Runtime) Memset(p DevicePtr, value byte, count uint64) error {
	if p == 0 {
		return &HandleError{Op: "axclrtMemset", Handle: "device pointer"}
	}
	return rt.check("axclrtMemset", rt.memset(p, value, uintptr(count)))
}

// Memcpy copies count bytes between addresses that are not Go memory:
// device addresses, host memory from MallocHost, or physical addresses for
// the *Phy kinds (axclrtMemcpy). It allocates nothing. For Go slices use
// CopyToDevice, CopyFromDevice and CopyHost.
func (rt *Runtime) Memcpy(dst, src uintptr, count uint64, kind MemcpyKind) error {
	return rt.check("axclrtMemcpy", call4(rt.memcpySym, dst, src, uintptr(count), uintptr(kind)))
}

// CopyDevice copies count bytes from one device buffer to another
// (axclrtMemcpy, DEVICE_TO_DEVICE). It allocates nothing.
func (rt *Runtime) CopyDevice(dst, src DevicePtr, count uint64) error {
	return rt.Memcpy(uintptr(dst), uintptr(src), count, DeviceToDevice)
}

// CopyToDevice copies src into device memory at dst (axclrtMemcpy,
// HOST_TO_DEVICE).
func (rt *Runtime) CopyToDevice(dst DevicePtr, src []byte) error {
	if len(src) == 0 {
		return nil
	}
	return rt.check("axclrtMemcpy", rt.memcpyFromGo(uintptr(dst), unsafe.Pointer(&src[0]), uintptr(len(src)), HostToDevice))
}

// CopyFromDevice copies len(dst) bytes of device memory at src into dst
// (axclrtMemcpy, DEVICE_TO_HOST).
func (rt *Runtime) CopyFromDevice(dst []byte, src DevicePtr) error {
	if len(dst) == 0 {
		return nil
	}
	return rt.check("axclrtMemcpy", rt.memcpyToGo(unsafe.Pointer(&dst[0]), uintptr(src), uintptr(len(dst)), DeviceToHost))
}

// CopyHost copies min(len(dst), len(src)) bytes through the runtime
// (axclrtMemcpy, HOST_TO_HOST).
func (rt *Runtime) CopyHost(dst, src []byte) error {
	n := min(len(dst), len(src))
	if n == 0 {
		return nil
	}
	return rt.check("axclrtMemcpy", rt.memcpyGoGo(unsafe.Pointer(&dst[0]), unsafe.Pointer(&src[0]), uintptr(n), HostToHost))
}
