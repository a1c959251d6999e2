package worker_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/workertest"
)

// On an open broker (no permissions: nothing is enforced), a job's client is
// still the token of its subject, and the worker keeps each client's jobs
// apart by it. These tests are the worker's half of issue 12's confused
// deputy; test/cluster's TestConfusedDeputy runs the same attempts under
// `kiln broker init-auth` permissions.

// identities is a broker and a worker, with clients room-1, room-2 and an
// anonymous one.
type identities struct {
	bb           *workertest.Queue
	root         *nats.Conn
	js           jetstream.JetStream
	subj         schema.Subjects
	a, b, nobody *client.Client
}

func newIdentities(t *testing.T, mod func(*worker.Config)) *identities {
	t.Helper()
	bb := setup(t, topology.Config{})
	bb.Worker(t, "w1", mod)
	root := brokertest.Connect(t, bb.Broker)
	js, _ := jetstream.New(root)
	return &identities{bb: bb, root: root, js: js, subj: bb.Topology.Subjects(),
		a: bb.Client(t, client.WithClientID("room-1")), b: bb.Client(t, client.WithClientID("room-2")), nobody: bb.Client(t)}
}

// storedText is the text of the result stored on subject, "" when none.
func (id *identities) storedText(t *testing.T, subject string) string {
	t.Helper()
	st, err := id.js.Stream(workertest.Context(t), id.bb.Topology.WithDefaults().ResultsStream())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := st.GetLastMsgForSubject(workertest.Context(t), subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	var res schema.Result
	if err := schema.Msgpack.Unmarshal(raw.Data, &res); err != nil {
		t.Fatal(err)
	}
	return res.Text
}

// TestClientAndAnonymousJobs: a client's job (on its 4-token subject) and
// an anonymous one (3 tokens) both run, both wake an idle worker (which
// polls only every hour), and each result is kept under its own subject.
func TestClientAndAnonymousJobs(t *testing.T) {
	t.Parallel()
	id := newIdentities(t, func(c *worker.Config) { c.PollInterval = time.Hour })
	ctx := workertest.Context(t)
	for _, tc := range []struct {
		c      *client.Client
		text   string
		stored func(job string) string
	}{
		{id.a, "from room one", func(job string) string { return id.subj.ClientResult(job, "room-1") }},
		{id.nobody, "from nobody", id.subj.Result},
	} {
		var tokens []string
		res, err := tc.c.Chat(ctx, chatJob(tc.text, nil), func(ev schema.Event) error {
			if ev.Type == schema.EventToken {
				tokens = append(tokens, ev.Text)
			}
			return nil
		})
		if want := "echo: " + tc.text; err != nil || res.Text != want || strings.Join(tokens, "") != want {
			t.Fatalf("%q: result %+v, tokens %q, %v", tc.text, res, tokens, err)
		}
		if got := id.storedText(t, tc.stored(res.JobID)); got != res.Text {
			t.Errorf("%q: stored on %s: %q", tc.text, tc.stored(res.JobID), got)
		}
		if stored, err := tc.c.Result(ctx, res.JobID); err != nil || stored.Text != res.Text {
			t.Errorf("%q: the client's own lookup: %+v, %v", tc.text, stored, err)
		}
	}
}

// refusal publishes a job on subject as a hand-made client would, with
// reply_to in its body, and returns the result event that comes back on
// answer.
func (id *identities) refusal(t *testing.T, subject, msgID string, job *schema.ChatJob, answer *nats.Subscription) *schema.Result {
	t.Helper()
	m, err := topology.NewMsg(subject, schema.Msgpack, job)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := id.js.PublishMsg(workertest.Context(t), m, jetstream.WithMsgID(msgID)); err != nil {
		t.Fatal(err)
	}
	for {
		em, err := answer.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("no answer on %s: %v", answer.Subject, err)
		}
		var ev schema.Event
		if err := schema.Msgpack.Unmarshal(em.Data, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Type == schema.EventResult {
			return ev.Result
		}
	}
}

// TestReplyToStaysWithTheClient: room-2's jobs that ask for their events
// to go to room-1's reply subject, room-1's stored result, a heartbeat or
// the worker registry are refused with bad_value on reply_to, answered on
// room-2's own reply subject, and nothing is published where they asked.
// An anonymous job may not reply into kiln's or NATS's subjects either.
func TestReplyToStaysWithTheClient(t *testing.T) {
	t.Parallel()
	id := newIdentities(t, nil)
	ctx := workertest.Context(t)
	s := id.subj
	done, err := id.a.Chat(ctx, chatJob("room one's words", nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	// The Go client applies the same rule before it publishes.
	early := chatJob("forged", nil)
	early.ReplyTo = s.Reply("room-1", "job-1")
	var verr *schema.Error
	if _, err := id.b.Submit(ctx, early); !errors.Is(err, client.ErrInvalid) || !errors.As(err, &verr) || verr.Field != "reply_to" {
		t.Errorf("room-2's client submitting a job that replies to room-1: %v, want ErrInvalid on reply_to", err)
	}
	topo := id.bb.Topology.WithDefaults()
	targets := []string{
		s.Reply("room-1", "job-1"), s.ClientResult(done.JobID, "room-1"), s.Heartbeat("x"),
		topology.KVKey(topo.WorkersBucket(), "x"), topology.InboxPrefix("room-1") + ".x",
	}
	// Everything the worker publishes anywhere, seen on one connection in
	// the order it was published: a publish on a target would come before
	// the refusal that answers it.
	spy, err := id.root.SubscribeSync(">")
	if err != nil {
		t.Fatal(err)
	}
	if err := id.root.Flush(); err != nil {
		t.Fatal(err)
	}
	for i, target := range targets {
		job := chatJob("forged", nil)
		job.ID = "forged-" + string(rune('a'+i))
		job.ReplyTo = target
		answer, err := id.root.SubscribeSync(s.Reply("room-2", job.ID))
		if err != nil {
			t.Fatal(err)
		}
		res := id.refusal(t, s.ClientJob(schema.KindChat, model, schema.LaneNormal, "room-2"), schema.JobKey("room-2", job.ID), job, answer)
		if res.Status != schema.StatusError || res.Error == nil || res.Error.Code != schema.CodeBadValue || res.Error.Field != "reply_to" {
			t.Errorf("room-2's job replying to %s: %+v (%+v), want bad_value on reply_to", target, res, res.Error)
		}
		_ = answer.Unsubscribe()
	}
	// The anonymous rule: nothing of kiln's own but its reply subjects.
	for i, target := range []string{s.ClientResult(done.JobID, "room-1"), s.Heartbeat("x"), topology.KVKey(topo.WorkersBucket(), "x")} {
		job := chatJob("forged", nil)
		job.ID = "anon-forged-" + string(rune('a'+i))
		job.ReplyTo = target
		// No reply subject is left to answer on: the refusal is stored.
		m, err := topology.NewMsg(s.Job(schema.KindChat, model, schema.LaneNormal), schema.Msgpack, job)
		if err != nil {
			t.Fatal(err)
		}
		m.Header.Set(schema.HeaderReplyTo, "raw.reply."+job.ID) // a header subject that is allowed gets the answer
		answer, err := id.root.SubscribeSync("raw.reply." + job.ID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := id.js.PublishMsg(ctx, m, jetstream.WithMsgID(job.ID)); err != nil {
			t.Fatal(err)
		}
		em, err := answer.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("anonymous job replying to %s: no answer: %v", target, err)
		}
		var ev schema.Event
		if err := schema.Msgpack.Unmarshal(em.Data, &ev); err != nil || ev.Result == nil ||
			ev.Result.Error == nil || ev.Result.Error.Code != schema.CodeBadValue || ev.Result.Error.Field != "reply_to" {
			t.Errorf("anonymous job replying to %s: %+v, %v; want bad_value on reply_to", target, ev, err)
		}
	}
	if err := id.root.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := spy.NextMsg(0)
		if err != nil {
			break
		}
		for _, target := range targets {
			if m.Subject == target {
				t.Errorf("something was published on %s", target)
			}
		}
	}
	if got := id.storedText(t, s.ClientResult(done.JobID, "room-1")); got != done.Text {
		t.Errorf("room-1's stored result is now %q, was %q", got, done.Text)
	}
	kv, err := id.js.KeyValue(ctx, topo.WorkersBucket())
	if err != nil {
		t.Fatal(err)
	}
	if e, err := kv.Get(ctx, "x"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("a registry entry was forged: %v, %v", e, err)
	}
	// The worker goes on.
	if res, err := id.a.Chat(ctx, chatJob("still here", nil), nil); err != nil || res.Text != "echo: still here" {
		t.Fatalf("after the refusals: %+v, %v", res, err)
	}
}

// TestSameIDOtherClient: room-2 submitting room-1's job id is not
// deduplicated against room-1's job and gets nothing of room-1's: it runs
// its own job (its redelivery looks for a stored result under room-2
// only), room-1's result stays as it was, and room-2's cancels of that id,
// queued or running, leave room-1's job alone.
func TestSameIDOtherClient(t *testing.T) {
	t.Parallel()
	id := newIdentities(t, nil)
	ctx := workertest.Context(t)
	s := id.subj
	first := chatJob("room one's secret", nil)
	done, err := id.a.Chat(ctx, first, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Same id, room-2, failing its first delivery: the second looks for a
	// stored result (under room-2) before running.
	again := chatJob("room two's words", map[string]string{"fail_until": "2"})
	again.ID = done.JobID
	res, err := id.b.Chat(ctx, again, nil)
	if err != nil || res.Text != "echo: room two's words" || res.Attempt != 2 {
		t.Fatalf("room-2's job with room-1's id: %+v, %v; want its own run, on attempt 2", res, err)
	}
	if got := id.storedText(t, s.ClientResult(done.JobID, "room-1")); got != done.Text {
		t.Errorf("room-1's stored result is now %q", got)
	}
	if got, err := id.b.Result(ctx, done.JobID); err != nil || got.Text != res.Text {
		t.Errorf("room-2's lookup of that id: %+v, %v; want its own result", got, err)
	}
	// room-1 resubmitting its own id within the window is a no-op.
	m, err := topology.NewMsg(s.ClientJob(schema.KindChat, model, schema.LaneNormal, "room-1"), schema.Msgpack, first)
	if err != nil {
		t.Fatal(err)
	}
	if ack, err := id.js.PublishMsg(ctx, m, jetstream.WithMsgID(schema.JobKey("room-1", done.JobID))); err != nil || !ack.Duplicate {
		t.Errorf("room-1 resubmitting its own id: %+v, %v; want a duplicate", ack, err)
	}

	// Cancels: room-1 keeps the worker busy and queues a job behind it;
	// room-2 and an anonymous sender cancel both ids; both run to the end.
	busy, err := id.a.Submit(ctx, chatJob("a b c d e f g h i j", map[string]string{"delay_ms": "100"}))
	if err != nil {
		t.Fatal(err)
	}
	var queued *client.Pending
	res, err = busy.Wait(ctx, func(ev schema.Event) error {
		if ev.Type != schema.EventToken || queued != nil {
			return nil
		}
		if queued, err = id.a.Submit(ctx, chatJob("queued behind", nil)); err != nil {
			return err
		}
		for _, job := range []string{busy.ID, queued.ID} {
			if err := id.b.Cancel(ctx, job); err != nil {
				return err
			}
			if err := id.nobody.Cancel(ctx, job); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil || res.Text != "echo: a b c d e f g h i j" {
		t.Fatalf("room-1's running job after room-2's cancel: %+v, %v", res, err)
	}
	if res, err := queued.Wait(ctx, nil); err != nil || res.Text != "echo: queued behind" {
		t.Errorf("room-1's queued job after room-2's cancel: %+v, %v", res, err)
	}
	// room-1's own cancel works.
	own, err := id.a.Submit(ctx, chatJob(strings.Repeat("word ", 100), map[string]string{"delay_ms": "50"}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = own.Wait(ctx, func(ev schema.Event) error {
		if ev.Type == schema.EventStarted {
			return id.a.Cancel(ctx, own.ID)
		}
		return nil
	})
	if !errors.Is(err, client.ErrCancelled) {
		t.Errorf("room-1 cancelling its own job: %v, want ErrCancelled", err)
	}
}
