package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
)

// dial connects a client command to the broker, once.
func dial(cf *connFlags, e *env) (*nats.Conn, *client.Client, error) {
	opts, err := cf.options()
	if err != nil {
		return nil, nil, err
	}
	opts = append(opts, nats.Name("kiln-cli"), nats.Timeout(5*time.Second), nats.MaxReconnects(-1), nats.ReconnectWait(time.Second))
	nc, err := nats.Connect(cf.url, opts...)
	if errors.Is(err, nats.ErrAuthorization) {
		return nil, nil, fmt.Errorf("connect %s: %w (%w)", cf.url, err, errNoCreds)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("connect %s: %w (is kiln running? `make run` starts it; $%s sets the URL)", cf.url, err, envNATSURL)
	}
	copts := []client.Option{client.WithPrefix(cf.prefix)}
	if cf.clientID != "" {
		copts = append(copts, client.WithClientID(cf.clientID))
	}
	c, err := client.New(nc, copts...)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, c, nil
}

// startJob is what chat and image do before submitting: connect, bound
// ctx by timeout (0: none), and pick the model. done releases it all.
func startJob(ctx context.Context, e *env, cf *connFlags, timeout time.Duration, kind, model string) (context.Context, *client.Client, string, func(), error) {
	nc, c, err := dial(cf, e)
	if err != nil {
		return nil, nil, "", nil, err
	}
	cancel := func() {}
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, timeout)
	}
	done := func() { cancel(); c.Close(); nc.Close() }
	m, err := pickModel(ctx, c, kind, model)
	if err != nil {
		done()
		return nil, nil, "", nil, err
	}
	return ctx, c, m, done, nil
}

// pickModel returns model, or the only live model of kind when model is "".
func pickModel(ctx context.Context, c *client.Client, kind, model string) (string, error) {
	if model != "" {
		return model, nil
	}
	ws, err := c.Workers(ctx)
	if err != nil {
		return "", err
	}
	seen := map[string]bool{}
	var names []string
	for _, w := range ws {
		for _, m := range w.Models {
			if m.Kind == kind && m.Serving() && !seen[m.Name] {
				seen[m.Name] = true
				names = append(names, m.Name)
			}
		}
	}
	switch len(names) {
	case 0:
		return "", fmt.Errorf("%w serves any %s model (kiln status shows the fleet)", client.ErrNoWorker, kind)
	case 1:
		return names[0], nil
	}
	return "", fmt.Errorf("several %s models are served (%s): pick one with --model", kind, strings.Join(names, ", "))
}

func runChat(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "chat", "PROMPT")
	var cf connFlags
	cf.register(fs)
	model := fs.String("model", "", "chat model (default: the only one served)")
	system := fs.String("system", "", "system prompt")
	maxTokens := fs.Int("max-tokens", 0, "most tokens to generate (0: up to the context)")
	temperature := fs.Float64("temperature", -1, "sampling temperature, 0 = greedy (default: the model's)")
	seed := fs.Int64("seed", -1, "sampling seed (default: random)")
	think := fs.Bool("think", false, "let the model think before answering")
	lane := fs.String("lane", schema.LaneNormal, "queue lane: high or normal")
	timeout := fs.Duration("timeout", 0, "give up (and cancel the job) after this long")
	asJSON := fs.Bool("json", false, "print one JSON result instead of streaming")
	if err := parse(fs, args); err != nil {
		return err
	}
	prompt := strings.Join(fs.Args(), " ")
	if prompt == "" {
		fs.Usage()
		return errUsage
	}
	ctx, c, m, done, err := startJob(ctx, e, &cf, *timeout, schema.KindChat, *model)
	if err != nil {
		return err
	}
	defer done()
	job := &schema.ChatJob{JobHeader: schema.JobHeader{Model: m, Lane: *lane}, MaxTokens: *maxTokens, Think: *think}
	if *system != "" {
		job.Messages = append(job.Messages, schema.Message{Role: "system", Content: *system})
	}
	job.Messages = append(job.Messages, schema.Message{Role: "user", Content: prompt})
	if *temperature >= 0 {
		job.Temperature = temperature
	}
	if *seed >= 0 {
		s := uint64(*seed)
		job.Seed = &s
	}
	attempt := 0
	res, err := c.Chat(ctx, job, func(ev schema.Event) error {
		if *asJSON {
			return nil
		}
		switch ev.Type {
		case schema.EventStarted:
			if attempt > 0 {
				fmt.Fprintf(e.stderr, "\n[kiln: job restarted on %s, attempt %d; the answer starts over]\n", ev.Worker, ev.Attempt)
			}
			attempt = ev.Attempt
		case schema.EventToken:
			fmt.Fprint(e.stdout, ev.Text)
		}
		return nil
	})
	if *asJSON && res != nil {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if jerr := enc.Encode(res); jerr != nil {
			return jerr
		}
	} else if res != nil {
		fmt.Fprintln(e.stdout)
	}
	return err
}

