package npu

import (
	"fmt"

	"github.com/kiln-project/kiln/worker/axcl"
)

// bufferPlan is how LoadModel gives every input and output of every shape
// group a device buffer: a caller's buffer (LoadOptions.Bind), one buffer of
// the model's own bound in every group (LoadOptions.Share), or a buffer of
// the model's own per group. planBuffers makes it from the shape groups and
// the options alone; LoadModel checks need against the budget and carries
// it out.
type bufferPlan struct {
	// allocs are the sizes of the buffers the model allocates, in the order
	// LoadModel allocates them (by group, inputs then outputs, by index).
	allocs []uint64
	// groups are the bindings of each shape group.
	groups []groupPlan
	// need is the sum of allocs: the CMM the model's buffers take.
	need uint64
}

// groupPlan binds the tensors of one shape group, by index.
type groupPlan struct {
	inputs, outputs []binding
}

// list is the bindings of direction dir.
func (g *groupPlan) list(dir axcl.Direction) []binding {
	if dir == axcl.Output {
		return g.outputs
	}
	return g.inputs
}

// binding is the buffer of one tensor in one shape group.
type binding struct {
	bound *Buffer // the caller's buffer, or nil for
	alloc int     // this index of bufferPlan.allocs
	size  uint64  // the bytes bound: the tensor's size in this group
}

// planBuffers plans the buffers of model name (for errors) with shape
// groups groups on device d under opts. A bound buffer must belong to d,
// be live and hold the tensor's largest group size; a tensor both bound
// and shared is bound. Every tensor opts names must exist (the error wraps
// axcl.ErrNotFound).
func planBuffers(name string, d *Device, groups []axcl.ShapeGroup, opts *LoadOptions) (*bufferPlan, error) {
	if len(groups) == 0 {
		return nil, fmt.Errorf("npu: model %s has no shape groups", name)
	}
	counts := [2]int{len(groups[0].Inputs), len(groups[0].Outputs)}
	for g := range groups {
		if len(groups[g].Inputs) != counts[axcl.Input] || len(groups[g].Outputs) != counts[axcl.Output] {
			return nil, fmt.Errorf("npu: model %s: shape group %d has %d inputs and %d outputs, group 0 %d and %d",
				name, g, len(groups[g].Inputs), len(groups[g].Outputs), counts[axcl.Input], counts[axcl.Output])
		}
	}

	// Per tensor: the largest size over the groups, and how it is bound.
	type tensorPlan struct {
		max    uint64
		bound  *Buffer
		shared bool
		alloc  int // the shared buffer's index in allocs, -1 before it is planned
	}
	tensors := [2][]tensorPlan{make([]tensorPlan, counts[axcl.Input]), make([]tensorPlan, counts[axcl.Output])}
	for dir := range tensors {
		for i := range tensors[dir] {
			tp := &tensors[dir][i]
			tp.alloc = -1
			for g := range groups {
				tp.max = max(tp.max, groups[g].Tensor(axcl.Direction(dir), i).Size)
			}
		}
	}
	if opts == nil {
		opts = &LoadOptions{}
	}
	// find is the plan of tensor ref; like Model.Index it takes any
	// direction but Output for an input.
	find := func(ref TensorRef) (*tensorPlan, error) {
		i, err := tensorIndex(name, groups, ref)
		if err != nil {
			return nil, err
		}
		if ref.Dir == axcl.Output {
			return &tensors[axcl.Output][i], nil
		}
		return &tensors[axcl.Input][i], nil
	}
	for ref, b := range opts.Bind {
		tp, err := find(ref)
		if err != nil {
			return nil, err
		}
		if b == nil || b.freed || b.d != d {
			return nil, fmt.Errorf("npu: load model %s: buffer for %s is nil, freed or of another device", name, ref)
		}
		if b.size < tp.max {
			return nil, fmt.Errorf("npu: load model %s: buffer for %s holds %d bytes, the largest shape group needs %d: %w",
				name, ref, b.size, tp.max, ErrOutOfRange)
		}
		tp.bound = b
	}
	for _, ref := range opts.Share {
		tp, err := find(ref)
		if err != nil {
			return nil, err
		}
		tp.shared = true
	}

	p := &bufferPlan{groups: make([]groupPlan, len(groups))}
	allocate := func(size uint64) int {
		p.allocs = append(p.allocs, size)
		p.need += size
		return len(p.allocs) - 1
	}
	for g := range groups {
		gp := &p.groups[g]
		gp.inputs, gp.outputs = make([]binding, counts[axcl.Input]), make([]binding, counts[axcl.Output])
		for dir := range tensors {
			list := gp.list(axcl.Direction(dir))
			for i := range list {
				tp := &tensors[dir][i]
				b := binding{bound: tp.bound, size: groups[g].Tensor(axcl.Direction(dir), i).Size}
				switch {
				case tp.bound != nil:
				case tp.shared:
					if tp.alloc < 0 {
						tp.alloc = allocate(tp.max)
					}
					b.alloc = tp.alloc
				default:
					b.alloc = allocate(b.size)
				}
				list[i] = b
			}
		}
	}
	return p, nil
}

// tensorIndex is the index of the tensor ref in model name's shape groups,
// or an error wrapping axcl.ErrNotFound. Every group lists the same tensors.
func tensorIndex(name string, groups []axcl.ShapeGroup, ref TensorRef) (int, error) {
	if len(groups) == 0 {
		return 0, fmt.Errorf("npu: model %s has no shape groups", name)
	}
	list := groups[0].Inputs
	if ref.Dir == axcl.Output {
		list = groups[0].Outputs
	}
	for i := range list {
		if list[i].Name == ref.Name {
			return i, nil
		}
	}
	return 0, fmt.Errorf("npu: model %s has no %s: %w", name, ref, axcl.ErrNotFound)
}
