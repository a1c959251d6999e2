package npu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kiln-project/kiln/worker/axcl"
)

// BudgetError refuses an allocation or a model load past the CMM budget.
type BudgetError struct {
	What   string // "model NAME" or "buffer"
	Need   uint64 // bytes
	Free   uint64 // bytes left in the budget
	Budget uint64 // bytes
}

func (e *BudgetError) Error() string {
	return fmt.Sprintf("npu: %s needs %s of CMM but only %s of the %s budget is free",
		e.What, mib(e.Need), mib(e.Free), mib(e.Budget))
}

// Is matches ErrBudget.
func (e *BudgetError) Is(target error) bool { return target == ErrBudget }

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// TensorRef names one input or output of a model.
type TensorRef struct {
	Dir  axcl.Direction
	Name string
}

// In refers to the input called name.
func In(name string) TensorRef { return TensorRef{axcl.Input, name} }

// Out refers to the output called name.
func Out(name string) TensorRef { return TensorRef{axcl.Output, name} }

func (r TensorRef) String() string { return r.Dir.String() + " " + r.Name }

// LoadOptions adjust LoadModel. nil means defaults.
type LoadOptions struct {
	// Name is the model's name in logs and errors; default the file name
	// without extension.
	Name string
	// Bind binds caller-provided device buffers (from Alloc, or another
	// model's buffer) to tensors in every shape group, instead of buffers
	// of the model's own. Each buffer must hold the tensor's largest group
	// size; group g binds it with group g's size. This is how the LLM
	// runtime shares one K and one V cache per layer between all groups
	// and hands the hidden state from layer to layer on the card.
	Bind map[TensorRef]*Buffer
	// Share lists tensors that get one buffer of the model's own, sized for
	// the largest group and bound in every group.
	Share []TensorRef
}

// Model is a model resident on the card.
type Model struct {
	d        *Device
	name     string
	path     string
	id       axcl.ModelID
	ectx     axcl.EngineContext
	info     axcl.IOInfo
	usage    axcl.Usage
	charge   uint64 // CMM charged for the weights
	desc     []axcl.ShapeGroup
	groups   []modelGroup
	owned    []*Buffer // buffers the model allocated
	loaded   bool      // the runtime has the model
	unloaded bool      // released
	compiler string
}

type modelGroup struct {
	io      axcl.IO
	inputs  []*Buffer
	outputs []*Buffer
}

// Name is the model's name.
func (m *Model) Name() string { return m.name }

// Path is the model file.
func (m *Model) Path() string { return m.path }

// ID is the runtime model id.
func (m *Model) ID() axcl.ModelID { return m.id }

// Compiler is the Pulsar2 version that compiled the model.
func (m *Model) Compiler() string { return m.compiler }

// Groups is the number of shape groups.
func (m *Model) Groups() int { return len(m.groups) }

// Usage is what the runtime said the model needs.
func (m *Model) Usage() axcl.Usage { return m.usage }

// Describe returns the tensors of every shape group. Do not modify it.
func (m *Model) Describe() []axcl.ShapeGroup { return m.desc }

// Index is the index of the tensor ref, or an error wrapping
// axcl.ErrNotFound.
func (m *Model) Index(ref TensorRef) (int, error) { return tensorIndex(m.name, m.desc, ref) }

// Tensor describes the tensor ref in shape group group.
func (m *Model) Tensor(group int, ref TensorRef) (axcl.Tensor, error) {
	i, err := m.Index(ref)
	if err != nil {
		return axcl.Tensor{}, err
	}
	if group < 0 || group >= len(m.desc) {
		return axcl.Tensor{}, fmt.Errorf("npu: model %s: shape group %d of %d: %w", m.name, group, len(m.desc), ErrOutOfRange)
	}
	if ref.Dir == axcl.Output {
		return m.desc[group].Outputs[i], nil
	}
	return m.desc[group].Inputs[i], nil
}

// Buffer is the device buffer bound to tensor ref in shape group group.
func (m *Model) Buffer(group int, ref TensorRef) (*Buffer, error) {
	i, err := m.Index(ref)
	if err != nil {
		return nil, err
	}
	return m.BufferAt(group, ref.Dir, i)
}

