package card

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/sd"
)

// ImageHandler serves image jobs with a Stable Diffusion pipeline resident on
// the card: it turns the job into an sd.Request (a random seed when the job
// has none), sends a progress event after every step when the job asks for
// them, and returns the PNG with its token count and timings. A request the
// package cannot serve (steps, strength, a width or height other than the
// one size the package makes, an init image that is not a decodable
// PNG/JPEG, too large, too stretched, or img2img without a VAE encoder) ends
// with an invalid_request code naming the field and the limit; a device
// error is transient and the job is retried. The result names the seed, the
// steps, the strength and the size it was made with.
func ImageHandler(p *sd.Pipeline, log *slog.Logger) worker.Handler[schema.ImageJob] {
	if log == nil {
		log = slog.Default()
	}
	return &imageHandler{p: p, log: log}
}

type imageHandler struct {
	p   *sd.Pipeline
	log *slog.Logger
}

func (h *imageHandler) Handle(ctx context.Context, job *worker.Job[schema.ImageJob]) (*schema.Result, error) {
	a := job.Args
	req := &sd.Request{Prompt: a.Prompt, Steps: a.Steps, InitImage: a.InitImage, Strength: a.Strength, Width: a.Width, Height: a.Height}
	if a.Seed != nil {
		req.Seed = *a.Seed
	} else {
		req.Seed = uint64(rand.Uint32()) // only 32 bits count
	}
	var progress func(step, steps int) error
	if a.Progress {
		progress = func(step, steps int) error {
			if err := job.Progress(step, steps); err != nil {
				// A lost progress event is not worth the image.
				h.log.Debug("progress event not sent", "job", a.ID, "err", err)
			}
			return nil
		}
	}
	res, err := h.p.Generate(ctx, req, progress)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var re *sd.RequestError
		if errors.As(err, &re) {
			return nil, schema.Errorf(imageErrorCode(re.Err), re.Field, "%s", re.Msg)
		}
		return nil, err
	}
	tm := res.Timings
	h.log.Info("image generated", "job", a.ID, "seed", req.Seed, "steps", len(res.Timesteps), "img2img", len(a.InitImage) > 0,
		"bytes", len(res.PNG), "total_ms", tm.Total.Milliseconds(), "device_ms", tm.Device.Milliseconds(),
		"host_ms", tm.Host().Milliseconds(), "unet_ms", tm.UNet.Milliseconds(), "vae_decoder_ms", tm.VAEDecoder.Milliseconds(),
		"image_ms", tm.Image.Milliseconds())
	out := &schema.Result{Image: res.PNG, Mime: "image/png", Seed: &req.Seed,
		Diffusion: &schema.Diffusion{Steps: res.Steps, Strength: res.Strength, Width: res.Width, Height: res.Height}}
	out.Usage.PromptTokens = res.Tokens
	if !a.Progress { // the worker measures the first step from the progress event otherwise
		out.Usage.TTFTMS = tm.FirstStep.Milliseconds()
	}
	return out, nil
}

func imageErrorCode(kind error) schema.ErrorCode {
	switch {
	case errors.Is(kind, sd.ErrOverLimit):
		return schema.CodeOverLimit
	case errors.Is(kind, sd.ErrBadImage):
		return schema.CodeBadValue
	case errors.Is(kind, sd.ErrUnsupported):
		return schema.CodeUnsupported
	default:
		return schema.CodeOutOfRange
	}
}
