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
func (m *Model) Index(ref TensorRef) (int, error) {
	if len(m.desc) == 0 {
		return 0, fmt.Errorf("npu: model %s has no shape groups", m.name)
	}
	list := m.desc[0].Inputs
	if ref.Dir == axcl.Output {
		list = m.desc[0].Outputs
	}
	for i := range list {
		if list[i].Name == ref.Name {
			return i, nil
		}
	}
	return 0, fmt.Errorf("npu: model %s has no %s: %w", m.name, ref, axcl.ErrNotFound)
}

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

	// Plan: per tensor, a bound caller buffer, one shared buffer, or one
	// buffer per group.
	type plan struct {
		bound  *Buffer
		shared bool
		max    uint64
	}
	plans := [2][]plan{make([]plan, len(m.desc[0].Inputs)), make([]plan, len(m.desc[0].Outputs))}
	for g := range m.desc {
		for dir, list := range [2][]axcl.Tensor{m.desc[g].Inputs, m.desc[g].Outputs} {
			for i := range list {
				plans[dir][i].max = max(plans[dir][i].max, list[i].Size)
			}
		}
	}
	for ref, b := range opts.Bind {
		i, err := m.Index(ref)
		if err != nil {
			return fail(err)
		}
		p := &plans[ref.Dir][i]
		if b == nil || b.freed || b.d != d {
			return fail(fmt.Errorf("npu: load model %s: buffer for %s is nil, freed or of another device", name, ref))
		}
		if b.size < p.max {
			return fail(fmt.Errorf("npu: load model %s: buffer for %s holds %d bytes, the largest shape group needs %d: %w",
				name, ref, b.size, p.max, ErrOutOfRange))
		}
		p.bound = b
	}
	for _, ref := range opts.Share {
		i, err := m.Index(ref)
		if err != nil {
			return fail(err)
		}
		plans[ref.Dir][i].shared = true
	}
	var need uint64
	for dir := range plans {
		for i, p := range plans[dir] {
			switch {
			case p.bound != nil:
			case p.shared:
				need += p.max
			default:
				for g := range m.desc {
					need += m.desc[g].Tensor(axcl.Direction(dir), i).Size
				}
			}
		}
	}
	if need > t.free() {
		berr := &BudgetError{What: "model " + name, Need: charge + need, Free: t.free() + charge, Budget: d.budget}
		return fail(berr)
	}

	sharedBufs := [2][]*Buffer{make([]*Buffer, len(plans[0])), make([]*Buffer, len(plans[1]))}
	m.groups = make([]modelGroup, len(m.desc))
	for g := range m.groups {
		mg := &m.groups[g]
		if mg.io, err = rt.CreateIO(m.info); err != nil {
			return fail(fmt.Errorf("npu: load model %s: group %d: %w", name, g, err))
		}
		mg.inputs = make([]*Buffer, len(plans[0]))
		mg.outputs = make([]*Buffer, len(plans[1]))
		for dir := range plans {
			bufs := mg.inputs
			if dir == int(axcl.Output) {
				bufs = mg.outputs
			}
			for i, p := range plans[dir] {
				size := m.desc[g].Tensor(axcl.Direction(dir), i).Size
				var b *Buffer
				switch {
				case p.bound != nil:
					b = p.bound
				case p.shared:
					if sharedBufs[dir][i] == nil {
						if sharedBufs[dir][i], err = t.alloc(p.max); err != nil {
							return fail(fmt.Errorf("npu: load model %s: %w", name, err))
						}
						m.owned = append(m.owned, sharedBufs[dir][i])
					}
					b = sharedBufs[dir][i]
				default:
					if b, err = t.alloc(size); err != nil {
						return fail(fmt.Errorf("npu: load model %s: %w", name, err))
					}
					m.owned = append(m.owned, b)
				}
				bufs[i] = b
				if err := rt.SetBuffer(mg.io, axcl.Direction(dir), i, b.ptr, size); err != nil {
					return fail(fmt.Errorf("npu: load model %s: bind group %d %s %d: %w", name, g, axcl.Direction(dir), i, err))
				}
			}
		}
	}
	d.models = append(d.models, m)
	d.log.Info("npu: model loaded", "device", int(d.id), "model", name, "groups", len(m.groups),
		"cmm_mib", (charge+need)>>20, "cmm_free_mib", t.free()>>20)
	return m, nil
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
