package npu

import (
	"sync"
	"testing"

	"github.com/kiln-project/kiln/worker/axcl"
)

// TestBindingsRecordsWhatWasBound: tensors and host files come back in the
// order recorded, with copies of their dims; a nil collector records nothing
// (the worker passes none); concurrent loaders may share one.
func TestBindingsRecordsWhatWasBound(t *testing.T) {
	var nilB *Bindings
	nilB.Tensor("a.axmodel", "input", "", 0, axcl.Input, axcl.Tensor{Name: "input"})
	nilB.File("table.bin", "embedding table")
	if nilB.List() != nil {
		t.Fatal("a nil collector listed bindings")
	}

	var b Bindings
	dims := []int{1, 128, 64}
	b.Tensor("l0.axmodel", "K_cache", "prefill 128 tokens, history 0", 3, axcl.Input,
		axcl.Tensor{Index: 3, Name: "K_cache_3", DataType: axcl.TypeBF16, Dims: dims})
	b.File("model.embed_tokens.weight.bfloat16.bin", "embedding table")
	dims[1] = 7
	got := b.List()
	want := []Binding{
		{Model: "l0.axmodel", Role: "K_cache", Use: "prefill 128 tokens, history 0", Group: 3, Dir: "input", Index: 3,
			Name: "K_cache_3", DataType: "bf16", Dims: []int{1, 128, 64}},
		{Model: "model.embed_tokens.weight.bfloat16.bin", Role: "embedding table", Group: -1, Index: -1},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d bindings, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Model != w.Model || g.Role != w.Role || g.Use != w.Use || g.Group != w.Group || g.Dir != w.Dir ||
			g.Index != w.Index || g.Name != w.Name || g.DataType != w.DataType || len(g.Dims) != len(w.Dims) ||
			(len(w.Dims) > 0 && g.Dims[1] != w.Dims[1]) {
			t.Errorf("binding %d = %+v, want %+v", i, g, w)
		}
	}

	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.File("f", string(rune('a'+i)))
		}()
	}
	wg.Wait()
	if n := len(b.List()); n != 10 {
		t.Fatalf("%d bindings after 8 concurrent adds, want 10", n)
	}
}
