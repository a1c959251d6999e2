package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/gateway"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/test/wait"
)

// gatewayModels writes the simulated packages the gateway tests serve
// into a new folder: qwen3-tiny (chat), smolvlm-tiny (vision, SmolVLM's
// layout), sd15-lcm (images), and with broken a chat package missing a
// layer file (it fails to load: listed, never served).
func gatewayModels(t testing.TB, broken bool) string {
	t.Helper()
	models := t.TempDir()
	qwen := cardsim.TinyQwen3()
	qwen.Layers, qwen.TokenizerDir = 2, "../../worker/tokenize/testdata/qwen3"
	smol := cardsim.TinySmolVLM()
	smol.Name = "smolvlm-tiny"
	for name, spec := range map[string]cardsim.LLMSpec{"qwen3-tiny": qwen, "smolvlm-tiny": smol} {
		if err := cardsim.WriteLLMPackage(filepath.Join(models, name), spec); err != nil {
			t.Fatal(err)
		}
	}
	if broken {
		if err := cardsim.WriteLLMPackage(filepath.Join(models, "qwen3-broken"), qwen); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(models, "qwen3-broken", qwen.ModelDir, qwen.LayerFile(1))); err != nil {
			t.Fatal(err)
		}
	}
	sd := cardsim.SD15LCM()
	sd.TokenizerDir = "../../worker/tokenize/testdata/clip"
	if err := cardsim.WriteSDPackage(filepath.Join(models, "sd15-lcm"), sd); err != nil {
		t.Fatal(err)
	}
	return models
}

// startGateway runs kiln up with its gateway on a free port (plus args)
// and waits until the fleet serves n models. It returns kiln up and the
// gateway's base URL.
func startGateway(t testing.TB, n int, args ...string) (*upProcess, string) {
	t.Helper()
	addr := freeAddr(t)
	u := startUp(t, append([]string{"--gateway", addr, "--name", "shelf-card0"}, args...)...)
	waitStatus(t, u.url, func(st *fleetStatus) bool {
		if len(st.Workers) != 1 || st.Workers[0].State != schema.StateReady || len(st.Workers[0].Models) != n {
			return false
		}
		for _, m := range st.Workers[0].Models {
			if m.State == schema.ModelLoading {
				return false
			}
		}
		return true
	})
	return u, "http://" + addr
}

// openAI is the official OpenAI Go SDK pointed at the gateway; it retries
// nothing, so that each status reaches the test.
func openAI(base string, opts ...option.RequestOption) openai.Client {
	return openai.NewClient(append([]option.RequestOption{option.WithBaseURL(base + "/v1/"), option.WithAPIKey("unused"),
		option.WithMaxRetries(0)}, opts...)...)
}

// apiError asserts err is the gateway's answer with status and param.
func apiError(t *testing.T, what string, err error, status int, param string) *openai.Error {
	t.Helper()
	var e *openai.Error
	if !errors.As(err, &e) {
		t.Fatalf("%s: %v, want an API error %d", what, err, status)
	}
	if e.StatusCode != status || e.Param != param || e.Message == "" || e.Type == "" {
		t.Fatalf("%s: status %d param %q type %q code %q (%s); want %d naming %q", what, e.StatusCode, e.Param, e.Type, e.Code, e.Message, status, param)
	}
	return e
}

