package npu

import (
	"errors"
	"fmt"
	"math"
	"unsafe"

	"github.com/kiln-project/kiln/worker/axcl"
)

// This file is the asynchronous side of the device thread: one stream per
// device on which executes and copies are queued in order and waited for
// with one bounded synchronise (research/card-field-notes.md §3.5), pinned
// host memory for transfers, and rebinding a tensor of one shape group. A
// runtime without streams (axcl.Runtime.HasStreams false) gets the same
// calls run synchronously, so callers have one code path.

// streamState is the device thread's stream and pinned host buffers.
type streamState struct {
	stream  axcl.Stream // 0 until first used
	hosts   map[*HostBuffer]struct{}
	pending int // operations queued since the last Sync
}

// HostBuffer is pinned host memory from axclrtMallocHost: transfers from
// and to it skip the runtime's per-transfer page pinning and may be
// queued on the stream.
type HostBuffer struct {
	ptr   axcl.HostPtr
	b     []byte
	d     *Device
	freed bool
}

// Bytes is the buffer's memory (outside the Go heap). Do not use it after
// FreeHost or Close, nor while a queued transfer that touches it runs.
func (h *HostBuffer) Bytes() []byte { return h.b }

// AllocHost allocates n bytes of pinned host memory owned by the caller
// (free it with FreeHost; Close frees what is left).
func (t *Thread) AllocHost(n uint64) (*HostBuffer, error) {
	if n == 0 || n > math.MaxInt32*2 {
		return nil, fmt.Errorf("npu: pinned host buffer of %d bytes: %w", n, ErrOutOfRange)
	}
	p, err := t.d.rt.MallocHost(n)
	if err != nil {
		t.d.noteError(err)
		return nil, fmt.Errorf("npu: pinned host buffer of %d bytes: %w", n, err)
	}
	// p is C memory the Go collector never moves or frees: reinterpret the
	// address as a pointer (not a uintptr conversion, which vet rejects).
	base := *(*unsafe.Pointer)(unsafe.Pointer(&p))
	h := &HostBuffer{ptr: p, b: unsafe.Slice((*byte)(base), n), d: t.d}
	if t.ss.hosts == nil {
		t.ss.hosts = make(map[*HostBuffer]struct{})
	}
	t.ss.hosts[h] = struct{}{}
	return h, nil
}

// FreeHost releases a buffer from AllocHost.
func (t *Thread) FreeHost(h *HostBuffer) error {
	if h == nil || h.freed {
		return nil
	}
	if _, ok := t.ss.hosts[h]; !ok || h.d != t.d {
		return fmt.Errorf("npu: free host: buffer %#x is not a pinned buffer of device %d", h.ptr, t.d.id)
	}
	delete(t.ss.hosts, h)
	h.freed, h.b = true, nil
	return t.d.rt.FreeHost(h.ptr)
}

func (t *Thread) checkHost(h *HostBuffer, off, n uint64) error {
	if h == nil || h.freed || h.d != t.d {
		return fmt.Errorf("npu: use of a freed, nil or foreign pinned buffer: %w", ErrOutOfRange)
	}
	if size := uint64(len(h.b)); off > size || n > size-off {
		return fmt.Errorf("npu: %d bytes at offset %d of a %d-byte pinned buffer: %w", n, off, size, ErrOutOfRange)
	}
	return nil
}

// Async reports whether queued calls really queue (the runtime has streams).
func (t *Thread) Async() bool { return t.d.rt.HasStreams() }

// queue returns the stream, created on first use; 0 without streams.
func (t *Thread) queue() (axcl.Stream, error) {
	if !t.d.rt.HasStreams() {
		return 0, nil
	}
	if t.ss.stream == 0 {
		s, err := t.d.rt.CreateStream()
		if err != nil {
			t.d.noteError(err)
			return 0, fmt.Errorf("npu: create stream on device %d: %w", t.d.id, err)
		}
		t.ss.stream = s
	}
	return t.ss.stream, nil
}

// submitted accounts for one queue call: a failure drains what was queued
// before it (the work of a failed step must not run into the next one).
func (t *Thread) submitted(err error) error {
	if err == nil {
		t.ss.pending++
		return nil
	}
	t.d.noteError(err)
	if t.ss.pending > 0 {
		_ = t.Sync()
	}
	return err
}

// ExecuteAsync queues shape group group of m on the device's stream (run
// synchronously without streams). The buffers bound to the group must stay
// as they are until Sync.
func (t *Thread) ExecuteAsync(m *Model, group int) error {
	s, err := t.queue()
	if err != nil || s == 0 {
		if err != nil {
			return err
		}
		return t.Execute(m, group)
	}
	if m == nil || m.d != t.d || m.unloaded {
		return fmt.Errorf("npu: execute: model is not loaded on device %d", t.d.id)
	}
	if group < 0 || group >= len(m.groups) {
		return fmt.Errorf("npu: execute %s: shape group %d of %d: %w", m.name, group, len(m.groups), ErrOutOfRange)
	}
	if err := t.d.rt.ExecuteAsync(m.id, m.ectx, uint32(group), m.groups[group].io, s); err != nil {
		return t.submitted(fmt.Errorf("npu: execute %s group %d: %w", m.name, group, err))
	}
	return t.submitted(nil)
}

