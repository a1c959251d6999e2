package npu

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/worker/axcl"
)

// planGroups are three shape groups of an LLM-layer-like model: two prefill
// groups (the second sees history) and a decode group, with sizes that
// differ from group to group except K_cache's.
func planGroups() []axcl.ShapeGroup {
	tensors := func(names []string, sizes ...uint64) []axcl.Tensor {
		l := make([]axcl.Tensor, len(names))
		for i, n := range names {
			l[i] = axcl.Tensor{Index: i, Name: n, Size: sizes[i]}
		}
		return l
	}
	in := []string{"input", "mask", "K_cache"}
	out := []string{"output", "K_cache_out"}
	return []axcl.ShapeGroup{
		{Inputs: tensors(in, 200, 40, 1000), Outputs: tensors(out, 200, 50)},
		{Inputs: tensors(in, 200, 80, 1000), Outputs: tensors(out, 200, 50)},
		{Inputs: tensors(in, 10, 6, 1000), Outputs: tensors(out, 10, 5)},
	}
}

// describePlan writes each group's bindings as "tensor=#alloc:size" (a
// buffer of the model's own) or "tensor=name:size" (a caller's buffer,
// named in names), inputs before the bar, outputs after.
func describePlan(p *bufferPlan, groups []axcl.ShapeGroup, names map[*Buffer]string) []string {
	var lines []string
	for g, gp := range p.groups {
		var parts []string
		for _, dir := range []axcl.Direction{axcl.Input, axcl.Output} {
			if dir == axcl.Output {
				parts = append(parts, "|")
			}
			for i, b := range gp.list(dir) {
				name := groups[g].Tensor(dir, i).Name
				if b.bound != nil {
					parts = append(parts, fmt.Sprintf("%s=%s:%d", name, names[b.bound], b.size))
				} else {
					parts = append(parts, fmt.Sprintf("%s=#%d:%d", name, b.alloc, b.size))
				}
			}
		}
		lines = append(lines, strings.Join(parts, " "))
	}
	return lines
}

