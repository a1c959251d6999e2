package card_test

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/card"
	"github.com/kiln-project/kiln/worker/llm"
	"github.com/kiln-project/kiln/worker/npu"
	"github.com/kiln-project/kiln/worker/tokenize"
	"github.com/kiln-project/kiln/worker/workertest"
)

const chatModel = "qwen3-sim"

type simPackage struct {
	once sync.Once
	dir  string
	ref  *cardsim.Reference
	err  error
}

var chatPkg, visionPkg simPackage

// simChat opens the simulated card, loads a small Qwen3-shaped package
// (two layers, context 639) and returns the model and the cacheless
// reference. The simulator is shared by the process: tests using it do not
// run in parallel with each other.
func simChat(t *testing.T) (*llm.Model, *cardsim.Reference) {
	return simLoad(t, &chatPkg, false)
}

// simChatVision is simChat with a small simulated vision encoder (64×48 RGB
// in, 16 rows per image).
func simChatVision(t *testing.T) *llm.Model {
	m, _ := simLoad(t, &visionPkg, true)
	return m
}

func simLoad(t *testing.T, pkg *simPackage, vision bool) (*llm.Model, *cardsim.Reference) {
	t.Helper()
	lib := cardsim.Library(t)
	pkg.once.Do(func() {
		dir, err := os.MkdirTemp("", "kiln-chat-test-")
		if err != nil {
			pkg.err = err
			return
		}
		s := cardsim.TinyQwen3()
		s.Name, s.Layers, s.MaxCtx, s.Histories = chatModel, 2, 639, []int{0, 128, 256, 384}
		s.TokenizerDir = "../tokenize/testdata/qwen3"
		if vision {
			s.Vision = &cardsim.VisionSpec{File: "vision_model.axmodel", Width: 64, Height: 48, Grid: 4, WeightBytes: 1 << 20, ImageTokenID: 151655}
		}
		pkg.dir = filepath.Join(dir, chatModel)
		if pkg.err = cardsim.WriteLLMPackage(pkg.dir, s); pkg.err == nil {
			pkg.ref, pkg.err = cardsim.LoadReference(pkg.dir)
		}
	})
	if pkg.err != nil {
		t.Fatal(pkg.err)
	}
	return openModel(t, lib, pkg.dir, &llm.Options{Logger: quiet}), pkg.ref
}

