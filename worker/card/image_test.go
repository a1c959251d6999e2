package card_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/png"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/card"
	"github.com/kiln-project/kiln/worker/llm"
	"github.com/kiln-project/kiln/worker/npu"
	"github.com/kiln-project/kiln/worker/sd"
	"github.com/kiln-project/kiln/worker/tokenize"
	"github.com/kiln-project/kiln/worker/workertest"
)

// sdCard is the simulated card, opened through the real binding, with the
// simulator's SD 1.5 LCM package (spec) loaded on it as "sd15-lcm".
type sdCard struct {
	sim  *cardsim.Control
	dev  *npu.Device
	pipe *sd.Pipeline
	spec cardsim.SDSpec
}

func simCardWithSD(tb testing.TB) sdCard {
	tb.Helper()
	c := sdCard{sim: cardsim.Controls(tb), spec: cardsim.SD15LCM()}
	dev, err := npu.Open(tb.Context(), npu.Config{Library: c.sim.Library(), Logger: quiet, SampleInterval: -1})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = dev.Close(context.Background()) })
	c.spec.TokenizerDir = "../tokenize/testdata/clip"
	dir := filepath.Join(tb.TempDir(), "sd15-lcm")
	if err := cardsim.WriteSDPackage(dir, c.spec); err != nil {
		tb.Fatal(err)
	}
	pipe, err := sd.Open(tb.Context(), dev, dir, sd.Config{Name: "sd15-lcm", Logger: quiet})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = pipe.Close(context.Background()) })
	c.dev, c.pipe = dev, pipe
	return c
}

