package janitor_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker"
	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/broker/janitor"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/echo"
	"github.com/kiln-project/kiln/worker"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type bundle struct {
	b    *broker.Broker
	topo topology.Config
	nc   *nats.Conn // the hand-publishing user's connection: plain nats.go
	js   jetstream.JetStream
}

func setup(t *testing.T, topo topology.Config) *bundle {
	t.Helper()
	topo.HeartbeatInterval = max(topo.HeartbeatInterval, time.Second)
	b := brokertest.Run(t, &brokertest.Options{Topology: topo})
	nc := brokertest.Connect(t, b)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &bundle{b: b, topo: topo, nc: nc, js: js}
}

// janitor starts a janitor with a short interval; cfg's zero fields are the test defaults.
func (bb *bundle) janitor(t *testing.T, cfg janitor.Config) *janitor.Janitor {
	t.Helper()
	cfg.Topology = bb.topo
	if cfg.Interval == 0 {
		cfg.Interval = 100 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = quiet
	}
	j, err := janitor.New(brokertest.Connect(t, bb.b), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := j.Stop(ctx); err != nil {
			t.Errorf("janitor stop: %v", err)
		}
	})
	return j
}

// worker starts a worker serving the echo handlers as chat and image
// models of the given names.
func (bb *bundle) worker(t *testing.T, name, chat, image string, dev worker.Device) *worker.Worker {
	t.Helper()
	cfg := worker.Config{
		Name:     name,
		Topology: bb.topo,
		Chat:     map[string]worker.Handler[schema.ChatJob]{},
		Image:    map[string]worker.Handler[schema.ImageJob]{},
		Device:   dev,
		Logger:   quiet,
	}
	if chat != "" {
		cfg.Chat[chat] = echo.Chat
	}
	if image != "" {
		cfg.Image[image] = echo.Image
	}
	w, err := worker.New(brokertest.Connect(t, bb.b), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = w.StopAndCancel(ctx)
	})
	return w
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// reply is a job's event as a JSON user reads it: decoded by hand, no kiln
// types.
type reply struct {
	JobID  string `json:"job_id"`
	Type   string `json:"type"`
	Result *struct {
		JobID  string `json:"job_id"`
		Status string `json:"status"`
		Text   string `json:"text"`
		Error  *struct {
			Code    string `json:"code"`
			Field   string `json:"field"`
			Message string `json:"message"`
		} `json:"error"`
	} `json:"result"`
}

// handJob is a chat job published the way a person with the nats CLI
// would: JSON written by hand, the id in Nats-Msg-Id and the reply subject
// in Kiln-Reply-To, through plain nats.go.
type handJob struct {
	subject, id, replyTo string
	seq                  uint64 // where KILN_JOBS stored it
	replies              *nats.Subscription
}

func (bb *bundle) publish(t *testing.T, subject, id string, metadata string) *handJob {
	t.Helper()
	hj := &handJob{subject: subject, id: id, replyTo: "room.replies." + schema.NewID()}
	sub, err := bb.nc.SubscribeSync(hj.replyTo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	hj.replies = sub
	if metadata == "" {
		metadata = "{}"
	}
	model := "any"
	if tokens := strings.Split(subject, "."); len(tokens) > 3 {
		model = tokens[3]
	}
	msg := nats.NewMsg(subject)
	msg.Data = []byte(`{"id": "` + id + `", "model": "` + model + `", "messages": [{"role": "user", "content": "hello there"}], "metadata": ` + metadata + `}`)
	msg.Header.Set("Content-Type", "application/json")
	msg.Header.Set("Kiln-Reply-To", hj.replyTo)
	if id != "" {
		msg.Header.Set("Nats-Msg-Id", id)
	}
	ack, err := bb.js.PublishMsg(testCtx(t), msg)
	if err != nil {
		t.Fatalf("publish to %s: %v", subject, err)
	}
	hj.seq = ack.Sequence
	return hj
}

// final waits for the job's result event, then for a settle window in
// which no other event may arrive.
func (hj *handJob) final(t *testing.T, settle time.Duration) reply {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		m, err := hj.replies.NextMsg(time.Until(deadline))
		if err != nil {
			t.Fatalf("job %s on %s: no result: %v", hj.id, hj.subject, err)
		}
		var r reply
		if err := json.Unmarshal(m.Data, &r); err != nil {
			t.Fatalf("job %s: reply is not JSON (%v): %q", hj.id, err, m.Data)
		}
		if m.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("job %s: reply Content-Type %q", hj.id, m.Header.Get("Content-Type"))
		}
		if r.Type != "result" {
			continue // started, token
		}
		if r.Result == nil {
			t.Fatalf("job %s: result event without a result: %q", hj.id, m.Data)
		}
		if extra, err := hj.replies.NextMsg(settle); err == nil {
			t.Fatalf("job %s: a second event after its result: %q", hj.id, extra.Data)
		}
		return r
	}
}

