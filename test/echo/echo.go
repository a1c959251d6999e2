// Package echo holds the test handlers that kiln's queue tests run in place
// of a card: a chat model that streams back the words of the last message
// and an image model that reports progress and returns a tiny PNG. Job
// metadata steers them, so tests can make jobs slow, flaky or broken:
//
//	delay_ms    sleep this long before each token or step
//	fail_until  fail (transiently) every attempt below this number
//	fail        "permanent" fails without retry, "invalid" refuses the job
//	panic       "1" panics in the handler
//	pid         "1" appends the worker's process id to the result text
package echo

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker"
)

// Chat streams "echo:" then each word of the last message as a token; the
// result names the seed (the job's, else 0) and greedy sampling.
var Chat = worker.HandlerFunc[schema.ChatJob](func(ctx context.Context, job *worker.Job[schema.ChatJob]) (*schema.Result, error) {
	md := job.Args.Metadata
	if err := misbehave(md, job.Attempt); err != nil {
		return nil, err
	}
	last := job.Args.Messages[len(job.Args.Messages)-1].Content
	words := append([]string{"echo:"}, strings.Fields(last)...)
	limit := len(words)
	finish := schema.FinishStop
	if job.Args.MaxTokens > 0 && job.Args.MaxTokens < limit {
		limit, finish = job.Args.MaxTokens, schema.FinishLength
	}
	var text strings.Builder
	res := &schema.Result{Usage: schema.Usage{PromptTokens: len(strings.Fields(last))}, Seed: seedOf(job.Args.Seed),
		Sampling: &schema.Sampling{Greedy: true, TopP: 1}} // echo picks no tokens: greedy is the truth
	for i := 0; i < limit; i++ {
		if err := wait(ctx, md); err != nil {
			res.Text = text.String()
			res.Usage.CompletionTokens = i
			return res, err
		}
		tok := words[i]
		if i > 0 {
			tok = " " + tok
		}
		text.WriteString(tok)
		if err := job.Token(tok); err != nil {
			return nil, err
		}
	}
	if md["pid"] == "1" {
		fmt.Fprintf(&text, " [pid %d]", os.Getpid())
	}
	res.Text, res.FinishReason = text.String(), finish
	res.Usage.CompletionTokens = limit
	return res, nil
})

// Image reports each step and returns a 4×4 PNG whose colour comes from the
// seed; the result names the seed, steps and strength (default 4 and 0.5)
// and the size.
var Image = worker.HandlerFunc[schema.ImageJob](func(ctx context.Context, job *worker.Job[schema.ImageJob]) (*schema.Result, error) {
	md := job.Args.Metadata
	if err := misbehave(md, job.Attempt); err != nil {
		return nil, err
	}
	steps := job.Args.Steps
	if steps == 0 {
		steps = 4
	}
	for s := 1; s <= steps; s++ {
		if err := wait(ctx, md); err != nil {
			return nil, err
		}
		if job.Args.Progress {
			if err := job.Progress(s, steps); err != nil {
				return nil, err
			}
		}
	}
	seed := seedOf(job.Args.Seed)
	img := image.NewRGBA(image.Rect(0, 0, 4, 4))
	for i := range img.Pix {
		img.Pix[i] = byte(*seed >> (8 * (i % 8)))
	}
	img.Set(0, 0, color.RGBA{R: 255, A: 255})
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, worker.Permanent(err)
	}
	d := &schema.Diffusion{Steps: steps, Width: 4, Height: 4}
	if len(job.Args.InitImage) > 0 {
		d.Strength = cmp.Or(job.Args.Strength, 0.5)
	}
	return &schema.Result{Image: buf.Bytes(), Mime: "image/png", Seed: seed, Diffusion: d}, nil
})

// seedOf is the job's seed, else 0: what the echo handlers ran with.
func seedOf(seed *uint64) *uint64 {
	s := uint64(0)
	if seed != nil {
		s = *seed
	}
	return &s
}

func misbehave(md map[string]string, attempt int) error {
	if md["panic"] == "1" {
		panic("echo: asked to panic")
	}
	switch md["fail"] {
	case "permanent":
		return worker.Permanent(fmt.Errorf("echo: asked to fail"))
	case "invalid":
		return schema.Errorf(schema.CodeUnsupported, "metadata", "echo: asked to refuse the job")
	}
	if n, err := strconv.Atoi(md["fail_until"]); err == nil && attempt < n {
		return fmt.Errorf("echo: transient failure on attempt %d", attempt)
	}
	return nil
}

func wait(ctx context.Context, md map[string]string) error {
	ms, _ := strconv.Atoi(md["delay_ms"])
	if ms <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// RunWorker serves Chat as model "echo" with cfg on nc until SIGTERM or
// SIGINT, as the worker child process of a cross-process test does, and
// returns the process's exit code: 0 after a clean stop.
func RunWorker(nc *nats.Conn, cfg worker.Config) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if cfg.Chat == nil {
		cfg.Chat = map[string]worker.Handler[schema.ChatJob]{"echo": Chat}
	}
	w, err := worker.New(nc, cfg)
	if err == nil {
		err = w.Run(ctx)
	}
	if err != nil {
		cfg.Logger.Error("worker", "err", err)
		return 1
	}
	return 0
}
