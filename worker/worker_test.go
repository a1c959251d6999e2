package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/echo"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/workertest"
)

const model = "echo"

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// setup starts a queue whose workers serve the echo handlers as model "echo".
func setup(t *testing.T, topo topology.Config) *workertest.Queue {
	t.Helper()
	return workertest.StartQueue(t, workertest.QueueOptions{
		Topology: topo,
		Chat:     map[string]worker.Handler[schema.ChatJob]{model: echo.Chat},
		Image:    map[string]worker.Handler[schema.ImageJob]{model: echo.Image},
	})
}

func chatJob(text string, md map[string]string) *schema.ChatJob {
	return &schema.ChatJob{
		JobHeader: schema.JobHeader{Model: model, Metadata: md},
		Messages:  []schema.Message{{Role: "user", Content: text}},
	}
}

func TestChatStreamsTokensInOrder(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	bb.Worker(t, "w1", nil)
	c := bb.Client(t)
	var got []schema.Event
	res, err := c.Chat(workertest.Context(t), chatJob("the quick brown fox", nil), func(ev schema.Event) error {
		got = append(got, ev)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != schema.StatusOK || res.Text != "echo: the quick brown fox" || res.FinishReason != schema.FinishStop {
		t.Fatalf("result = %+v", res)
	}
	if res.Worker != "w1" || res.Attempt != 1 || res.Usage.CompletionTokens != 5 {
		t.Fatalf("result worker/attempt/usage = %q %d %+v", res.Worker, res.Attempt, res.Usage)
	}
	var types, text []string
	for i, ev := range got {
		if ev.Seq != i+1 {
			t.Fatalf("event %d has seq %d", i, ev.Seq)
		}
		types = append(types, ev.Type)
		text = append(text, ev.Text)
	}
	want := "started token token token token token result"
	if strings.Join(types, " ") != want {
		t.Fatalf("event types = %v, want %s", types, want)
	}
	if strings.Join(text, "") != res.Text {
		t.Fatalf("streamed %q, result %q", strings.Join(text, ""), res.Text)
	}
	stored, err := c.Result(workertest.Context(t), res.JobID)
	if err != nil || stored.Text != res.Text {
		t.Fatalf("stored result = %+v, %v", stored, err)
	}
}

func TestFiftyClientsGetOnlyTheirOwnEvents(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	bb.Worker(t, "w1", nil)
	bb.Worker(t, "w2", nil)
	ctx := workertest.Context(t)
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := range 50 {
		c := bb.Client(t) // here: bb.Client may t.Fatal, which a spawned goroutine must not
		wg.Add(1)
		go func() {
			defer wg.Done()
			words := fmt.Sprintf("client %d says %d %d", i, i*7, i*13)
			var streamed strings.Builder
			res, err := c.Chat(ctx, chatJob(words, nil), func(ev schema.Event) error {
				streamed.WriteString(ev.Text)
				return nil
			})
			switch {
			case err != nil:
				errs <- err
			case res.Text != "echo: "+words || streamed.String() != res.Text:
				errs <- fmt.Errorf("client %d got %q (streamed %q)", i, res.Text, streamed.String())
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestImageJobReportsProgress(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	bb.Worker(t, "w1", nil)
	c := bb.Client(t)
	seed := uint64(42)
	var steps []int
	res, err := c.Image(workertest.Context(t), &schema.ImageJob{JobHeader: schema.JobHeader{Model: model}, Prompt: "a red fox", Seed: &seed, Steps: 4, Progress: true},
		func(ev schema.Event) error {
			if ev.Type == schema.EventProgress {
				steps = append(steps, ev.Step)
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(steps) != "[1 2 3 4]" || res.Mime != "image/png" || !strings.HasPrefix(string(res.Image), "\x89PNG") {
		t.Fatalf("steps %v, mime %q, %d image bytes", steps, res.Mime, len(res.Image))
	}
}

func TestCancelRunningJob(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	bb.Worker(t, "w1", nil)
	c := bb.Client(t)
	ctx := workertest.Context(t)
	p, err := c.Submit(ctx, chatJob(strings.Repeat("word ", 100), map[string]string{"delay_ms": "50"}))
	if err != nil {
		t.Fatal(err)
	}
	tokens := 0
	res, err := p.Wait(ctx, func(ev schema.Event) error {
		if ev.Type == schema.EventToken {
			tokens++
			if tokens == 3 {
				return c.Cancel(ctx, p.ID)
			}
		}
		return nil
	})
	if !errors.Is(err, client.ErrCancelled) {
		t.Fatalf("err = %v, want ErrCancelled", err)
	}
	if res.Status != schema.StatusCancelled || res.FinishReason != schema.FinishCancelled {
		t.Fatalf("result = %+v", res)
	}
	// Stopped early (the whole answer is 101 tokens, 5 s), the partial text is
	// kept, and no token was streamed that the result does not hold.
	if n := res.Usage.CompletionTokens; n < 3 || n >= 101 || n != tokens {
		t.Fatalf("result holds %d tokens, %d were streamed, cancelled at 3 of 101", n, tokens)
	}
	if !strings.HasPrefix(res.Text, "echo: word word") {
		t.Fatalf("partial text %q", res.Text)
	}
}

func TestCancelQueuedJob(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	bb.Worker(t, "w1", nil)
	c := bb.Client(t)
	ctx := workertest.Context(t)
	// Keep the only worker busy, queue a second job behind it, cancel that.
	busy, err := c.Submit(ctx, chatJob("a b c d e f", map[string]string{"delay_ms": "100"}))
	if err != nil {
		t.Fatal(err)
	}
	queued, err := c.Submit(ctx, chatJob("never runs", nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Cancel(ctx, queued.ID); err != nil {
		t.Fatal(err)
	}
	var sawStart bool
	res, err := queued.Wait(ctx, func(ev schema.Event) error {
		sawStart = sawStart || ev.Type == schema.EventStarted
		return nil
	})
	if !errors.Is(err, client.ErrCancelled) || res.Text != "" || sawStart {
		t.Fatalf("queued job: err %v, result %+v, started %v", err, res, sawStart)
	}
	if res, err := busy.Wait(ctx, nil); err != nil || res.Text != "echo: a b c d e f" {
		t.Fatalf("busy job: %+v, %v", res, err)
	}
}

func TestExpiredDeadline(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	bb.Worker(t, "w1", nil)
	c := bb.Client(t)
	ctx := workertest.Context(t)

	past := time.Now().Add(-time.Second)
	job := chatJob("too late", nil)
	job.Deadline = &past
	if _, err := c.Chat(ctx, job, nil); !errors.Is(err, client.ErrExpired) {
		t.Fatalf("queued past deadline: err = %v, want ErrExpired", err)
	}

	soon := time.Now().Add(300 * time.Millisecond)
	job = chatJob(strings.Repeat("slow ", 50), map[string]string{"delay_ms": "50"})
	job.Deadline = &soon
	res, err := c.Chat(ctx, job, nil)
	if !errors.Is(err, client.ErrExpired) || res.Status != schema.StatusExpired || res.Text == "" {
		t.Fatalf("deadline while running: %+v, %v", res, err)
	}
}

func TestDuplicateSubmitRunsOnce(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	bb.Worker(t, "w1", nil)
	c := bb.Client(t)
	ctx := workertest.Context(t)
	job := chatJob("once only", map[string]string{"pid": "1"})
	job.ID = schema.NewID()
	first, err := c.Submit(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	again := *job
	second, err := c.Submit(ctx, &again)
	if err != nil {
		t.Fatal(err)
	}
	// Both handles listen on the same reply subject and see one run.
	for _, p := range []*client.Pending{first, second} {
		starts := 0
		res, err := p.Wait(ctx, func(ev schema.Event) error {
			if ev.Type == schema.EventStarted {
				starts++
			}
			return nil
		})
		if err != nil || starts != 1 || res.JobID != job.ID {
			t.Fatalf("err %v, %d starts, result %+v", err, starts, res)
		}
	}
	js, _ := jetstream.New(brokertest.Connect(t, bb.Broker))
	cons, err := js.Consumer(ctx, bb.Topology.WithDefaults().JobsStream(), topology.ConsumerName(schema.KindChat, model, schema.LaneNormal))
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Delivered.Consumer != 1 {
		t.Fatalf("the job was delivered %d times, want 1", info.Delivered.Consumer)
	}
}

// rawPublish publishes body on subject with plain nats.go and returns the
// first result event that comes back on the reply header's subject.
func rawPublish(t *testing.T, nc *nats.Conn, subject, contentType string, body []byte, id string) (schema.Result, string) {
	t.Helper()
	reply := "raw.reply." + id
	sub, err := nc.SubscribeSync(reply)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	m := &nats.Msg{Subject: subject, Data: body, Header: nats.Header{}}
	if contentType != "" {
		m.Header.Set("Content-Type", contentType)
	}
	m.Header.Set("Nats-Msg-Id", id)
	m.Header.Set(schema.HeaderReplyTo, reply)
	js, _ := jetstream.New(nc)
	if _, err := js.PublishMsg(workertest.Context(t), m); err != nil {
		t.Fatal(err)
	}
	for {
		em, err := sub.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("no result for %s: %v", id, err)
		}
		codec, err := schema.CodecFor(em.Header.Get("Content-Type"))
		if err != nil {
			t.Fatal(err)
		}
		var ev schema.Event
		if err := codec.Unmarshal(em.Data, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Type == schema.EventResult {
			return *ev.Result, em.Header.Get("Content-Type")
		}
	}
}

func TestInvalidJobsGetTheirOwnCodeAndAreNotRetried(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	bb.Worker(t, "w1", nil)
	nc := brokertest.Connect(t, bb.Broker)
	subj := schema.Subjects{}
	chat := subj.Job(schema.KindChat, model, schema.LaneNormal)
	msgpackOf := func(v any) []byte { b, _ := schema.Msgpack.Marshal(v); return b }
	big := chatJob(strings.Repeat("x", 70<<10), nil)
	big.ID = "big"
	noMessages := &schema.ChatJob{JobHeader: schema.JobHeader{ID: "nomsg", Model: model}}
	other := chatJob("hi", nil)
	other.ID, other.Model = "mismatch", "other-model"
	hot := chatJob("hi", nil)
	hot.ID = "hot"
	temp := 7.0
	hot.Temperature = &temp
	cases := []struct {
		name, ctype string
		body        []byte
		code        schema.ErrorCode
		field       string
	}{
		{"bad msgpack", "application/msgpack", []byte{0xc1, 0xff, 0x00}, schema.CodeBadMsgpack, ""},
		{"bad json", "application/json", []byte(`{"id": "x", "model":`), schema.CodeBadJSON, ""},
		{"bad content type", "text/plain", []byte("hello"), schema.CodeBadContentType, "Content-Type"},
		{"missing messages", "", msgpackOf(noMessages), schema.CodeMissingField, "messages"},
		{"over limit", "", msgpackOf(big), schema.CodeOverLimit, "messages[0].content"},
		{"out of range", "application/json", []byte(`{"id":"hot","model":"echo","messages":[{"role":"user","content":"hi"}],"temperature":7}`), schema.CodeOutOfRange, "temperature"},
		{"model mismatch", "", msgpackOf(other), schema.CodeModelMismatch, "model"},
	}
	for i, tc := range cases {
		id := fmt.Sprintf("invalid-%d", i)
		res, _ := rawPublish(t, nc, chat, tc.ctype, tc.body, id)
		if res.Status != schema.StatusError || res.Error == nil || res.Error.Code != tc.code || res.Error.Field != tc.field {
			t.Errorf("%s: result %+v error %+v, want code %s field %q", tc.name, res, res.Error, tc.code, tc.field)
		}
		if res.Error != nil && res.Error.Message == "" {
			t.Errorf("%s: error without a message", tc.name)
		}
	}
	// Not redelivered: nothing is left in the queue, and the worker goes on.
	c := bb.Client(t)
	if res, err := c.Chat(workertest.Context(t), chatJob("still here", nil), nil); err != nil || res.Text != "echo: still here" {
		t.Fatalf("after invalid jobs: %+v, %v", res, err)
	}
	js, _ := jetstream.New(nc)
	st, err := js.Stream(workertest.Context(t), bb.Topology.WithDefaults().JobsStream())
	if err != nil {
		t.Fatal(err)
	}
	waitQueueEmpty(t, st)
	cons, _ := js.Consumer(workertest.Context(t), bb.Topology.WithDefaults().JobsStream(), topology.ConsumerName(schema.KindChat, model, schema.LaneNormal))
	ci, _ := cons.Info(workertest.Context(t))
	if ci.NumRedelivered != 0 || ci.Delivered.Consumer != uint64(len(cases)+1) {
		t.Fatalf("consumer delivered %d, redelivered %d; want %d and 0", ci.Delivered.Consumer, ci.NumRedelivered, len(cases)+1)
	}
}

func TestClientRefusesInvalidAndUnservedJobsBeforePublishing(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	bb.Worker(t, "w1", nil)
	c := bb.Client(t)
	ctx := workertest.Context(t)
	job := chatJob("hi", nil)
	job.Model = "nobody-has-this"
	if _, err := c.Chat(ctx, job, nil); !errors.Is(err, client.ErrNoWorker) {
		t.Fatalf("unserved model: err = %v, want ErrNoWorker", err)
	}
	if _, err := c.Chat(ctx, &schema.ChatJob{JobHeader: schema.JobHeader{Model: model}}, nil); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("no messages: err = %v, want ErrInvalid", err)
	}
	js, _ := jetstream.New(brokertest.Connect(t, bb.Broker))
	st, _ := js.Stream(ctx, bb.Topology.WithDefaults().JobsStream())
	info, _ := st.Info(ctx)
	if info.State.LastSeq != 0 {
		t.Fatalf("%d jobs were published", info.State.LastSeq)
	}
}

func TestFullQueueRefusesAtPublishAndLosesNothing(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{MaxQueuedJobs: 3})
	c := bb.Client(t, client.WithoutWorkerCheck())
	ctx := workertest.Context(t)
	var accepted []*client.Pending
	for i := range 3 {
		p, err := c.Submit(ctx, chatJob(fmt.Sprintf("job %d", i), nil))
		if err != nil {
			t.Fatal(err)
		}
		accepted = append(accepted, p)
	}
	if _, err := c.Submit(ctx, chatJob("one too many", nil)); !errors.Is(err, client.ErrQueueFull) {
		t.Fatalf("4th job: err = %v, want ErrQueueFull", err)
	}
	bb.Worker(t, "w1", nil)
	for i, p := range accepted {
		res, err := p.Wait(ctx, nil)
		if err != nil || res.Text != fmt.Sprintf("echo: job %d", i) {
			t.Fatalf("job %d: %+v, %v", i, res, err)
		}
	}
}

func TestRawJSONJobGetsJSONBack(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	bb.Worker(t, "w1", nil)
	nc := brokertest.Connect(t, bb.Broker)
	sub, err := nc.SubscribeSync("my.inbox")
	if err != nil {
		t.Fatal(err)
	}
	body := `{"id":"json-1","model":"echo","reply_to":"my.inbox","messages":[{"role":"user","content":"plain json"}]}`
	m := &nats.Msg{Subject: "kiln.jobs.chat.echo.normal", Data: []byte(body), Header: nats.Header{"Content-Type": {"application/json"}}}
	if err := nc.PublishMsg(m); err != nil { // core publish: the stream captures it all the same
		t.Fatal(err)
	}
	var last map[string]any
	for {
		em, err := sub.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if em.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("event content type %q", em.Header.Get("Content-Type"))
		}
		if err := json.Unmarshal(em.Data, &last); err != nil {
			t.Fatalf("event is not JSON: %q", em.Data)
		}
		if last["type"] == "result" {
			break
		}
	}
	res := last["result"].(map[string]any)
	if res["status"] != "ok" || res["text"] != "echo: plain json" || res["job_id"] != "json-1" {
		t.Fatalf("result %v", res)
	}
}

func TestTransientFailureRetriesThenLastDeliveryAnswers(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{MaxDeliver: 3})
	bb.Worker(t, "w1", nil)
	c := bb.Client(t)
	ctx := workertest.Context(t)
	// Fails on attempts 1 and 2, succeeds on 3.
	var attempts []int
	res, err := c.Chat(ctx, chatJob("third time lucky", map[string]string{"fail_until": "3"}), func(ev schema.Event) error {
		if ev.Type == schema.EventStarted {
			attempts = append(attempts, ev.Attempt)
		}
		return nil
	})
	if err != nil || res.Attempt != 3 || fmt.Sprint(attempts) != "[1 2 3]" {
		t.Fatalf("result %+v, err %v, attempts %v", res, err, attempts)
	}
	// Fails on every delivery: the last one answers with an error.
	res, err = c.Chat(ctx, chatJob("never", map[string]string{"fail_until": "99"}), nil)
	if !errors.Is(err, client.ErrFailed) || res.Attempt != 3 || res.Error.Code != schema.CodeFailed {
		t.Fatalf("result %+v, err %v", res, err)
	}
	// Permanent failures and panics are not retried.
	for _, md := range []map[string]string{{"fail": "permanent"}, {"panic": "1"}} {
		res, err = c.Chat(ctx, chatJob("no retry", md), nil)
		if !errors.Is(err, client.ErrFailed) || res.Attempt != 1 {
			t.Fatalf("%v: result %+v, err %v", md, res, err)
		}
	}
	res, err = c.Chat(ctx, chatJob("refused", map[string]string{"fail": "invalid"}), nil)
	if !errors.Is(err, client.ErrInvalid) || res.Error.Code != schema.CodeUnsupported {
		t.Fatalf("handler refusal: result %+v, err %v", res, err)
	}
}

func TestHighLaneFirst(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	c := bb.Client(t, client.WithoutWorkerCheck())
	ctx := workertest.Context(t)
	var order []string
	var mu sync.Mutex
	var pending []*client.Pending
	for i := range 3 {
		job := chatJob(fmt.Sprintf("normal%d", i), nil)
		p, err := c.Submit(ctx, job)
		if err != nil {
			t.Fatal(err)
		}
		pending = append(pending, p)
	}
	job := chatJob("urgent", nil)
	job.Lane = schema.LaneHigh
	p, err := c.Submit(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	pending = append(pending, p)
	bb.Worker(t, "w1", nil)
	var wg sync.WaitGroup
	for _, p := range pending {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := p.Wait(ctx, nil)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, strings.TrimPrefix(res.Text, "echo: "))
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(order) != 4 || order[0] != "urgent" {
		t.Fatalf("completion order %v: the high lane job should run first", order)
	}
}

func TestStoredResultIsResentNotRerun(t *testing.T) {
	t.Parallel()
	// A job whose first delivery stored its result but lost its ack comes
	// back as a redelivery (attempt 2), or, when a broker crash lost the
	// delivery count, as a first delivery again (attempt 1). Either way the
	// stored result is sent, with its own run, and nothing runs.
	for _, tc := range []struct {
		name    string
		attempt int
	}{{"redelivered", 2}, {"delivery count lost", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			bb := setup(t, topology.Config{})
			nc := brokertest.Connect(t, bb.Broker)
			js, _ := jetstream.New(nc)
			ctx := workertest.Context(t)
			job := chatJob("would say something else", nil)
			job.ID = "done-before"
			body, _ := schema.Msgpack.Marshal(job)
			reply := "raw.reply.done-before"
			sub, err := nc.SubscribeSync(reply)
			if err != nil {
				t.Fatal(err)
			}
			m := &nats.Msg{Subject: "kiln.jobs.chat.echo.normal", Data: body, Header: nats.Header{}}
			m.Header.Set(schema.HeaderReplyTo, reply)
			if _, err := js.PublishMsg(ctx, m, jetstream.WithMsgID(job.ID)); err != nil {
				t.Fatal(err)
			}
			var first jetstream.Msg
			if tc.attempt > 1 {
				cons, err := topology.EnsureConsumer(ctx, js, bb.Topology, schema.KindChat, model, schema.LaneNormal)
				if err != nil {
					t.Fatal(err)
				}
				batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
				if err != nil {
					t.Fatal(err)
				}
				first = <-batch.Messages()
			}
			stored := schema.Result{JobID: "done-before", Run: "first-run", Status: schema.StatusOK, Text: "from the first run", Worker: "w0", Attempt: 1}
			data, _ := schema.Msgpack.Marshal(&stored)
			if _, err := js.Publish(ctx, "kiln.results.done-before", data); err != nil {
				t.Fatal(err)
			}
			if first != nil {
				if err := first.Nak(); err != nil {
					t.Fatal(err)
				}
			}
			bb.Worker(t, "w1", nil)
			em, err := sub.NextMsg(10 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			var ev schema.Event
			if err := schema.Msgpack.Unmarshal(em.Data, &ev); err != nil {
				t.Fatal(err)
			}
			if ev.Type != schema.EventResult || ev.Attempt != tc.attempt || ev.Run == "" || ev.Run == "first-run" ||
				ev.Result.Text != "from the first run" || ev.Result.Worker != "w0" || ev.Result.Run != "first-run" {
				t.Fatalf("first event on delivery %d: %+v (result %+v); want the stored result with its run, no new run",
					tc.attempt, ev, ev.Result)
			}
		})
	}
}

func TestGracefulStopFinishesOrHandsBack(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	c := bb.Client(t)
	ctx := workertest.Context(t)
	w1 := bb.Worker(t, "w1", nil)
	// Graceful: the running job finishes before Stop returns.
	p, err := c.Submit(ctx, chatJob("a b c d", map[string]string{"delay_ms": "50"}))
	if err != nil {
		t.Fatal(err)
	}
	waitForStart(t, p)
	if err := w1.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := c.Result(ctx, p.ID)
	if err != nil || res.Text != "echo: a b c d" {
		t.Fatalf("after graceful stop: %+v, %v", res, err)
	}
	// Grace runs out: the job is handed back and another worker finishes it.
	w2 := bb.Worker(t, "w2", nil)
	p, err = c.Submit(ctx, chatJob(strings.Repeat("z ", 40), map[string]string{"delay_ms": "50"}))
	if err != nil {
		t.Fatal(err)
	}
	waitForStart(t, p)
	sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := w2.Stop(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stop past grace: %v", err)
	}
	bb.Worker(t, "w3", nil)
	var attempts []int
	res, err = p.Wait(ctx, func(ev schema.Event) error {
		if ev.Type == schema.EventStarted {
			attempts = append(attempts, ev.Attempt)
		}
		return nil
	})
	if err != nil || res.Worker != "w3" || res.Attempt != 2 || fmt.Sprint(attempts) != "[2]" {
		t.Fatalf("handed-back job: %+v, %v, attempts %v", res, err, attempts)
	}
}

// waitForStart reads p's events until "started" (the rest stays queued).
func waitForStart(t *testing.T, p *client.Pending) {
	t.Helper()
	for ev, err := range p.Events(workertest.Context(t)) {
		if err != nil {
			t.Fatal(err)
		}
		if ev.Type == schema.EventStarted {
			return
		}
	}
}

func TestWorkerRegistersAndLeaves(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	w := bb.Worker(t, "w1", nil)
	c := bb.Client(t)
	ctx := workertest.Context(t)
	ws, err := c.Workers(ctx)
	if err != nil || len(ws) != 1 || ws[0].Worker != "w1" || !ws[0].Serves(schema.KindChat, model) || ws[0].State != schema.StateReady {
		t.Fatalf("workers %+v, %v", ws, err)
	}
	if err := w.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if ws, err = c.Workers(ctx); err != nil || len(ws) != 0 {
		t.Fatalf("after stop: workers %+v, %v", ws, err)
	}
}

func TestJobOutOfDeliveriesStillGetsOneResult(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{MaxDeliver: 2})
	bb.Worker(t, "w1", nil) // its reaper answers; it does not serve "ghost"
	c := bb.Client(t, client.WithoutWorkerCheck())
	ctx := workertest.Context(t)
	job := chatJob("nobody finishes me", nil)
	job.Model = "ghost"
	p, err := c.Submit(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(brokertest.Connect(t, bb.Broker))
	exhaustDeliveries(t, js, bb.Topology, "ghost", 2)
	res, err := p.Wait(ctx, nil)
	if !errors.Is(err, client.ErrFailed) || res.Error.Code != schema.CodeFailed || !strings.Contains(res.Error.Message, "delivered 2 times") {
		t.Fatalf("result %+v, err %v", res, err)
	}
	if stored, err := c.Result(ctx, p.ID); err != nil || stored.Status != schema.StatusError {
		t.Fatalf("stored %+v, %v", stored, err)
	}
}

func TestWatchShowsHeartbeats(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	bb.Worker(t, "w1", nil)
	c := bb.Client(t)
	ctx, cancel := context.WithTimeout(workertest.Context(t), 10*time.Second)
	defer cancel()
	stop := errors.New("seen")
	err := c.Watch(ctx, time.Minute, func(ev client.FleetEvent) error {
		if ev.Heartbeat != nil && ev.Heartbeat.Worker == "w1" && ev.Heartbeat.Serves(schema.KindImage, model) {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Fatalf("watch: %v", err)
	}
}

func TestLateEventsOfAnOlderRunAreDropped(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	c := bb.Client(t, client.WithoutWorkerCheck())
	ctx := workertest.Context(t)
	job := chatJob("nobody runs me", nil)
	job.Model = "manual"
	p, err := c.Submit(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	// A worker that lost the job is still streaming while a second run goes
	// on elsewhere, with the same attempt number (a broker crash lost the
	// delivery count): only the run ids tell them apart.
	nc := brokertest.Connect(t, bb.Broker)
	send := func(ev schema.Event) {
		ev.JobID, ev.Attempt = p.ID, 1
		data, _ := schema.Msgpack.Marshal(&ev)
		if err := nc.Publish(job.ReplyTo, data); err != nil {
			t.Fatal(err)
		}
	}
	send(schema.Event{Run: "old", Seq: 1, Type: schema.EventStarted, Worker: "w1"})
	send(schema.Event{Run: "old", Seq: 2, Type: schema.EventToken, Text: "a"})
	send(schema.Event{Run: "new", Seq: 1, Type: schema.EventStarted, Worker: "w1"})
	send(schema.Event{Run: "old", Seq: 3, Type: schema.EventToken, Text: "LATE"})
	send(schema.Event{Run: "new", Seq: 2, Type: schema.EventToken, Text: "b"})
	send(schema.Event{Run: "new", Seq: 3, Type: schema.EventResult, Result: &schema.Result{JobID: p.ID, Run: "new", Status: schema.StatusOK, Text: "b", Attempt: 1}})
	var seen []string
	res, err := p.Wait(ctx, func(ev schema.Event) error {
		seen = append(seen, fmt.Sprintf("%s#%s%s", ev.Type, ev.Run, ev.Text))
		return nil
	})
	if err != nil || res.Text != "b" {
		t.Fatalf("result %+v, %v", res, err)
	}
	if got := strings.Join(seen, " "); got != "started#old token#olda started#new token#newb result#new" {
		t.Fatalf("events %s", got)
	}
}

// exhaustDeliveries takes the one queued chat job of model through all of
// its deliveries (maxDeliver of them) without answering it, as workers
// killed each time would; the next pull, a live worker asking for work,
// finds it out of deliveries, so the server's advisory reaches the reaper.
func exhaustDeliveries(t *testing.T, js jetstream.JetStream, topo topology.Config, model string, maxDeliver int) {
	t.Helper()
	ctx := workertest.Context(t)
	cons, err := topology.EnsureConsumer(ctx, js, topo, schema.KindChat, model, schema.LaneNormal)
	if err != nil {
		t.Fatal(err)
	}
	for range maxDeliver {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		m, ok := <-batch.Messages()
		if !ok {
			t.Fatal("no delivery")
		}
		_ = m.Nak()
	}
	if batch, err := cons.Fetch(1, jetstream.FetchMaxWait(time.Second)); err == nil {
		for m := range batch.Messages() {
			t.Fatalf("delivered a third time: %v", m.Subject())
		}
	}
}