// writePackage writes spec's package to dir and returns its cacheless
// reference.
func writePackage(t *testing.T, dir string, spec cardsim.LLMSpec) *cardsim.Reference {
	t.Helper()
	if err := cardsim.WriteLLMPackage(dir, spec); err != nil {
		t.Fatal(err)
	}
	ref, err := cardsim.LoadReference(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// openModel opens the simulated card of lib and loads the package at dir
// with opts; both close when the test ends.
func openModel(t *testing.T, lib, dir string, opts *llm.Options) *llm.Model {
	t.Helper()
	dev, err := npu.Open(t.Context(), npu.Config{Library: lib, SampleInterval: -1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close(context.Background()) })
	m, err := llm.Load(t.Context(), dev, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(context.Background()) })
	return m
}

// chatWorker starts a broker and a worker serving m's chat handler.
func chatWorker(t *testing.T, m *llm.Model) *client.Client {
	return serveChat(t, chatModel, m)
}

// serveChat starts a broker and a worker serving m's chat handler as model
// name.
func serveChat(t *testing.T, name string, m *llm.Model) *client.Client {
	t.Helper()
	q := workertest.StartQueue(t, workertest.QueueOptions{
		Chat: map[string]worker.Handler[schema.ChatJob]{name: card.ChatHandler(m, quiet)},
	})
	q.Worker(t, "card0", nil)
	return q.Client(t)
}

// streamChat runs job through c and returns the result and the token
// events' text joined.
func streamChat(t *testing.T, c *client.Client, job *schema.ChatJob) (*schema.Result, string, error) {
	t.Helper()
	var streamed strings.Builder
	res, err := c.Chat(workertest.Context(t), job, func(ev schema.Event) error {
		if ev.Type == schema.EventToken {
			streamed.WriteString(ev.Text)
		}
		return nil
	})
	return res, streamed.String(), err
}

// untilStop is out up to (not including) its first stop id of m.
func untilStop(m *llm.Model, out []int) []int {
	if i := slices.IndexFunc(out, func(id int) bool { return slices.Contains(m.StopIDs(), id) }); i >= 0 {
		return out[:i]
	}
	return out
}

func simJob(msgs ...schema.Message) *schema.ChatJob {
	return &schema.ChatJob{JobHeader: schema.JobHeader{Model: chatModel}, Messages: msgs}
}

// expected is the greedy reply the reference gives for the job's rendered
// prompt: ids up to (not including) a stop id, at most n.
func expected(t *testing.T, m *llm.Model, ref *cardsim.Reference, msgs []tokenize.Message, n int) (prompt []int, reply []int) {
	t.Helper()
	prompt = m.Tokenizer().Encode(tokenize.RenderQwen3(msgs, tokenize.TemplateOptions{AddGenerationPrompt: true}))
	out, err := ref.Greedy(prompt, n)
	if err != nil {
		t.Fatal(err)
	}
	return prompt, untilStop(m, out)
}

// TestChatStreamsOnSimulatedCard: a chat job through the real queue runs the
// LLM on the simulated card; the streamed token events are whole UTF-8
// characters that add up to the result, which is the reference's greedy
// reply (the package's default).
func TestChatStreamsOnSimulatedCard(t *testing.T) {
	m, ref := simChat(t)
	c := chatWorker(t, m)
	system := "You are the kiln of an art installation. Answer visitors in one short, warm sentence about fire, clay and patience."
	job := simJob(schema.Message{Role: "system", Content: system}, schema.Message{Role: "user", Content: "hi"})
	job.MaxTokens = 12
	var streamed []string
	res, err := c.Chat(workertest.Context(t), job, func(ev schema.Event) error {
		if ev.Type == schema.EventToken {
			if ev.Text == "" || !utf8.ValidString(ev.Text) {
				t.Errorf("token event %q is not whole UTF-8 characters", ev.Text)
			}
			streamed = append(streamed, ev.Text)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	prompt, reply := expected(t, m, ref, []tokenize.Message{{Role: "system", Content: system}, {Role: "user", Content: "hi"}}, 12)
	want := m.Tokenizer().Decode(reply)
	if res.Text != want || strings.Join(streamed, "") != want {
		t.Fatalf("result %q, streamed %q, reference %q", res.Text, strings.Join(streamed, ""), want)
	}
	if res.Usage.PromptTokens != len(prompt) || res.Usage.CompletionTokens != len(reply) || res.Usage.TTFTMS <= 0 {
		t.Fatalf("usage %+v, prompt %d tokens, reply %d", res.Usage, len(prompt), len(reply))
	}
	if len(reply) == 12 && res.FinishReason != schema.FinishLength {
		t.Fatalf("finish %q after max_tokens", res.FinishReason)
	}
	// The result says how it was made: greedy (the package's top_k 1) and
	// the seed the worker drew, exact through JSON.
	if s := res.Sampling; s == nil || !s.Greedy || s.TopK != 1 || s.TopP != 1 || res.Seed == nil || *res.Seed >= 1<<53 {
		t.Fatalf("sampling %+v, seed %v; want the package's greedy default and a drawn seed below 2^53", s, res.Seed)
	}
	// The same job again restores the system prompt from the prefix cache
	// and gives the same reply.
	again, err := c.Chat(workertest.Context(t), job, nil)
	if err != nil || again.Text != res.Text {
		t.Fatalf("second run %q (%v), first %q", again.Text, err, res.Text)
	}
	if n, _ := m.PrefixCache(); n != 1 {
		t.Fatalf("%d prefixes cached, want the system prompt", n)
	}
}

// TestChatRefusals: a prompt too long for the context is over_limit on
// messages naming the limit; images are unsupported.
func TestChatRefusals(t *testing.T) {
	m, _ := simChat(t)
	c := chatWorker(t, m)
	_, err := c.Chat(workertest.Context(t), simJob(schema.Message{Role: "user", Content: strings.Repeat("kiln fire ", 400)}), nil)
	var je *client.JobError
	if !errors.Is(err, client.ErrInvalid) || !errors.As(err, &je) {
		t.Fatalf("err = %v, want invalid", err)
	}
	if e := je.Result.Error; e.Code != schema.CodeOverLimit || e.Field != "messages" || !strings.Contains(e.Message, "at most 638") {
		t.Fatalf("error %+v", e)
	}
	_, err = c.Chat(workertest.Context(t), simJob(schema.Message{Role: "user", Content: "what is this?", Images: [][]byte{{1, 2, 3}}}), nil)
	if !errors.As(err, &je) || je.Result.Error.Code != schema.CodeUnsupported || je.Result.Error.Field != "messages[0].images" {
		t.Fatalf("image job: %v", err)
	}
}

// TestChatStopStringCutsReply: the reply ends just before the first stop
// string, which is never streamed.
func TestChatStopStringCutsReply(t *testing.T) {
	m, ref := simChat(t)
	_, reply := expected(t, m, ref, []tokenize.Message{{Role: "user", Content: "tell me"}}, 16)
	full := []rune(m.Tokenizer().Decode(reply))
	if len(full) < 6 {
		t.Fatalf("reference reply %q too short to cut", string(full))
	}
	stop := string(full[3:5])
	job := simJob(schema.Message{Role: "user", Content: "tell me"})
	job.Stop, job.MaxTokens = []string{stop}, 16
	out, err := workertest.Run(workertest.Context(t), card.ChatHandler(m, quiet), job)
	if err != nil {
		t.Fatal(err)
	}
	res := out.Result
	want := string(full)[:strings.Index(string(full), stop)]
	if res.Text != want || out.Text() != want || res.FinishReason != schema.FinishStop {
		t.Fatalf("text %q, streamed %q (%s), want %q", res.Text, out.Text(), res.FinishReason, want)
	}
}

// TestChatResultSaysHowItSampled: a job that gives a temperature samples
// (the package's greedy top_k no longer applies), and its result names the
// sampling and the seed; the seed sent again repeats the reply.
func TestChatResultSaysHowItSampled(t *testing.T) {
	m, _ := simChat(t)
	c := chatWorker(t, m)
	warm := 0.7
	job := func(seed *uint64) *schema.ChatJob {
		j := simJob(schema.Message{Role: "user", Content: "tell me"})
		j.MaxTokens, j.Temperature, j.Seed = 8, &warm, seed
		return j
	}
	res, err := c.Chat(workertest.Context(t), job(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := res.Sampling; s == nil || *s != (schema.Sampling{Temperature: 0.7, TopP: 1}) || res.Seed == nil {
		t.Fatalf("sampling %+v, seed %v; want temperature 0.7, top_p 1, no top_k, not greedy, a seed", s, res.Seed)
	}
	again, err := c.Chat(workertest.Context(t), job(res.Seed), nil)
	if err != nil || again.Text != res.Text || *again.Seed != *res.Seed {
		t.Fatalf("seed %d again: %q (%v), first %q", *res.Seed, again.Text, err, res.Text)
	}
}

// TestChatCancelAndFault: cancel stops generation within a token or two of
// the request (the cancel travels through the broker); a device fault
// mid-job is a transient failure, retried to the same reply.
func TestChatCancelAndFault(t *testing.T) {
	m, ref := simChat(t)
	c := chatWorker(t, m)
	ctx := workertest.Context(t)
	sim := cardsim.Controls(t)

	sim.Config(t, "exec_us=15000", "exec_us=0") // ~45 ms a token
	p, err := c.Submit(ctx, simJob(schema.Message{Role: "user", Content: "go on"}))
	if err != nil {
		t.Fatal(err)
	}
	tokens := 0
	res, err := p.Wait(ctx, func(ev schema.Event) error {
		if ev.Type == schema.EventToken {
			if tokens++; tokens == 3 {
				return c.Cancel(ctx, p.ID)
			}
		}
		return nil
	})
	if !errors.Is(err, client.ErrCancelled) || res.Status != schema.StatusCancelled {
		t.Fatalf("cancel: %v, %+v", err, res)
	}
	if n := res.Usage.CompletionTokens; n < 3 || n > 5 {
		t.Fatalf("generated %d tokens after cancelling at 3", n)
	}
	sim.Config(t, "exec_us=0", "exec_us=0")

	// Executes 1–3 are the prefill (2 layers + post); the 8th fails mid-reply.
	sim.SetFaults(t, "fail_execute=8")
	job := simJob(schema.Message{Role: "user", Content: "again"})
	job.MaxTokens = 6
	res, err = c.Chat(ctx, job, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, reply := expected(t, m, ref, []tokenize.Message{{Role: "user", Content: "again"}}, 6)
	if res.Attempt != 2 || res.Text != m.Tokenizer().Decode(reply) {
		t.Fatalf("after a fault: attempt %d, text %q, want attempt 2 and %q", res.Attempt, res.Text, m.Tokenizer().Decode(reply))
	}
}

// TestChatMaxTokensClampedToContext: max_tokens past what the context
// leaves after the prompt is clamped; the reply ends with "length" at the
// context end.
func TestChatMaxTokensClampedToContext(t *testing.T) {
	m, _ := simChat(t)
	content := ""
	var n int
	for r := 300; r > 0; r-- {
		content = strings.Repeat("kiln fire ", r)
		n = len(m.Tokenizer().Encode(tokenize.RenderQwen3([]tokenize.Message{{Role: "user", Content: content}}, tokenize.TemplateOptions{AddGenerationPrompt: true})))
		if n <= 630 {
			break
		}
	}
	job := simJob(schema.Message{Role: "user", Content: content})
	job.MaxTokens = 100
	job.Stop = nil
	out, err := workertest.Run(workertest.Context(t), card.ChatHandler(m, quiet), job)
	if err != nil {
		t.Fatal(err)
	}
	res := out.Result
	if res.Usage.PromptTokens != n || res.Usage.PromptTokens+res.Usage.CompletionTokens > 639 {
		t.Fatalf("prompt %d (want %d) + reply %d tokens in a 639-token context", res.Usage.PromptTokens, n, res.Usage.CompletionTokens)
	}
	if res.FinishReason != schema.FinishLength || res.Usage.PromptTokens+res.Usage.CompletionTokens != 639 {
		t.Fatalf("%q after %d+%d tokens, want length at the context end", res.FinishReason, res.Usage.PromptTokens, res.Usage.CompletionTokens)
	}
}

// rgbOf is fill's w×h image as RGB bytes, row by row: what the card's
// encoder reads from pngOf(t, w, h, fill).
func rgbOf(w, h int, fill func(x, y int) color.RGBA) []byte {
	px := make([]byte, 0, w*h*3)
	for y := range h {
		for x := range w {
			c := fill(x, y)
			px = append(px, c.R, c.G, c.B)
		}
	}
	return px
}

func pngOf(t *testing.T, w, h int, fill func(x, y int) color.RGBA) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.SetRGBA(x, y, fill(x, y))
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestChatWithImages: on a package with a vision encoder, a PNG goes to the
// encoder and changes the reply; the same image gives the same reply; an
// undecodable image is bad_value.
func TestChatWithImages(t *testing.T) {
	m := simChatVision(t)
	h := card.ChatHandler(m, quiet)
	ask := func(img []byte) (*schema.Result, error) {
		job := simJob(schema.Message{Role: "user", Content: "what do you see?", Images: [][]byte{img}})
		job.MaxTokens = 8
		out, err := workertest.Run(workertest.Context(t), h, job)
		return out.Result, err
	}
	dark := pngOf(t, 200, 120, func(x, y int) color.RGBA { return color.RGBA{uint8(x / 10), 0, uint8(y / 10), 255} })
	light := pngOf(t, 90, 90, func(x, y int) color.RGBA { return color.RGBA{255, 255 - uint8(x), 200, 255} })
	a, err := ask(dark)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ask(light)
	if err != nil {
		t.Fatal(err)
	}
	again, err := ask(dark)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := m.Vision()
	if a.Usage.PromptTokens < v.Tokens || a.Text != again.Text || a.Text == b.Text {
		t.Fatalf("dark %q (%d prompt tokens), light %q, dark again %q", a.Text, a.Usage.PromptTokens, b.Text, again.Text)
	}
	_, err = ask([]byte("GIF89a not really"))
	var verr *schema.Error
	if !errors.As(err, &verr) || verr.Code != schema.CodeBadValue || verr.Field != "messages[0].images[0]" {
		t.Fatalf("garbage image: %v", err)
	}
}
