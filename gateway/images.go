package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
)

const (
	// maxImageBody bounds an image generation request: a prompt of at
	// most 2000 characters and a few settings.
	maxImageBody = 64 << 10
	// maxEditBody bounds an image edit: one image within schema's limit,
	// its prompt and settings, and the multipart framing.
	maxEditBody = 8<<20 + 256<<10
	// maxFormValue bounds one text field of an edit form.
	maxFormValue = 16 << 10
	// maxImagesPerRequest is OpenAI's bound of n.
	maxImagesPerRequest = 10
)

// Response formats of the image endpoints.
const (
	formatURL    = "url"
	formatB64    = "b64_json"
	imageFileExt = ".png"
)

// imageRequest is a decoded image generation or edit: n jobs like job.
type imageRequest struct {
	job    schema.ImageJob
	n      int
	format string
	stream bool // answer with server-sent events: progress per step, then the image
}

// decodeImage reads the fields of an image generation (edit false) or
// edit (form fields; the image comes separately) from o.
func decodeImage(o *object, edit bool) (*imageRequest, *apiError) {
	req := &imageRequest{n: 1, format: formatURL}
	j := &req.job
	var ok bool
	var err *apiError
	if j.Prompt, ok, err = o.str("prompt"); err != nil {
		return nil, err
	} else if !ok || strings.TrimSpace(j.Prompt) == "" {
		return nil, invalid(schema.CodeMissingField, "prompt", "an image needs a prompt")
	}
	if j.Model, _, err = o.str("model"); err != nil {
		return nil, err
	}
	if n, ok, err := o.integer("n"); err != nil {
		return nil, err
	} else if ok {
		if n < 1 || n > maxImagesPerRequest {
			return nil, invalid(schema.CodeOutOfRange, "n", "%d is outside 1..%d", n, maxImagesPerRequest)
		}
		req.n = int(n)
	}
	if size, _, err := o.str("size"); err != nil {
		return nil, err
	} else if j.Width, j.Height, err = parseSize(size); err != nil {
		return nil, err
	}
	if f, ok, err := o.str("response_format"); err != nil {
		return nil, err
	} else if ok {
		if f != formatURL && f != formatB64 {
			return nil, invalid(schema.CodeBadValue, "response_format", "%q: use url or b64_json", clip(f))
		}
		req.format = f
	}
	if j.Seed, err = decodeSeed(o); err != nil {
		return nil, err
	}
	if steps, ok, err := o.integer("steps"); err != nil {
		return nil, err
	} else if ok {
		if steps < 1 || steps > int64(schema.DefaultLimits.MaxSteps) {
			return nil, invalid(schema.CodeOutOfRange, "steps", "%d is outside 1..%d", steps, schema.DefaultLimits.MaxSteps)
		}
		j.Steps = int(steps)
	}
	if edit {
		if s, ok, err := o.number("strength"); err != nil {
			return nil, err
		} else if ok {
			if !(s > 0 && s <= 1) {
				return nil, invalid(schema.CodeOutOfRange, "strength", "%g is outside (0, 1]", s)
			}
			j.Strength = s
		}
	}
	if req.stream, _, err = o.boolean("stream"); err != nil {
		return nil, err
	}
	if req.stream && req.n > 1 {
		return nil, unsupported("n", "a streamed image request makes one image: n must be 1")
	}
	if err := decodeMetadata(o, &j.JobHeader); err != nil {
		return nil, err
	}
	if err := o.refuseUnlessDefault("makes one kind of PNG per model", map[string][]string{
		"quality": {`"auto"`, `"standard"`}, "style": {}, "background": {`"auto"`, `"opaque"`},
		"moderation": {`"auto"`}, "output_format": {`"png"`}, "output_compression": {"100"},
		"partial_images": {"0"}, "input_fidelity": {}, "frame_count": {}, "frame_duration_ms": {},
		"complexity": {}, "svg": {},
	}); err != nil {
		return nil, err
	}
	return req, o.unknown()
}

