package card

import (
	"cmp"
	"path/filepath"
	"slices"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker/llm"
)

// The load order: every engine built by `pulsar2 build` (the ONNX path: the
// SD text encoder, UNet and VAE, vision encoders) loads before any engine
// built by `pulsar2 llm_build` (decoder layers, post). In the field, loading
// an ONNX-built engine after llm_build engines has dropped the card off the
// link ("recv dma size 0"), on several runtime versions; the other order is
// fine (card-field-notes.md §2, woolcoxm FINDINGS "BACKEND-INIT DEBUG"). The
// rule holds at start and after every reset, because both load through
// loadAll in c.order.
//
// Packages sort by the builds of their engines: ONNX-only packages (SD)
// first, then packages with both (a vision-language model: llm.Load loads
// its vision encoder before its layers), then LLM-only packages, each class
// in name order. Two packages with both builds cannot both keep the rule;
// loadOrder says so in the log. The same order puts every chat package
// after the image packages, so a chat model's K/V slots take what the CMM
// budget leaves after the other resident models: slots that do not fit
// refuse the chat package (with the figures), not an image model.

// engineBuild is how a package's engine files were built.
type engineBuild int

const (
	onnxBuilt engineBuild = 1 << iota // pulsar2 build
	llmBuilt                          // pulsar2 llm_build
)

// builds is the set of engine builds of the package at dir.
func builds(dir string) engineBuild {
	rt := runtimeFor(dir)
	switch {
	case rt == nil:
		return 0
	case rt.kind == schema.KindImage:
		return onnxBuilt
	}
	if p, err := llm.ReadPackage(dir); err == nil && p.Vision != "" {
		return onnxBuilt | llmBuilt
	}
	return llmBuilt
}

// loadRank orders the builds: ONNX only, both, llm_build only.
func loadRank(b engineBuild) int {
	switch b {
	case onnxBuilt:
		return 0
	case onnxBuilt | llmBuilt:
		return 1
	}
	return 2
}

// loadOrder sorts the package names of dir into the safe load order and
// reports whether it could keep the rule (false with more than one package
// that has engines of both builds).
func loadOrder(dir string, names []string) (order []string, kept bool) {
	order = slices.Clone(names)
	rank := make(map[string]int, len(names))
	mixed := 0
	for _, n := range order {
		rank[n] = loadRank(builds(filepath.Join(dir, n)))
		if rank[n] == 1 {
			mixed++
		}
	}
	slices.SortStableFunc(order, func(a, b string) int {
		return cmp.Or(cmp.Compare(rank[a], rank[b]), cmp.Compare(a, b))
	})
	return order, mixed <= 1
}
