package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/kiln-project/kiln/schema"
)

// chatCompletions serves POST /v1/chat/completions.
func (s *Server) chatCompletions(w http.ResponseWriter, r *http.Request, c *caller) {
	id := schema.NewID()
	w.Header().Set(HeaderJobID, id)
	body, aerr := readBody(w, r, maxChatBody)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	req, aerr := decodeChat(body)
	if aerr == nil {
		req.job.ID = id
		aerr = jobHeader(r, &req.job.JobHeader)
	}
	if aerr == nil {
		aerr = s.checkModel(r.Context(), schema.KindChat, req.job.Model)
	}
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	ctx, cancel := jobContext(r, &req.job.JobHeader)
	defer cancel()
	created := time.Now().Unix()
	if !req.stream {
		res, err := c.client.Chat(ctx, &req.job, nil)
		if err != nil {
			s.answerError(w, r, s.jobError(ctx, id, err))
			return
		}
		writeJSON(w, http.StatusOK, completion(req, res, created))
		return
	}
	st := &chatStream{eventStream: eventStream{w: w}, id: id, model: req.job.Model, created: created}
	res, err := c.client.Chat(ctx, &req.job, st.event)
	switch {
	case err != nil && !st.open:
		s.answerError(w, r, s.jobError(ctx, id, err))
	case err != nil:
		if !clientGone(r) { // the client is still there to read why
			e := s.jobError(ctx, id, err)
			if errors.Is(err, errRestarted) {
				e = &apiError{Status: http.StatusBadGateway, Type: typeServer, Code: "restarted", Message: err.Error()}
			}
			st.frame(map[string]*apiError{"error": e})
		}
	default:
		st.finish(res, req.includeUsage)
	}
}

// answerError answers a job that ended without a result to show, unless
// its client has gone (then there is no one to answer).
func (s *Server) answerError(w http.ResponseWriter, r *http.Request, e *apiError) {
	if clientGone(r) {
		s.log.Debug("client went away: its job is cancelled", "job", w.Header().Get(HeaderJobID))
		return
	}
	writeError(w, e)
}

// clientGone reports whether the request's client went away (not: the
// gateway's shutdown ended the request, whose client is there to read why).
func clientGone(r *http.Request) bool {
	return r.Context().Err() != nil && !errors.Is(context.Cause(r.Context()), errShutdown)
}

// errRestarted ends a stream whose job started over on another worker
// after text was sent: what the client has cannot be taken back.
var errRestarted = errors.New("the job restarted on another worker after part of its answer was sent; retry the request")

// chatStream writes a job's events as server-sent chat.completion.chunk
// frames.
type chatStream struct {
	eventStream
	id      string
	model   string
	created int64
	sent    bool // text was sent
}

// event passes a job's event on. The status and headers wait for the
// first token, not the "started" event: a worker emits "started" before
// its handler checks the job against the model (a prompt too long for the
// context, an image for a text-only model), and such a refusal must still
// be a 4xx naming the field.
func (st *chatStream) event(ev schema.Event) error {
	switch ev.Type {
	case schema.EventStarted:
		if st.sent {
			return errRestarted
		}
	case schema.EventToken:
		if ev.Text == "" {
			return nil
		}
		st.start()
		st.sent = true
		st.frame(st.chunk(map[string]string{"content": ev.Text}, nil, nil))
	}
	return nil
}

// start sends the headers and the chunk that names the role, once.
func (st *chatStream) start() {
	if st.open {
		return
	}
	st.frame(st.chunk(map[string]string{"role": "assistant", "content": ""}, nil, nil))
}

func (st *chatStream) finish(res *schema.Result, includeUsage bool) {
	st.start()
	reason := finishReason(res)
	st.frame(st.chunk(map[string]string{}, &reason, nil))
	if includeUsage {
		u := usageOf(res)
		c := st.chunk(nil, nil, &u)
		c.Choices = []chunkChoice{}
		st.frame(c)
	}
	st.done()
}

func (st *chatStream) chunk(delta map[string]string, finish *string, usage *usage) chatChunk {
	c := chatChunk{ID: "chatcmpl-" + st.id, Object: "chat.completion.chunk", Created: st.created, Model: st.model, Usage: usage}
	if delta != nil {
		c.Choices = []chunkChoice{{Delta: delta, FinishReason: finish}}
	}
	return c
}