// parseSize reads OpenAI's "WIDTHxHEIGHT" ("auto" or none: the model's
// size). The worker refuses a size its package does not make.
func parseSize(size string) (int, int, *apiError) {
	if size == "" || size == "auto" {
		return 0, 0, nil
	}
	ws, hs, ok := strings.Cut(size, "x")
	w, werr := strconv.Atoi(ws)
	h, herr := strconv.Atoi(hs)
	if !ok || werr != nil || herr != nil || w < 1 || h < 1 || w > schema.MaxImageSide || h > schema.MaxImageSide {
		return 0, 0, invalid(schema.CodeBadValue, "size", "%q: use WIDTHxHEIGHT (e.g. 512x512) or auto", clip(size))
	}
	return w, h, nil
}

// imageGenerations serves POST /v1/images/generations.
func (s *Server) imageGenerations(w http.ResponseWriter, r *http.Request, c *caller) {
	id := schema.NewID()
	w.Header().Set(HeaderJobID, id)
	body, aerr := readBody(w, r, maxImageBody)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	o, aerr := parseObject(body, "")
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	req, aerr := decodeImage(o, false)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	s.runImages(w, r, c, id, req)
}

// imageEdits serves POST /v1/images/edits: a multipart form with one
// image file and the fields of a generation, plus "strength".
func (s *Server) imageEdits(w http.ResponseWriter, r *http.Request, c *caller) {
	id := schema.NewID()
	w.Header().Set(HeaderJobID, id)
	r.Body = http.MaxBytesReader(w, r.Body, maxEditBody)
	img, o, aerr := readEditForm(r)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	req, aerr := decodeImage(o, true)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	req.job.InitImage = img
	if req.job.Strength == 0 {
		req.job.Strength = 0.5 // kiln's default (docs/sd.md); the job says it when it is set
	}
	s.runImages(w, r, c, id, req)
}

// readEditForm reads an edit's multipart form part by part, each within
// its bound: the image (also "image[]", once) as bytes, every other
// field as a string, gathered as an object for decodeImage.
func readEditForm(r *http.Request) ([]byte, *object, *apiError) {
	mr, err := r.MultipartReader()
	if err != nil {
		return nil, nil, invalid(schema.CodeBadValue, "", "an edit is a multipart/form-data request: %v", err)
	}
	fields := map[string]json.RawMessage{}
	var img []byte
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, formError(err)
		}
		name := part.FormName()
		switch name {
		case "image", "image[]":
			if img != nil {
				return nil, nil, unsupported("image", "kiln edits one image per request")
			}
			if img, err = readPart(part, int64(schema.DefaultLimits.MaxImageBytes), "image"); err != nil {
				return nil, nil, asAPIError(err)
			}
			if len(img) == 0 {
				return nil, nil, invalid(schema.CodeMissingField, "image", "the image is empty")
			}
		case "mask", "mask[]":
			return nil, nil, unsupported("mask", "kiln has no inpainting: it redraws the whole image (strength says how much)")
		case "":
			return nil, nil, invalid(schema.CodeBadValue, "", "a form part without a name")
		default:
			v, err := readPart(part, maxFormValue, name)
			if err != nil {
				return nil, nil, asAPIError(err)
			}
			if _, dup := fields[name]; dup {
				return nil, nil, invalid(schema.CodeBadValue, name, "given twice")
			}
			fields[name] = formValue(string(v))
		}
	}
	if img == nil {
		return nil, nil, invalid(schema.CodeMissingField, "image", "an edit needs the image to start from (a PNG or JPEG file)")
	}
	return img, &object{fields: fields, used: map[string]bool{}}, nil
}

// formValue is a form field as JSON: numbers and booleans as they are,
// anything else as a string.
func formValue(v string) json.RawMessage {
	if _, err := strconv.ParseFloat(v, 64); err == nil || v == "true" || v == "false" {
		return json.RawMessage(v)
	}
	b, _ := json.Marshal(v)
	return b
}