func pngOf(t *testing.T, b []byte) (w, h int) {
	t.Helper()
	cfg, err := png.DecodeConfig(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	return cfg.Width, cfg.Height
}

// kilnClient is a kiln client on kiln up's broker, as client id (""
// anonymous).
func kilnClient(t testing.TB, url, id string) *client.Client {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	var opts []client.Option
	if id != "" {
		opts = append(opts, client.WithClientID(id))
	}
	c, err := client.New(nc, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// The official OpenAI SDK, as an independent client, uses kiln up's
// gateway on the simulated card: the model list, chat answered whole and
// streamed (the same text, greedy), a vision message with a data: URI,
// images as b64_json and as a URL the gateway serves, an edit, and the
// errors, each naming its field.
func TestGatewayServesTheOpenAISDK(t *testing.T) {
	cardsim.Library(t)
	u, base := startGateway(t, 3, "--models", gatewayModels(t, false), "--lib", cardsim.Library(t))
	ai := openAI(base)
	ctx := t.Context()

	page, err := ai.Models.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{}
	for _, m := range page.Data {
		kinds[m.ID] = m.JSON.ExtraFields["kind"].Raw() + " " + m.JSON.ExtraFields["cards"].Raw()
	}
	if kinds["qwen3-tiny"] != `"chat" 1` || kinds["smolvlm-tiny"] != `"chat" 1` || kinds["sd15-lcm"] != `"image" 1` || len(kinds) != 3 {
		t.Fatalf("models: %v", kinds)
	}

	// Chat, whole: the answer is the job's stored result.
	var resp *http.Response
	params := openai.ChatCompletionNewParams{Model: "qwen3-tiny", MaxTokens: openai.Int(12),
		Messages: []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("be brief"), openai.UserMessage("hi")}}
	whole, err := ai.Chat.Completions.New(ctx, params, option.WithResponseInto(&resp))
	if err != nil {
		t.Fatal(err)
	}
	id := resp.Header.Get(gateway.HeaderJobID)
	text := whole.Choices[0].Message.Content
	if text == "" || whole.Usage.PromptTokens == 0 || whole.Usage.CompletionTokens == 0 ||
		whole.Usage.TotalTokens != whole.Usage.PromptTokens+whole.Usage.CompletionTokens || whole.Choices[0].FinishReason == "" {
		t.Fatalf("completion %+v", whole)
	}
	stored, err := kilnClient(t, u.url, "").Result(ctx, id)
	if err != nil || stored.Text != text || stored.Usage.CompletionTokens != int(whole.Usage.CompletionTokens) {
		t.Fatalf("stored result of job %q: %+v %v; the answer was %q", id, stored, err, text)
	}

	// Streamed: the same text (greedy by default), usage in the last chunk.
	params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	stream := ai.Chat.Completions.NewStreaming(ctx, params)
	var acc openai.ChatCompletionAccumulator
	chunks := 0
	for stream.Next() {
		acc.AddChunk(stream.Current())
		chunks++
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if acc.Choices[0].Message.Content != text || chunks < 3 || acc.Usage.CompletionTokens != whole.Usage.CompletionTokens {
		t.Fatalf("streamed %q in %d chunks (usage %+v), whole %q", acc.Choices[0].Message.Content, chunks, acc.Usage, text)
	}

	// Vision: the image adds its placeholder rows to the prompt.
	a := imageJob(t, ai, openai.ImageGenerateParams{Prompt: "a red fox", ResponseFormat: openai.ImageGenerateParamsResponseFormatB64JSON},
		map[string]any{"seed": 7, "steps": 1})
	uri := "data:image/png;base64," + base64.StdEncoding.EncodeToString(a)
	ask := func(parts ...openai.ChatCompletionContentPartUnionParam) *openai.ChatCompletion {
		t.Helper()
		c, err := ai.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "smolvlm-tiny", MaxTokens: openai.Int(4),
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(parts)}})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	plain := ask(openai.TextContentPart("what is in it?"))
	seen := ask(openai.TextContentPart("what is in it?"), openai.ImageContentPart(openai.ChatCompletionContentPartImageImageURLParam{URL: uri}))
	if rows := int64(8 * 8); seen.Usage.PromptTokens < plain.Usage.PromptTokens+rows || seen.Choices[0].Message.Content == "" {
		t.Fatalf("prompt tokens without the image %d, with it %d: want %d more", plain.Usage.PromptTokens, seen.Usage.PromptTokens, 64)
	}

	// Images: the same seed, the same PNG as b64_json and behind the URL.
	if w, h := pngOf(t, a); w != 512 || h != 512 {
		t.Fatalf("image %d×%d", w, h)
	}
	res, err := ai.Images.Generate(ctx, withExtra(openai.ImageGenerateParams{Prompt: "a red fox", Model: "sd15-lcm", Size: "512x512"},
		map[string]any{"seed": 7, "steps": 1}))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(res.Data[0].URL, base+"/v1/images/") || res.Data[0].B64JSON != "" {
		t.Fatalf("url answer %+v", res.Data[0])
	}
	if got := get(t, res.Data[0].URL, ""); !bytes.Equal(got, a) {
		t.Fatal("the image behind the URL is not the one the same seed made")
	}
	two, err := ai.Images.Generate(ctx, withExtra(openai.ImageGenerateParams{Prompt: "a red fox", N: openai.Int(2),
		ResponseFormat: openai.ImageGenerateParamsResponseFormatB64JSON}, map[string]any{"seed": 7, "steps": 1}))
	if err != nil || len(two.Data) != 2 || two.Data[0].B64JSON != base64.StdEncoding.EncodeToString(a) || two.Data[1].B64JSON == two.Data[0].B64JSON {
		t.Fatalf("n=2: %d images, %v (the first with seed 7 must be the same, the second another)", len(two.Data), err)
	}

	// Streamed: a progress event per step (kiln's), then OpenAI's completed event with the image.
	gs := ai.Images.GenerateStreaming(ctx, withExtra(openai.ImageGenerateParams{Prompt: "a red fox"}, map[string]any{"seed": 7}))
	var steps []string
	var final []byte
	for gs.Next() {
		switch ev := gs.Current(); ev.Type {
		case "image_generation.progress":
			var p struct{ Step, Steps int }
			if err := json.Unmarshal([]byte(ev.RawJSON()), &p); err != nil {
				t.Fatal(err)
			}
			steps = append(steps, fmt.Sprintf("%d/%d", p.Step, p.Steps))
		case "image_generation.completed":
			if final, err = base64.StdEncoding.DecodeString(ev.B64JSON); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := gs.Err(); err != nil || strings.Join(steps, " ") != "1/4 2/4 3/4 4/4" || final == nil {
		t.Fatalf("streamed image: steps %v, %d bytes, %v", steps, len(final), err)
	}
	if w, h := pngOf(t, final); w != 512 || h != 512 {
		t.Fatalf("streamed image %d×%d", w, h)
	}

	// Edit: img2img from the fox, with kiln's strength.
	edit, err := ai.Images.Edit(ctx, withExtraEdit(openai.ImageEditParams{Prompt: "an oil painting",
		Image:          openai.ImageEditParamsImageUnion{OfFile: openai.File(bytes.NewReader(a), "fox.png", "image/png")},
		ResponseFormat: openai.ImageEditParamsResponseFormatB64JSON}, map[string]any{"strength": 0.5, "seed": 7}))
	if err != nil {
		t.Fatal(err)
	}
	b, err := base64.StdEncoding.DecodeString(edit.Data[0].B64JSON)
	if err != nil || bytes.Equal(b, a) {
		t.Fatalf("edit gave its input back (or no image: %v)", err)
	}
	if w, h := pngOf(t, b); w != 512 || h != 512 {
		t.Fatalf("edit %d×%d", w, h)
	}

	// Errors name the field: the gateway's own checks and the worker's.
	_, err = ai.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "qwen3-tiny", Temperature: openai.Float(3),
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	apiError(t, "temperature 3", err, 400, "temperature")
	_, err = ai.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "qwen3-tiny", FrequencyPenalty: openai.Float(0.5),
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	apiError(t, "frequency_penalty 0.5", err, 400, "frequency_penalty")
	_, err = ai.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "qwen3-tiny",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}}, option.WithJSONSet("temprature", 0.5))
	apiError(t, "a misspelt field", err, 400, "temprature")
	_, err = ai.Images.Generate(ctx, openai.ImageGenerateParams{Prompt: "a fox", Size: "256x256"})
	if e := apiError(t, "size 256x256", err, 400, "size"); e.Code != string(schema.CodeOutOfRange) {
		t.Fatalf("size 256x256: code %q, want the worker's out_of_range", e.Code)
	}
	// A worker's refusal of a streamed chat is still a status, not a stream.
	refusedStream := ai.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: "qwen3-tiny",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage([]openai.ChatCompletionContentPartUnionParam{
			openai.TextContentPart("what is in it?"), openai.ImageContentPart(openai.ChatCompletionContentPartImageImageURLParam{URL: uri})})}})
	for refusedStream.Next() {
	}
	apiError(t, "an image for a text-only model, streamed", refusedStream.Err(), 400, "messages[0].content")
	_, err = ai.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "gpt-4o",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	apiError(t, "model gpt-4o", err, 404, "model")
	_, err = ai.Images.Generate(ctx, openai.ImageGenerateParams{Prompt: "a fox", Model: "qwen3-tiny"})
	apiError(t, "a chat model for an image", err, 404, "model")
	past := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	_, err = ai.Chat.Completions.New(ctx, params, option.WithHeader(gateway.HeaderDeadline, past))
	apiError(t, "a deadline that passed", err, 504, "")
	_, err = ai.Chat.Completions.New(ctx, params, option.WithHeader(gateway.HeaderLane, "fast"))
	apiError(t, "lane fast", err, 400, gateway.HeaderLane)
	if _, err = ai.Chat.Completions.New(ctx, params, option.WithHeader(gateway.HeaderLane, "high")); err != nil {
		t.Fatalf("high lane: %v", err)
	}
}

