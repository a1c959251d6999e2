package npu

import (
	"context"
	"fmt"

	"github.com/kiln-project/kiln/worker/axcl"
)

// Thread is the device thread's view of the card, handed to functions run
// by Device.Do. Its methods must only be called from inside such a
// function; do not keep it after the function returns.
type Thread struct {
	d         *Device
	inited    bool
	deviceSet bool
	ss        streamState // stream.go
}

// Runtime is the loaded runtime, for calls this package does not wrap.
func (t *Thread) Runtime() *axcl.Runtime { return t.d.rt }

// Device is the device the thread owns.
func (t *Thread) Device() *Device { return t.d }

// Buffer is a device memory allocation.
type Buffer struct {
	ptr   axcl.DevicePtr
	size  uint64
	d     *Device
	freed bool
}

// Ptr is the device address.
func (b *Buffer) Ptr() axcl.DevicePtr { return b.ptr }

// Size is the size in bytes.
func (b *Buffer) Size() uint64 { return b.size }

func (t *Thread) free() uint64 {
	if t.d.cmmUsed >= t.d.budget {
		return 0
	}
	return t.d.budget - t.d.cmmUsed
}

// FreeBudget is the part of the CMM budget not yet charged, in bytes.
func (t *Thread) FreeBudget() uint64 { return t.free() }

// alloc allocates without budget check.
func (t *Thread) alloc(size uint64) (*Buffer, error) {
	p, err := t.d.rt.Malloc(size, axcl.MallocHugeFirst)
	if err != nil {
		t.d.noteError(err)
		return nil, fmt.Errorf("npu: allocate %d bytes on device %d: %w", size, t.d.id, err)
	}
	t.d.cmmUsed += size
	return &Buffer{ptr: p, size: size, d: t.d}, nil
}

func (t *Thread) freeBuffer(b *Buffer) error {
	if b == nil || b.freed {
		return nil
	}
	b.freed = true
	t.d.cmmUsed -= min(b.size, t.d.cmmUsed)
	return t.d.rt.Free(b.ptr)
}

// Alloc allocates a device buffer owned by the caller (free it with Free;
// Close frees what is left). It is charged against the CMM budget.
func (t *Thread) Alloc(size uint64) (*Buffer, error) {
	if size == 0 {
		return nil, fmt.Errorf("npu: allocate 0 bytes: %w", ErrOutOfRange)
	}
	if size > t.free() {
		return nil, &BudgetError{What: "buffer", Need: size, Free: t.free(), Budget: t.d.budget}
	}
	b, err := t.alloc(size)
	if err != nil {
		return nil, err
	}
	t.d.buffers[b] = struct{}{}
	return b, nil
}

// Free releases a buffer from Alloc.
func (t *Thread) Free(b *Buffer) error {
	if b == nil || b.freed {
		return nil
	}
	if _, ok := t.d.buffers[b]; !ok {
		return fmt.Errorf("npu: free: buffer %#x is not a caller buffer of device %d", b.ptr, t.d.id)
	}
	delete(t.d.buffers, b)
	return t.freeBuffer(b)
}

func (t *Thread) check(b *Buffer, off, n uint64) error {
	if b == nil || b.freed {
		return fmt.Errorf("npu: use of a freed or nil buffer: %w", ErrOutOfRange)
	}
	if b.d != t.d {
		return fmt.Errorf("npu: buffer belongs to device %d, not %d", b.d.id, t.d.id)
	}
	if off > b.size || n > b.size-off {
		return fmt.Errorf("npu: %d bytes at offset %d of a %d-byte buffer: %w", n, off, b.size, ErrOutOfRange)
	}
	return nil
}

// Write copies src into dst at byte offset off (host to device).
func (t *Thread) Write(dst *Buffer, off uint64, src []byte) error {
	if err := t.check(dst, off, uint64(len(src))); err != nil {
		return err
	}
	err := t.d.rt.CopyToDevice(dst.ptr+axcl.DevicePtr(off), src)
	t.d.noteError(err)
	return err
}