// gone fails the test if the job is still in the queue.
func (bb *bundle) gone(t *testing.T, hj *handJob) {
	t.Helper()
	st, err := bb.js.Stream(testCtx(t), bb.topo.WithDefaults().JobsStream())
	if err != nil {
		t.Fatal(err)
	}
	if m, err := st.GetMsg(testCtx(t), hj.seq); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("job %s is still queued after its result: %+v, %v", hj.id, m, err)
	}
}

func TestJobsNobodyCanTakeGetOneCodedError(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	bb.worker(t, "w1", "echo", "paint", nil)
	bb.janitor(t, janitor.Config{Grace: time.Second})
	for _, tc := range []struct {
		name, subject       string
		status, code, field string
		says                []string // in the message
	}{
		{"unserved model", "kiln.jobs.chat.qwen3-4b.normal", "error", "no_worker", "model", []string{`"qwen3-4b"`, "chat: echo", "image: paint"}},
		{"wrong kind", "kiln.jobs.image.echo.normal", "error", "unknown_model", "model", []string{`"echo"`, "chat jobs", "kiln.jobs.chat.echo.normal"}},
		{"unknown lane", "kiln.jobs.chat.echo.urgent", "error", "bad_subject", "subject", []string{`lane "urgent"`, "high or normal"}},
		{"unknown kind", "kiln.jobs.video.echo.normal", "error", "bad_subject", "subject", []string{`kind "video"`, "chat or image"}},
		{"wildcard model", "kiln.jobs.chat.*.normal", "error", "bad_subject", "subject", []string{`model of "kiln.jobs.chat.*.normal" is the wildcard "*"`}},
		{"wildcard kind", "kiln.jobs.>.echo.normal", "error", "bad_subject", "subject", []string{`kind of "kiln.jobs.>.echo.normal" is the wildcard ">"`}},
		{"wildcard lane", "kiln.jobs.chat.echo.>", "error", "bad_subject", "subject", []string{`lane of "kiln.jobs.chat.echo.>" is the wildcard ">"`}},
		{"served", "kiln.jobs.chat.echo.normal", "ok", "", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			id := schema.NewID()
			hj := bb.publish(t, tc.subject, id, "")
			r := hj.final(t, 500*time.Millisecond)
			res := r.Result
			if r.JobID != id || res.JobID != id || res.Status != tc.status {
				t.Fatalf("result %+v of job %s, want status %s", res, id, tc.status)
			}
			if tc.code == "" {
				if res.Error != nil || res.Text != "echo: hello there" {
					t.Fatalf("served job: %+v %+v", res, res.Error)
				}
			} else {
				if res.Error == nil || res.Error.Code != tc.code || res.Error.Field != tc.field {
					t.Fatalf("error %+v, want code %s field %s", res.Error, tc.code, tc.field)
				}
				for _, s := range tc.says {
					if !strings.Contains(res.Error.Message, s) {
						t.Errorf("message %q does not say %s", res.Error.Message, s)
					}
				}
			}
			bb.gone(t, hj)
			// The result is stored too, for a reader who comes later.
			results, err := bb.js.Stream(testCtx(t), "KILN_RESULTS")
			if err != nil {
				t.Fatal(err)
			}
			stored, err := results.GetLastMsgForSubject(testCtx(t), "kiln.results."+id)
			if err != nil || !strings.Contains(string(stored.Data), `"status":"`+tc.status+`"`) {
				t.Fatalf("stored result of %s: %v %q", id, err, stored.Data)
			}
		})
	}
}