func runImage(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "image", "PROMPT")
	var cf connFlags
	cf.register(fs)
	model := fs.String("model", "", "image model (default: the only one served)")
	out := fs.String("o", "kiln.png", "output file")
	seed := fs.Int64("seed", -1, "noise seed (default: random)")
	steps := fs.Int("steps", 0, "denoising steps (default: the model's)")
	initPath := fs.String("init", "", "init image for img2img (PNG or JPEG)")
	strength := fs.Float64("strength", 0, "img2img strength 0..1 (default: the model's)")
	lane := fs.String("lane", schema.LaneNormal, "queue lane: high or normal")
	timeout := fs.Duration("timeout", 0, "give up (and cancel the job) after this long")
	asJSON := fs.Bool("json", false, "print one JSON line about the result instead of a progress bar")
	if err := parse(fs, args); err != nil {
		return err
	}
	prompt := strings.Join(fs.Args(), " ")
	if prompt == "" && *initPath == "" {
		fs.Usage()
		return errUsage
	}
	ctx, c, m, done, err := startJob(ctx, e, &cf, *timeout, schema.KindImage, *model)
	if err != nil {
		return err
	}
	defer done()
	job := &schema.ImageJob{JobHeader: schema.JobHeader{Model: m, Lane: *lane}, Prompt: prompt, Steps: *steps, Strength: *strength, Progress: true}
	if *seed >= 0 {
		s := uint64(*seed)
		job.Seed = &s
	}
	if *initPath != "" {
		if job.InitImage, err = os.ReadFile(*initPath); err != nil {
			return fmt.Errorf("init image: %w", err)
		}
	}
	bar := isTerminal(e.stderr) && !*asJSON
	res, err := c.Image(ctx, job, func(ev schema.Event) error {
		if bar && ev.Type == schema.EventProgress && ev.Steps > 0 {
			const width = 30
			n := width * ev.Step / ev.Steps
			fmt.Fprintf(e.stderr, "\r[%s%s] step %d/%d", strings.Repeat("#", n), strings.Repeat(".", width-n), ev.Step, ev.Steps)
		}
		return nil
	})
	if bar {
		fmt.Fprintln(e.stderr)
	}
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out, res.Image, 0o644); err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(map[string]any{"job_id": res.JobID, "status": res.Status, "file": *out,
			"bytes": len(res.Image), "mime": res.Mime, "worker": res.Worker, "usage": res.Usage})
	}
	fmt.Fprintf(e.stdout, "wrote %s (%d bytes, %s, %d ms on %s)\n", *out, len(res.Image), res.Mime, res.Usage.TotalMS, res.Worker)
	return nil
}

// dialForJob parses the flags and the one JOB_ID argument of cancel and
// result, then connects.
func dialForJob(e *env, fs *flag.FlagSet, cf *connFlags, args []string) (*nats.Conn, *client.Client, error) {
	if err := parse(fs, args); err != nil {
		return nil, nil, err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return nil, nil, errUsage
	}
	return dial(cf, e)
}

func runCancel(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "cancel", "JOB_ID")
	var cf connFlags
	cf.register(fs)
	owner := fs.String("client", "", "the client whose job it is, for an operator (default: this client's own, --client-id)")
	nc, c, err := dialForJob(e, fs, &cf, args)
	if err != nil {
		return err
	}
	defer nc.Close()
	// A cancel names the job's client: only that client's job of that id
	// stops, and broker permissions let a controller name only itself.
	if *owner != "" {
		err = c.CancelFor(ctx, *owner, fs.Arg(0))
	} else {
		err = c.Cancel(ctx, fs.Arg(0))
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "cancel requested for %s\n", fs.Arg(0))
	return nil
}

func runResult(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "result", "JOB_ID")
	var cf connFlags
	cf.register(fs)
	out := fs.String("o", "", "write the result's image to this file")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	nc, c, err := dialForJob(e, fs, &cf, args)
	if err != nil {
		return err
	}
	defer nc.Close()
	res, err := c.AnyResult(ctx, fs.Arg(0))
	if errors.Is(err, client.ErrNotFound) {
		return fmt.Errorf("no stored result for %s: unknown, still queued or running, or older than the results' max age", fs.Arg(0))
	}
	if err != nil {
		return err
	}
	if *out != "" && len(res.Image) > 0 {
		if err := os.WriteFile(*out, res.Image, 0o644); err != nil {
			return err
		}
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	fmt.Fprintf(e.stdout, "job %s: %s on %s (attempt %d), queued %d ms, ran %d ms\n",
		res.JobID, res.Status, res.Worker, res.Attempt, res.Usage.QueueMS, res.Usage.TotalMS)
	if res.Error != nil {
		fmt.Fprintf(e.stdout, "error: %s\n", res.Error)
	}
	if res.Text != "" {
		fmt.Fprintln(e.stdout, res.Text)
	}
	if len(res.Image) > 0 {
		fmt.Fprintf(e.stdout, "image: %d bytes %s\n", len(res.Image), res.Mime)
	}
	if res.Status != schema.StatusOK {
		return fmt.Errorf("job %s", res.Status)
	}
	return nil
}
