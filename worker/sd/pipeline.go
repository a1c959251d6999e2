package sd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"image/png"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/npu"
	"github.com/kiln-project/kiln/worker/tokenize"
)

// Package files (research/sd-lcm.md §1).
const (
	TextEncoderDir = "text_encoder"
	UNetFile       = "unet.axmodel"
	VAEDecoderFile = "vae_decoder.axmodel"
	VAEEncoderFile = "vae_encoder.axmodel"
	TxtTimeFile    = "time_input_txt2img.npy"
	ImgTimeFile    = "time_input_img2img.npy"
)

// Defaults of a request.
const (
	DefaultSteps    = 4
	DefaultStrength = 0.5
	textLen         = tokenize.CLIPContext
)

// Detect reports whether dir looks like an SD 1.5 LCM package: a UNet, a VAE
// decoder, a text encoder folder and the txt2img time table.
func Detect(dir string) bool {
	for _, f := range []string{UNetFile, VAEDecoderFile, TxtTimeFile} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.IsDir() {
			return false
		}
	}
	_, err := textEncoderPath(dir)
	return err == nil
}

// textEncoderPath is the first .axmodel file in text_encoder/.
func textEncoderPath(dir string) (string, error) {
	entries, err := os.ReadDir(filepath.Join(dir, TextEncoderDir))
	if err != nil {
		return "", fmt.Errorf("sd: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() && strings.HasSuffix(e.Name(), ".axmodel") {
			return filepath.Join(dir, TextEncoderDir, e.Name()), nil
		}
	}
	return "", fmt.Errorf("sd: no .axmodel file in %s", filepath.Join(dir, TextEncoderDir))
}

// Config configures Open. The zero value is usable.
type Config struct {
	// Name is the model's name in logs and errors (default the folder name).
	Name string
	// PNGLevel is the PNG compression. 0 means png.BestSpeed, about 4.7
	// times faster than zlib's default level on a 512×512 image for a larger
	// file (docs/sd.md); since png.DefaultCompression is 0 it cannot be
	// picked — png.BestCompression gives the smallest files.
	PNGLevel png.CompressionLevel
	// Images bound img2img init images.
	Images ImageLimits
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// Bindings, when set, records which tensor of which file Open binds to
	// each role (kiln models check), as far as it got.
	Bindings *npu.Bindings
}

// Request is one image to make.
type Request struct {
	// Prompt is the text; it is cut to 75 CLIP tokens.
	Prompt string
	// Seed fixes the noise: the same request gives the same PNG bytes.
	// Only the low 32 bits count (torch's generator takes 32 bits).
	Seed uint64
	// Steps is the number of LCM steps, 0 for DefaultSteps; see
	// Pipeline.Steps for what the package supports.
	Steps int
	// InitImage, a PNG or JPEG, makes an img2img request.
	InitImage []byte
	// Strength (img2img) is the share of the schedule that is run from the
	// init image: int(steps·strength) steps from its tail; 0 means
	// DefaultStrength (t = 499, 259 with 4 steps).
	Strength float64
	// Width and Height, when not 0, are the image size the caller expects;
	// a package makes one size (Size: its VAE decoder's output), and any
	// other is refused. The vendor publishes 512×512 and, txt2img only,
	// 768 wide × 1024 high (docs/sd.md).
	Width, Height int
}

// Result is a finished image.
type Result struct {
	PNG       []byte
	Width     int
	Height    int
	Tokens    int     // CLIP tokens of the prompt, with start and end
	Steps     int     // the schedule's steps (Request.Steps, or DefaultSteps)
	Strength  float64 // img2img: the strength used (Request.Strength, or DefaultStrength); 0 for txt2img
	Timesteps []int   // the UNet steps that ran
	Timings   Timings
}

// Timings split a Generate call. Device is the time spent in calls to the
// card (copies and executes); Host() is the rest.
type Timings struct {
	Total, Device                                              time.Duration
	Tokenize, TextEncoder, VAEEncoder, UNet, VAEDecoder, Image time.Duration
	FirstStep                                                  time.Duration // from the start to the end of the first UNet step
}