// imageJob generates one image as b64_json and returns its PNG.
func imageJob(t *testing.T, ai openai.Client, p openai.ImageGenerateParams, extra map[string]any) []byte {
	t.Helper()
	res, err := ai.Images.Generate(t.Context(), withExtra(p, extra))
	if err != nil {
		t.Fatal(err)
	}
	b, err := base64.StdEncoding.DecodeString(res.Data[0].B64JSON)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func withExtra(p openai.ImageGenerateParams, extra map[string]any) openai.ImageGenerateParams {
	p.SetExtraFields(extra)
	return p
}

func withExtraEdit(p openai.ImageEditParams, extra map[string]any) openai.ImageEditParams {
	p.SetExtraFields(extra)
	return p
}

// get fetches url (with the API key when not empty) and returns the body
// of a 200.
func get(t *testing.T, url, key string) []byte {
	t.Helper()
	code, body := fetch(t, url, key)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, code, body)
	}
	return body
}

func fetch(t *testing.T, url, key string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

// On a slow simulated card and a queue of one job: a model whose package
// failed is 503, a second job while the first runs is 429 with
// Retry-After, and a client that goes away mid-stream cancels its job
// (the worker stores it cancelled).
func TestGatewayRefusesAndCancels(t *testing.T) {
	t.Setenv("KILN_SIM_EXEC_US", "20000") // each layer execute takes 20 ms: a reply takes seconds
	u, base := startGateway(t, 4, "--models", gatewayModels(t, true), "--lib", cardsim.Library(t), "--queue-max", "1")
	ai := openAI(base)
	msgs := []openai.ChatCompletionMessageParamUnion{openai.UserMessage("write a long story")}
	// Until a heartbeat says the broken package failed, the registry has it
	// loading, which counts as served (its job would wait for the janitor's
	// no_worker): wait for the gateway to list the three good models only.
	wait.For(t, 30*time.Second, 100*time.Millisecond, func() error {
		page, err := ai.Models.List(t.Context())
		if err != nil || len(page.Data) != 3 {
			return fmt.Errorf("models listed: %v %v", page, err)
		}
		return nil
	})

	_, err := ai.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{Model: "qwen3-broken", Messages: msgs})
	if e := apiError(t, "a model whose package failed", err, 503, "model"); e.Code != string(schema.CodeNoWorker) {
		t.Fatalf("code %q", e.Code)
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var resp *http.Response
	stream := ai.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: "qwen3-tiny", Messages: msgs,
		MaxTokens: openai.Int(900)}, option.WithResponseInto(&resp))
	for stream.Next() {
		if stream.Current().Choices[0].Delta.Content != "" {
			break // the job runs: its first token arrived
		}
	}
	if err := stream.Err(); err != nil || resp == nil {
		t.Fatalf("stream: %v", err)
	}
	id := resp.Header.Get(gateway.HeaderJobID)

	_, err = ai.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{Model: "qwen3-tiny", Messages: msgs})
	e := apiError(t, "a job beyond --queue-max", err, 429, "")
	if e.Response.Header.Get("Retry-After") == "" || e.Code != "queue_full" {
		t.Fatalf("429 without Retry-After or code queue_full: %q %q", e.Response.Header.Get("Retry-After"), e.Code)
	}

	cancel() // the client goes away
	_ = stream.Close()
	kc := kilnClient(t, u.url, "")
	wait.For(t, 30*time.Second, 50*time.Millisecond, func() error {
		res, err := kc.Result(t.Context(), id)
		if err != nil {
			return fmt.Errorf("job %s: %v", id, err)
		}
		if res.Status != schema.StatusCancelled || res.Worker != "shelf-card0" {
			t.Fatalf("job %s of the client that went away ended %q on %q, want cancelled by the worker", id, res.Status, res.Worker)
		}
		return nil
	})

	// kiln up stops while a stream runs: the stream ends (after the
	// gateway's grace) with an error, not [DONE], and kiln up exits 0.
	stream = ai.Chat.Completions.NewStreaming(t.Context(), openai.ChatCompletionNewParams{Model: "qwen3-tiny", Messages: msgs,
		MaxTokens: openai.Int(900)})
	for stream.Next() {
		if stream.Current().Choices[0].Delta.Content != "" {
			break
		}
	}
	u.cancel()
	for stream.Next() {
	}
	if stream.Err() == nil {
		t.Fatal("a stream cut off by the shutdown ended as if complete")
	}
	if code, stderr := u.wait(); code != 0 {
		t.Fatalf("kiln up exited %d: %s", code, stderr)
	}
}