func TestPlanBuffers(t *testing.T) {
	dev, other := &Device{}, &Device{}
	k := &Buffer{size: 1000, d: dev}
	big := &Buffer{size: 4096, d: dev}
	h0, h1 := &Buffer{size: 200, d: dev}, &Buffer{size: 200, d: dev}
	small := &Buffer{size: 999, d: dev}
	freed := &Buffer{size: 1000, d: dev, freed: true}
	foreign := &Buffer{size: 1000, d: other}
	names := map[*Buffer]string{k: "k", big: "big", h0: "h0", h1: "h1"}

	for _, c := range []struct {
		name   string
		opts   *LoadOptions
		groups []axcl.ShapeGroup // planGroups() when nil
		want   []string          // describePlan
		allocs []uint64
		need   uint64
		err    error  // errors.Is
		msg    string // in the error
	}{
		{
			name: "no options: a buffer per tensor and group, sized for the group",
			want: []string{
				"input=#0:200 mask=#1:40 K_cache=#2:1000 | output=#3:200 K_cache_out=#4:50",
				"input=#5:200 mask=#6:80 K_cache=#7:1000 | output=#8:200 K_cache_out=#9:50",
				"input=#10:10 mask=#11:6 K_cache=#12:1000 | output=#13:10 K_cache_out=#14:5",
			},
			allocs: []uint64{200, 40, 1000, 200, 50, 200, 80, 1000, 200, 50, 10, 6, 1000, 10, 5},
			need:   4051,
		},
		{
			name: "shared: one buffer of the largest size, planned where group 0 binds it",
			opts: &LoadOptions{Share: []TensorRef{In("mask"), Out("K_cache_out")}},
			want: []string{
				"input=#0:200 mask=#1:40 K_cache=#2:1000 | output=#3:200 K_cache_out=#4:50",
				"input=#5:200 mask=#1:80 K_cache=#6:1000 | output=#7:200 K_cache_out=#4:50",
				"input=#8:10 mask=#1:6 K_cache=#9:1000 | output=#10:10 K_cache_out=#4:5",
			},
			allocs: []uint64{200, 80, 1000, 200, 50, 200, 1000, 200, 10, 1000, 10},
			need:   3950,
		},
		{
			name: "bound: the caller's buffer in every group, with the group's size, not counted",
			opts: &LoadOptions{Bind: map[TensorRef]*Buffer{In("K_cache"): big, In("input"): h0, Out("output"): h1}},
			want: []string{
				"input=h0:200 mask=#0:40 K_cache=big:1000 | output=h1:200 K_cache_out=#1:50",
				"input=h0:200 mask=#2:80 K_cache=big:1000 | output=h1:200 K_cache_out=#3:50",
				"input=h0:10 mask=#4:6 K_cache=big:1000 | output=h1:10 K_cache_out=#5:5",
			},
			allocs: []uint64{40, 50, 80, 50, 6, 5},
			need:   231,
		},
		{
			name: "the LLM layer: caches bound, mask and cache outputs shared",
			opts: &LoadOptions{
				Bind:  map[TensorRef]*Buffer{In("K_cache"): k, In("input"): h0, Out("output"): h1},
				Share: []TensorRef{In("mask"), Out("K_cache_out")},
			},
			want: []string{
				"input=h0:200 mask=#0:40 K_cache=k:1000 | output=h1:200 K_cache_out=#1:50",
				"input=h0:200 mask=#0:80 K_cache=k:1000 | output=h1:200 K_cache_out=#1:50",
				"input=h0:10 mask=#0:6 K_cache=k:1000 | output=h1:10 K_cache_out=#1:5",
			},
			allocs: []uint64{80, 50},
			need:   130,
		},
		{
			name: "bound and shared: bound wins",
			opts: &LoadOptions{Bind: map[TensorRef]*Buffer{In("K_cache"): k}, Share: []TensorRef{In("K_cache")}},
			want: []string{
				"input=#0:200 mask=#1:40 K_cache=k:1000 | output=#2:200 K_cache_out=#3:50",
				"input=#4:200 mask=#5:80 K_cache=k:1000 | output=#6:200 K_cache_out=#7:50",
				"input=#8:10 mask=#9:6 K_cache=k:1000 | output=#10:10 K_cache_out=#11:5",
			},
			allocs: []uint64{200, 40, 200, 50, 200, 80, 200, 50, 10, 6, 10, 5},
			need:   1051,
		},
		{
			name:   "one group, everything shared: as without options",
			opts:   &LoadOptions{Share: []TensorRef{In("input"), In("mask"), In("K_cache"), Out("output"), Out("K_cache_out")}},
			groups: planGroups()[2:],
			want:   []string{"input=#0:10 mask=#1:6 K_cache=#2:1000 | output=#3:10 K_cache_out=#4:5"},
			allocs: []uint64{10, 6, 1000, 10, 5},
			need:   1031,
		},
		{
			name: "a bound buffer smaller than the largest group",
			opts: &LoadOptions{Bind: map[TensorRef]*Buffer{In("K_cache"): small}},
			err:  ErrOutOfRange, msg: "buffer for input K_cache holds 999 bytes, the largest shape group needs 1000",
		},
		{
			name: "a bound buffer larger than the tensor needs: bound with each group's size",
			opts: &LoadOptions{Bind: map[TensorRef]*Buffer{In("mask"): h0}}, // mask's largest is 80
			want: []string{
				"input=#0:200 mask=h0:40 K_cache=#1:1000 | output=#2:200 K_cache_out=#3:50",
				"input=#4:200 mask=h0:80 K_cache=#5:1000 | output=#6:200 K_cache_out=#7:50",
				"input=#8:10 mask=h0:6 K_cache=#9:1000 | output=#10:10 K_cache_out=#11:5",
			},
			allocs: []uint64{200, 1000, 200, 50, 200, 1000, 200, 50, 10, 1000, 10, 5},
			need:   3925,
		},
		{
			name: "a nil bound buffer",
			opts: &LoadOptions{Bind: map[TensorRef]*Buffer{In("K_cache"): nil}},
			msg:  "buffer for input K_cache is nil, freed or of another device",
		},
		{
			name: "a freed bound buffer",
			opts: &LoadOptions{Bind: map[TensorRef]*Buffer{In("K_cache"): freed}},
			msg:  "buffer for input K_cache is nil, freed or of another device",
		},
		{
			name: "a bound buffer of another device",
			opts: &LoadOptions{Bind: map[TensorRef]*Buffer{Out("output"): foreign}},
			msg:  "buffer for output output is nil, freed or of another device",
		},
		{
			name: "binding a tensor the model lacks",
			opts: &LoadOptions{Bind: map[TensorRef]*Buffer{In("V_cache"): k}},
			err:  axcl.ErrNotFound, msg: "model tiny has no input V_cache",
		},
		{
			name: "sharing a tensor the model lacks",
			opts: &LoadOptions{Share: []TensorRef{In("mask"), Out("V_cache_out")}},
			err:  axcl.ErrNotFound, msg: "model tiny has no output V_cache_out",
		},
		{
			name: "sharing an output under its input direction",
			opts: &LoadOptions{Share: []TensorRef{In("output")}},
			err:  axcl.ErrNotFound, msg: "has no input output",
		},
		{
			name:   "no shape groups",
			groups: []axcl.ShapeGroup{},
			msg:    "model tiny has no shape groups",
		},
		{
			name:   "groups that list other tensors",
			groups: append(planGroups()[:1], axcl.ShapeGroup{Inputs: planGroups()[0].Inputs[:2], Outputs: planGroups()[0].Outputs}),
			msg:    "shape group 1 has 2 inputs and 2 outputs, group 0 3 and 2",
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			groups := c.groups
			if groups == nil {
				groups = planGroups()
			}
			p, err := planBuffers("tiny", dev, groups, c.opts)
			if c.msg != "" || c.err != nil {
				if err == nil || !strings.Contains(err.Error(), c.msg) || c.err != nil && !errors.Is(err, c.err) {
					t.Fatalf("err = %v, want %q (%v)", err, c.msg, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := describePlan(p, groups, names); !slices.Equal(got, c.want) {
				t.Errorf("bindings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(c.want, "\n"))
			}
			if !slices.Equal(p.allocs, c.allocs) || p.need != c.need {
				t.Errorf("allocs %v (need %d), want %v (need %d)", p.allocs, p.need, c.allocs, c.need)
			}
		})
	}
}

// TestPlanBuffersIsPure: planning reads the shape groups and the options and
// changes neither; planning twice gives the same plan.
func TestPlanBuffersIsPure(t *testing.T) {
	dev := &Device{}
	k := &Buffer{size: 1000, d: dev}
	groups := planGroups()
	opts := &LoadOptions{Bind: map[TensorRef]*Buffer{In("K_cache"): k}, Share: []TensorRef{In("mask")}}
	a, err := planBuffers("tiny", dev, groups, opts)
	if err != nil {
		t.Fatal(err)
	}
	b, err := planBuffers("tiny", dev, groups, opts)
	if err != nil {
		t.Fatal(err)
	}
	names := map[*Buffer]string{k: "k"}
	if !slices.Equal(describePlan(a, groups, names), describePlan(b, groups, names)) || !slices.Equal(a.allocs, b.allocs) {
		t.Fatal("two plans of the same model differ")
	}
	if k.size != 1000 || k.freed || len(opts.Bind) != 1 || len(opts.Share) != 1 {
		t.Fatal("planning changed the options")
	}
	if fmt.Sprint(groups) != fmt.Sprint(planGroups()) {
		t.Fatal("planning changed the shape groups")
	}
}
