package card

import (
	"context"
	"log/slog"
	"os"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker/llm"
	"github.com/kiln-project/kiln/worker/npu"
)

// llmRuntime serves chat model packages (the Axera LLM layout: Qwen3,
// Qwen2.5, Llama-style, the text part of the VLMs) on the card.
func llmRuntime() modelRuntime {
	return modelRuntime{name: "llm", kind: schema.KindChat, detect: llm.Detect, open: openLLM}
}

func openLLM(ctx context.Context, dev *npu.Device, model, dir string, log *slog.Logger, bind *npu.Bindings, slots int) (*servedModel, error) {
	m, err := llm.Load(ctx, dev, dir, &llm.Options{
		Logger:   log, // Load adds the package's model name
		Bindings: bind,
		// The escape hatch when `kiln card probe kv-inplace` finds in-place
		// K/V binds wrong on this card (docs/card.md).
		KVStaging: os.Getenv("KILN_KV_STAGING") == "1",
		// More than the CMM budget holds fails the load with the figures
		// (*llm.SlotBudgetError): the package is refused, the others serve.
		Slots: slots,
		Progress: func(done, total int) {
			if done == total || done%8 == 0 {
				log.Info("loading chat model", "model", model, "loaded", done, "of", total)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	return &servedModel{
		chat:   ChatHandler(m, log.With("model", model)),
		cmmMiB: int((m.CMMBytes() + 1<<20 - 1) >> 20),
		close:  m.Close,
		slots:  m.Slots,
	}, nil
}