// readPart reads one form part of at most limit bytes.
func readPart(p *multipart.Part, limit int64, name string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(p, limit+1))
	if err != nil {
		return nil, formError(err)
	}
	if int64(len(b)) > limit {
		return nil, invalid(schema.CodeOverLimit, name, "larger than %d bytes", limit)
	}
	return b, nil
}

func formError(err error) *apiError {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		e := invalid(schema.CodeOverLimit, "", "the request body is larger than %d bytes", tooBig.Limit)
		e.Status = http.StatusRequestEntityTooLarge
		return e
	}
	return invalid(schema.CodeBadValue, "", "reading the form: %v", err)
}

func asAPIError(err error) *apiError {
	if e, ok := err.(*apiError); ok {
		return e
	}
	return formError(err)
}

// imageData is one image of an answer, with kiln's extension field.
type imageData struct {
	B64JSON string   `json:"b64_json,omitempty"`
	URL     string   `json:"url,omitempty"`
	Kiln    kilnInfo `json:"kiln"`
}

// runImages runs req.n image jobs at once (the first with id, a seed
// given counts up) and answers with their images.
func (s *Server) runImages(w http.ResponseWriter, r *http.Request, c *caller, id string, req *imageRequest) {
	if aerr := jobHeader(r, &req.job.JobHeader); aerr != nil {
		writeError(w, aerr)
		return
	}
	if req.job.Model == "" {
		m, aerr := s.defaultImageModel(r)
		if aerr != nil {
			writeError(w, aerr)
			return
		}
		req.job.Model = m
	}
	if aerr := s.checkModel(r.Context(), schema.KindImage, req.job.Model); aerr != nil {
		writeError(w, aerr)
		return
	}
	jobs := make([]*schema.ImageJob, req.n)
	ids := make([]string, req.n)
	for i := range jobs {
		j := req.job
		j.ID = id
		if i > 0 {
			j.ID = schema.NewID()
		}
		if j.Seed != nil {
			seed := *j.Seed + uint64(i)
			j.Seed = &seed
		}
		jobs[i], ids[i] = &j, j.ID
	}
	w.Header().Set(HeaderJobID, strings.Join(ids, ","))
	ctx, cancel := jobContext(r, &req.job.JobHeader)
	defer cancel()
	if req.stream {
		s.streamImage(ctx, w, r, c, jobs[0])
		return
	}
	results := make([]*schema.Result, len(jobs))
	g, gctx := errgroup.WithContext(ctx)
	for i, j := range jobs {
		g.Go(func() error {
			res, err := c.client.Image(gctx, j, nil)
			if err != nil {
				return fmt.Errorf("job %s: %w", j.ID, err)
			}
			results[i] = res
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		s.answerError(w, r, s.jobError(ctx, id, unwrapCancel(ctx, err)))
		return
	}
	base := s.publicURL(r)
	data := make([]imageData, len(results))
	for i, res := range results {
		data[i].Kiln = infoOf(jobs[i].ID, res)
		if req.format == formatB64 {
			data[i].B64JSON = base64.StdEncoding.EncodeToString(res.Image)
		} else {
			data[i].URL = base + "/v1/images/" + jobs[i].ID + imageFileExt
		}
	}
	out := map[string]any{"created": time.Now().Unix(), "data": data, "output_format": "png"}
	if d := results[0].Diffusion; d != nil {
		out["size"] = fmt.Sprintf("%dx%d", d.Width, d.Height)
	}
	writeJSON(w, http.StatusOK, out)
}

// unwrapCancel gives the error of the job that failed first, not the
// cancellation errgroup passed to its siblings.
func unwrapCancel(ctx context.Context, err error) error {
	var ce *client.CancelledError
	if errors.As(err, &ce) && ctx.Err() != nil {
		return &client.CancelledError{JobID: ce.JobID, Cause: context.Cause(ctx)}
	}
	return err
}

// defaultImageModel is the model of a request that names none: the one
// image model the fleet serves.
func (s *Server) defaultImageModel(r *http.Request) (string, *apiError) {
	hbs, aerr := s.live(r)
	if aerr != nil {
		return "", aerr
	}
	var names []string
	for _, m := range fleetModels(hbs) {
		if m.Kind == schema.KindImage {
			names = append(names, m.ID)
		}
	}
	if len(names) == 1 {
		return names[0], nil
	}
	return "", invalid(schema.CodeMissingField, "model", "name the model: the fleet serves %d image models (%s)", len(names), strings.Join(names, ", "))
}

// publicURL is the base URL of the gateway as its clients reach it.
func (s *Server) publicURL(r *http.Request) string {
	if s.cfg.PublicURL != "" {
		return s.cfg.PublicURL
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// imageFile serves GET /v1/images/{id}.png: the stored result of an
// image job of the caller's own client (results are kept an hour).
func (s *Server) imageFile(w http.ResponseWriter, r *http.Request, c *caller) {
	id, ok := strings.CutSuffix(r.PathValue("file"), imageFileExt)
	if !ok || !schema.ValidToken(id) {
		writeError(w, &apiError{Status: http.StatusNotFound, Type: typeInvalidRequest, Code: "not_found",
			Message: "image URLs are /v1/images/<job id>.png"})
		return
	}
	w.Header().Set(HeaderJobID, id)
	res, err := c.client.Result(r.Context(), id)
	if errors.Is(err, client.ErrNotFound) || err == nil && (res.Status != schema.StatusOK || len(res.Image) == 0) {
		writeError(w, &apiError{Status: http.StatusNotFound, Type: typeInvalidRequest, Code: "not_found",
			Message: fmt.Sprintf("no image of job %s for this API key (results are kept for an hour)", id)})
		return
	}
	if err != nil {
		writeError(w, s.kilnError(id, err))
		return
	}
	mime := res.Mime
	if mime == "" {
		mime = "image/png"
	}
	w.Header().Set("Content-Type", mime)
	w.Header().Set("Cache-Control", "private, max-age=3600")
	w.Header().Set("Content-Length", strconv.Itoa(len(res.Image)))
	_, _ = w.Write(res.Image)
}

// imageEvent is one server-sent event of a streamed image request:
// "image_generation.progress" (kiln's: step of steps) after every step,
// then OpenAI's "image_generation.completed" with the image.
type imageEvent struct {
	Type         string    `json:"type"`
	Step         int       `json:"step,omitempty"`
	Steps        int       `json:"steps,omitempty"`
	B64JSON      string    `json:"b64_json,omitempty"`
	CreatedAt    int64     `json:"created_at"`
	Size         string    `json:"size,omitempty"`
	OutputFormat string    `json:"output_format,omitempty"`
	Kiln         *kilnInfo `json:"kiln,omitempty"`
}

// streamImage runs one image job and streams its progress: the status
// and headers wait for the first step, so that a job refused by its
// worker still gets its 4xx.
func (s *Server) streamImage(ctx context.Context, w http.ResponseWriter, r *http.Request, c *caller, j *schema.ImageJob) {
	j.Progress = true
	sse := &eventStream{w: w}
	res, err := c.client.Image(ctx, j, func(ev schema.Event) error {
		if ev.Type == schema.EventProgress {
			sse.send("image_generation.progress", imageEvent{Type: "image_generation.progress", Step: ev.Step, Steps: ev.Steps,
				CreatedAt: time.Now().Unix()})
		}
		return nil
	})
	switch {
	case err != nil && !sse.open:
		s.answerError(w, r, s.jobError(ctx, j.ID, err))
	case err != nil:
		if !clientGone(r) {
			sse.send("error", map[string]*apiError{"error": s.jobError(ctx, j.ID, err)})
		}
	default:
		info := infoOf(j.ID, res)
		ev := imageEvent{Type: "image_generation.completed", B64JSON: base64.StdEncoding.EncodeToString(res.Image),
			CreatedAt: time.Now().Unix(), OutputFormat: "png", Kiln: &info}
		if d := res.Diffusion; d != nil {
			ev.Size = fmt.Sprintf("%dx%d", d.Width, d.Height)
		}
		sse.send("image_generation.completed", ev)
	}
}
