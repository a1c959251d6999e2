package axcl

import (
	"sync"

	"github.com/ebitengine/purego"
)

// argBlock is the argument slice of a raw call. purego.SyscallN carries the
// uintptrescapes directive, so a fresh variadic slice escapes to the heap on
// every call; a pooled block does not. Only integers and addresses outside Go
// memory go through here.
type argBlock [4]uintptr

var argPool = sync.Pool{New: func() any { return new(argBlock) }}

// call4 calls fn(a0, a1, a2, a3) returning an axclError, allocating
// nothing in steady state.
func call4(fn, a0, a1, a2, a3 uintptr) int32 {
	a := argPool.Get().(*argBlock)
	a[0], a[1], a[2], a[3] = a0, a1, a2, a3
	r, _, _ := purego.SyscallN(fn, a[:]...)
	argPool.Put(a)
	return int32(uint32(r))
}
