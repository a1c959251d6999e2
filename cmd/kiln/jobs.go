package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode"

	"github.com/nats-io/nats.go"

	"github.com/kiln-project/kiln/broker/topology"
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
		return nil, nil, fmt.Errorf("connect %s: %w (is kiln running? `make run` starts it; --nats or $%s sets the URL, else nats://$%s)",
			cf.url, err, envNATSURL, envListen)
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
		ctx, cancel = context.WithTimeoutCause(ctx, timeout, fmt.Errorf("--timeout %s passed", timeout))
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

// maxStdinPrompt bounds a prompt read from stdin; the job's limits are
// checked after (schema.DefaultLimits).
const maxStdinPrompt = 1 << 20

// readPrompt is the PROMPT arguments joined with spaces, or stdin when the
// one argument is "-" (trailing white space dropped).
func readPrompt(e *env, args []string) (string, error) {
	if len(args) != 1 || args[0] != "-" {
		return strings.Join(args, " "), nil
	}
	b, err := io.ReadAll(io.LimitReader(e.stdin, maxStdinPrompt+1))
	if err != nil {
		return "", fmt.Errorf("reading the prompt from stdin: %w", err)
	}
	if len(b) > maxStdinPrompt {
		return "", fmt.Errorf("the prompt on stdin is over %d bytes", maxStdinPrompt)
	}
	prompt := strings.TrimRightFunc(string(b), unicode.IsSpace)
	if strings.TrimSpace(prompt) == "" {
		return "", errors.New("the prompt on stdin (-) is empty")
	}
	return prompt, nil
}

// readImages reads chat images from paths, refusing before anything is
// sent a file that is neither PNG nor JPEG or is over the job's image
// limit (schema.DefaultLimits; the worker checks again).
func readImages(paths []string) ([][]byte, error) {
	var out [][]byte
	for _, path := range paths {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("--image: %w", err)
		}
		if !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) && !bytes.HasPrefix(b, []byte{0xff, 0xd8, 0xff}) {
			return nil, fmt.Errorf("--image %s: not a PNG or JPEG file", path)
		}
		if limit := schema.DefaultLimits.MaxImageBytes; len(b) > limit {
			return nil, fmt.Errorf("--image %s: %d bytes, at most %d allowed", path, len(b), limit)
		}
		out = append(out, b)
	}
	return out, nil
}

// submit publishes job and says so on stderr, naming the job.
func submit(ctx context.Context, e *env, c *client.Client, job schema.Job) (*client.Pending, error) {
	p, err := c.Submit(ctx, job)
	if err != nil {
		return nil, err
	}
	h := job.Header()
	fmt.Fprintf(e.stderr, "kiln: job %s submitted to %s/%s (%s lane); `kiln cancel %s` stops it\n",
		p.ID, strings.SplitN(job.Kind(), ".", 2)[0], h.Model, h.Lane, p.ID)
	return p, nil
}

// follow waits for a submitted job's result, passing its events to fn.
// When ctx ends first (Ctrl-C, --timeout) it cancels the job and says so,
// naming it and why.
func follow(ctx context.Context, p *client.Pending, fn func(schema.Event) error) (*schema.Result, error) {
	res, err := p.Wait(ctx, fn)
	if res != nil || ctx.Err() == nil {
		return res, err
	}
	why := context.Cause(ctx)
	if cerr := p.Cancel(context.WithoutCancel(ctx)); cerr != nil {
		return nil, fmt.Errorf("job %s abandoned (%v) but not cancelled: %w", p.ID, why, cerr)
	}
	return nil, fmt.Errorf("job %s cancelled: %v", p.ID, why)
}