// API keys: each key's jobs run as its client, so one key's image URL
// and stored results are not another's; without a key the gateway answers 401.
func TestGatewayKeysKeepClientsApart(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keys, []byte("# room 2\nroom-2 key-two\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	u, base := startGateway(t, 3, "--models", gatewayModels(t, false), "--lib", cardsim.Library(t),
		"--gateway-keys", "room-1:key-one", "--gateway-keys-file", keys)
	one, two := openAI(base, option.WithAPIKey("key-one")), openAI(base, option.WithAPIKey("key-two"))

	three := openAI(base, option.WithAPIKey("key-three"))
	_, err := three.Models.List(t.Context())
	apiError(t, "an unknown key", err, 401, "")

	var resp *http.Response
	res, err := one.Images.Generate(t.Context(), withExtra(openai.ImageGenerateParams{Prompt: "a red fox"}, map[string]any{"steps": 1}),
		option.WithResponseInto(&resp))
	if err != nil {
		t.Fatal(err)
	}
	id := resp.Header.Get(gateway.HeaderJobID)
	pngOf(t, get(t, res.Data[0].URL, "key-one"))
	if code, body := fetch(t, res.Data[0].URL, "key-two"); code != http.StatusNotFound {
		t.Fatalf("room-2's key fetched room-1's image: %d %s", code, body)
	}
	if code, _ := fetch(t, res.Data[0].URL, ""); code != http.StatusUnauthorized {
		t.Fatalf("no key fetched room-1's image: %d", code)
	}
	// On NATS the job is room-1's: its result is under room-1's id alone.
	if r, err := kilnClient(t, u.url, "room-1").Result(t.Context(), id); err != nil || r.Status != schema.StatusOK {
		t.Fatalf("room-1's stored result: %+v %v", r, err)
	}
	if _, err := kilnClient(t, u.url, "room-2").Result(t.Context(), id); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("room-2 reads room-1's result: %v", err)
	}
	if _, err := two.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{Model: "qwen3-tiny", MaxTokens: openai.Int(4),
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}}, option.WithResponseInto(&resp)); err != nil {
		t.Fatal(err)
	}
	if r, err := kilnClient(t, u.url, "room-2").Result(t.Context(), resp.Header.Get(gateway.HeaderJobID)); err != nil || r.Text == "" {
		t.Fatalf("room-2's chat result: %+v %v", r, err)
	}
}

