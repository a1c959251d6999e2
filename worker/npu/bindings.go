package npu

import (
	"sync"

	"github.com/kiln-project/kiln/worker/axcl"
)

// Binding is one thing a runtime bound to one of its roles while loading a
// package: a tensor of a model file ("layer input K_cache" → input 3
// "K_cache" in shape group 2) or a host-side file (the embedding table).
// kiln models check prints them.
type Binding struct {
	// Model is the model or data file, as the runtime opened it.
	Model string `json:"model"`
	// Role is what the runtime uses it for, in the runtime's words
	// ("K_cache", "unet input sample", "embedding table").
	Role string `json:"role"`
	// Use says which step runs the group: "decode", "prefill history 128",
	// "decode, unused (context 255)"; "" when the model has one group.
	Use string `json:"use,omitempty"`
	// Group is the shape group; -1 when the binding holds in every group.
	Group int `json:"group"`
	// Dir is "input" or "output"; "" for a host file.
	Dir string `json:"dir,omitempty"`
	// Index, Name, DataType and Dims describe the tensor (Index -1 for a
	// host file).
	Index    int    `json:"index"`
	Name     string `json:"name,omitempty"`
	DataType string `json:"dtype,omitempty"`
	Dims     []int  `json:"dims,omitempty"`
}

// Bindings collects what runtimes bind while loading: pass one to a loader
// and read it after, whether the load succeeded or not (a refused package
// shows how far binding got). A nil *Bindings records nothing. Safe for
// concurrent use.
type Bindings struct {
	mu   sync.Mutex
	list []Binding
}

// Tensor records that tensor t of model file model, direction dir, in shape
// group group (-1: every group) is bound to role.
func (b *Bindings) Tensor(model, role, use string, group int, dir axcl.Direction, t axcl.Tensor) {
	b.add(Binding{Model: model, Role: role, Use: use, Group: group, Dir: dir.String(), Index: t.Index,
		Name: t.Name, DataType: t.DataType.String(), Dims: append([]int(nil), t.Dims...)})
}

// File records that the host-side file path is bound to role.
func (b *Bindings) File(path, role string) {
	b.add(Binding{Model: path, Role: role, Group: -1, Index: -1})
}

func (b *Bindings) add(x Binding) {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.list = append(b.list, x)
	b.mu.Unlock()
}

// List returns a copy of the bindings in the order they were recorded.
func (b *Bindings) List() []Binding {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Binding(nil), b.list...)
}
