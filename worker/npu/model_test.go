package npu

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/axcl"
)

var bg = context.Background()

func TestLoadModelBuffersPerGroup(t *testing.T) {
	b := setup(t, Config{SampleInterval: -1})
	d := b.dev
	spec := tinyLayerSpec(0)
	before, err := d.CMMUsed(bg)
	must(t, err)
	m, err := d.LoadModel(bg, layerFiles(t)[0], nil)
	must(t, err)
	if m.Name() != "tiny_p16_l0_together" || m.Groups() != 3 || m.Compiler() != spec.Compiler {
		t.Fatalf("model %q groups %d compiler %q", m.Name(), m.Groups(), m.Compiler())
	}
	var total uint64
	for g := range m.Groups() {
		for _, dir := range []axcl.Direction{axcl.Input, axcl.Output} {
			tensors := spec.Inputs
			if dir == axcl.Output {
				tensors = spec.Outputs
			}
			for _, st := range tensors {
				ref := TensorRef{dir, st.Name}
				buf, err := m.Buffer(g, ref)
				must(t, err)
				tn, err := m.Tensor(g, ref)
				must(t, err)
				want := uint64(st.Elems(g) * st.DType.Size())
				if buf.Size() != want || tn.Size != want {
					t.Errorf("group %d %s: buffer %d, tensor %d bytes, spec %d", g, ref, buf.Size(), tn.Size, want)
				}
				total += want
			}
		}
	}
	// Without sharing every group has its own buffers.
	b0, _ := m.Buffer(0, In("K_cache"))
	b2, _ := m.Buffer(2, In("K_cache"))
	if b0 == b2 {
		t.Error("groups share a buffer nobody asked to share")
	}
	used, err := d.CMMUsed(bg)
	must(t, err)
	if used-before != uint64(spec.WeightBytes)+total {
		t.Errorf("CMM charged %d, want weights %d + buffers %d", used-before, spec.WeightBytes, total)
	}
	if _, err := m.Buffer(0, In("nope")); !errors.Is(err, axcl.ErrNotFound) {
		t.Errorf("Buffer(unknown) = %v", err)
	}
	if _, err := m.Buffer(3, In("input")); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Buffer(group 3) = %v", err)
	}
	for g := range m.Groups() {
		must(t, d.Execute(bg, m, g))
	}
	if err := d.Execute(bg, m, 3); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Execute(group 3) = %v", err)
	}
	must(t, d.Unload(bg, m))
	if used, _ := d.CMMUsed(bg); used != before {
		t.Errorf("after Unload CMM used %d, before load %d", used, before)
	}
	if err := d.Execute(bg, m, 0); err == nil || !strings.Contains(err.Error(), "unloaded") {
		t.Errorf("Execute after Unload = %v", err)
	}
}

