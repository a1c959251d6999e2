package card

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	_ "image/jpeg" // chat images
	_ "image/png"
	"log/slog"
	"math"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/llm"
	tok "github.com/kiln-project/kiln/worker/tokenize"
)

// ChatHandler serves chat jobs with an LLM resident on the card: it renders
// the messages with the package's chat template, generates with the job's
// sampling settings (the package's post_config.json for those it leaves
// out; a random seed when it has none), streams the reply as token events of
// whole UTF-8 characters, cuts it at the first stop string, and returns the
// text with its token counts and timings.
//
// A prompt longer than the model's context allows is refused with
// over_limit on "messages", naming the limit. max_tokens beyond what the
// context leaves after the prompt is clamped: the reply then ends with
// finish_reason "length" at the context end. The result names the seed
// and the sampling the reply was made with. Images (PNG or JPEG) go to
// the package's vision encoder, scaled to its input size, with the
// placeholder tokens it replaces in the message; a model without one
// refuses them with unsupported, an undecodable image is bad_value. A
// device error is transient and the job is retried; a cancelled job returns
// the text so far.
func ChatHandler(m *llm.Model, log *slog.Logger) worker.Handler[schema.ChatJob] {
	if log == nil {
		log = slog.Default()
	}
	return &chatHandler{m: m, bpe: m.Tokenizer(), log: log, name: m.Package().Name, family: templateFamily(m.Package().TokenizerType)}
}

type chatHandler struct {
	m      *llm.Model
	bpe    *tok.BPE
	log    *slog.Logger
	name   string
	family string // "qwen3", "chatml" or "smolvlm2"
}

// templateFamily picks the chat template from config.json's tokenizer_type.
func templateFamily(tokenizerType string) string {
	t := strings.ToLower(tokenizerType)
	switch {
	case strings.Contains(t, "smol"):
		return "smolvlm2"
	case strings.HasPrefix(t, "qwen3-vl"):
		// Qwen3-VL-Instruct's template has no think block (chatml).
		return "chatml"
	case t == "" || strings.HasPrefix(t, "qwen3"):
		return "qwen3"
	default:
		return "chatml" // Qwen2.5 and other <|im_start|> models: no think block
	}
}

// render turns the job's messages into the prompt text; with a leading
// system message it also returns the text of the system turn alone, the
// part worth keeping in the prefix cache.
func (h *chatHandler) render(a *schema.ChatJob) (prompt, system string) {
	msgs := make([]tok.Message, len(a.Messages))
	v, _ := h.m.Vision()
	for i, m := range a.Messages {
		msgs[i] = tok.Message{Role: m.Role, Content: m.Content, Images: len(m.Images)}
		if len(m.Images) > 0 && h.family != "smolvlm2" {
			msgs[i].Content = strings.Repeat(h.imageText(v), len(m.Images)) + m.Content
		}
	}
	if h.family == "smolvlm2" {
		return tok.RenderSmolVLM2(msgs, tok.TemplateOptions{AddGenerationPrompt: true, ImageTokens: v.Tokens}), ""
	}
	opts := tok.TemplateOptions{AddGenerationPrompt: true, Think: a.Think || h.family == "chatml"}
	prompt = tok.RenderQwen3(msgs, opts)
	if len(msgs) > 0 && msgs[0].Role == "system" {
		system = tok.RenderQwen3(msgs[:1], tok.TemplateOptions{})
	}
	return prompt, system
}

// imageText is one image's placeholder text in a Qwen-style prompt:
// <|vision_start|>, the placeholder token Tokens times, <|vision_end|> (the
// markers when the tokenizer has them).
func (h *chatHandler) imageText(v llm.Vision) string {
	pad, _ := h.bpe.TokenBytes(v.ImageTokenID)
	var sb strings.Builder
	if _, ok := h.bpe.TokenID("<|vision_start|>"); ok {
		sb.WriteString("<|vision_start|>")
	}
	sb.WriteString(strings.Repeat(string(pad), v.Tokens))
	if _, ok := h.bpe.TokenID("<|vision_end|>"); ok {
		sb.WriteString("<|vision_end|>")
	}
	return sb.String()
}

// imageField names the k-th image of the job (in prompt order), e.g.
// "messages[2].images[0]".
func imageField(a *schema.ChatJob, k int) string {
	for i, m := range a.Messages {
		if k < len(m.Images) {
			return fmt.Sprintf("messages[%d].images[%d]", i, k)
		}
		k -= len(m.Images)
	}
	return "messages"
}