// signal is a log handler that closes ch at the first record with message msg.
type signal struct {
	msg  string
	ch   chan struct{}
	once sync.Once
}

func logSignal(msg string) *signal { return &signal{msg: msg, ch: make(chan struct{})} }

func (s *signal) Enabled(context.Context, slog.Level) bool { return true }
func (s *signal) Handle(_ context.Context, r slog.Record) error {
	if r.Message == s.msg {
		s.once.Do(func() { close(s.ch) })
	}
	return nil
}
func (s *signal) WithAttrs([]slog.Attr) slog.Handler { return s }
func (s *signal) WithGroup(string) slog.Handler      { return s }

func (s *signal) wait(t *testing.T) {
	t.Helper()
	select {
	case <-s.ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("no log line %q", s.msg)
	}
}

func TestJobQueuedBeforeItsWorkerStartsIsServed(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	seen := logSignal("jobs wait for a model no live worker serves; answering them after the grace")
	// A grace far longer than a worker takes to start on a loaded machine.
	bb.janitor(t, janitor.Config{Grace: 30 * time.Second, Logger: slog.New(seen)})
	hj := bb.publish(t, "kiln.jobs.chat.echo.normal", schema.NewID(), "")
	seen.wait(t) // the janitor has seen the job wait with nobody to serve it
	bb.worker(t, "late", "echo", "", nil)
	if r := hj.final(t, 300*time.Millisecond); r.Result.Status != "ok" || r.Result.Text != "echo: hello there" {
		t.Fatalf("job queued before its worker started: %+v", r.Result)
	}
}

// loadingCard is a card whose models load until release is closed.
type loadingCard struct{ release chan struct{} }