// BufferAt is the device buffer bound to tensor index in shape group group.
func (m *Model) BufferAt(group int, dir axcl.Direction, index int) (*Buffer, error) {
	if group < 0 || group >= len(m.groups) {
		return nil, fmt.Errorf("npu: model %s: shape group %d of %d: %w", m.name, group, len(m.groups), ErrOutOfRange)
	}
	list := m.groups[group].inputs
	if dir == axcl.Output {
		list = m.groups[group].outputs
	}
	if index < 0 || index >= len(list) {
		return nil, fmt.Errorf("npu: model %s: %s %d of %d: %w", m.name, dir, index, len(list), ErrOutOfRange)
	}
	return list[index], nil
}

// LoadModel loads the model file at path onto the card and prepares one IO
// per shape group with a device buffer bound to every input and output.
// The CMM it needs is checked against the budget first; past it the load
// is refused with a *BudgetError.
func (d *Device) LoadModel(ctx context.Context, path string, opts *LoadOptions) (*Model, error) {
	var m *Model
	err := d.Do(ctx, func(t *Thread) (err error) {
		m, err = t.LoadModel(path, opts)
		return err
	})
	return m, err
}

// Unload releases a model and the buffers it owns.
func (d *Device) Unload(ctx context.Context, m *Model) error {
	return d.Do(ctx, func(t *Thread) error { return t.Unload(m) })
}

// LoadModel is Device.LoadModel on the device thread.
func (t *Thread) LoadModel(path string, opts *LoadOptions) (*Model, error) {
	if opts == nil {
		opts = &LoadOptions{}
	}
	d, rt := t.d, t.d.rt
	name := opts.Name
	if name == "" {
		name = strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("npu: load model %s: %w", name, err)
	}
	// Before loading: the runtime's own estimate when it has
	// axclrtEngineGetUsage, else the file size (the weights are the bulk of
	// an .axmodel).
	estimate := uint64(st.Size())
	if rt.HasModelUsage() {
		u, err := rt.ModelUsage(path)
		if err != nil {
			d.noteError(err)
			return nil, fmt.Errorf("npu: load model %s: %w", name, err)
		}
		estimate = uint64(max(u.CMMBytes, 0))
	}
	if estimate > t.free() {
		return nil, &BudgetError{What: "model " + name, Need: estimate, Free: t.free(), Budget: d.budget}
	}
	m := &Model{d: d, name: name, path: path}
	fail := func(err error) (*Model, error) {
		if rerr := t.release(m); rerr != nil {
			d.log.Warn("npu: cleanup after failed load", "model", name, "err", rerr)
		}
		d.noteError(err)
		return nil, err
	}
	if m.id, err = rt.LoadModel(path); err != nil {
		d.noteError(err)
		return nil, fmt.Errorf("npu: load model %s: %w", name, err)
	}
	m.loaded = true
	if m.usage, err = rt.LoadedModelUsage(m.id); err != nil {
		return fail(fmt.Errorf("npu: load model %s: %w", name, err))
	}
	charge := uint64(max(m.usage.CMMBytes, 0))
	if charge > t.free() {
		return fail(&BudgetError{What: "model " + name, Need: charge, Free: t.free(), Budget: d.budget})
	}
	m.charge = charge
	d.cmmUsed += charge
	m.compiler = rt.CompilerVersion(m.id)
	if m.ectx, err = rt.CreateEngineContext(m.id); err != nil {
		return fail(fmt.Errorf("npu: load model %s: %w", name, err))
	}
	if m.info, err = rt.IOInfo(m.id); err != nil {
		return fail(fmt.Errorf("npu: load model %s: %w", name, err))
	}
	if m.desc, err = rt.Describe(m.info); err != nil {
		return fail(fmt.Errorf("npu: load model %s: %w", name, err))
	}

	plan, err := planBuffers(name, d, m.desc, opts)
	if err != nil {
		return fail(err)
	}
	if plan.need > t.free() {
		return fail(&BudgetError{What: "model " + name, Need: charge + plan.need, Free: t.free() + charge, Budget: d.budget})
	}
	if err := t.bindBuffers(m, plan); err != nil {
		return fail(fmt.Errorf("npu: load model %s: %w", name, err))
	}
	d.models = append(d.models, m)
	d.log.Info("npu: model loaded", "device", int(d.id), "model", name, "groups", len(m.groups),
		"cmm_mib", (charge+plan.need)>>20, "cmm_free_mib", t.free()>>20)
	return m, nil
}