// Host is the time outside the card.
func (t Timings) Host() time.Duration { return t.Total - t.Device }

// Pipeline is an SD 1.5 LCM package resident on a card. Generate runs one
// image at a time (callers queue on a mutex) and reuses every buffer.
type Pipeline struct {
	dev  *npu.Device
	name string
	cfg  Config
	log  *slog.Logger
	tok  *tokenize.CLIP

	te, unet, dec, enc *npu.Model
	teIn               *port // input_ids, staged by encodeIDs (not port.encode)
	idsWide            bool  // int64 input_ids
	teOut              *port
	uSample, uTime     *port
	uEHS, uOut         *port
	decIn, decOut      *port
	encIn, encOut      *port
	h, w, H, W         int // latent and image size
	tdim               int // time-embedding width
	txtRows, imgRows   map[int][]float32
	cmm                uint64
	dir                string   // the package folder
	byShape            []string // tensors bound by shape, their vendor name absent: "unet input sample = \"in.0\""

	// The model calls Generate makes, built by bind, and the device-thread
	// function that makes them (see run).
	textCall, encodeCall, decodeCall call
	unetFirst, unetNext              call // the first step also writes encoder_hidden_states
	exchangeFn                       func(*npu.Thread) error

	mu                 sync.Mutex
	closed             bool
	current            *call // the call run hands to exchangeFn
	ehs, x, eps, noise []float32
	x0, moments, pix   []float32
	rng                noiseSource
	png                *pngWriter
}