// Read copies len(dst) bytes from src at byte offset off (device to host).
func (t *Thread) Read(dst []byte, src *Buffer, off uint64) error {
	if err := t.check(src, off, uint64(len(dst))); err != nil {
		return err
	}
	err := t.d.rt.CopyFromDevice(dst, src.ptr+axcl.DevicePtr(off))
	t.d.noteError(err)
	return err
}

// checkCopy checks both ends of an n-byte copy from src at srcOff to dst at
// dstOff on the card.
func (t *Thread) checkCopy(dst *Buffer, dstOff uint64, src *Buffer, srcOff, n uint64) error {
	if err := t.check(dst, dstOff, n); err != nil {
		return err
	}
	return t.check(src, srcOff, n)
}

// Copy copies n bytes from src at srcOff to dst at dstOff on the card
// (device to device). It allocates nothing.
func (t *Thread) Copy(dst *Buffer, dstOff uint64, src *Buffer, srcOff, n uint64) error {
	if err := t.checkCopy(dst, dstOff, src, srcOff, n); err != nil || n == 0 {
		return err
	}
	err := t.d.rt.CopyDevice(dst.ptr+axcl.DevicePtr(dstOff), src.ptr+axcl.DevicePtr(srcOff), n)
	t.d.noteError(err)
	return err
}

// Fill sets n bytes of dst from offset off to value.
func (t *Thread) Fill(dst *Buffer, off, n uint64, value byte) error {
	if err := t.check(dst, off, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	err := t.d.rt.Memset(dst.ptr+axcl.DevicePtr(off), value, n)
	t.d.noteError(err)
	return err
}

// Execute runs shape group group of m synchronously. It allocates nothing
// when it succeeds. The device's watchdog marks the device lost when it
// runs past Config.ExecuteTimeout.
func (t *Thread) Execute(m *Model, group int) error {
	if m == nil || m.d != t.d {
		return fmt.Errorf("npu: execute: model is not loaded on device %d", t.d.id)
	}
	if m.unloaded {
		return fmt.Errorf("npu: execute %s: model unloaded", m.name)
	}
	if group < 0 || group >= len(m.groups) {
		return fmt.Errorf("npu: execute %s: shape group %d of %d: %w", m.name, group, len(m.groups), ErrOutOfRange)
	}
	t.d.execFrom.Store(monotonicNow())
	err := t.d.rt.Execute(m.id, m.ectx, uint32(group), m.groups[group].io)
	t.d.execFrom.Store(0)
	if err != nil {
		t.d.noteError(err)
		return fmt.Errorf("npu: execute %s group %d: %w", m.name, group, err)
	}
	return nil
}

// Write copies src into dst at offset off on the device thread.
func (d *Device) Write(ctx context.Context, dst *Buffer, off uint64, src []byte) error {
	return d.Do(ctx, func(t *Thread) error { return t.Write(dst, off, src) })
}

// Read copies len(dst) bytes of src from offset off on the device thread.
func (d *Device) Read(ctx context.Context, dst []byte, src *Buffer, off uint64) error {
	return d.Do(ctx, func(t *Thread) error { return t.Read(dst, src, off) })
}

// Copy copies n bytes between device buffers on the device thread.
func (d *Device) Copy(ctx context.Context, dst *Buffer, dstOff uint64, src *Buffer, srcOff, n uint64) error {
	return d.Do(ctx, func(t *Thread) error { return t.Copy(dst, dstOff, src, srcOff, n) })
}

// Alloc allocates a caller-owned device buffer on the device thread.
func (d *Device) Alloc(ctx context.Context, size uint64) (*Buffer, error) {
	var b *Buffer
	err := d.Do(ctx, func(t *Thread) (err error) {
		b, err = t.Alloc(size)
		return err
	})
	return b, err
}

// Free releases a buffer from Alloc on the device thread.
func (d *Device) Free(ctx context.Context, b *Buffer) error {
	return d.Do(ctx, func(t *Thread) error { return t.Free(b) })
}

// CMMUsed is the CMM kiln has charged on this device, in bytes.
func (d *Device) CMMUsed(ctx context.Context) (uint64, error) {
	var n uint64
	err := d.Do(ctx, func(t *Thread) error {
		n = t.d.cmmUsed
		return nil
	})
	return n, err
}
