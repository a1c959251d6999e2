// Package axcl is the cgo-free binding of the Axera AXCL runtime,
// libaxcl_rt.so, that drives the AX650N NPU on an M5Stack LLM-8850 card.
//
// It owns exactly one thing: turning C calls of libaxcl_rt.so into Go calls
// with Go types and Go errors. It knows nothing about models, jobs or threads;
// package npu builds the device thread on top of it.
//
// # Loading
//
// [Load] opens the library with purego.Dlopen(RTLD_NOW|RTLD_GLOBAL) and
// resolves every symbol kiln uses with purego.Dlsym before registering it, so
// a runtime that lacks one is refused with an error naming the symbol
// ([SymbolError]) instead of a panic on first use. Symbols that only newer
// SDKs export (axclrtGetErrorString, axclrtGetLastError) are probed and used
// when present. The library path is the argument of Load, else the
// environment variable KILN_AXCL_LIB, else /usr/lib/axcl/libaxcl_rt.so
// ([LibraryPath]). When the file is missing the error explains how to install
// the runtime on a Raspberry Pi 5 and wraps [ErrLibraryNotFound].
//
// # Layout
//
// One Go file per area of the C headers: runtime.go (axcl.h, axcl_rt.h),
// device.go (axcl_rt_device.h), context.go (axcl_rt_context.h), memory.go
// (axcl_rt_memory.h), engine.go and engine_io.go (axcl_rt_engine.h). Every
// function variable carries the verbatim C prototype above it. Opaque C
// handles are distinct uintptr types ([Context], [IOInfo], [IO],
// [DevicePtr]); enums are typed integers with the header values; mirrored
// structs ([DeviceProperties], [Dims]) are pinned by layout tests and passed
// by pointer only.
//
// # Threads
//
// The runtime binds devices and contexts to the calling OS thread. A call
// made from a thread that has no context fails with [ErrNoContext]. This
// package does not hide that: callers run every call on one goroutine locked
// to its OS thread (see package npu).
//
// # Errors
//
// A failing call returns an [*Error] carrying the C function name, the
// 32-bit code (printed as 0x%08X), its header name and a sentence. Codes of
// the device-side native SDK are decoded by module, sub-module and id.
// Sentinels such as [ErrNoMemory], [ErrTimeout], [ErrNoContext] and
// [ErrDeviceOpen] match with errors.Is; errors.As gives the *Error.
//
// # Hot path
//
// purego.RegisterFunc calls go through reflection and allocate. The calls of
// an inference step whose arguments hold no Go pointers
// (axclrtEngineExecute, device-to-device axclrtMemcpy) are instead made with
// purego.SyscallN on the same resolved symbol and a pooled argument block,
// so they allocate nothing.
package axcl