// bindBuffers carries out plan for m: one IO per shape group, the model's
// own buffers allocated (each when first bound) and every buffer bound.
func (t *Thread) bindBuffers(m *Model, plan *bufferPlan) error {
	rt := t.d.rt
	owned := make([]*Buffer, len(plan.allocs))
	m.groups = make([]modelGroup, len(plan.groups))
	for g := range m.groups {
		mg, gp := &m.groups[g], &plan.groups[g]
		var err error
		if mg.io, err = rt.CreateIO(m.info); err != nil {
			return fmt.Errorf("group %d: %w", g, err)
		}
		mg.inputs, mg.outputs = make([]*Buffer, len(gp.inputs)), make([]*Buffer, len(gp.outputs))
		for _, dir := range []axcl.Direction{axcl.Input, axcl.Output} {
			bufs := mg.inputs
			if dir == axcl.Output {
				bufs = mg.outputs
			}
			for i, bd := range gp.list(dir) {
				b := bd.bound
				if b == nil {
					if owned[bd.alloc] == nil {
						if owned[bd.alloc], err = t.alloc(plan.allocs[bd.alloc]); err != nil {
							return err
						}
						m.owned = append(m.owned, owned[bd.alloc])
					}
					b = owned[bd.alloc]
				}
				bufs[i] = b
				if err := rt.SetBuffer(mg.io, dir, i, b.ptr, bd.size); err != nil {
					return fmt.Errorf("bind group %d %s %d: %w", g, dir, i, err)
				}
			}
		}
	}
	return nil
}

// Unload is Device.Unload on the device thread.
func (t *Thread) Unload(m *Model) error {
	if m == nil || m.d != t.d {
		return fmt.Errorf("npu: unload: model is not loaded on device %d", t.d.id)
	}
	for i, x := range t.d.models {
		if x == m {
			t.d.models = append(t.d.models[:i], t.d.models[i+1:]...)
			break
		}
	}
	return t.release(m)
}

// release frees what m holds, in reverse order of creation.
func (t *Thread) release(m *Model) error {
	if m.unloaded {
		return nil
	}
	m.unloaded = true
	rt := t.d.rt
	var errs []error
	for _, b := range m.owned {
		errs = append(errs, t.freeBuffer(b))
	}
	for _, g := range m.groups {
		if g.io != 0 {
			errs = append(errs, rt.DestroyIO(g.io))
		}
	}
	if m.info != 0 {
		errs = append(errs, rt.DestroyIOInfo(m.info))
	}
	if m.loaded {
		errs = append(errs, rt.UnloadModel(m.id))
		t.d.cmmUsed -= min(m.charge, t.d.cmmUsed)
		m.charge = 0
	}
	return errors.Join(errs...)
}

// ModelInfo is what Inspect reports about a model file.
type ModelInfo struct {
	Path     string            `json:"path"`
	Compiler string            `json:"compiler"`
	CMMBytes int64             `json:"cmm_bytes"`
	SysBytes int64             `json:"sys_bytes"`
	Groups   []axcl.ShapeGroup `json:"groups"`
}

// Inspect loads the model file at path, reads its shape groups and tensors
// and unloads it, without allocating any buffer.
func (d *Device) Inspect(ctx context.Context, path string) (*ModelInfo, error) {
	var info *ModelInfo
	err := d.Do(ctx, func(t *Thread) (err error) {
		info, err = t.Inspect(path)
		return err
	})
	return info, err
}

// Inspect is Device.Inspect on the device thread.
func (t *Thread) Inspect(path string) (*ModelInfo, error) {
	rt := t.d.rt
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("npu: inspect: %w", err)
	}
	id, err := rt.LoadModel(path)
	if err != nil {
		t.d.noteError(err)
		return nil, fmt.Errorf("npu: inspect %s: %w", path, err)
	}
	defer rt.UnloadModel(id)
	info, err := rt.IOInfo(id)
	if err != nil {
		return nil, fmt.Errorf("npu: inspect %s: %w", path, err)
	}
	defer rt.DestroyIOInfo(info)
	groups, err := rt.Describe(info)
	if err != nil {
		return nil, fmt.Errorf("npu: inspect %s: %w", path, err)
	}
	usage, err := rt.LoadedModelUsage(id)
	if err != nil {
		return nil, fmt.Errorf("npu: inspect %s: %w", path, err)
	}
	return &ModelInfo{Path: path, Compiler: rt.CompilerVersion(id), CMMBytes: usage.CMMBytes, SysBytes: usage.SysBytes, Groups: groups}, nil
}