// frame sends one server-sent event.
func (st *chatStream) frame(v any) { st.send("", v) }

// eventStream writes server-sent events; the first one sends the status
// and headers.
type eventStream struct {
	w    http.ResponseWriter
	open bool // the status and headers were sent
}

// send writes one event (name "" for a data-only one) and flushes it.
func (es *eventStream) send(name string, v any) {
	if !es.open {
		es.open = true
		h := es.w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Accel-Buffering", "no") // a proxy in front must not buffer the stream
		es.w.WriteHeader(http.StatusOK)
	}
	b, _ := json.Marshal(v)
	if name != "" {
		_, _ = fmt.Fprintf(es.w, "event: %s\n", name)
	}
	_, _ = fmt.Fprintf(es.w, "data: %s\n\n", b)
	_ = http.NewResponseController(es.w).Flush()
}

// done ends a chat stream as OpenAI's do.
func (es *eventStream) done() {
	_, _ = fmt.Fprint(es.w, "data: [DONE]\n\n")
	_ = http.NewResponseController(es.w).Flush()
}

// The OpenAI shapes the gateway writes.
type (
	chatChunk struct {
		ID      string        `json:"id"`
		Object  string        `json:"object"`
		Created int64         `json:"created"`
		Model   string        `json:"model"`
		Choices []chunkChoice `json:"choices"`
		Usage   *usage        `json:"usage,omitempty"`
	}
	chunkChoice struct {
		Index        int               `json:"index"`
		Delta        map[string]string `json:"delta"`
		FinishReason *string           `json:"finish_reason"`
		Logprobs     *struct{}         `json:"logprobs"`
	}
	chatCompletion struct {
		ID      string       `json:"id"`
		Object  string       `json:"object"`
		Created int64        `json:"created"`
		Model   string       `json:"model"`
		Choices []chatChoice `json:"choices"`
		Usage   usage        `json:"usage"`
		Kiln    kilnInfo     `json:"kiln"`
	}
	chatChoice struct {
		Index        int         `json:"index"`
		Message      chatMessage `json:"message"`
		FinishReason string      `json:"finish_reason"`
		Logprobs     *struct{}   `json:"logprobs"`
	}
	chatMessage struct {
		Role    string  `json:"role"`
		Content string  `json:"content"`
		Refusal *string `json:"refusal"`
	}
	usage struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	}
	// kilnInfo is the extension field "kiln" of an answer: what the job
	// ran with and where, so that it can be repeated (seed) and timed.
	kilnInfo struct {
		JobID      string  `json:"job_id"`
		Worker     string  `json:"worker,omitempty"`
		Seed       *uint64 `json:"seed,omitempty"`
		QueueMS    int64   `json:"queue_ms"`
		TTFTMS     int64   `json:"ttft_ms,omitempty"`
		TotalMS    int64   `json:"total_ms"`
		TokensPerS float64 `json:"tokens_per_s,omitempty"`
	}
)

func completion(req *chatRequest, res *schema.Result, created int64) chatCompletion {
	return chatCompletion{
		ID: "chatcmpl-" + req.job.ID, Object: "chat.completion", Created: created, Model: req.job.Model,
		Choices: []chatChoice{{Message: chatMessage{Role: "assistant", Content: res.Text}, FinishReason: finishReason(res)}},
		Usage:   usageOf(res),
		Kiln:    infoOf(req.job.ID, res),
	}
}

func infoOf(id string, res *schema.Result) kilnInfo {
	return kilnInfo{JobID: id, Worker: res.Worker, Seed: res.Seed, QueueMS: res.Usage.QueueMS, TTFTMS: res.Usage.TTFTMS,
		TotalMS: res.Usage.TotalMS, TokensPerS: res.Usage.TokensPerS}
}

func usageOf(res *schema.Result) usage {
	u := res.Usage
	return usage{PromptTokens: u.PromptTokens, CompletionTokens: u.CompletionTokens, TotalTokens: u.PromptTokens + u.CompletionTokens}
}

// finishReason is OpenAI's name for why the answer ended.
func finishReason(res *schema.Result) string {
	if res.FinishReason == schema.FinishLength {
		return "length"
	}
	return "stop"
}