// TestImageJobs runs image jobs end to end through the real queue: an
// embedded broker, a worker serving the SD package on the simulated card
// with the real image handler, and the client.
func TestImageJobs(t *testing.T) {
	sc := simCardWithSD(t)
	sim, dev, pipe, spec := sc.sim, sc.dev, sc.pipe, sc.spec

	// A chat model on the same card (the LLM runtime on a small simulated
	// Qwen3 package). The handlers record when they run.
	var mu sync.Mutex
	var spans []span
	record := func(kind string) func() {
		s := span{kind: kind, start: time.Now()}
		return func() {
			s.end = time.Now()
			mu.Lock()
			spans = append(spans, s)
			mu.Unlock()
		}
	}
	ls := cardsim.TinyQwen3()
	ls.Name, ls.Layers, ls.MaxCtx, ls.Histories = "qwen3-sim", 2, 639, []int{0, 128}
	ls.TokenizerDir = "../tokenize/testdata/qwen3"
	llmDir := filepath.Join(t.TempDir(), ls.Name)
	ref := writePackage(t, llmDir, ls)
	lm, err := llm.Load(t.Context(), dev, llmDir, &llm.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lm.Close(context.Background()) })
	chatH := card.ChatHandler(lm, quiet)
	chat := worker.HandlerFunc[schema.ChatJob](func(ctx context.Context, job *worker.Job[schema.ChatJob]) (*schema.Result, error) {
		defer record("chat")()
		return chatH.Handle(ctx, job)
	})
	img := card.ImageHandler(pipe, quiet)
	recorded := worker.HandlerFunc[schema.ImageJob](func(ctx context.Context, job *worker.Job[schema.ImageJob]) (*schema.Result, error) {
		defer record("image")()
		return img.Handle(ctx, job)
	})

	q := workertest.StartQueue(t, workertest.QueueOptions{
		Chat:  map[string]worker.Handler[schema.ChatJob]{"qwen3-sim": chat},
		Image: map[string]worker.Handler[schema.ImageJob]{"sd15-lcm": recorded},
	})
	q.Worker(t, "card0", nil)
	c := q.Client(t)
	ctx := workertest.Context(t)
	seed := func(s uint64) *uint64 { return &s }
	job := func(prompt string, s uint64) *schema.ImageJob {
		return &schema.ImageJob{JobHeader: schema.JobHeader{Model: "sd15-lcm"}, Prompt: prompt, Seed: seed(s), Progress: true}
	}
	run := func(j *schema.ImageJob) (*schema.Result, []schema.Event, error) {
		var evs []schema.Event
		res, err := c.Image(ctx, j, func(ev schema.Event) error {
			evs = append(evs, ev)
			return nil
		})
		return res, evs, err
	}
	progressSteps := func(evs []schema.Event, steps int) []int {
		var got []int
		for _, ev := range evs {
			if ev.Type == schema.EventProgress {
				if ev.Steps != steps {
					t.Errorf("progress event says %d steps, want %d", ev.Steps, steps)
				}
				got = append(got, ev.Step)
			}
		}
		return got
	}

	var fox []byte
	t.Run("txt2img", func(t *testing.T) {
		res, evs, err := run(job("a red fox", 7))
		if err != nil {
			t.Fatal(err)
		}
		if got := progressSteps(evs, 4); !slices.Equal(got, []int{1, 2, 3, 4}) {
			t.Fatalf("progress steps %v", got)
		}
		if res.Status != schema.StatusOK || res.Mime != "image/png" || res.Usage.PromptTokens != 5 {
			t.Fatalf("result %+v", res)
		}
		pngSize(t, res.Image, 512, 512)
		if res.Seed == nil || *res.Seed != 7 || res.Diffusion == nil || *res.Diffusion != (schema.Diffusion{Steps: 4, Width: 512, Height: 512}) {
			t.Fatalf("the result says it was made with seed %v, %+v; want seed 7, 4 steps, 512×512", res.Seed, res.Diffusion)
		}
		fox = res.Image
		// The package is in the vendor's layout and UNet input order
		// (sample, encoder_hidden_states, time row), bound by name.
		tok, err := tokenize.LoadCLIP(spec.TokenizerDir)
		if err != nil {
			t.Fatal(err)
		}
		ids := tok.Encode77("a red fox")
		want, err := spec.Image(ids[:], sd.Timesteps[:], sd.AlphasCumprod()[:], sd.Noise(7), nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(planarRGB(t, res.Image), want) {
			t.Fatal("the image differs from the Go reference pipeline")
		}
		sized := job("a red fox", 7)
		sized.Width, sized.Height = 512, 512
		if res, _, err := run(sized); err != nil || !bytes.Equal(res.Image, fox) {
			t.Fatalf("width and height of the package's size changed the image (%v)", err)
		}
		stored, err := c.Result(ctx, res.JobID)
		if err != nil || !bytes.Equal(stored.Image, res.Image) {
			t.Fatalf("KILN_RESULTS holds another image (%v)", err)
		}
		again, _, err := run(job("a red fox", 7))
		if err != nil || !bytes.Equal(again.Image, res.Image) {
			t.Fatalf("the same seed gave other bytes (%v)", err)
		}
		other, _, err := run(job("a red fox", 8))
		if err != nil || bytes.Equal(other.Image, res.Image) {
			t.Fatalf("another seed gave the same bytes (%v)", err)
		}
		// Without a seed the worker draws one and says which: sent back,
		// it repeats the image.
		drawn, _, err := run(&schema.ImageJob{JobHeader: schema.JobHeader{Model: "sd15-lcm"}, Prompt: "a red fox"})
		if err != nil || drawn.Seed == nil {
			t.Fatalf("no seed in the result of a job without one (%v)", err)
		}
		repeat, _, err := run(job("a red fox", *drawn.Seed))
		if err != nil || !bytes.Equal(repeat.Image, drawn.Image) {
			t.Fatalf("the drawn seed %d did not repeat the image (%v)", *drawn.Seed, err)
		}
	})

	t.Run("img2img", func(t *testing.T) {
		j := job("an oil painting", 3)
		j.InitImage = gradientPNG(t, 640, 480)
		res, evs, err := run(j)
		if err != nil {
			t.Fatal(err)
		}
		if got := progressSteps(evs, 2); !slices.Equal(got, []int{1, 2}) {
			t.Fatalf("progress steps %v", got)
		}
		pngSize(t, res.Image, 512, 512)
		if d := res.Diffusion; d == nil || *d != (schema.Diffusion{Steps: 4, Strength: 0.5, Width: 512, Height: 512}) {
			t.Fatalf("img2img made with %+v, want 4 steps at the default strength 0.5", d)
		}
		if bytes.Equal(res.Image, fox) {
			t.Fatal("img2img gave the txt2img image")
		}
	})

	t.Run("invalid", func(t *testing.T) {
		for _, c := range []struct {
			name  string
			mod   func(*schema.ImageJob)
			code  schema.ErrorCode
			field string
		}{
			{"steps", func(j *schema.ImageJob) { j.Steps = 3 }, schema.CodeOutOfRange, "steps"},
			{"strength", func(j *schema.ImageJob) { j.InitImage, j.Strength = gradientPNG(t, 8, 8), 0.1 }, schema.CodeOutOfRange, "strength"},
			{"not an image", func(j *schema.ImageJob) { j.InitImage = []byte("GIF? no, text") }, schema.CodeBadValue, "init_image"},
			{"too large", func(j *schema.ImageJob) { j.InitImage = pngHeader(9000, 9000) }, schema.CodeOverLimit, "init_image"},
			{"side ratio", func(j *schema.ImageJob) { j.InitImage = gradientPNG(t, 500, 100) }, schema.CodeOutOfRange, "init_image"},
			{"width", func(j *schema.ImageJob) { j.Width, j.Height = 768, 1024 }, schema.CodeOutOfRange, "width"},
			{"height", func(j *schema.ImageJob) { j.Height = 1024 }, schema.CodeOutOfRange, "height"},
		} {
			j := job("x", 1)
			c.mod(j)
			_, evs, err := run(j)
			var je *client.JobError
			if !errors.Is(err, client.ErrInvalid) || !errors.As(err, &je) || je.Result.Error.Code != c.code || je.Result.Error.Field != c.field {
				t.Errorf("%s: %v", c.name, err)
			}
			if len(progressSteps(evs, 0)) != 0 {
				t.Errorf("%s: progress events for a refused job", c.name)
			}
		}
	})

	t.Run("cancel between steps", func(t *testing.T) {
		sim.Config(t, "exec_us=300000", "exec_us=0") // 0.3 s per execute
		p, err := c.Submit(ctx, job("a slow fox", 1))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		var steps []int
		res, err := p.Wait(ctx, func(ev schema.Event) error {
			if ev.Type == schema.EventProgress {
				steps = append(steps, ev.Step)
				if ev.Step == 1 {
					return c.Cancel(ctx, p.ID)
				}
			}
			return nil
		})
		if !errors.Is(err, client.ErrCancelled) || res == nil || res.Status != schema.StatusCancelled || len(res.Image) != 0 {
			t.Fatalf("result %+v, err %v", res, err)
		}
		if len(steps) == 0 || slices.Max(steps) >= 4 {
			t.Fatalf("progress steps %v: the cancel did not stop the job between steps", steps)
		}
	})

	t.Run("chat and image on one card", func(t *testing.T) {
		chatJob := func() *schema.ChatJob { // a new job (and id) each time
			return &schema.ChatJob{JobHeader: schema.JobHeader{Model: "qwen3-sim"}, MaxTokens: 8,
				Messages: []schema.Message{{Role: "user", Content: "hello card"}}}
		}
		_, reply := expected(t, lm, ref, []tokenize.Message{{Role: "user", Content: "hello card"}}, 8)
		want := lm.Tokenizer().Decode(reply)
		sim.Config(t, "exec_us=20000", "exec_us=0")
		mu.Lock()
		spans = nil
		mu.Unlock()
		var wg sync.WaitGroup
		var imgRes, chatRes *schema.Result
		var imgErr, chatErr error
		wg.Add(2)
		go func() { defer wg.Done(); imgRes, _, imgErr = run(job("a red fox", 7)) }()
		go func() { defer wg.Done(); chatRes, chatErr = c.Chat(ctx, chatJob(), nil) }()
		wg.Wait()
		if imgErr != nil || chatErr != nil {
			t.Fatalf("image: %v, chat: %v", imgErr, chatErr)
		}
		if !bytes.Equal(imgRes.Image, fox) {
			t.Error("the image differs from the one made alone")
		}
		if chatRes.Text != want || len(reply) == 0 {
			t.Errorf("chat reply %q, the reference's greedy reply %q", chatRes.Text, want)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(spans) != 2 {
			t.Fatalf("%d handler runs", len(spans))
		}
		a, b := spans[0], spans[1]
		if b.start.Before(a.end) {
			t.Errorf("%s and %s ran at the same time", a.kind, b.kind)
		}
	})
}

type span struct {
	kind       string
	start, end time.Time
}

// planarRGB decodes a PNG into planar 8-bit RGB, the layout of the
// reference's pixels.
func planarRGB(t *testing.T, b []byte) []uint8 {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	r := img.Bounds()
	n := r.Dx() * r.Dy()
	out := make([]uint8, 3*n)
	for y := 0; y < r.Dy(); y++ {
		for x := 0; x < r.Dx(); x++ {
			cr, cg, cb, _ := img.At(r.Min.X+x, r.Min.Y+y).RGBA()
			o := y*r.Dx() + x
			out[o], out[n+o], out[2*n+o] = uint8(cr>>8), uint8(cg>>8), uint8(cb>>8)
		}
	}
	return out
}

func pngSize(t *testing.T, b []byte, w, h int) {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	if r := img.Bounds(); r.Dx() != w || r.Dy() != h {
		t.Fatalf("PNG is %dx%d, want %dx%d", r.Dx(), r.Dy(), w, h)
	}
}

func gradientPNG(t *testing.T, w, h int) []byte {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.RGBA{uint8(x), uint8(y), uint8(x + y), 255})
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// pngHeader is the start of a PNG that claims w×h pixels (no pixel data):
// enough for the size check, which reads only the header.
func pngHeader(w, h uint32) []byte {
	b := []byte("\x89PNG\r\n\x1a\n")
	ihdr := binary.BigEndian.AppendUint32([]byte("IHDR"), w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	ihdr = append(ihdr, 8, 2, 0, 0, 0)
	b = binary.BigEndian.AppendUint32(b, 13)
	b = append(b, ihdr...)
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(ihdr))
}