func (c *loadingCard) Fault(error) bool                { return false }
func (c *loadingCard) Lost() error                     { return nil }
func (c *loadingCard) Reset(ctx context.Context) error { return c.Load(ctx) }
func (c *loadingCard) Load(ctx context.Context) error {
	select {
	case <-c.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func TestWorkerStillLoadingKeepsItsJobsPastTheGrace(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	card := &loadingCard{release: make(chan struct{})}
	bb.worker(t, "loading", "echo", "", card) // registered, "loading"
	bb.janitor(t, janitor.Config{Grace: 500 * time.Millisecond})
	kept := bb.publish(t, "kiln.jobs.chat.echo.normal", schema.NewID(), "")
	unserved := bb.publish(t, "kiln.jobs.chat.nobody.normal", schema.NewID(), "")
	// The unserved job's answer shows that the grace has passed in a sweep
	// that also looked at the loading worker's route.
	if r := unserved.final(t, 0); r.Result.Error == nil || r.Result.Error.Code != "no_worker" {
		t.Fatalf("unserved job: %+v", r.Result)
	}
	st, err := bb.js.Stream(testCtx(t), "KILN_JOBS")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetMsg(testCtx(t), kept.seq); err != nil {
		t.Fatalf("the loading worker's job left the queue: %v", err)
	}
	close(card.release)
	if r := kept.final(t, 300*time.Millisecond); r.Result.Status != "ok" {
		t.Fatalf("job of a worker that was loading: %+v", r.Result)
	}
}

func TestJobPastItsMaxAgeExpires(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{JobMaxAge: time.Second, HeartbeatInterval: 20 * time.Second})
	bb.worker(t, "w1", "echo", "", nil)
	// A route that the registry says is served but nobody fetches from.
	kv, err := bb.js.KeyValue(testCtx(t), "kiln_workers")
	if err != nil {
		t.Fatal(err)
	}
	ghost := `{"worker": "ghost", "state": "ready", "models": [{"name": "ghost", "kind": "chat"}], "interval_ms": 20000}`
	if _, err := kv.Put(testCtx(t), "ghost", []byte(ghost)); err != nil {
		t.Fatal(err)
	}
	bb.janitor(t, janitor.Config{Grace: time.Hour})
	unserved := bb.publish(t, "kiln.jobs.chat.nobody.normal", schema.NewID(), "")
	idle := bb.publish(t, "kiln.jobs.chat.ghost.high", schema.NewID(), "")
	// A job that a worker is running past the max age is the worker's to answer.
	running := bb.publish(t, "kiln.jobs.chat.echo.normal", schema.NewID(), `{"delay_ms": "1000"}`)
	for _, hj := range []*handJob{unserved, idle} {
		r := hj.final(t, 300*time.Millisecond)
		if r.Result.Status != "expired" || r.Result.Error == nil || r.Result.Error.Code != "expired" ||
			!strings.Contains(r.Result.Error.Message, "longer than its max age of 1s") {
			t.Fatalf("job on %s past its max age: %+v %+v", hj.subject, r.Result, r.Result.Error)
		}
		bb.gone(t, hj)
	}
	if r := running.final(t, 300*time.Millisecond); r.Result.Status != "ok" || r.Result.Text != "echo: hello there" {
		t.Fatalf("job running past the max age: %+v %+v", r.Result, r.Result.Error)
	}
	// KILN_JOBS keeps a job longer than that, so that the janitor answers first.
	st, err := bb.js.Stream(testCtx(t), "KILN_JOBS")
	if err != nil {
		t.Fatal(err)
	}
	if got := st.CachedInfo().Config.MaxAge; got != time.Second+topology.JobMaxAgeMargin {
		t.Fatalf("KILN_JOBS MaxAge %v, want %v", got, time.Second+topology.JobMaxAgeMargin)
	}
}

func TestJanitorsAtOnceAnswerEachJobOnce(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	for range 3 {
		bb.janitor(t, janitor.Config{Grace: 200 * time.Millisecond, Interval: 20 * time.Millisecond})
	}
	var jobs []*handJob
	for i := range 12 {
		id := schema.NewID()
		if i%4 == 0 {
			id = "" // no id: no result subject to store it on
		}
		hj := bb.publish(t, "kiln.jobs.chat.nobody.normal", id, "")
		if id == "" {
			hj.id = fmt.Sprint("(no id) ", hj.seq)
		}
		jobs = append(jobs, hj)
	}
	for _, hj := range jobs {
		if r := hj.final(t, time.Second); r.Result.Error == nil || r.Result.Error.Code != "no_worker" {
			t.Fatalf("job %s: %+v", hj.id, r.Result)
		}
		bb.gone(t, hj)
	}
}

func TestSubjectThatCanNeverBeAJobIsRefusedAtPublish(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	for _, subject := range []string{"kiln.jobs.chat.echo.normal.room-1.extra", "kiln.jobs.chat.echo", "kiln.jobs.chat.>"} {
		msg := nats.NewMsg(subject)
		msg.Data = []byte(`{}`)
		if _, err := bb.js.PublishMsg(testCtx(t), msg, jetstream.WithRetryAttempts(0)); !errors.Is(err, jetstream.ErrNoStreamResponse) {
			t.Errorf("publish to %s: %v, want no stream", subject, err)
		}
	}
}

// An existing KILN_JOBS from before the narrower subjects is narrowed by
// Provision; a job it stored on a subject that is refused now is answered.
func TestProvisionNarrowsAnOldQueueAndItsOddJobsAreAnswered(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	st, err := bb.js.Stream(testCtx(t), "KILN_JOBS")
	if err != nil {
		t.Fatal(err)
	}
	old := st.CachedInfo().Config
	old.Subjects = []string{"kiln.jobs.>"}
	old.RePublish = &jetstream.RePublish{Source: "kiln.jobs.>", Destination: "kiln.wake.>", HeadersOnly: true}
	old.MaxAge = 10 * time.Minute
	delete(old.Metadata, topology.MetadataJobMaxAge)
	if _, err := bb.js.UpdateStream(testCtx(t), old); err != nil {
		t.Fatal(err)
	}
	odd := bb.publish(t, "kiln.jobs.chat.echo.normal.room-1.extra", schema.NewID(), "")
	if err := topology.Provision(testCtx(t), bb.js, bb.topo); err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if c := info.Config; !slices.Equal(c.Subjects, []string{"kiln.jobs.*.*.*", "kiln.jobs.*.*.*.*"}) || c.MaxAge != 10*time.Minute+topology.JobMaxAgeMargin ||
		topology.JobMaxAgeOf(c) != 10*time.Minute {
		t.Fatalf("KILN_JOBS after Provision: subjects %v, max age %v, metadata %v", c.Subjects, c.MaxAge, c.Metadata)
	}
	if _, err := bb.js.Publish(testCtx(t), odd.subject, []byte(`{}`), jetstream.WithRetryAttempts(0)); !errors.Is(err, jetstream.ErrNoStreamResponse) {
		t.Fatalf("publish to %s after Provision: %v, want no stream", odd.subject, err)
	}
	bb.janitor(t, janitor.Config{})
	r := odd.final(t, 300*time.Millisecond)
	if r.Result.Error == nil || r.Result.Error.Code != "bad_subject" || !strings.Contains(r.Result.Error.Message, "is not a job subject") {
		t.Fatalf("job stored on %s: %+v", odd.subject, r.Result)
	}
	bb.gone(t, odd)
	// Jobs are still announced on their wake subject.
	wake, err := bb.nc.SubscribeSync("kiln.wake.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := bb.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	bb.publish(t, "kiln.jobs.image.paint.high", schema.NewID(), "")
	if m, err := wake.NextMsg(10 * time.Second); err != nil || m.Subject != "kiln.wake.image.paint.high" {
		t.Fatalf("wake-up: %v %v", m, err)
	}
}

func TestStopBeforeStartAndTwice(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	j, err := janitor.New(bb.nc, janitor.Config{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Stop(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if err := j.Stop(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if err := j.Start(testCtx(t)); !errors.Is(err, janitor.ErrStopped) {
		t.Fatalf("Start after Stop: %v", err)
	}
	<-j.Stopped()
}

func TestStatusListsUnservedJobsAndTheClientGetsErrNoWorker(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	bb.worker(t, "w1", "echo", "", nil)
	c, err := client.New(brokertest.Connect(t, bb.b), client.WithoutWorkerCheck(), client.WithJSON())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	bb.publish(t, "kiln.jobs.chat.nobody.high", schema.NewID(), "")
	bb.publish(t, "kiln.jobs.chat.echo.urgent", schema.NewID(), "")
	queue, err := c.Queue(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]client.QueueDepth{}
	for _, q := range queue {
		rows[q.Kind+"/"+q.Model+"/"+q.Lane] = q
	}
	if q := rows["chat/echo/normal"]; q.Unserved || q.Subject != "" {
		t.Errorf("served route: %+v", q)
	}
	for _, key := range []string{"chat/nobody/high", "chat/echo/urgent"} {
		if q := rows[key]; !q.Unserved || q.Waiting != 1 {
			t.Errorf("%s: %+v, want unserved with 1 waiting (queue %+v)", key, q, queue)
		}
	}
	// A Go client's job for a model nobody serves ends with ErrNoWorker.
	bb.janitor(t, janitor.Config{Grace: 500 * time.Millisecond})
	_, err = c.Chat(testCtx(t), &schema.ChatJob{JobHeader: schema.JobHeader{Model: "nobody"},
		Messages: []schema.Message{{Role: "user", Content: "hello"}}}, nil)
	var jerr *client.JobError
	if !errors.Is(err, client.ErrNoWorker) || errors.Is(err, client.ErrFailed) || !errors.As(err, &jerr) ||
		jerr.Result.Error.Code != schema.CodeNoWorker {
		t.Fatalf("job for a model nobody serves: %v", err)
	}
}
