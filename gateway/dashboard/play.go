package dashboard

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
)

// playRequest is the body of the playground's POSTs.
type playRequest struct {
	Model  string `json:"model"`
	Prompt string `json:"prompt"`
	// MaxTokens bounds a chat answer (default 256).
	MaxTokens int `json:"max_tokens,omitempty"`
	// Steps is an image's step count (default: the model's).
	Steps int `json:"steps,omitempty"`
}

// playResult is the playground's last event.
type playResult struct {
	JobID        string        `json:"job_id"`
	Status       string        `json:"status"`
	Text         string        `json:"text,omitempty"`
	FinishReason string        `json:"finish_reason,omitempty"`
	Image        string        `json:"image,omitempty"` // a data: URI
	Error        *schema.Error `json:"error,omitempty"`
	Usage        schema.Usage  `json:"usage"`
	Worker       string        `json:"worker,omitempty"`
}

// playEvent is one job event as the page reads it.
type playEvent struct {
	JobID  string `json:"job_id"`
	Text   string `json:"text,omitempty"`
	Step   int    `json:"step,omitempty"`
	Steps  int    `json:"steps,omitempty"`
	Worker string `json:"worker,omitempty"`
}

func (d *Dashboard) readPlay(w http.ResponseWriter, r *http.Request) (playRequest, bool) {
	var req playRequest
	if !d.readJSON(w, r, &req) {
		return req, false
	}
	if param, msg := req.check(); param != "" {
		httpError(w, http.StatusBadRequest, param, msg)
		return req, false
	}
	return req, true
}

// maxPrompt bounds a playground prompt (the queue's own limits are
// larger; the playground is for trying a model out).
const maxPrompt = 8 << 10

// check names the field of req that is wrong and why ("" when none is).
func (req playRequest) check() (param, msg string) {
	switch {
	case !schema.ValidToken(req.Model):
		return "model", "model must be a model name (letters, digits, '-' and '_', at most 128 bytes)"
	case strings.TrimSpace(req.Prompt) == "":
		return "prompt", "prompt is empty"
	case len(req.Prompt) > maxPrompt:
		return "prompt", fmt.Sprintf("prompt is %d bytes, at most %d", len(req.Prompt), maxPrompt)
	case req.MaxTokens < 0 || req.MaxTokens > 4096:
		return "max_tokens", "max_tokens must be 0 (256) to 4096"
	case req.Steps < 0 || req.Steps > 50:
		return "steps", "steps must be 0 (the model's) to 50"
	}
	return "", ""
}

// playChat streams a chat answer: `queued` {job_id}, `started` (discard
// what came before), `token` {text}..., then `result`.
func (d *Dashboard) playChat(w http.ResponseWriter, r *http.Request) {
	req, ok := d.readPlay(w, r)
	if !ok {
		return
	}
	if req.MaxTokens <= 0 {
		req.MaxTokens = 256
	}
	job := &schema.ChatJob{JobHeader: schema.JobHeader{Model: req.Model},
		Messages: []schema.Message{{Role: "user", Content: req.Prompt}}, MaxTokens: req.MaxTokens}
	d.play(w, r, job)
}

// playImage makes an image: `queued` {job_id}, `started`, `progress`
// {step, steps}..., then `result` with the image as a data: URI.
func (d *Dashboard) playImage(w http.ResponseWriter, r *http.Request) {
	req, ok := d.readPlay(w, r)
	if !ok {
		return
	}
	d.play(w, r, &schema.ImageJob{JobHeader: schema.JobHeader{Model: req.Model}, Prompt: req.Prompt, Steps: req.Steps, Progress: true})
}

// play submits job as the dashboard's client and streams its events. A
// page that goes away cancels the job.
func (d *Dashboard) play(w http.ResponseWriter, r *http.Request, job schema.Job) {
	ctx := r.Context()
	p, err := d.cfg.Client.Submit(ctx, job)
	if err != nil {
		var je *client.JobError
		switch {
		case errors.As(err, &je) && je.Result != nil && je.Result.Error != nil:
			httpError(w, http.StatusBadRequest, je.Result.Error.Field, je.Result.Error.Message)
		case errors.Is(err, client.ErrNoWorker):
			httpError(w, http.StatusServiceUnavailable, "model", err.Error())
		case errors.Is(err, client.ErrQueueFull):
			w.Header().Set("Retry-After", "5")
			httpError(w, http.StatusTooManyRequests, "", err.Error())
		default:
			httpError(w, http.StatusBadGateway, "", err.Error())
		}
		return
	}
	defer p.Close()
	sse, ok := startSSE(w)
	if !ok {
		return
	}
	_ = sse.send("queued", playEvent{JobID: p.ID})
	res, err := p.Wait(ctx, func(ev schema.Event) error {
		switch ev.Type {
		case schema.EventStarted:
			return sse.send("started", playEvent{JobID: p.ID, Worker: ev.Worker})
		case schema.EventToken:
			return sse.send("token", playEvent{JobID: p.ID, Text: ev.Text})
		case schema.EventProgress:
			return sse.send("progress", playEvent{JobID: p.ID, Step: ev.Step, Steps: ev.Steps})
		}
		return nil
	})
	if ctx.Err() != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if err := p.Cancel(cctx); err != nil {
			d.log.Warn("playground job not cancelled", "job", p.ID, "err", err)
		}
		return
	}
	if res == nil {
		_ = sse.send("result", playResult{JobID: p.ID, Status: schema.StatusError,
			Error: &schema.Error{Code: schema.CodeInternal, Message: err.Error()}})
		return
	}
	out := playResult{JobID: p.ID, Status: res.Status, Text: res.Text, FinishReason: res.FinishReason,
		Error: res.Error, Usage: res.Usage, Worker: res.Worker}
	if len(res.Image) > 0 {
		mime := res.Mime
		if mime == "" {
			mime = "image/png"
		}
		out.Image = "data:" + mime + ";base64," + base64.StdEncoding.EncodeToString(res.Image)
	}
	_ = sse.send("result", out)
}
