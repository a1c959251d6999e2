package cluster

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
)

// TestConfusedDeputy runs issue 12's confused-deputy attempts under `kiln
// broker init-auth` permissions, with two controllers and a real worker
// process: room-2 tries to make the worker publish into room-1's reply
// subjects, room-1's stored result, the heartbeats and the worker
// registry; to publish on room-1's job subject; to cancel room-1's running
// and queued jobs; to get room-1's stored result by reusing its job id or
// reading it. Each is refused or has no effect, and both controllers' own
// jobs still work.
func TestConfusedDeputy(t *testing.T) {
	t.Parallel()
	dir := initAuth(t)
	n := singleNode(t, "--config", filepath.Join(dir, "single.conf"))
	startWorker(t, n.url, "w1", filepath.Join(dir, "worker.nk"), 10*time.Second)
	ctx, cancel := context.WithTimeout(t.Context(), 120*time.Second)
	defer cancel()
	s := schema.Subjects{}
	topo := topology.Config{}.WithDefaults()

	var v1, v2 violations
	nc1, nc2 := login(t, n.url, dir, "room-1", &v1), login(t, n.url, dir, "room-2", &v2)
	room1, err := client.New(nc1, client.WithClientID("room-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer room1.Close()
	room2, err := client.New(nc2, client.WithClientID("room-2"))
	if err != nil {
		t.Fatal(err)
	}
	defer room2.Close()
	waitServed(t, room1)
	admin := login(t, n.url, dir, "admin", nil)
	adminJS, _ := jetstream.New(admin)

	// Both controllers' own jobs work, tokens streamed.
	var done *schema.Result
	for _, c := range []*client.Client{room1, room2} {
		var streamed strings.Builder
		res, err := c.Chat(ctx, &schema.ChatJob{JobHeader: schema.JobHeader{Model: "echo"},
			Messages: []schema.Message{{Role: "user", Content: "words of " + c.ID()}}}, func(ev schema.Event) error {
			streamed.WriteString(ev.Text)
			return nil
		})
		if want := "echo: words of " + c.ID(); err != nil || res.Text != want || streamed.String() != want {
			t.Fatalf("%s's own job: %+v (streamed %q), %v", c.ID(), res, streamed.String(), err)
		}
		if c == room1 {
			done = res
		}
	}
	storedOfRoom1 := func() string {
		t.Helper()
		res, err := room1.Result(ctx, done.JobID)
		if err != nil {
			t.Fatalf("room-1's stored result: %v", err)
		}
		return res.Text
	}

	// room-2's jobs asking the worker to publish where room-2 may not: each
	// is refused with bad_value on reply_to, answered on room-2's own reply
	// subject, and nothing is published where it asked. admin sees every
	// message, in the order the worker published them: a publish on a
	// target would come before the refusal that answers it.
	spy, err := admin.SubscribeSync(">")
	if err != nil {
		t.Fatal(err)
	}
	room1Replies, err := nc1.SubscribeSync(s.ClientReplies("room-1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, nc := range []*nats.Conn{admin, nc1} {
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	targets := []string{
		s.Reply("room-1", "job-1"), s.ClientResult(done.JobID, "room-1"), s.Heartbeat("x"),
		topology.KVKey(topo.WorkersBucket(), "x"),
	}
	js2, _ := jetstream.New(nc2)
	for i, target := range targets {
		job := &schema.ChatJob{JobHeader: schema.JobHeader{ID: fmt.Sprintf("forged-%d", i), Model: "echo", ReplyTo: target},
			Messages: []schema.Message{{Role: "user", Content: "forged"}}}
		answer, err := nc2.SubscribeSync(s.Reply("room-2", job.ID))
		if err != nil {
			t.Fatal(err)
		}
		m, err := topology.NewMsg(s.ClientJob(schema.KindChat, "echo", schema.LaneNormal, "room-2"), schema.JSON, job)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js2.PublishMsg(ctx, m, jetstream.WithMsgID(schema.JobKey("room-2", job.ID))); err != nil {
			t.Fatalf("room-2 submitting a job that replies to %s: %v", target, err)
		}
		em, err := answer.NextMsg(20 * time.Second)
		if err != nil {
			t.Fatalf("room-2's job replying to %s: no answer on room-2's reply subject: %v", target, err)
		}
		var ev schema.Event
		if err := schema.JSON.Unmarshal(em.Data, &ev); err != nil || ev.Result == nil || ev.Result.Error == nil ||
			ev.Result.Error.Code != schema.CodeBadValue || ev.Result.Error.Field != "reply_to" {
			t.Errorf("room-2's job replying to %s: %+v, %v; want bad_value on reply_to", target, ev, err)
		}
		_ = answer.Unsubscribe()
		for answered := false; !answered; {
			sm, err := spy.NextMsg(20 * time.Second)
			if err != nil {
				t.Fatalf("admin did not see the refusal of %s: %v", job.ID, err)
			}
			if sm.Subject == target {
				t.Errorf("the worker published on %s for room-2", target)
			}
			answered = sm.Subject == s.Reply("room-2", job.ID)
		}
	}
	if m, err := room1Replies.NextMsg(0); err == nil {
		t.Errorf("room-1 got a message it never asked for, on %s: %q", m.Subject, m.Data)
	}
	_ = room1Replies.Unsubscribe()
	if got := storedOfRoom1(); got != done.Text {
		t.Errorf("room-1's stored result is now %q, was %q", got, done.Text)
	}
	if ws, err := room1.Workers(ctx); err != nil || len(ws) != 1 || ws[0].Worker != "w1" {
		t.Errorf("the worker registry: %+v, %v; want w1 alone", ws, err)
	}
	events, err := adminJS.Stream(ctx, topo.EventsStream())
	if err != nil {
		t.Fatal(err)
	}
	if m, err := events.GetLastMsgForSubject(ctx, s.Heartbeat("x")); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("a heartbeat of x is stored: %v, %v", m, err)
	}

	// room-2 cannot publish on room-1's job subject, nor anonymously.
	for _, subject := range []string{s.ClientJob(schema.KindChat, "echo", schema.LaneNormal, "room-1"), s.Job(schema.KindChat, "echo", schema.LaneNormal)} {
		if err := nc2.Publish(subject, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		v2.wait(t, "room-2 publishing a job on "+subject, subject)
	}

	// room-2 cannot cancel room-1's running job or the one queued behind
	// it (the subjects and the cancel bucket are refused; its own cancel of
	// those ids touches its own jobs only): both end ok.
	running, err := room1.Submit(ctx, echoJob("slow", 30, 200))
	if err != nil {
		t.Fatal(err)
	}
	defer running.Close()
	var queued *client.Pending
	res, err := running.Wait(ctx, func(ev schema.Event) error {
		if ev.Type != schema.EventToken || queued != nil {
			return nil
		}
		if queued, err = room1.Submit(ctx, echoJob("queued", 3, 0)); err != nil {
			return err
		}
		for _, id := range []string{running.ID, queued.ID} {
			for _, subject := range []string{s.ClientCancel("room-1", id), s.Cancel(id)} {
				if err := nc2.Publish(subject, nil); err != nil {
					return err
				}
				v2.wait(t, "room-2 cancelling room-1's job on "+subject, subject)
			}
			refused, cancel := context.WithTimeout(ctx, time.Second)
			err := room2.CancelFor(refused, "room-1", id)
			cancel()
			if err == nil {
				t.Errorf("room-2 put room-1's job %s in the cancel bucket", id)
			}
			v2.wait(t, "room-2 putting room-1's job in the cancel bucket", topology.KVKey(topo.CancelBucket(), schema.JobKey("room-1", id)))
			if err := room2.Cancel(ctx, id); err != nil {
				return fmt.Errorf("room-2 cancelling its own job %s: %w", id, err)
			}
		}
		return nil
	})
	if err != nil || res.Status != schema.StatusOK || !strings.HasPrefix(res.Text, "echo: slow-0") {
		t.Fatalf("room-1's running job after room-2's cancels: %+v, %v", res, err)
	}
	defer queued.Close()
	if res, err := queued.Wait(ctx, nil); err != nil || res.Text != "echo: queued-0 queued-1 queued-2" {
		t.Fatalf("room-1's queued job after room-2's cancels: %+v, %v", res, err)
	}
	room2CLI := []string{"KILN_NATS_URL=" + n.url, "KILN_NKEY=" + filepath.Join(dir, "room-2.nk"), "KILN_CLIENT_ID=room-2"}
	if out, err := kilnTry(t, room2CLI, "cancel", "--client", "room-1", running.ID); err == nil {
		t.Errorf("kiln cancel --client room-1 as room-2 succeeded: %s", out)
	}

	// room-2 resubmitting room-1's job id runs a job of its own (its
	// redelivery looks for a stored result under room-2 only) and gets
	// nothing of room-1's.
	again := &schema.ChatJob{JobHeader: schema.JobHeader{ID: done.JobID, Model: "echo", Metadata: map[string]string{"fail_until": "2"}},
		Messages: []schema.Message{{Role: "user", Content: "room two again"}}}
	res, err = room2.Chat(ctx, again, nil)
	if err != nil || res.Text != "echo: room two again" {
		t.Fatalf("room-2 reusing room-1's job id: %+v, %v; want a run of its own", res, err)
	}
	if got := storedOfRoom1(); got != done.Text {
		t.Errorf("room-1's stored result is now %q", got)
	}

	// room-2 cannot read room-1's stored result: the broker refuses the
	// read, its own lookup and `kiln result` find its own job only.
	getRoom1 := topology.APISubject(topology.APIDirectGet, topo.ResultsStream(), s.ClientResult(done.JobID, "room-1"))
	if m, err := nc2.Request(getRoom1, nil, 500*time.Millisecond); err == nil {
		t.Fatalf("room-2 read room-1's result: %q", m.Data)
	}
	v2.wait(t, "room-2 reading room-1's result", getRoom1)
	if got, err := room2.Result(ctx, done.JobID); err != nil || got.Text != "echo: room two again" {
		t.Errorf("room-2's lookup of that id: %+v, %v; want its own result", got, err)
	}
	if out, _ := kilnTry(t, room2CLI, "result", done.JobID); strings.Contains(out, done.Text) {
		t.Errorf("kiln result as room-2 printed room-1's result: %s", out)
	}

	// Each controller cancels its own job.
	for _, c := range []*client.Client{room1, room2} {
		p, err := c.Submit(ctx, echoJob("cancel-me", 50, 100))
		if err != nil {
			t.Fatal(err)
		}
		_, err = p.Wait(ctx, func(ev schema.Event) error {
			if ev.Type == schema.EventStarted {
				return c.Cancel(ctx, p.ID)
			}
			return nil
		})
		p.Close()
		if !errors.Is(err, client.ErrCancelled) {
			t.Errorf("%s cancelling its own job: %v, want ErrCancelled", c.ID(), err)
		}
	}
	if t.Failed() {
		return
	}
	// room-1 did nothing refused.
	v1.mu.Lock()
	defer v1.mu.Unlock()
	if len(v1.errs) > 0 {
		t.Errorf("room-1 was refused: %v", v1.errs)
	}
}

// TestOpenBroker runs both shapes of job on a broker without permissions
// (one open Pi): an anonymous job published by hand as the README does
// (plain nats.go, reply_to my.inbox) and the Go client's jobs, anonymous
// and with a client id. The same subjects work; nothing is enforced.
func TestOpenBroker(t *testing.T) {
	t.Parallel()
	n := singleNode(t)
	startWorker(t, n.url, "w1", "", 10*time.Second)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	nc, err := nats.Connect(n.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	inbox, err := nc.SubscribeSync("my.inbox")
	if err != nil {
		t.Fatal(err)
	}
	for _, opts := range [][]client.Option{nil, {client.WithClientID("room-1")}} {
		c, err := client.New(nc, opts...)
		if err != nil {
			t.Fatal(err)
		}
		waitServed(t, c)
		res, err := c.Chat(ctx, &schema.ChatJob{JobHeader: schema.JobHeader{Model: "echo"},
			Messages: []schema.Message{{Role: "user", Content: "open"}}}, nil)
		if err != nil || res.Text != "echo: open" {
			t.Fatalf("client %d options: %+v, %v", len(opts), res, err)
		}
		c.Close()
	}
	js, _ := jetstream.New(nc)
	m := nats.NewMsg("kiln.jobs.chat.echo.normal")
	m.Header.Set("Content-Type", "application/json")
	m.Header.Set("Nats-Msg-Id", "job-1")
	m.Data = []byte(`{"id":"job-1","model":"echo","reply_to":"my.inbox","messages":[{"role":"user","content":"by hand"}]}`)
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	for {
		em, err := inbox.NextMsg(20 * time.Second)
		if err != nil {
			t.Fatalf("no result on my.inbox: %v", err)
		}
		var ev schema.Event
		if err := schema.JSON.Unmarshal(em.Data, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Type == schema.EventResult {
			if ev.Result.Text != "echo: by hand" {
				t.Fatalf("the hand-published job: %+v", ev.Result)
			}
			break
		}
	}
	st, err := js.Stream(ctx, "KILN_RESULTS")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetLastMsgForSubject(ctx, "kiln.results.job-1"); err != nil {
		t.Errorf("the anonymous job's result is not at kiln.results.job-1: %v", err)
	}
}