// The LLM runtime's use: one K and one V buffer per layer shared by every
// shape group, and the hidden state handed from layer to layer on the card
// by binding one buffer as layer 0's output and layer 1's input. The
// chained result must equal copying the hidden state through the host.
func TestSharedAndBoundBuffers(t *testing.T) {
	b := setup(t, Config{SampleInterval: -1})
	d := b.dev
	files := layerFiles(t)
	s := tinySpec()
	kvBytes := uint64(s.MaxCtx * s.KVDim * 2)
	hiddenBytes := uint64(s.Prefill * s.Hidden * 2)

	var k, v, hidden *Buffer
	must(t, d.Do(bg, func(th *Thread) (err error) {
		if k, err = th.Alloc(kvBytes); err != nil {
			return err
		}
		if v, err = th.Alloc(kvBytes); err != nil {
			return err
		}
		hidden, err = th.Alloc(hiddenBytes)
		return err
	}))
	l0, err := d.LoadModel(bg, files[0], &LoadOptions{
		Name:  "l0",
		Bind:  map[TensorRef]*Buffer{In("K_cache"): k, In("V_cache"): v, Out("output"): hidden},
		Share: []TensorRef{In("mask")},
	})
	must(t, err)
	l1, err := d.LoadModel(bg, files[1], &LoadOptions{Name: "l1", Bind: map[TensorRef]*Buffer{In("input"): hidden}})
	must(t, err)
	for g := range l0.Groups() {
		for ref, want := range map[TensorRef]*Buffer{In("K_cache"): k, In("V_cache"): v, Out("output"): hidden} {
			if got, _ := l0.Buffer(g, ref); got != want {
				t.Errorf("l0 group %d %s not bound to the caller's buffer", g, ref)
			}
		}
		m0, _ := l0.Buffer(0, In("mask"))
		if mg, _ := l0.Buffer(g, In("mask")); mg != m0 {
			t.Errorf("l0 group %d mask is not the shared buffer", g)
		}
		if got, _ := l1.Buffer(g, In("input")); got != hidden {
			t.Errorf("l1 group %d input is not the hidden buffer", g)
		}
	}
	if m0, _ := l0.Buffer(0, In("mask")); m0.Size() < uint64((s.MaxCtx+1)*2) {
		t.Errorf("shared mask of %d bytes is smaller than the largest group's", m0.Size())
	}

	// Reference models with their own buffers.
	r0, err := d.LoadModel(bg, files[0], &LoadOptions{Name: "r0"})
	must(t, err)
	r1, err := d.LoadModel(bg, files[1], &LoadOptions{Name: "r1"})
	must(t, err)

	// Decode step (group 0): same input, position, mask on both paths.
	in := make([]byte, s.Hidden*2)
	for i := range in {
		in[i] = byte(i*7 + 3)
		if i%2 == 1 {
			in[i] = 0x3E
		}
	}
	mask := make([]byte, (s.MaxCtx+1)*2) // zeros: bf16 0.0 everywhere
	setInputs := func(th *Thread, m *Model) error {
		ib, _ := m.Buffer(0, In("input"))
		if m == l1 {
			return nil // fed by l0 through the bound buffer
		}
		if err := th.Write(ib, 0, in); err != nil {
			return err
		}
		mb, _ := m.Buffer(0, In("mask"))
		return th.Write(mb, 0, mask)
	}
	var chained, viaHost []byte
	must(t, d.Do(bg, func(th *Thread) error {
		for _, m := range []*Model{l0, l1} {
			if err := setInputs(th, m); err != nil {
				return err
			}
			if m == l1 {
				mb, _ := m.Buffer(0, In("mask"))
				if err := th.Write(mb, 0, mask); err != nil {
					return err
				}
			}
			if err := th.Execute(m, 0); err != nil {
				return err
			}
		}
		out, _ := l1.Buffer(0, Out("output"))
		chained = make([]byte, out.Size())
		return th.Read(chained, out, 0)
	}))
	must(t, d.Do(bg, func(th *Thread) error {
		if err := setInputs(th, r0); err != nil {
			return err
		}
		if err := th.Execute(r0, 0); err != nil {
			return err
		}
		o0, _ := r0.Buffer(0, Out("output"))
		h := make([]byte, o0.Size())
		if err := th.Read(h, o0, 0); err != nil {
			return err
		}
		i1, _ := r1.Buffer(0, In("input"))
		if err := th.Write(i1, 0, h); err != nil {
			return err
		}
		mb, _ := r1.Buffer(0, In("mask"))
		if err := th.Write(mb, 0, mask); err != nil {
			return err
		}
		if err := th.Execute(r1, 0); err != nil {
			return err
		}
		o1, _ := r1.Buffer(0, Out("output"))
		viaHost = make([]byte, o1.Size())
		return th.Read(viaHost, o1, 0)
	}))
	if !bytes.Equal(chained, viaHost) {
		t.Fatal("layer 1 output differs between the bound device buffer and the copy through the host")
	}
	if bytes.Equal(chained, make([]byte, len(chained))) {
		t.Fatal("layer outputs are all zero: the comparison proves nothing")
	}

	// A buffer too small for the largest group is refused.
	small, err := d.Alloc(bg, 64)
	must(t, err)
	_, err = d.LoadModel(bg, files[0], &LoadOptions{Bind: map[TensorRef]*Buffer{In("K_cache"): small}})
	if !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("binding a 64-byte K cache = %v", err)
	}
	_, err = d.LoadModel(bg, files[0], &LoadOptions{Share: []TensorRef{Out("nope")}})
	if !errors.Is(err, axcl.ErrNotFound) {
		t.Fatalf("sharing an unknown tensor = %v", err)
	}
	must(t, d.Free(bg, small))
}