// CopyAsync queues a device-to-device copy (Copy without streams).
func (t *Thread) CopyAsync(dst *Buffer, dstOff uint64, src *Buffer, srcOff, n uint64) error {
	s, err := t.queue()
	if err != nil || s == 0 {
		if err != nil {
			return err
		}
		return t.Copy(dst, dstOff, src, srcOff, n)
	}
	if err := t.checkCopy(dst, dstOff, src, srcOff, n); err != nil || n == 0 {
		return err
	}
	return t.submitted(t.d.rt.MemcpyAsync(uintptr(dst.ptr)+uintptr(dstOff), uintptr(src.ptr)+uintptr(srcOff), n, axcl.DeviceToDevice, s))
}

// WriteAsync queues n bytes of src from srcOff into dst at dstOff (host to
// device); src must not change until Sync.
func (t *Thread) WriteAsync(dst *Buffer, dstOff uint64, src *HostBuffer, srcOff, n uint64) error {
	if err := t.check(dst, dstOff, n); err != nil {
		return err
	}
	if err := t.checkHost(src, srcOff, n); err != nil {
		return err
	}
	return t.hostCopy(uintptr(dst.ptr)+uintptr(dstOff), uintptr(src.ptr)+uintptr(srcOff), n, axcl.HostToDevice)
}

// ReadAsync queues n bytes of src from srcOff into dst at dstOff (device to
// host); dst holds them after Sync.
func (t *Thread) ReadAsync(dst *HostBuffer, dstOff uint64, src *Buffer, srcOff, n uint64) error {
	if err := t.checkHost(dst, dstOff, n); err != nil {
		return err
	}
	if err := t.check(src, srcOff, n); err != nil {
		return err
	}
	return t.hostCopy(uintptr(dst.ptr)+uintptr(dstOff), uintptr(src.ptr)+uintptr(srcOff), n, axcl.DeviceToHost)
}

func (t *Thread) hostCopy(dst, src uintptr, n uint64, kind axcl.MemcpyKind) error {
	if n == 0 {
		return nil
	}
	s, err := t.queue()
	if err != nil {
		return err
	}
	if s == 0 {
		err := t.d.rt.Memcpy(dst, src, n, kind)
		t.d.noteError(err)
		return err
	}
	return t.submitted(t.d.rt.MemcpyAsync(dst, src, n, kind, s))
}

// Sync waits for everything queued since the last Sync, bounded by
// Config.ExecuteTimeout: the one round trip of a decode step. A timeout is
// a hung card: the device is marked lost (ErrHung). The watchdog also
// watches the wait, in case the runtime does not honour its timeout.
func (t *Thread) Sync() error {
	if t.ss.stream == 0 || t.ss.pending == 0 {
		return nil
	}
	t.ss.pending = 0
	ms := min(t.d.cfg.ExecuteTimeout.Milliseconds(), math.MaxInt32)
	t.d.execFrom.Store(monotonicNow())
	err := t.d.rt.SynchronizeStream(t.ss.stream, int32(max(ms, 1)))
	t.d.execFrom.Store(0)
	if err == nil {
		return nil
	}
	if errors.Is(err, axcl.ErrTimeout) {
		t.d.markLost(fmt.Errorf("%w: stream not done after %v: %w", ErrHung, t.d.cfg.ExecuteTimeout, err), false)
		return fmt.Errorf("npu: synchronise device %d: %w", t.d.id, t.d.lostErr)
	}
	t.d.noteError(err)
	return fmt.Errorf("npu: synchronise device %d: %w", t.d.id, err)
}

// Rebind binds n bytes of b from offset off to tensor index (direction
// dir) of shape group group of m, in place of what was bound there. It
// allocates nothing. The runtime may refuse an offset it cannot use (the
// simulator, like the field's rule, wants offsets into an allocation to be
// 2 KiB multiples: see the callers' alignment checks).
func (t *Thread) Rebind(m *Model, group int, dir axcl.Direction, index int, b *Buffer, off, n uint64) error {
	if m == nil || m.d != t.d || m.unloaded {
		return fmt.Errorf("npu: rebind: model is not loaded on device %d", t.d.id)
	}
	if group < 0 || group >= len(m.groups) {
		return fmt.Errorf("npu: rebind %s: shape group %d of %d: %w", m.name, group, len(m.groups), ErrOutOfRange)
	}
	g := &m.groups[group]
	list := g.inputs
	if dir == axcl.Output {
		list = g.outputs
	}
	if index < 0 || index >= len(list) {
		return fmt.Errorf("npu: rebind %s: %s %d of %d: %w", m.name, dir, index, len(list), ErrOutOfRange)
	}
	if err := t.check(b, off, n); err != nil {
		return err
	}
	if err := t.d.rt.BindBuffer(g.io, dir, index, b.ptr+axcl.DevicePtr(off), n); err != nil {
		t.d.noteError(err)
		return fmt.Errorf("npu: rebind %s group %d %s %d: %w", m.name, group, dir, index, err)
	}
	list[index] = b
	return nil
}

// releaseStreams destroys the stream and frees the pinned buffers (teardown).
func (t *Thread) releaseStreams() error {
	var errs []error
	for h := range t.ss.hosts {
		errs = append(errs, t.FreeHost(h))
	}
	if t.ss.stream != 0 {
		errs = append(errs, t.d.rt.DestroyStream(t.ss.stream))
		t.ss.stream, t.ss.pending = 0, 0
	}
	return errors.Join(errs...)
}
