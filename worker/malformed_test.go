package worker_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/wait"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/workertest"
)

// answer is one event that came back on a reply subject.
type answer struct {
	contentType string
	ev          schema.Event
}

// answers collects every event published under a wildcard, by subject.
type answers struct {
	mu  sync.Mutex
	got map[string][]answer
	bad []string // events that did not decode
}

// waitQueueEmpty waits for KILN_JOBS to hold no job. A worker stores and
// sends a job's result before it acks, so a client can hold the answer a
// moment before the stream drops the job.
func waitQueueEmpty(t *testing.T, st jetstream.Stream) {
	t.Helper()
	wait.For(t, 20*time.Second, 10*time.Millisecond, func() error {
		info, err := st.Info(t.Context())
		if err == nil && info.State.Msgs != 0 {
			err = fmt.Errorf("jobs left in the queue: %d", info.State.Msgs)
		}
		return err
	})
}

func collectAnswers(t *testing.T, nc *nats.Conn, wildcard string) *answers {
	t.Helper()
	a := &answers{got: map[string][]answer{}}
	sub, err := nc.Subscribe(wildcard, func(m *nats.Msg) {
		a.mu.Lock()
		defer a.mu.Unlock()
		ct := m.Header.Get(schema.HeaderContentType)
		codec, err := schema.CodecFor(ct)
		var ev schema.Event
		if err == nil {
			err = codec.Unmarshal(m.Data, &ev)
		}
		if err != nil {
			a.bad = append(a.bad, fmt.Sprintf("%s: %v", m.Subject, err))
			return
		}
		a.got[m.Subject] = append(a.got[m.Subject], answer{contentType: ct, ev: ev})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return a
}

// results returns the result events that came on subject.
func (a *answers) results(subject string) []answer {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []answer
	for _, got := range a.got[subject] {
		if got.ev.Type == schema.EventResult && got.ev.Result != nil {
			out = append(out, got)
		}
	}
	return out
}

// A body the worker cannot take as a job (undecodable, a field it does not
// know, a value of the wrong type, a bad reply_to) gets exactly one coded
// result naming the field, on whatever reply subject can be recovered: the
// body's reply_to when valid, else the Kiln-Reply-To header. The message is
// terminated, not redelivered, and the worker goes on serving. Bodies are
// made by hand and published with plain nats.go, as any client would.
func TestMalformedBodiesAreAnsweredOnce(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	bb.Worker(t, "w1", nil)
	nc := brokertest.Connect(t, bb.Broker)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	c := bb.Client(t)
	subj := bb.Topology.Subjects()
	got := collectAnswers(t, nc, "raw.bad.>")

	jsonChat := func(id, reply, extra string) []byte {
		r := ""
		if reply != "" {
			r = fmt.Sprintf(`"reply_to":%q,`, reply)
		}
		return fmt.Appendf(nil, `{"id":%q,"model":"echo",%s"messages":[{"role":"user","content":"hi"}]%s}`, id, r, extra)
	}
	msgpackChat := func(id, reply string, extra map[string]any) []byte {
		body := map[string]any{"id": id, "model": "echo", "messages": []any{map[string]any{"role": "user", "content": "hi"}}}
		if reply != "" {
			body["reply_to"] = reply
		}
		for k, v := range extra {
			body[k] = v
		}
		b, err := schema.Msgpack.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// 103 bytes: a map whose "messages" declares four billion entries (the
	// msgpack library would allocate for them all).
	huge := append([]byte{0x81, 0xa8}, "messages"...)
	huge = binary.BigEndian.AppendUint32(append(huge, 0xdd), 0xffffffff)
	huge = append(huge, bytes.Repeat([]byte{0x90}, 103-len(huge))...)

	const (
		ctJSON    = schema.ContentJSON
		ctMsgpack = schema.ContentMsgpack
	)
	cases := []struct {
		name    string
		kind    string
		ctype   string // the Content-Type header; "" none
		headers bool   // Nats-Msg-Id and Kiln-Reply-To
		// body is the job; id and reply are the case's (reply is where
		// the answer must come, from the body or the header).
		body   func(id, reply string) []byte
		code   schema.ErrorCode
		field  string
		answer string // the answer's Content-Type
	}{
		{"bad JSON", schema.KindChat, ctJSON, true,
			func(id, _ string) []byte { return fmt.Appendf(nil, `{"id":%q,"model":`, id) },
			schema.CodeBadJSON, "", ctJSON},
		{"JSON wrong type", schema.KindChat, ctJSON, true,
			func(id, _ string) []byte {
				return fmt.Appendf(nil, `{"id":%q,"model":"echo","messages":[{"role":"user","content":5}]}`, id)
			},
			schema.CodeBadJSON, "messages[0].content", ctJSON},
		{"msgpack wrong type", schema.KindChat, ctMsgpack, true,
			func(id, _ string) []byte { return msgpackChat(id, "", map[string]any{"max_tokens": "ten"}) },
			schema.CodeBadMsgpack, "max_tokens", ctMsgpack},
		{"unknown field temprature", schema.KindChat, ctJSON, true,
			func(id, _ string) []byte { return jsonChat(id, "", `,"temprature":0.2`) },
			schema.CodeUnknownField, "temprature", ctJSON},
		{"unknown field maxTokens (msgpack)", schema.KindChat, "", true,
			func(id, _ string) []byte { return msgpackChat(id, "", map[string]any{"maxTokens": 5}) },
			schema.CodeUnknownField, "maxTokens", ctMsgpack},
		{"unknown field negative_prompt on an image job", schema.KindImage, ctJSON, true,
			func(id, _ string) []byte {
				return fmt.Appendf(nil, `{"id":%q,"model":"echo","prompt":"a red fox","negative_prompt":"blurry"}`, id)
			},
			schema.CodeUnknownField, "negative_prompt", ctJSON},
		{"unknown field in a message", schema.KindChat, ctJSON, true,
			func(id, _ string) []byte {
				return fmt.Appendf(nil, `{"id":%q,"model":"echo","messages":[{"role":"user","content":"hi","name":"x"}]}`, id)
			},
			schema.CodeUnknownField, "messages[0].name", ctJSON},
		// A body starting with '{' is JSON whatever the Content-Type
		// says: bad_json naming the field proves it was read as JSON.
		{"JSON without Content-Type", schema.KindChat, "", true,
			func(id, _ string) []byte { return jsonChat(id, "", `,"max_tokens":"ten"`) },
			schema.CodeBadJSON, "max_tokens", ctJSON},
		{"JSON with Content-Type msgpack", schema.KindChat, ctMsgpack, true,
			func(id, _ string) []byte { return append([]byte("\n  "), jsonChat(id, "", `,"max_tokens":"ten"`)...) },
			schema.CodeBadJSON, "max_tokens", ctJSON},
		{"msgpack garbage", schema.KindChat, ctMsgpack, true,
			func(string, string) []byte { return []byte{0xc1, 0xff, 0x00} },
			schema.CodeBadMsgpack, "", ctMsgpack},
		{"msgpack truncated, no Content-Type", schema.KindChat, "", true,
			func(string, string) []byte { return []byte{0x83, 0xa2, 'i', 'd'} },
			schema.CodeBadMsgpack, "", ctMsgpack},
		{"msgpack declaring a huge array", schema.KindChat, ctMsgpack, true,
			func(string, string) []byte { return huge },
			schema.CodeBadMsgpack, "", ctMsgpack},
		// A bad body reply_to must not take the answer away from a valid
		// header: the job is refused, answered on the header's subject.
		{"body reply_to with a space", schema.KindChat, ctJSON, true,
			func(id, _ string) []byte { return jsonChat(id, "raw.bad.not here", "") },
			schema.CodeBadValue, "reply_to", ctJSON},
		{"body reply_to with a wildcard", schema.KindChat, ctJSON, true,
			func(id, _ string) []byte { return jsonChat(id, "raw.bad.*", "") },
			schema.CodeBadValue, "reply_to", ctJSON},
		{"body reply_to with a full wildcard (msgpack)", schema.KindChat, ctMsgpack, true,
			func(id, _ string) []byte { return msgpackChat(id, "raw.>", nil) },
			schema.CodeBadValue, "reply_to", ctMsgpack},
		// No headers at all: the reply subject and id come from the body,
		// read leniently when it cannot be read strictly.
		{"no headers, unknown field, reply_to in the JSON", schema.KindChat, "", false,
			func(id, reply string) []byte { return jsonChat(id, reply, `,"maxTokens":5`) },
			schema.CodeUnknownField, "maxTokens", ctJSON},
		{"no headers, wrong type, reply_to in the JSON", schema.KindChat, "", false,
			func(id, reply string) []byte {
				return fmt.Appendf(nil, `{"id":%q,"model":"echo","reply_to":%q,"messages":"hi"}`, id, reply)
			},
			schema.CodeBadJSON, "messages", ctJSON},
		{"no headers, wrong type, reply_to in the msgpack", schema.KindChat, "", false,
			func(id, reply string) []byte { return msgpackChat(id, reply, map[string]any{"top_k": "many"}) },
			schema.CodeBadMsgpack, "top_k", ctMsgpack},
		{"unknown Content-Type, reply_to in the body", schema.KindChat, "text/plain", false,
			func(id, reply string) []byte { return msgpackChat(id, reply, nil) },
			schema.CodeBadContentType, schema.HeaderContentType, ctMsgpack},
	}
	published := map[string]int{} // per kind
	for i, tc := range cases {
		id := fmt.Sprintf("bad-%d", i)
		reply := "raw.bad." + id
		m := &nats.Msg{Subject: subj.Job(tc.kind, model, schema.LaneNormal), Data: tc.body(id, reply), Header: nats.Header{}}
		if tc.ctype != "" {
			m.Header.Set(schema.HeaderContentType, tc.ctype)
		}
		if tc.headers {
			m.Header.Set(jetstream.MsgIDHeader, id)
			m.Header.Set(schema.HeaderReplyTo, reply)
		}
		if _, err := js.PublishMsg(workertest.Context(t), m); err != nil {
			t.Fatalf("%s: publish: %v", tc.name, err)
		}
		published[tc.kind]++
		wait.For(t, 20*time.Second, 5*time.Millisecond, func() error {
			if len(got.results(reply)) == 0 {
				return fmt.Errorf("%s: no result on %s", tc.name, reply)
			}
			return nil
		})
		first := got.results(reply)[0]
		res := first.ev.Result
		if res.Status != schema.StatusError || res.Error == nil || res.Error.Code != tc.code || res.Error.Field != tc.field {
			t.Errorf("%s: result %+v error %+v, want code %s field %q", tc.name, res, res.Error, tc.code, tc.field)
		} else if res.Error.Message == "" {
			t.Errorf("%s: error without a message", tc.name)
		}
		if res.JobID != id || first.ev.JobID != id {
			t.Errorf("%s: answered for job %q (event %q), want %q", tc.name, res.JobID, first.ev.JobID, id)
		}
		if first.contentType != tc.answer {
			t.Errorf("%s: answered in %q, want %q", tc.name, first.contentType, tc.answer)
		}
		// The worker keeps serving.
		text := fmt.Sprintf("still serving after %d", i)
		if res, err := c.Chat(workertest.Context(t), chatJob(text, nil), nil); err != nil || res.Text != "echo: "+text {
			t.Fatalf("%s: the next job got %+v, %v", tc.name, res, err)
		}
	}

	// Exactly one result each, and nothing else was published under
	// raw.bad (no answer went to a body's bad reply_to).
	got.mu.Lock()
	if len(got.bad) > 0 {
		t.Errorf("undecodable answers: %v", got.bad)
	}
	for subject, evs := range got.got {
		if len(evs) != 1 {
			t.Errorf("%s got %d events, want one result: %+v", subject, len(evs), evs)
		}
	}
	if len(got.got) != len(cases) {
		t.Errorf("answers on %d subjects, want %d", len(got.got), len(cases))
	}
	got.mu.Unlock()

	// Terminated, not redelivered: the queue is empty and each consumer
	// delivered each job once (the good chat jobs too).
	ctx := workertest.Context(t)
	st, err := js.Stream(ctx, bb.Topology.WithDefaults().JobsStream())
	if err != nil {
		t.Fatal(err)
	}
	waitQueueEmpty(t, st)
	published[schema.KindChat] += len(cases)
	for kind, n := range published {
		cons, err := js.Consumer(ctx, bb.Topology.WithDefaults().JobsStream(), topology.ConsumerName(kind, model, schema.LaneNormal))
		if err != nil {
			t.Fatal(err)
		}
		ci, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ci.NumRedelivered != 0 || ci.NumAckPending != 0 || ci.Delivered.Consumer != uint64(n) {
			t.Errorf("%s consumer: delivered %d, redelivered %d, pending ack %d; want %d, 0, 0",
				kind, ci.Delivered.Consumer, ci.NumRedelivered, ci.NumAckPending, n)
		}
	}
}

// A malformed job with no reply subject anywhere (no headers, no reply_to
// in the body) cannot be answered; its error result is still stored under
// the body's id, the job is terminated, and the worker says so at Warn.
func TestMalformedBodyWithoutReplySubjectIsStored(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{})
	logs := &wait.Buffer{}
	bb.Worker(t, "w1", func(cfg *worker.Config) {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	nc := brokertest.Connect(t, bb.Broker)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := workertest.Context(t)
	body := `{"id":"nobody-to-tell","model":"echo","messages":[{"role":"user","content":"hi"}],"temprature":0.2}`
	if _, err := js.Publish(ctx, bb.Topology.Subjects().Job(schema.KindChat, model, schema.LaneNormal), []byte(body)); err != nil {
		t.Fatal(err)
	}
	results, err := js.Stream(ctx, bb.Topology.WithDefaults().ResultsStream())
	if err != nil {
		t.Fatal(err)
	}
	var raw *jetstream.RawStreamMsg
	wait.For(t, 20*time.Second, 10*time.Millisecond, func() error {
		raw, err = results.GetLastMsgForSubject(ctx, bb.Topology.Subjects().Result("nobody-to-tell"))
		return err
	})
	var res schema.Result
	if err := schema.JSON.Unmarshal(raw.Data, &res); err != nil {
		t.Fatalf("stored result is not JSON: %v", err)
	}
	if res.Status != schema.StatusError || res.Error == nil || res.Error.Code != schema.CodeUnknownField || res.Error.Field != "temprature" {
		t.Fatalf("stored result %+v (error %+v)", res, res.Error)
	}
	st, err := js.Stream(ctx, bb.Topology.WithDefaults().JobsStream())
	if err != nil {
		t.Fatal(err)
	}
	waitQueueEmpty(t, st)
	for _, want := range []string{"level=WARN", "nobody to tell", "the result is only stored", "subject=kiln.jobs.chat.echo.normal", "code=unknown_field"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the worker's log does not say %q:\n%s", want, logs.String())
		}
	}
}

// The reaper reads the body of a job that ran out of deliveries too: a
// hostile one (here a 3 MiB body of nested arrays, which the msgpack
// library's Skip recursed through without a limit) is refused before it is
// decoded, and the job still ends with one error result on the
// Kiln-Reply-To subject.
func TestReaperAnswersAHostileBody(t *testing.T) {
	t.Parallel()
	bb := setup(t, topology.Config{MaxDeliver: 2})
	bb.Worker(t, "w1", nil) // its reaper answers; it does not serve "ghost"
	nc := brokertest.Connect(t, bb.Broker)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := workertest.Context(t)
	got := collectAnswers(t, nc, "raw.reaped")
	m := &nats.Msg{Subject: bb.Topology.Subjects().Job(schema.KindChat, "ghost", schema.LaneNormal),
		Data: append(bytes.Repeat([]byte{0x91}, 3<<20), 0xc0), Header: nats.Header{}}
	m.Header.Set(jetstream.MsgIDHeader, "reaped")
	m.Header.Set(schema.HeaderReplyTo, "raw.reaped")
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	exhaustDeliveries(t, js, bb.Topology, "ghost", 2)
	wait.For(t, 20*time.Second, 10*time.Millisecond, func() error {
		if len(got.results("raw.reaped")) == 0 {
			return errors.New("no result on raw.reaped")
		}
		return nil
	})
	res := got.results("raw.reaped")[0].ev.Result
	if res.JobID != "reaped" || res.Error == nil || res.Error.Code != schema.CodeFailed {
		t.Fatalf("result %+v (error %+v)", res, res.Error)
	}
}