// Open loads the package in dir onto dev: the CLIP tokenizer, the time
// tables, the text encoder, UNet, VAE decoder and (when present) VAE
// encoder. Models are unloaded again if any part fails.
func Open(ctx context.Context, dev *npu.Device, dir string, cfg Config) (_ *Pipeline, err error) {
	if cfg.Name == "" {
		cfg.Name = filepath.Base(dir)
	}
	if cfg.PNGLevel == 0 {
		cfg.PNGLevel = png.BestSpeed
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	p := &Pipeline{dev: dev, dir: dir, name: cfg.Name, cfg: cfg, log: cfg.Logger}
	tok, err := tokenize.LoadCLIP(dir)
	if err != nil {
		return nil, fmt.Errorf("sd: %s: CLIP tokenizer: %w", p.name, err)
	}
	p.tok = tok
	tePath, err := textEncoderPath(dir)
	if err != nil {
		return nil, err
	}
	used0, err := dev.CMMUsed(ctx)
	if err != nil {
		return nil, fmt.Errorf("sd: %s: %w", p.name, err)
	}
	defer func() {
		if err != nil {
			p.unload(context.WithoutCancel(ctx))
		}
	}()
	load := func(path, name string) (*npu.Model, error) {
		m, err := dev.LoadModel(ctx, path, &npu.LoadOptions{Name: p.name + "/" + name})
		if err != nil {
			return nil, fmt.Errorf("sd: %s: load %s: %w", p.name, name, err)
		}
		return m, nil
	}
	if p.te, err = load(tePath, "text_encoder"); err != nil {
		return nil, err
	}
	if p.unet, err = load(filepath.Join(dir, UNetFile), "unet"); err != nil {
		return nil, err
	}
	if p.dec, err = load(filepath.Join(dir, VAEDecoderFile), "vae_decoder"); err != nil {
		return nil, err
	}
	if _, serr := os.Stat(filepath.Join(dir, VAEEncoderFile)); serr == nil {
		if p.enc, err = load(filepath.Join(dir, VAEEncoderFile), "vae_encoder"); err != nil {
			return nil, err
		}
	}
	if err := p.bind(); err != nil {
		return nil, err
	}
	if err := p.loadTimeTables(dir); err != nil {
		return nil, err
	}
	if used1, err := dev.CMMUsed(ctx); err == nil && used1 > used0 {
		p.cmm = used1 - used0
	}
	lat := 4 * p.h * p.w
	p.ehs = make([]float32, p.uEHS.elems)
	p.x, p.eps, p.noise, p.x0 = make([]float32, lat), make([]float32, lat), make([]float32, lat), make([]float32, lat)
	p.pix = make([]float32, 3*p.H*p.W)
	if p.enc != nil {
		p.moments = make([]float32, 2*lat)
	}
	p.png = newPNGWriter(p.W, p.H, cfg.PNGLevel)
	if len(p.byShape) > 0 {
		p.log.Warn("sd package bound partly by shape: the vendor's tensor names are absent", "model", p.name,
			"tensors", strings.Join(p.byShape, ", "))
	}
	p.log.Info("sd package loaded", "model", p.name, "image", fmt.Sprintf("%dx%d", p.W, p.H),
		"img2img", p.enc != nil, "cmm_mib", p.cmm>>20,
		"dtypes", fmt.Sprintf("unet %s/%s/%s→%s, vae_decoder %s→%s", p.uSample.kind, p.uTime.kind, p.uEHS.kind, p.uOut.kind, p.decIn.kind, p.decOut.kind))
	return p, nil
}

// bind finds every tensor by the vendor's name, else by shape (see find),
// and checks the shapes fit together. Every error wraps ErrPackage.
func (p *Pipeline) bind() error {
	in, out := axcl.Input, axcl.Output
	si, err := p.find(p.unet, in, shaped("unet input sample", UNetSample, 1, 4, -1, -1))
	if err != nil {
		return err
	}
	sd := tensors(p.unet, in)[si].Dims
	p.h, p.w = sd[2], sd[3]
	ei, err := p.find(p.unet, in, shaped("unet input encoder_hidden_states", UNetText, 1, textLen, -1), si)
	if err != nil {
		return err
	}
	ti, err := p.find(p.unet, in, anyShape("unet input time embedding", UNetTimeInput), si, ei)
	if err != nil {
		return err
	}
	if n := len(tensors(p.unet, in)); n != 3 {
		return fmt.Errorf("%w: %s: unet has %d inputs, want 3 (sample, encoder_hidden_states, time embedding): %s",
			ErrPackage, p.name, n, listTensors(tensors(p.unet, in)))
	}
	p.tdim = 1
	for _, d := range tensors(p.unet, in)[ti].Dims {
		p.tdim *= d
	}
	ehsDims := tensors(p.unet, in)[ei].Dims
	ehsLen := ehsDims[1] * ehsDims[2]
	uo, err := p.find(p.unet, out, shaped("unet output (noise)", "", 1, 4, p.h, p.w))
	if err != nil {
		return err
	}
	di, err := p.find(p.dec, in, shaped("vae_decoder input", VAEDecoderInput, 1, 4, p.h, p.w))
	if err != nil {
		return err
	}
	do, err := p.find(p.dec, out, shaped("vae_decoder output (image)", "", 1, 3, 8*p.h, 8*p.w))
	if err != nil {
		return err
	}
	p.H, p.W = 8*p.h, 8*p.w
	tei, err := p.find(p.te, in, shaped("text encoder input", TextInputIDs, 1, textLen))
	if err != nil {
		return err
	}
	teo, err := p.find(p.te, out, shaped("text encoder output", TextOutput, 1, textLen, ehsDims[2]))
	if err != nil {
		return err
	}
	var ii, io int
	if p.enc != nil {
		if ii, err = p.find(p.enc, in, shaped("vae_encoder input", VAEEncoderInput, 1, 3, p.H, p.W)); err != nil {
			return err
		}
		if io, err = p.find(p.enc, out, shaped("vae_encoder output (moments)", VAEEncoderOutput, 1, 8, p.h, p.w)); err != nil {
			return err
		}
	}
	lat := 4 * p.h * p.w
	bindp := func(m *npu.Model, dir axcl.Direction, i, n int, dst **port) {
		if err == nil {
			*dst, err = bindPort(m, dir, i, n)
		}
	}
	bindp(p.te, out, teo, ehsLen, &p.teOut)
	bindp(p.unet, in, si, lat, &p.uSample)
	bindp(p.unet, in, ti, p.tdim, &p.uTime)
	bindp(p.unet, in, ei, ehsLen, &p.uEHS)
	bindp(p.unet, out, uo, lat, &p.uOut)
	bindp(p.dec, in, di, lat, &p.decIn)
	bindp(p.dec, out, do, 3*p.H*p.W, &p.decOut)
	if p.enc != nil {
		bindp(p.enc, in, ii, 3*p.H*p.W, &p.encIn)
		bindp(p.enc, out, io, 2*lat, &p.encOut)
	}
	if err != nil {
		return fmt.Errorf("%w: %w (package %s)", ErrPackage, err, p.name)
	}
	// input_ids: 77 int32 (the reference) or int64 (the ONNX original).
	t := tensors(p.te, in)[tei]
	switch t.Size {
	case 4 * textLen:
	case 8 * textLen:
		p.idsWide = true
	default:
		return fmt.Errorf("%w: %s: text encoder %s is %d bytes; %d int32 or int64 ids expected", ErrPackage, p.name, t.Name, t.Size, textLen)
	}
	ids, err := p.te.BufferAt(0, in, tei)
	if err != nil {
		return fmt.Errorf("sd: %s: text encoder input: %w", p.name, err)
	}
	p.teIn = &port{name: t.Name, buf: ids, bytes: make([]byte, t.Size)}

	p.textCall = call{model: p.te, inputs: []*port{p.teIn}, output: p.teOut}
	p.unetFirst = call{model: p.unet, inputs: []*port{p.uSample, p.uTime, p.uEHS}, output: p.uOut}
	p.unetNext = call{model: p.unet, inputs: p.unetFirst.inputs[:2], output: p.uOut}
	p.decodeCall = call{model: p.dec, inputs: []*port{p.decIn}, output: p.decOut}
	if p.enc != nil {
		p.encodeCall = call{model: p.enc, inputs: []*port{p.encIn}, output: p.encOut}
	}
	p.exchangeFn = p.exchange
	return nil
}

// loadTimeTables reads the time-embedding rows: txt2img rows for
// Timesteps, and img2img rows 0 and 1 for t = 499 and 259 when the package
// has an encoder and the file (its rows 2 and 3 are zeros in the published
// package and are not used).
func (p *Pipeline) loadTimeTables(dir string) error {
	read := func(name string) ([][]float32, error) {
		p.cfg.Bindings.File(name, "time embedding rows ("+strings.TrimSuffix(strings.TrimPrefix(name, "time_input_"), ".npy")+")")
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("sd: %s: %w", p.name, err)
		}
		shape, v, err := ReadNPY(b)
		if err != nil {
			return nil, fmt.Errorf("%w (%s)", err, name)
		}
		if len(shape) != 2 || shape[1] != p.tdim || shape[0] < 2 {
			return nil, fmt.Errorf("sd: %s: %s has shape %v, want (4, %d)", p.name, name, shape, p.tdim)
		}
		rows := make([][]float32, shape[0])
		for i := range rows {
			rows[i] = v[i*p.tdim : (i+1)*p.tdim]
		}
		return rows, nil
	}
	txt, err := read(TxtTimeFile)
	if err != nil {
		return err
	}
	if len(txt) < len(Timesteps) {
		return fmt.Errorf("sd: %s: %s has %d rows, want %d", p.name, TxtTimeFile, len(txt), len(Timesteps))
	}
	p.txtRows = map[int][]float32{}
	for i, t := range Timesteps {
		p.txtRows[t] = txt[i]
	}
	p.imgRows = map[int][]float32{}
	if p.enc != nil {
		if _, err := os.Stat(filepath.Join(dir, ImgTimeFile)); err == nil {
			img, err := read(ImgTimeFile)
			if err != nil {
				return err
			}
			p.imgRows[499], p.imgRows[259] = img[0], img[1]
		}
	}
	return nil
}