// maxImagePixels bounds a decoded image (a small file can declare a huge one).
const maxImagePixels = 40 << 20

// images decodes the job's images (PNG or JPEG) and scales each to the
// encoder's size, in prompt order. A model without a vision encoder refuses
// them.
func (h *chatHandler) images(a *schema.ChatJob) ([][]byte, *schema.Error) {
	v, ok := h.m.Vision()
	var out [][]byte
	for i, msg := range a.Messages {
		for k, b := range msg.Images {
			field := fmt.Sprintf("messages[%d].images[%d]", i, k)
			if !ok {
				return nil, schema.Errorf(schema.CodeUnsupported, fmt.Sprintf("messages[%d].images", i),
					"model %s takes text only; send the message without images", h.name)
			}
			cfg, _, err := image.DecodeConfig(bytes.NewReader(b))
			if err != nil {
				return nil, schema.Errorf(schema.CodeBadValue, field, "not a PNG or JPEG image: %v", err)
			}
			if cfg.Width*cfg.Height > maxImagePixels {
				return nil, schema.Errorf(schema.CodeOverLimit, field, "%d×%d pixels, at most %d allowed", cfg.Width, cfg.Height, maxImagePixels)
			}
			img, _, err := image.Decode(bytes.NewReader(b))
			if err != nil {
				return nil, schema.Errorf(schema.CodeBadValue, field, "not a PNG or JPEG image: %v", err)
			}
			out = append(out, resizeRGB(img, v.Width, v.Height))
		}
	}
	return out, nil
}

// resizeRGB scales img to w×h with bilinear sampling (pixel centres
// aligned) and returns its RGB bytes, row by row.
func resizeRGB(img image.Image, w, h int) []byte {
	b := img.Bounds()
	sw, sh := b.Dx(), b.Dy()
	out := make([]byte, 0, w*h*3)
	at := func(x, y int) [3]float64 {
		r, g, bl, _ := img.At(b.Min.X+min(max(x, 0), sw-1), b.Min.Y+min(max(y, 0), sh-1)).RGBA()
		return [3]float64{float64(r >> 8), float64(g >> 8), float64(bl >> 8)}
	}
	for y := range h {
		fy := (float64(y)+0.5)*float64(sh)/float64(h) - 0.5
		y0 := int(math.Floor(fy))
		ty := fy - float64(y0)
		for x := range w {
			fx := (float64(x)+0.5)*float64(sw)/float64(w) - 0.5
			x0 := int(math.Floor(fx))
			tx := fx - float64(x0)
			p00, p10, p01, p11 := at(x0, y0), at(x0+1, y0), at(x0, y0+1), at(x0+1, y0+1)
			for c := range 3 {
				top := p00[c]*(1-tx) + p10[c]*tx
				bot := p01[c]*(1-tx) + p11[c]*tx
				out = append(out, byte(math.Round(top*(1-ty)+bot*ty)))
			}
		}
	}
	return out
}

// sampling maps the job's settings over the package defaults. The vendor
// packages default to greedy (top_k 1); a job that asks for temperature,
// top_p or top_k samples instead, from the package's temperature (1 when
// it has none) and whatever the job sets.
func (h *chatHandler) sampling(a *schema.ChatJob) llm.Sampling {
	d := h.m.Defaults()
	s := d
	if (a.Temperature != nil || a.TopP != nil || a.TopK > 0) && d.Greedy() {
		s = llm.Sampling{Temperature: d.Temperature, TopP: 1, RepetitionPenalty: d.RepetitionPenalty, PenaltyWindow: d.PenaltyWindow}
		if s.Temperature <= 0 {
			s.Temperature = 1
		}
	}
	if a.Temperature != nil {
		s.Temperature = *a.Temperature
	}
	if a.TopP != nil {
		s.TopP = *a.TopP
	}
	if a.TopK > 0 {
		s.TopK = a.TopK
	}
	if a.RepetitionPenalty != nil {
		s.RepetitionPenalty = *a.RepetitionPenalty
	}
	if a.Seed != nil {
		s.Seed = *a.Seed
	} else {
		s.Seed = randomSeed()
	}
	return s
}

// randomSeed draws the seed of a job that has none: 53 bits, so that it
// reads back exactly from a JSON result in any language (a float64 holds
// integers up to 2^53).
func randomSeed() uint64 { return rand.Uint64() >> 11 }