// 200 streaming HTTP clients at once against one simulated card and a
// queue bounded at 20 jobs: every request ends, with a whole streamed
// answer or a 429 with Retry-After, and none hangs. The test logs the
// process's peak RSS (kiln up, broker, worker, gateway and the 200
// clients in one process).
func TestGatewayUnderLoad(t *testing.T) {
	const clients = 200
	_, base := startGateway(t, 3, "--models", gatewayModels(t, false), "--lib", cardsim.Library(t), "--queue-max", "20")
	ai := openAI(base)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute) // far past what it takes: a hang fails, not a slow run
	defer cancel()
	params := openai.ChatCompletionNewParams{Model: "qwen3-tiny", MaxTokens: openai.Int(8),
		Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}}
	var answered, refused atomic.Int64
	failures := make(chan error, clients)
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			stream := ai.Chat.Completions.NewStreaming(ctx, params)
			var acc openai.ChatCompletionAccumulator
			for stream.Next() {
				acc.AddChunk(stream.Current())
			}
			err := stream.Err()
			var e *openai.Error
			switch {
			case err == nil && len(acc.Choices) == 1 && acc.Choices[0].FinishReason != "" && acc.Usage.CompletionTokens > 0:
				answered.Add(1)
			case errors.As(err, &e) && e.StatusCode == http.StatusTooManyRequests && e.Response.Header.Get("Retry-After") != "":
				refused.Add(1)
			default:
				failures <- fmt.Errorf("neither an answer nor a 429: %v (%d choices)", err, len(acc.Choices))
			}
		})
	}
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Error(err)
	}
	if answered.Load() == 0 || answered.Load()+refused.Load() != clients {
		t.Fatalf("%d answered, %d refused of %d", answered.Load(), refused.Load(), clients)
	}
	status, _ := os.ReadFile("/proc/self/status")
	var rss []string
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "VmHWM") || strings.HasPrefix(line, "VmRSS") {
			rss = append(rss, strings.Join(strings.Fields(line), " "))
		}
	}
	t.Logf("%d answered, %d refused with 429; process memory: %s", answered.Load(), refused.Load(), strings.Join(rss, ", "))
}