// Size is the image size.
func (p *Pipeline) Size() (w, h int) { return p.W, p.H }

// Img2Img reports whether the package has a VAE encoder.
func (p *Pipeline) Img2Img() bool { return p.enc != nil }

// CMMBytes is the device memory the package took at Open.
func (p *Pipeline) CMMBytes() uint64 { return p.cmm }

// Steps lists the step counts the package supports (those whose LCM
// timesteps all have a time-embedding row).
func (p *Pipeline) Steps() []int { return SupportedSteps() }

// plan is a checked request.
type plan struct {
	steps    []int // the timesteps to run
	n        int   // the schedule's steps
	strength float64
	img2img  bool
	seed     uint64
}

// Check validates req against the package without doing any work; the
// error is a *RequestError. Generate checks again.
func (p *Pipeline) Check(req *Request) error {
	_, err := p.plan(req)
	return err
}

func (p *Pipeline) plan(req *Request) (*plan, error) {
	n := req.Steps
	if n == 0 {
		n = DefaultSteps
	}
	sched := Schedule(n)
	if sched == nil {
		return nil, &RequestError{Field: "steps", Err: ErrOutOfRange, Msg: fmt.Sprintf(
			"%d steps are not supported by %s: use %s (0 means %d)", req.Steps, p.name, listInts(SupportedSteps()), DefaultSteps)}
	}
	for _, f := range []struct {
		field     string
		got, want int
	}{{"width", req.Width, p.W}, {"height", req.Height, p.H}} {
		if f.got != 0 && f.got != f.want {
			return nil, &RequestError{Field: f.field, Err: ErrOutOfRange, Msg: fmt.Sprintf(
				"%d is not a size %s makes: it makes %d×%d images only (width %d, height %d; 0 means that size)",
				f.got, p.name, p.W, p.H, p.W, p.H)}
		}
	}
	pl := &plan{steps: sched, n: n, seed: req.Seed}
	if len(req.InitImage) == 0 {
		if req.Strength != 0 {
			return nil, &RequestError{Field: "strength", Err: ErrOutOfRange, Msg: "strength needs an init image"}
		}
		return pl, nil
	}
	if p.enc == nil {
		return nil, &RequestError{Field: "init_image", Err: ErrUnsupported, Msg: fmt.Sprintf(
			"%s has no VAE encoder (%s), so it cannot start from an init image", p.name, VAEEncoderFile)}
	}
	s := req.Strength
	if s == 0 {
		s = DefaultStrength
	}
	if !(s > 0 && s <= 1) {
		return nil, &RequestError{Field: "strength", Err: ErrOutOfRange, Msg: fmt.Sprintf("%g is outside (0, 1]", req.Strength)}
	}
	k := min(int(float64(n)*s+1e-9), n)
	if k < 1 {
		return nil, &RequestError{Field: "strength", Err: ErrOutOfRange, Msg: fmt.Sprintf(
			"%g with %d steps runs no step (int(steps×strength) = 0): use at least %g", s, n, 1/float64(n))}
	}
	pl.img2img, pl.steps, pl.strength = true, sched[n-k:], s
	return pl, nil
}

func listInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprint(x)
	}
	if len(s) > 1 {
		return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
	}
	return strings.Join(s, "")
}

// Generate makes one image. progress, when not nil, is called after every
// UNet step with (step, steps); an error from it stops the run and is
// returned. Cancelling ctx stops the run before the next step and returns
// ctx's error. A request the package cannot serve fails with a
// *RequestError before any device work.
func (p *Pipeline) Generate(ctx context.Context, req *Request, progress func(step, steps int) error) (*Result, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	defer p.dev.Busy()() // no properties sample between the steps of an image
	start := time.Now()
	pl, err := p.plan(req)
	if err != nil {
		return nil, err
	}
	res := &Result{Width: p.W, Height: p.H, Steps: pl.n, Strength: pl.strength, Timesteps: pl.steps}
	tm := &res.Timings
	if pl.img2img {
		if err := p.readInitImage(req.InitImage, tm); err != nil {
			return nil, err
		}
	}
	if res.Tokens, err = p.encodeText(ctx, req.Prompt, tm); err != nil {
		return nil, err
	}
	p.rng.seed(pl.seed)
	if pl.img2img {
		if err := p.encodeImage(ctx, pl.steps[0], tm); err != nil {
			return nil, err
		}
	} else {
		p.rng.randn(p.x)
	}
	if err := p.denoise(ctx, pl, start, tm, progress); err != nil {
		return nil, err
	}
	if res.PNG, err = p.decode(ctx, tm); err != nil {
		return nil, err
	}
	tm.Total = time.Since(start)
	return res, nil
}