func runChat(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "chat", "PROMPT... | -")
	var cf connFlags
	cf.register(fs)
	var temperature optFloat
	var seed optUint
	var images pathList
	model := fs.String("model", "", "chat model (default: the only one served)")
	fs.Var(&images, "image", "attach a PNG or JPEG `image` to the prompt (repeatable; a vision model's package)")
	system := fs.String("system", "", "system prompt")
	maxTokens := fs.Int("max-tokens", 0, "most tokens to generate (0: up to the context)")
	fs.Var(&temperature, "temperature", "sampling `temperature` 0..2, 0 = greedy (default: the model's; the packages' is greedy)")
	fs.Var(&seed, "seed", "sampling `seed` (default: the worker draws one; the result names it)")
	think := fs.Bool("think", false, "let the model think before answering")
	lane := fs.String("lane", schema.LaneNormal, "queue lane: high or normal")
	timeout := fs.Duration("timeout", 0, "give up after this long, cancelling the job (0: never)")
	asJSON := fs.Bool("json", false, "print one JSON result instead of streaming")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(e.stderr, "kiln chat: no PROMPT: give it as arguments, or - to read it from stdin")
		fs.Usage()
		return errUsage
	}
	prompt, err := readPrompt(e, fs.Args())
	if err != nil {
		return err
	}
	if strings.TrimSpace(prompt) == "" {
		return errors.New("the PROMPT is empty: the model needs something to answer")
	}
	pictures, err := readImages(images)
	if err != nil {
		return err
	}
	ctx, c, m, done, err := startJob(ctx, e, &cf, *timeout, schema.KindChat, *model)
	if err != nil {
		return err
	}
	defer done()
	job := &schema.ChatJob{JobHeader: schema.JobHeader{Model: m, Lane: *lane}, MaxTokens: *maxTokens, Think: *think,
		Temperature: temperature.v, Seed: seed.v}
	if *system != "" {
		job.Messages = append(job.Messages, schema.Message{Role: "system", Content: *system})
	}
	job.Messages = append(job.Messages, schema.Message{Role: "user", Content: prompt, Images: pictures})
	p, err := submit(ctx, e, c, job)
	if err != nil {
		return err
	}
	defer p.Close()
	attempt, printed := 0, false
	res, err := follow(ctx, p, func(ev schema.Event) error {
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
			printed = true
		}
		return nil
	})
	if *asJSON && res != nil {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if jerr := enc.Encode(res); jerr != nil {
			return jerr
		}
	} else if res != nil || printed {
		fmt.Fprintln(e.stdout)
	}
	return err
}

func runImage(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "image", "PROMPT... | -")
	var cf connFlags
	cf.register(fs)
	var seed optUint
	model := fs.String("model", "", "image model (default: the only one served)")
	out := fs.String("o", "kiln.png", "output file")
	fs.Var(&seed, "seed", "noise `seed`: the same seed and settings give the same image (default: the worker draws one; the result names it)")
	steps := fs.Int("steps", 0, "denoising steps (0: the model's, 4 for SD 1.5 LCM)")
	initPath := fs.String("init", "", "init image for img2img (PNG or JPEG)")
	strength := fs.Float64("strength", 0, "img2img strength 0..1 (0: the model's, 0.5 for SD 1.5 LCM)")
	width := fs.Int("width", 0, "image width in pixels; a model makes one size and refuses others (0: the model's)")
	height := fs.Int("height", 0, "image height in pixels (0: the model's)")
	lane := fs.String("lane", schema.LaneNormal, "queue lane: high or normal")
	timeout := fs.Duration("timeout", 0, "give up after this long, cancelling the job (0: never)")
	asJSON := fs.Bool("json", false, "print one JSON line about the result instead of a progress bar")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 && *initPath == "" {
		fmt.Fprintln(e.stderr, "kiln image: no PROMPT: give it as arguments, or - to read it from stdin (img2img: --init IMAGE, the prompt optional)")
		fs.Usage()
		return errUsage
	}
	prompt, err := readPrompt(e, fs.Args())
	if err != nil {
		return err
	}
	ctx, c, m, done, err := startJob(ctx, e, &cf, *timeout, schema.KindImage, *model)
	if err != nil {
		return err
	}
	defer done()
	job := &schema.ImageJob{JobHeader: schema.JobHeader{Model: m, Lane: *lane}, Prompt: prompt, Steps: *steps, Strength: *strength,
		Width: *width, Height: *height, Seed: seed.v, Progress: true}
	if *initPath != "" {
		if job.InitImage, err = os.ReadFile(*initPath); err != nil {
			return fmt.Errorf("init image: %w", err)
		}
	}
	p, err := submit(ctx, e, c, job)
	if err != nil {
		return err
	}
	defer p.Close()
	bar := isTerminal(e.stderr) && !*asJSON
	res, err := follow(ctx, p, func(ev schema.Event) error {
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
			"bytes": len(res.Image), "mime": res.Mime, "worker": res.Worker, "usage": res.Usage, "seed": res.Seed, "diffusion": res.Diffusion})
	}
	fmt.Fprintf(e.stdout, "wrote %s (%d bytes, %s, %d ms on %s%s)\n", *out, len(res.Image), res.Mime, res.Usage.TotalMS, res.Worker, madeWith(res))
	return nil
}