// Under broker authorization `kiln gateway` logs in as the gateway identity
// of `kiln broker init-auth --gateway-clients kiosk`: a key of kiosk and a
// bare key (the gateway's own id) both run jobs through a worker logged in
// as the worker, and each key's image URL is its own.
func TestGatewayWithCredentials(t *testing.T) {
	dir := t.TempDir()
	if code, _, stderr := kiln(t, t.Context(), "broker", "init-auth", "--gateway-clients", "kiosk", dir); code != 0 {
		t.Fatalf("init-auth: %d %s", code, stderr)
	}
	conf := filepath.Join(dir, "broker.conf")
	if err := os.WriteFile(conf, []byte("include auth.conf\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	natsAddr, gwAddr := freeAddr(t), freeAddr(t)
	url, base := "nats://"+natsAddr, "http://"+gwAddr
	background(t, "", "broker", "--config", conf, "--listen", natsAddr, "--data", t.TempDir())
	background(t, "", "worker", "--nats", url, "--nkey", filepath.Join(dir, "worker.nk"), "--name", "shelf-card0",
		"--models", gatewayModels(t, false), "--lib", cardsim.Library(t))
	gw := background(t, "", "gateway", "--nats", url, "--nkey", filepath.Join(dir, "gateway.nk"), "--client-id", "gateway",
		"--gateway", gwAddr, "--gateway-keys", "kiosk:key-kiosk,key-own")
	kiosk, own := openAI(base, option.WithAPIKey("key-kiosk")), openAI(base, option.WithAPIKey("key-own"))
	wait.For(t, 60*time.Second, 100*time.Millisecond, func() error {
		page, err := kiosk.Models.List(t.Context())
		if err != nil || len(page.Data) != 3 {
			return fmt.Errorf("the gateway does not list the worker's 3 models: %v (%s)", err, gw.stderr.String())
		}
		return nil
	})
	urls := map[string]string{}
	for name, ai := range map[string]openai.Client{"kiosk": kiosk, "own": own} {
		c, err := ai.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{Model: "qwen3-tiny", MaxTokens: openai.Int(4),
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
		if err != nil || c.Choices[0].Message.Content == "" {
			t.Fatalf("%s's chat: %v", name, err)
		}
		img, err := ai.Images.Generate(t.Context(), withExtra(openai.ImageGenerateParams{Prompt: "a fox"}, map[string]any{"steps": 1}))
		if err != nil {
			t.Fatalf("%s's image: %v", name, err)
		}
		urls[name] = img.Data[0].URL
	}
	pngOf(t, get(t, urls["kiosk"], "key-kiosk"))
	pngOf(t, get(t, urls["own"], "key-own"))
	if code, _ := fetch(t, urls["kiosk"], "key-own"); code != http.StatusNotFound {
		t.Fatalf("the gateway's own key fetched kiosk's image: %d", code)
	}
}