// The stages of Generate, in order. Each works on the pipeline's buffers
// and adds its time to tm.

// readInitImage decodes and scales an img2img init image into p.pix.
func (p *Pipeline) readInitImage(data []byte, tm *Timings) error {
	t0 := time.Now()
	err := decodeInit(data, p.W, p.H, p.cfg.Images, p.pix)
	tm.Image += time.Since(t0)
	return err
}

// encodeText tokenizes the prompt and runs the text encoder, and stages its
// output as the UNet's encoder_hidden_states. It returns the number of CLIP
// tokens of the prompt, with start and end.
func (p *Pipeline) encodeText(ctx context.Context, prompt string, tm *Timings) (tokens int, err error) {
	t0 := time.Now()
	ids := p.tok.Encode77(prompt)
	tokens = slices.Index(ids[1:], int32(p.tok.EOS())) + 2
	p.encodeIDs(&ids)
	tm.Tokenize += time.Since(t0)

	t0 = time.Now()
	err = p.run(ctx, &p.textCall, tm)
	tm.TextEncoder += time.Since(t0)
	if err != nil {
		return 0, p.failed("text encoder", err)
	}
	p.teOut.decode(p.ehs)
	p.uEHS.encode(p.ehs)
	return tokens, nil
}

// encodeIDs stages the token ids as the text encoder's input_ids: int32 or
// int64, little-endian.
func (p *Pipeline) encodeIDs(ids *[textLen]int32) {
	b := p.teIn.bytes
	for i, id := range ids {
		if p.idsWide {
			binary.LittleEndian.PutUint64(b[8*i:], uint64(int64(id)))
		} else {
			binary.LittleEndian.PutUint32(b[4*i:], uint32(id))
		}
	}
}

// encodeImage runs the VAE encoder on the init image in p.pix, samples the
// image's latent from the encoder's moments and noises it to timestep t,
// the first of the img2img schedule: the starting latent in p.x.
func (p *Pipeline) encodeImage(ctx context.Context, t int, tm *Timings) error {
	t0 := time.Now()
	p.encIn.encode(p.pix)
	if err := p.run(ctx, &p.encodeCall, tm); err != nil {
		return p.failed("vae encoder", err)
	}
	p.encOut.decode(p.moments)
	p.samplePosterior()
	p.rng.randn(p.noise)
	addNoise(p.x, p.x0, p.noise, t)
	tm.VAEEncoder += time.Since(t0)
	return nil
}