func TestCopyHelpers(t *testing.T) {
	b := setup(t, Config{SampleInterval: -1})
	d := b.dev
	a, err := d.Alloc(bg, 256)
	must(t, err)
	c, err := d.Alloc(bg, 256)
	must(t, err)
	must(t, d.Write(bg, a, 10, []byte("hello, card")))
	must(t, d.Copy(bg, c, 100, a, 10, 11))
	got := make([]byte, 11)
	must(t, d.Read(bg, got, c, 100))
	if string(got) != "hello, card" {
		t.Fatalf("round trip with offsets: %q", got)
	}
	must(t, d.Do(bg, func(th *Thread) error { return th.Fill(c, 100, 5, 'x') }))
	must(t, d.Read(bg, got, c, 100))
	if string(got) != "xxxxx, card" {
		t.Fatalf("after Fill: %q", got)
	}
	for name, err := range map[string]error{
		"write past end": d.Write(bg, a, 250, make([]byte, 7)),
		"read past end":  d.Read(bg, make([]byte, 2), a, 255),
		"copy past end":  d.Copy(bg, c, 200, a, 0, 57),
		"offset > size":  d.Read(bg, nil, a, 257),
	} {
		if !errors.Is(err, ErrOutOfRange) {
			t.Errorf("%s: %v, want ErrOutOfRange", name, err)
		}
	}
	must(t, d.Free(bg, a))
	if err := d.Write(bg, a, 0, []byte("x")); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("write to a freed buffer: %v", err)
	}
}

func TestBudgetRefusal(t *testing.T) {
	b := setup(t, Config{SampleInterval: -1, CMMBudget: 3 << 20})
	d := b.dev
	files := layerFiles(t)
	if _, err := d.LoadModel(bg, files[0], nil); err != nil {
		t.Fatalf("a 1 MiB layer within a 3 MiB budget: %v", err)
	}
	used, _ := d.CMMUsed(bg)
	big := tinyLayerSpec(1)
	big.WeightBytes = 8 << 20
	path := writeSpec(t, t.TempDir(), "big_layer.axmodel", big)
	_, err := d.LoadModel(bg, path, nil)
	var be *BudgetError
	if !errors.Is(err, ErrBudget) || !errors.As(err, &be) {
		t.Fatalf("loading 8 MiB into a 3 MiB budget = %v, want a BudgetError", err)
	}
	if be.What != "model big_layer" || be.Need < 8<<20 || be.Free != 3<<20-used || be.Budget != 3<<20 {
		t.Errorf("BudgetError %+v (used before %d)", be, used)
	}
	for _, part := range []string{"big_layer", "8.0 MiB", "3.0 MiB budget", "free"} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("message %q lacks %q", err, part)
		}
	}
	if after, _ := d.CMMUsed(bg); after != used {
		t.Errorf("a refused load changed the CMM used from %d to %d", used, after)
	}
	if _, err := d.Alloc(bg, 4<<20); !errors.Is(err, ErrBudget) {
		t.Errorf("Alloc past the budget = %v", err)
	}
	// Buffers count too: a layer whose weights fit but whose buffers do not.
	tight := setupTight(t, b.lib, files[1])
	var be2 *BudgetError
	if !errors.As(tight, &be2) {
		t.Errorf("weights fit, buffers do not: %v", tight)
	}
}

// setupTight opens a second device with a budget of exactly the weights of
// one layer and loads it.
func setupTight(t *testing.T, lib, file string) error {
	d, err := Open(bg, Config{Library: lib, SampleInterval: -1, CMMBudget: 1 << 20})
	must(t, err)
	defer d.Close(bg)
	_, err = d.LoadModel(bg, file, nil)
	return err
}

func TestInspect(t *testing.T) {
	lib := setup(t, Config{SampleInterval: -1}).lib
	spec := tinyLayerSpec(0)
	info, err := Inspect(bg, Config{Library: lib}, layerFiles(t)[0])
	must(t, err)
	if len(info.Groups) != spec.Groups || info.Compiler != spec.Compiler || info.CMMBytes != spec.WeightBytes {
		t.Fatalf("Inspect: %d groups, compiler %q, cmm %d", len(info.Groups), info.Compiler, info.CMMBytes)
	}
	for g, grp := range info.Groups {
		if len(grp.Inputs) != len(spec.Inputs) || len(grp.Outputs) != len(spec.Outputs) {
			t.Fatalf("group %d: %d inputs, %d outputs", g, len(grp.Inputs), len(grp.Outputs))
		}
		for i, tn := range grp.Inputs {
			st := spec.Inputs[i]
			if tn.Name != st.Name || tn.DataType.String() != st.DType.String() || tn.Size != uint64(st.Elems(g)*st.DType.Size()) {
				t.Errorf("group %d input %d: %+v vs spec %+v", g, i, tn, st)
			}
		}
	}
	if _, err := Inspect(bg, Config{Library: lib}, "/nonexistent.axmodel"); err == nil {
		t.Fatal("Inspect of a missing file succeeded")
	}
}

func tinyLayerSpec(i int) *cardsim.ModelSpec {
	s := tinySpec()
	return s.LayerSpec(i)
}
