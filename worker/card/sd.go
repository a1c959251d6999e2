package card

import (
	"context"
	"log/slog"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker/npu"
	"github.com/kiln-project/kiln/worker/sd"
)

// sdRuntime serves image model packages (Stable Diffusion 1.5 LCM, the
// AXERA-TECH lcm-lora-sdv1-5 layout) on the card.
func sdRuntime() modelRuntime {
	return modelRuntime{name: "sd", kind: schema.KindImage, detect: sd.Detect, open: openSD}
}

func openSD(ctx context.Context, dev *npu.Device, model, dir string, log *slog.Logger, bind *npu.Bindings, _ int) (*servedModel, error) {
	p, err := sd.Open(ctx, dev, dir, sd.Config{Name: model, Logger: log, Bindings: bind})
	if err != nil {
		return nil, err
	}
	return &servedModel{
		image:  ImageHandler(p, log.With("model", model)),
		cmmMiB: int((p.CMMBytes() + 1<<20 - 1) >> 20),
		close:  p.Close,
	}, nil
}
