package llm

import (
	"fmt"
	"path/filepath"

	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/npu"
)

// What Load binds, recorded for kiln models check (Options.Bindings): every
// role of the decoder layers in every shape group, the post model's input
// and logits, the embedding table and the vision encoder's image input and
// rows. Each loader records what it resolved, where it resolved it.

// rel is path relative to the package folder, for the report.
func (p *Package) rel(path string) string {
	if r, err := filepath.Rel(p.Dir, path); err == nil {
		return filepath.ToSlash(r)
	}
	return path
}

// recordLayer records the layer tensors of every group (those of layer 0;
// Load checks that every layer has the same ones) and what runs each group.
func (p *Package) recordLayer(b *npu.Bindings, s *Shape, ios []layerIO) {
	if b == nil {
		return
	}
	file := p.rel(p.Layers[0])
	if len(p.Layers) > 1 {
		file += fmt.Sprintf(" (and layers 1..%d alike)", len(p.Layers)-1)
	}
	for g := range ios {
		use := fmt.Sprintf("decode, context %d", s.Context)
		switch {
		case g != s.Decode && elems(ios[g].idx()) == 1:
			use = fmt.Sprintf("decode, unused (context %d < %d)", elems(ios[g].mask())-1, s.Context)
		case g != s.Decode:
			for _, pg := range s.Prefill {
				if pg.Index == g {
					use = fmt.Sprintf("prefill %d tokens, history %d", s.Chunk, pg.History)
				}
			}
		}
		for i, t := range ios[g] {
			b.Tensor(file, layerRoles[i].name, use, g, layerRoles[i].dir, *t)
		}
	}
}

// recordPost records the post model's input and logits.
func (p *Package) recordPost(b *npu.Bindings, groups []axcl.ShapeGroup, logits *axcl.Tensor) {
	b.Tensor(p.rel(p.Post), "post input (last hidden row)", "", -1, axcl.Input, groups[0].Inputs[0])
	b.Tensor(p.rel(p.Post), "logits", "", -1, axcl.Output, *logits)
	b.File(p.rel(p.Embed), "embedding table (bf16 rows, read on the host)")
}

// recordVision records the vision encoder's image input, its rows and, for
// Qwen3-VL, the deepstack features added after decoder layers 0, 1, 2….
func (p *Package) recordVision(b *npu.Bindings, groups []axcl.ShapeGroup, vb visionBinding) {
	file, input := p.rel(p.Vision), "image (NHWC uint8)"
	if p.Patches != nil {
		input = "image patches (uint8)"
	}
	b.Tensor(file, input, "", -1, axcl.Input, groups[0].Inputs[vb.in])
	b.Tensor(file, "image rows (replace the placeholder tokens)", "", -1, axcl.Output, groups[0].Outputs[vb.out])
	for k, i := range vb.deep {
		b.Tensor(file, fmt.Sprintf("deepstack feature (added after decoder layer %d)", k), "", -1, axcl.Output, groups[0].Outputs[i])
	}
}