// denoise runs the UNet steps of pl on the latent in p.x, reporting each
// to progress. It checks ctx before every step and after the last.
func (p *Pipeline) denoise(ctx context.Context, pl *plan, start time.Time, tm *Timings, progress func(step, steps int) error) error {
	for i := range pl.steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := p.step(ctx, pl, i, tm); err != nil {
			return err
		}
		if i == 0 {
			tm.FirstStep = time.Since(start)
		}
		if progress != nil {
			if err := progress(i+1, len(pl.steps)); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}

// step runs the UNet on p.x at the i-th timestep of pl and moves p.x to
// the next timestep (LCM), adding fresh noise unless it is the last step.
func (p *Pipeline) step(ctx context.Context, pl *plan, i int, tm *Timings) error {
	t0 := time.Now()
	t := pl.steps[i]
	row := p.txtRows[t]
	if r, ok := p.imgRows[t]; ok && pl.img2img {
		row = r
	}
	p.uSample.encode(p.x)
	p.uTime.encode(row)
	c := &p.unetNext
	if i == 0 {
		c = &p.unetFirst // encoder_hidden_states stay on the card for the later steps
	}
	if err := p.run(ctx, c, tm); err != nil {
		return p.failed(fmt.Sprintf("unet step %d (t=%d)", i+1, t), err)
	}
	p.uOut.decode(p.eps)
	last := i == len(pl.steps)-1
	prev := t
	if !last {
		prev = pl.steps[i+1]
		p.rng.randn(p.noise)
	}
	lcmStep(p.x, p.eps, p.noise, coefs(t, prev, last))
	tm.UNet += time.Since(t0)
	return nil
}

// decode runs the VAE decoder on the latent in p.x and encodes the image
// as a PNG.
func (p *Pipeline) decode(ctx context.Context, tm *Timings) ([]byte, error) {
	t0 := time.Now()
	for i, v := range p.x {
		p.x0[i] = v / LatentScale
	}
	p.decIn.encode(p.x0)
	err := p.run(ctx, &p.decodeCall, tm)
	tm.VAEDecoder += time.Since(t0)
	if err != nil {
		return nil, p.failed("vae decoder", err)
	}
	t0 = time.Now()
	p.decOut.decode(p.pix)
	b, err := p.png.encode(p.pix)
	tm.Image += time.Since(t0)
	return b, err
}

// call is one run of a model: write the staged inputs to the card, execute
// shape group 0 and read the output into its staging buffer.
type call struct {
	model  *npu.Model
	inputs []*port
	output *port
}

// run makes c on the device thread and adds the time it took to tm.Device.
// It allocates nothing: c is handed over in p.current to exchangeFn, a
// method value bound once by bind.
func (p *Pipeline) run(ctx context.Context, c *call, tm *Timings) error {
	p.current = c
	t0 := time.Now()
	err := p.dev.Do(ctx, p.exchangeFn)
	tm.Device += time.Since(t0)
	return err
}

// exchange is run's work on the device thread.
func (p *Pipeline) exchange(t *npu.Thread) error {
	c := p.current
	for _, in := range c.inputs {
		if err := t.Write(in.buf, 0, in.bytes); err != nil {
			return err
		}
	}
	if err := t.Execute(c.model, 0); err != nil {
		return err
	}
	return t.Read(c.output.bytes, c.output.buf, 0)
}

// failed wraps the error of the stage what with the package's name.
func (p *Pipeline) failed(what string, err error) error {
	return fmt.Errorf("sd: %s: %s: %w", p.name, what, err)
}

// samplePosterior draws the init latent from the encoder's moments:
// z = mean + exp(0.5·clamp(logvar, −30, 20))·n, x0 = z·0.18215.
func (p *Pipeline) samplePosterior() {
	n := len(p.x0)
	mean, logvar := p.moments[:n], p.moments[n:2*n]
	p.rng.randn(p.noise)
	for i := range p.x0 {
		lv := min(max(logvar[i], -30), 20)
		std := float32(math.Exp(float64(float32(0.5 * lv))))
		z := mean[i] + float32(std*p.noise[i])
		p.x0[i] = float32(z * LatentScale)
	}
}

// Close unloads the models. Generate fails with ErrClosed afterwards.
func (p *Pipeline) Close(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	return p.unload(ctx)
}

func (p *Pipeline) unload(ctx context.Context) error {
	var errs []error
	for _, m := range []*npu.Model{p.enc, p.dec, p.unet, p.te} {
		if m != nil {
			if err := p.dev.Unload(ctx, m); err != nil && !errors.Is(err, npu.ErrStopped) {
				errs = append(errs, err)
			}
		}
	}
	p.enc, p.dec, p.unet, p.te = nil, nil, nil, nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sd: %s: unload: %w", p.name, err)
	}
	return nil
}
