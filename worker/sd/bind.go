package sd

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/npu"
)

// Tensor names of the published package, the ones the vendor's code binds
// by (AXERA-TECH/sd1.5-lcm.axera model_convert/sd15_export_onnx.py,
// python/run_txt2img_axe_infer.py, python/launcher.py; ax-llm
// src/runner/image/sd15_image_generator.cpp; docs/sd.md). The export traces
// the UNet as (sample, t, encoder_hidden_states), deletes t and the time
// embedding layers and appends their output, UNetTimeInput, as the last
// input: the compiled order is sample, encoder_hidden_states, time row.
// Outputs have no stable name (the export names none) and are bound as the
// vendor does: output 0, checked by shape.
const (
	TextInputIDs     = "input_ids"
	TextOutput       = "last_hidden_state"
	UNetSample       = "sample"
	UNetTimeInput    = "/down_blocks.0/resnets.0/act_1/Mul_output_0"
	UNetText         = "encoder_hidden_states"
	VAEDecoderInput  = "x"
	VAEEncoderInput  = "image_sample"
	VAEEncoderOutput = "latent_sample"
)

// slot is a tensor the pipeline binds: found by the vendor's name, else as
// the only tensor not yet bound whose dims fit.
type slot struct {
	what  string           // "unet input sample", for errors
	name  string           // the vendor's name; "" binds by shape only
	shape string           // what fits, for errors: "[1 4 h w]"
	fits  func([]int) bool // the shape fallback
}

// find returns the index of s in shape group 0 of m's inputs or outputs,
// skipping the indices in taken. When neither the name nor the shape finds
// exactly one tensor, the error wraps ErrPackage and lists the tensors found.
func find(m *npu.Model, dir axcl.Direction, s slot, taken ...int) (int, error) {
	list := tensors(m, dir)
	if i := slices.IndexFunc(list, func(t axcl.Tensor) bool { return s.name != "" && t.Name == s.name }); i >= 0 {
		if !s.fits(list[i].Dims) {
			return 0, fmt.Errorf("%w: %s: %s: %q has dims %v, want %s", ErrPackage, m.Name(), s.what, s.name, list[i].Dims, s.shape)
		}
		return i, nil
	}
	match := -1
	for i, t := range list {
		if slices.Contains(taken, i) || !s.fits(t.Dims) {
			continue
		}
		if match >= 0 {
			return 0, fmt.Errorf("%w: %s: %s: %s and %s both fit %s; %s found: %s", ErrPackage, m.Name(), s.what,
				list[match].Name, t.Name, s.shape, dirName(dir), listTensors(list))
		}
		match = i
	}
	if match < 0 {
		by := "no tensor named " + fmt.Sprintf("%q", s.name) + " nor one"
		if s.name == "" {
			by = "no tensor"
		}
		return 0, fmt.Errorf("%w: %s: %s: %s shaped %s; %s found: %s", ErrPackage, m.Name(), s.what, by, s.shape,
			dirName(dir), listTensors(list))
	}
	return match, nil
}

// find is find, noting in p.byShape a tensor bound by shape instead of by
// the vendor's name.
func (p *Pipeline) find(m *npu.Model, dir axcl.Direction, s slot, taken ...int) (int, error) {
	i, err := find(m, dir, s, taken...)
	if err != nil {
		return i, err
	}
	t := tensors(m, dir)[i]
	use := ""
	if s.name != "" && t.Name != s.name {
		p.byShape = append(p.byShape, fmt.Sprintf("%s = %q", s.what, t.Name))
		use = "bound by shape: the vendor's name " + strconv.Quote(s.name) + " is absent"
	}
	file := m.Path()
	if r, rerr := filepath.Rel(p.dir, file); rerr == nil {
		file = filepath.ToSlash(r)
	}
	p.cfg.Bindings.Tensor(file, s.what, use, -1, dir, t)
	return i, nil
}

// tensors are shape group 0's inputs or outputs of m.
func tensors(m *npu.Model, dir axcl.Direction) []axcl.Tensor {
	g := m.Describe()
	if len(g) == 0 {
		return nil
	}
	if dir == axcl.Input {
		return g[0].Inputs
	}
	return g[0].Outputs
}

func dirName(dir axcl.Direction) string {
	if dir == axcl.Input {
		return "inputs"
	}
	return "outputs"
}

// listTensors is "0 sample [1 4 64 64] fp32, 1 …", or "none".
func listTensors(list []axcl.Tensor) string {
	if len(list) == 0 {
		return "none"
	}
	s := make([]string, len(list))
	for i, t := range list {
		s[i] = fmt.Sprintf("%d %q %v %v", i, t.Name, t.Dims, t.DataType)
	}
	return strings.Join(s, ", ")
}

// dimsAre reports whether d equals want, where a want of -1 matches any
// positive size.
func dimsAre(d []int, want ...int) bool {
	if len(d) != len(want) {
		return false
	}
	for i, w := range want {
		if w < 0 && d[i] < 1 || w >= 0 && d[i] != w {
			return false
		}
	}
	return true
}

func shapeOf(want ...int) string {
	s := make([]string, len(want))
	for i, w := range want {
		s[i] = fmt.Sprint(w)
		if w < 0 {
			s[i] = "n"
		}
	}
	return "[" + strings.Join(s, " ") + "]"
}

// shaped is a slot that fits tensors of dims want (-1: any size).
func shaped(what, name string, want ...int) slot {
	return slot{what: what, name: name, shape: shapeOf(want...), fits: func(d []int) bool { return dimsAre(d, want...) }}
}

// anyShape is a slot that fits any tensor not bound yet.
func anyShape(what, name string) slot {
	return slot{what: what, name: name, shape: "(any, the one left)", fits: func([]int) bool { return true }}
}