// applied is the sampling s as a result reports it.
func applied(s llm.Sampling) *schema.Sampling {
	out := &schema.Sampling{Greedy: s.Greedy(), Temperature: s.Temperature, TopP: s.TopP, TopK: s.TopK,
		RepetitionPenalty: s.RepetitionPenalty}
	if s.RepetitionPenalty > 0 && s.RepetitionPenalty != 1 {
		out.PenaltyWindow = s.PenaltyWindow
		if out.PenaltyWindow <= 0 {
			out.PenaltyWindow = llm.DefaultPenaltyWindow
		}
	}
	if out.TopP <= 0 {
		out.TopP = 1 // ≤ 0 keeps every token, as 1 does
	}
	return out
}

func (h *chatHandler) Handle(ctx context.Context, job *worker.Job[schema.ChatJob]) (*schema.Result, error) {
	start := time.Now()
	a := job.Args
	images, verr := h.images(a)
	if verr != nil {
		return nil, verr
	}
	text, system := h.render(a)
	ids := h.bpe.Encode(text)
	shape := h.m.Shape()
	if len(ids) > shape.MaxPrompt() {
		return nil, schema.Errorf(schema.CodeOverLimit, "messages",
			"the prompt is %d tokens; model %s holds %d tokens of prompt and reply, so a prompt may have at most %d",
			len(ids), h.name, shape.Context, shape.MaxPrompt())
	}
	req := llm.Request{Prompt: ids, MaxTokens: a.MaxTokens, Sampling: h.sampling(a), Images: images}
	if system != "" {
		sys := h.bpe.Encode(system)
		n := 0
		for n < len(sys) && n < len(ids) && sys[n] == ids[n] {
			n++
		}
		req.CachePrefix = n
	}

	detok := h.bpe.NewDetokenizer()
	stop := llm.NewStopMatcher(a.Stop)
	var out strings.Builder
	var first time.Time
	emit := func(s string) {
		if s == "" {
			return
		}
		if first.IsZero() {
			first = time.Now()
		}
		out.WriteString(s)
		if err := job.Token(s); err != nil {
			h.log.Debug("token event not sent", "job", a.ID, "err", err)
		}
	}
	res, err := h.m.Generate(ctx, req, func(t llm.Token) error {
		piece, hit := stop.Feed(detok.Add(t.ID))
		emit(piece)
		if hit {
			return llm.ErrStop
		}
		return nil
	})
	if err == nil && !stop.Hit() {
		emit(stop.Flush(detok.Flush()))
	}
	seed := req.Sampling.Seed
	result := &schema.Result{Text: out.String(), Seed: &seed, Sampling: applied(req.Sampling)}
	if res != nil {
		result.Usage.PromptTokens = res.PromptTokens
		result.Usage.CompletionTokens = res.CompletionTokens
		result.Usage.TokensPerS = res.TokensPerSecond()
		if !first.IsZero() {
			result.Usage.TTFTMS = max(first.Sub(start).Milliseconds(), 1)
		}
	}
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			result.FinishReason = schema.FinishCancelled
			return result, ctxErr
		}
		var ie *llm.ImageRangeError
		if errors.As(err, &ie) {
			return nil, schema.Errorf(schema.CodeOverLimit, imageField(a, ie.Image), "%v", err)
		}
		if errors.Is(err, llm.ErrImage) {
			return nil, schema.Errorf(schema.CodeBadValue, "messages", "%v", err)
		}
		var le *llm.LimitError
		if errors.As(err, &le) {
			return nil, schema.Errorf(schema.CodeOverLimit, "messages", "the prompt is %d tokens; model %s holds %d tokens of prompt and reply, so a prompt may have at most %d",
				le.Tokens, h.name, le.Context, le.Limit)
		}
		h.log.Warn("chat failed", "job", a.ID, "err", err)
		if errors.Is(err, llm.ErrTokenRange) {
			return nil, worker.Permanent(fmt.Errorf("card: chat on %s: %w", h.name, err)) // the package, not the card
		}
		return nil, fmt.Errorf("card: chat on %s: %w", h.name, err)
	}
	result.FinishReason = schema.FinishStop
	if res.Finish == llm.FinishLength {
		result.FinishReason = schema.FinishLength
	}
	h.log.Info("chat generated", "job", a.ID, "prompt_tokens", res.PromptTokens, "cached_tokens", res.CachedTokens, "restored_tokens", res.RestoredTokens,
		"prefill_chunks", res.Prefill.Chunks, "completion_tokens", res.CompletionTokens, "finish", res.Finish,
		"ttft_ms", res.TTFT.Milliseconds(), "tokens_per_s", fmt.Sprintf("%.1f", res.TokensPerSecond()))
	return result, nil
}