// madeWith is ", seed N, S steps[, strength X], W×H" of an image result:
// what repeats it.
func madeWith(res *schema.Result) string {
	var b strings.Builder
	if res.Seed != nil {
		fmt.Fprintf(&b, ", seed %d", *res.Seed)
	}
	if d := res.Diffusion; d != nil {
		fmt.Fprintf(&b, ", %d steps", d.Steps)
		if d.Strength > 0 {
			fmt.Fprintf(&b, ", strength %g", d.Strength)
		}
		fmt.Fprintf(&b, ", %d×%d", d.Width, d.Height)
	}
	return b.String()
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

// cancelWait is how long kiln cancel waits for the result of the job it
// cancelled.
const cancelWait = 5 * time.Second

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
	defer c.Close()
	id := fs.Arg(0)
	if !schema.ValidToken(id) {
		return fmt.Errorf("%q is not a job id (letters, digits, '-', '_')", id)
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	where := locate(lctx, nc, c, cf.topology(), id)
	cancel()
	switch {
	case where.result != nil:
		return fmt.Errorf("job %s has finished already (%s): nothing to cancel", id, ended(where.result))
	case where.worker == "" && where.subject == "" && where.unsure == nil:
		return fmt.Errorf("no job %s: it is not queued, not running and has no stored result (results are kept %s by default)",
			id, topology.DefaultResultMaxAge)
	}
	// A cancel names the job's client: only that client's job of that id
	// stops, and broker permissions let a controller name only itself. An
	// operator without a client id of its own cancels a queued job of
	// whichever client it is queued for.
	who := *owner
	if who == "" {
		who = cf.clientID
	}
	if who == "" && where.subject != "" {
		who = where.client
	}
	if err := c.CancelFor(ctx, who, id); err != nil {
		return err
	}
	if where.worker == "" && where.subject == "" {
		fmt.Fprintf(e.stdout, "cancel sent for job %s; whether it exists could not be checked: %v\n", id, where.unsure)
		return nil
	}
	if where.worker == "" {
		fmt.Fprintf(e.stdout, "job %s cancelled while queued (%s): it ends as cancelled when a worker takes it\n", id, where.subject)
		return nil
	}
	// A running job stops within a token or a step.
	res := awaitResult(ctx, c, id, cancelWait)
	switch {
	case res != nil && res.Status == schema.StatusCancelled:
		fmt.Fprintf(e.stdout, "job %s %s\n", id, ended(res))
	case res != nil:
		return fmt.Errorf("job %s finished before the cancel reached it (%s)", id, ended(res))
	default:
		fmt.Fprintf(e.stdout, "cancel sent to job %s, running on %s; `kiln result %s` shows how it ended\n", id, where.worker, id)
	}
	return nil
}

// awaitResult polls for job id's stored result for up to d; nil if none.
func awaitResult(ctx context.Context, c *client.Client, id string, d time.Duration) *schema.Result {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if res, err := c.AnyResult(ctx, id); err == nil {
			return res
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
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
		fmt.Fprintf(e.stdout, "%s\n", outcome(res))
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
