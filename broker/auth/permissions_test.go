package auth_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nkeys"

	"github.com/kiln-project/kiln/broker"
	"github.com/kiln-project/kiln/broker/auth"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
)

// account is a broker running the users of one auth.Set.
type account struct {
	b    *broker.Broker
	dir  string // the set's files
	topo topology.Config
	subj schema.Subjects
	// root is the broker's own in-process connection: it sets up what each
	// role then reads, and reads what each role published.
	root   *nats.Conn
	rootJS jetstream.JetStream
	// url is where identities log in: the broker's TCP listener, or its
	// NATS WebSocket listener.
	url string
}

// startAccount writes a set with controllers room-1 and room-2 and observer
// lobby, and starts a broker whose config includes its auth.conf.
func startAccount(t *testing.T) *account {
	t.Helper()
	dir := t.TempDir()
	set, err := auth.New(auth.Config{Controllers: []string{"room-1", "room-2"}, Observers: []string{"lobby"},
		Gateways: []string{"gw"}, GatewayClients: []string{"kiosk"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := set.Write(dir, nil); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "broker.conf")
	if err := os.WriteFile(conf, []byte("include auth.conf\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Config{ConfigFile: conf, Listen: "127.0.0.1:0", WebSocket: "127.0.0.1:0", StoreDir: t.TempDir(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = b.Shutdown(ctx)
	})
	root, err := b.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(root.Close)
	js, err := jetstream.New(root)
	if err != nil {
		t.Fatal(err)
	}
	topo := topology.Config{}.WithDefaults()
	return &account{b: b, dir: dir, topo: topo, subj: topo.Subjects(), root: root, rootJS: js, url: b.ClientURL()}
}

// login connects over TCP as identity id with its seed file and, like
// `kiln` with --client-id, with its own inbox prefix (but the worker).
func (a *account) login(t *testing.T, id string) *nats.Conn {
	t.Helper()
	seed, err := nats.NkeyOptionFromSeed(filepath.Join(a.dir, id+".nk"))
	if err != nil {
		t.Fatal(err)
	}
	// denied reads refusals from LastError: no async handler printing them
	quiet := nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})
	opts := []nats.Option{seed, nats.Name(id), quiet}
	if id != auth.WorkerName {
		opts = append(opts, nats.CustomInboxPrefix(topology.InboxPrefix(id)))
	}
	nc, err := nats.Connect(a.url, opts...)
	if err != nil {
		t.Fatalf("login as %s: %v", id, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// denied runs op, a publish or subscribe on nc, and checks that the broker
// refused it. The broker answers a refused operation with a permissions
// violation naming the subject, and nc records it (LastError; the async
// error handler gets the same error) before the pong that ends a flush:
// no waiting for something not to happen. Each check on a connection must
// name a subject of its own.
func denied(t *testing.T, nc *nats.Conn, what, subject string, op func() error) {
	t.Helper()
	if err := op(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("%s: flush: %v", what, err)
	}
	if err := nc.LastError(); !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), `"`+subject+`"`) {
		t.Errorf("%s (%s): allowed, want a permissions violation (last error: %v)", what, subject, err)
	}
}

func deniedPub(t *testing.T, nc *nats.Conn, what, subject string) {
	t.Helper()
	denied(t, nc, what, subject, func() error { return nc.Publish(subject, []byte("{}")) })
}

func deniedSub(t *testing.T, nc *nats.Conn, what, subject string) {
	t.Helper()
	denied(t, nc, what, subject, func() error { _, err := nc.SubscribeSync(subject); return err })
}

// subscribe subscribes nc to subject, checked by a flush.
func subscribe(t *testing.T, nc *nats.Conn, subject string) *nats.Subscription {
	t.Helper()
	sub, err := nc.SubscribeSync(subject)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return sub
}

// next returns the next message of sub; a missing one fails the test.
func next(t *testing.T, sub *nats.Subscription, what string) *nats.Msg {
	t.Helper()
	m, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("%s: nothing on %s: %v", what, sub.Subject, err)
	}
	return m
}

func encode(t *testing.T, subject string, v any) *nats.Msg {
	t.Helper()
	data, err := schema.Msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(subject)
	m.Data = data
	m.Header.Set(schema.HeaderContentType, schema.ContentMsgpack)
	return m
}

// register puts a live worker serving chat model echo in the registry, as
// the broker's user.
func (a *account) register(t *testing.T, worker string) {
	ctx := testContext(t)
	t.Helper()
	kv, err := a.rootJS.KeyValue(ctx, a.topo.WorkersBucket())
	if err != nil {
		t.Fatal(err)
	}
	hb := schema.Heartbeat{Worker: worker, State: "ready", IntervalMS: time.Hour.Milliseconds(), Time: time.Now(),
		Models: []schema.ModelInfo{{Name: "echo", Kind: schema.KindChat}}}
	data, _ := schema.JSON.Marshal(&hb)
	if _, err := kv.Put(ctx, worker, data); err != nil {
		t.Fatal(err)
	}
}

func chatJob(id string) *schema.ChatJob {
	return &schema.ChatJob{JobHeader: schema.JobHeader{ID: id, Model: "echo"}, Messages: []schema.Message{{Role: "user", Content: "hi"}}}
}

// A browser on the broker's NATS WebSocket listener (nats.ws, nats.js)
// logs in as the same users with the same permissions: strangers are
// refused, a controller submits and cancels its own jobs only.
func TestWebSocketSamePermissions(t *testing.T) {
	a := startAccount(t)
	if a.url = a.b.WebSocketURL(); !strings.HasPrefix(a.url, "ws://127.0.0.1:") {
		t.Fatalf("websocket URL %q, want ws://127.0.0.1:<port>", a.url)
	}
	a.register(t, "w1")
	t.Run("strangers", a.strangers)
	t.Run("controller", a.controller)
	t.Run("observer", a.observer)
}

// TestRolePermissions logs in as every role of a set on one broker and
// checks what each may and may not do, as docs/deploy.md §4 lists it.
func TestRolePermissions(t *testing.T) {
	a := startAccount(t)
	a.register(t, "w1")
	t.Run("strangers", a.strangers)
	t.Run("controller", a.controller)
	t.Run("worker", a.worker)
	t.Run("observer", a.observer)
	t.Run("gateway", a.gateway)
	t.Run("admin", a.admin)
	t.Run("in-process broker user", a.inProcessUser)
}

// strangers checks that nobody logs in without credentials, nor with a key
// the broker does not know. Over WebSocket the server's close can reach
// the client before its authorization error does (a write on the closed
// socket fails first): there a refusal is any failed connect.
func (a *account) strangers(t *testing.T) {
	ws := strings.HasPrefix(a.url, "ws")
	refused := func(what string, nc *nats.Conn, err error) {
		t.Helper()
		if err == nil {
			nc.Close()
		}
		if err == nil || (!ws && !errors.Is(err, nats.ErrAuthorization)) {
			t.Errorf("%s: %v, want an authorization violation", what, err)
		}
	}
	nc, err := nats.Connect(a.url)
	refused("connect without credentials", nc, err)
	kp, _ := nkeys.CreateUser()
	pub, _ := kp.PublicKey()
	nc, err = nats.Connect(a.url, nats.Nkey(pub, kp.Sign))
	refused("connect with an unknown key", nc, err)
}

// controller checks that a controller submits and cancels under its own id
// only, reads its own replies and results and nobody else's, takes no jobs
// and publishes nothing a worker does.
func (a *account) controller(t *testing.T) {
	ctx := testContext(t)
	s, topo := a.subj, a.topo
	jobs, results := topo.JobsStream(), topo.ResultsStream()
	nc := a.login(t, "room-1")
	c, err := client.New(nc, client.WithClientID("room-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Submits (reading the registry first) on its own job subject, and
	// cancels its own jobs.
	jobs1 := subscribe(t, a.root, s.ClientJobs("room-1"))
	p, err := c.Submit(ctx, chatJob("job-room-1"))
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	defer p.Close()
	if m := next(t, jobs1, "room-1's job"); m.Subject != s.ClientJob(schema.KindChat, "echo", schema.LaneNormal, "room-1") ||
		m.Header.Get(jetstream.MsgIDHeader) != schema.JobKey("room-1", p.ID) {
		t.Errorf("room-1's job on %s with message id %q", m.Subject, m.Header.Get(jetstream.MsgIDHeader))
	}
	cancels := subscribe(t, a.root, s.ClientCancel("room-1", p.ID))
	if err := c.Cancel(ctx, p.ID); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	next(t, cancels, "the cancel of room-1's job")
	if kv, err := a.rootJS.KeyValue(ctx, topo.CancelBucket()); err != nil {
		t.Fatal(err)
	} else if _, err := kv.Get(ctx, schema.JobKey("room-1", p.ID)); err != nil {
		t.Errorf("room-1's job is not in the cancel bucket: %v", err)
	}

	// Submits and cancels under no other id, nor anonymously.
	deniedPub(t, nc, "publishing a job as room-2", s.ClientJob(schema.KindChat, "echo", schema.LaneNormal, "room-2"))
	deniedPub(t, nc, "publishing an anonymous job", s.Job(schema.KindChat, "echo", schema.LaneNormal))
	deniedPub(t, nc, "cancelling room-2's job", s.ClientCancel("room-2", "job-y"))
	deniedPub(t, nc, "cancelling an anonymous job", s.Cancel("job-y"))
	deniedPub(t, nc, "putting room-2's job in the cancel bucket", topology.KVKey(topo.CancelBucket(), schema.JobKey("room-2", "job-y")))
	deniedPub(t, nc, "putting an anonymous job in the cancel bucket", topology.KVKey(topo.CancelBucket(), "job-y"))
	// The client's cancel gets no acknowledgement from the bucket.
	refused, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := c.CancelFor(refused, "room-2", "job-y"); err == nil {
		t.Error("room-1 cancelled room-2's job")
	}

	// Reads its own replies and results.
	replies := subscribe(t, nc, s.Reply("room-1", "job-x"))
	if err := a.root.Publish(s.Reply("room-1", "job-x"), []byte("token")); err != nil {
		t.Fatal(err)
	}
	next(t, replies, "room-1's own reply")
	for _, id := range []string{"room-1", "room-2"} {
		res := &schema.Result{JobID: "job-done", Status: schema.StatusOK, Text: "for " + id}
		if _, err := a.rootJS.PublishMsg(ctx, encode(t, s.ClientResult("job-done", id), res)); err != nil {
			t.Fatal(err)
		}
	}
	if res, err := c.Result(ctx, "job-done"); err != nil || res.Text != "for room-1" {
		t.Errorf("room-1 reading its own result: %+v, %v", res, err)
	}

	// Reads no other controller's replies, results or inboxes.
	deniedSub(t, nc, "subscribing to room-2's replies", s.ClientReplies("room-2"))
	deniedSub(t, nc, "subscribing to one reply of room-2", s.Reply("room-2", "job-y"))
	deniedSub(t, nc, "subscribing to room-2's inboxes", topology.Inboxes("room-2"))
	deniedSub(t, nc, "subscribing to every reply", s.Replies())
	deniedPub(t, nc, "reading room-2's result", topology.APISubject(topology.APIDirectGet, results, s.ClientResult("job-done", "room-2")))
	deniedPub(t, nc, "reading results through the stream API", topology.APISubject(topology.APIStreamMsgGet, results))

	// Takes no jobs and publishes nothing a worker does.
	deniedPub(t, nc, "pulling a job", topology.APISubject(topology.APIConsumerNext, jobs, topology.ConsumerName(schema.KindChat, "echo", schema.LaneNormal)))
	deniedPub(t, nc, "making a consumer on the queue", topology.APISubject(topology.APIConsumerCreate, jobs, "thief", s.Job(schema.KindChat, "echo", schema.LaneHigh)))
	deniedPub(t, nc, "publishing a heartbeat", s.Heartbeat("fake"))
	deniedPub(t, nc, "publishing a device event", s.Device("fake"))
	deniedPub(t, nc, "publishing a registry entry", topology.KVKey(topo.WorkersBucket(), "fake"))
	deniedPub(t, nc, "publishing a result", s.ClientResult("job-forged", "room-1"))
	deniedPub(t, nc, "replying to room-2", s.Reply("room-2", "job-z"))
	deniedSub(t, nc, "subscribing to events", s.Events())
	deniedSub(t, nc, "subscribing to wakes", s.Wakes())
}

// gateway checks that a gateway submits jobs, reads replies and results
// as itself and as each client its API keys map to, and as no other, and
// reads what an observer reads (for the dashboard and metrics it serves).
func (a *account) gateway(t *testing.T) {
	ctx := testContext(t)
	s, topo := a.subj, a.topo
	nc := a.login(t, "gw")
	for _, id := range []string{"gw", "kiosk"} {
		c, err := client.New(nc, client.WithClientID(id))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		jobs := subscribe(t, a.root, s.ClientJobs(id))
		p, err := c.Submit(ctx, chatJob("job-"+id))
		if err != nil {
			t.Fatalf("submit as %s: %v", id, err)
		}
		defer p.Close()
		if m := next(t, jobs, id+"'s job"); m.Subject != s.ClientJob(schema.KindChat, "echo", schema.LaneNormal, id) {
			t.Errorf("%s's job on %s", id, m.Subject)
		}
		if err := c.Cancel(ctx, p.ID); err != nil {
			t.Errorf("cancel as %s: %v", id, err)
		}
		res := &schema.Result{JobID: "job-gw-done", Status: schema.StatusOK, Text: "for " + id}
		if _, err := a.rootJS.PublishMsg(ctx, encode(t, s.ClientResult("job-gw-done", id), res)); err != nil {
			t.Fatal(err)
		}
		if got, err := c.Result(ctx, "job-gw-done"); err != nil || got.Text != "for "+id {
			t.Errorf("%s's result through the gateway: %+v %v", id, got, err)
		}
		replies := subscribe(t, nc, s.Reply(id, "job-x"))
		if err := a.root.Publish(s.Reply(id, "job-x"), []byte("token")); err != nil {
			t.Fatal(err)
		}
		next(t, replies, id+"'s reply")
	}
	obs, err := client.New(nc, client.WithClientID("gw"))
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Close()
	if _, err := obs.Queue(ctx); err != nil {
		t.Errorf("queue depths: %v", err)
	}
	subscribe(t, nc, s.Events())

	// Follows its clients' jobs as they pass (its dashboard and metrics):
	// their wakes, and their results through a consumer of its own.
	subscribe(t, nc, s.ClientWakes("kiosk"))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.OrderedConsumer(ctx, topo.ResultsStream(), jetstream.OrderedConsumerConfig{FilterSubjects: []string{s.ClientResults("kiosk")}})
	if err != nil {
		t.Fatalf("a consumer of kiosk's results: %v", err)
	}
	if m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second)); err != nil || m.Subject() != s.ClientResult("job-gw-done", "kiosk") {
		t.Errorf("kiosk's result through the gateway's consumer: %v", err)
	}
	deniedPub(t, nc, "a consumer of room-2's results", topology.APISubject(topology.APIConsumerCreate, topo.ResultsStream(), "mine", s.ClientResults("room-2")))
	deniedSub(t, nc, "subscribing to room-2's wakes", s.ClientWakes("room-2"))

	deniedPub(t, nc, "publishing a job as room-2", s.ClientJob(schema.KindChat, "echo", schema.LaneNormal, "room-2"))
	deniedPub(t, nc, "publishing an anonymous job", s.Job(schema.KindChat, "echo", schema.LaneNormal))
	deniedPub(t, nc, "cancelling room-2's job", s.ClientCancel("room-2", "job-y"))
	deniedSub(t, nc, "subscribing to room-2's replies", s.ClientReplies("room-2"))
	deniedSub(t, nc, "subscribing to kiosk's inboxes", topology.Inboxes("kiosk"))
	deniedPub(t, nc, "reading room-2's result", topology.APISubject(topology.APIDirectGet, topo.ResultsStream(), s.ClientResult("job-done", "room-2")))
	deniedPub(t, nc, "pulling a job", topology.APISubject(topology.APIConsumerNext, topo.JobsStream(), topology.ConsumerName(schema.KindChat, "echo", schema.LaneNormal)))
	deniedPub(t, nc, "publishing a result", s.ClientResult("job-forged", "kiosk"))
}

// worker checks that a worker takes jobs, publishes replies, results, events
// and its registry entry, hears cancels and exhausted jobs, and submits and
// cancels nothing.
func (a *account) worker(t *testing.T) {
	ctx := testContext(t)
	s, topo := a.subj, a.topo
	jobs, results := topo.JobsStream(), topo.ResultsStream()
	nc := a.login(t, auth.WorkerName)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// Starts as a worker does: checks the topology, binds its consumer,
	// listens for wakes, cancels and exhausted jobs.
	if err := topology.Ensure(ctx, js, topo); err != nil {
		t.Fatalf("ensure the topology: %v", err)
	}
	cons, err := topology.EnsureConsumer(ctx, js, topo, schema.KindChat, "echo", schema.LaneHigh)
	if err != nil {
		t.Fatalf("bind the consumer: %v", err)
	}
	wakes := subscribe(t, nc, s.Wakes())
	cancels := subscribe(t, nc, s.Cancels())
	exhausted, err := nc.QueueSubscribeSync(topology.MaxDeliveriesAdvisory(jobs, "*"), "kiln-reaper")
	if err != nil {
		t.Fatal(err)
	}
	cancelKV, err := js.KeyValue(ctx, topo.CancelBucket())
	if err != nil {
		t.Fatal(err)
	}
	watch, err := cancelKV.WatchAll(ctx)
	if err != nil {
		t.Fatalf("watch the cancel bucket: %v", err)
	}
	defer watch.Stop()
	for e := range watch.Updates() {
		if e == nil {
			break // the bucket's present entries are in
		}
	}

	// Takes a job.
	job := encode(t, s.ClientJob(schema.KindChat, "echo", schema.LaneHigh, "room-1"), chatJob("job-w"))
	if _, err := a.rootJS.PublishMsg(ctx, job, jetstream.WithMsgID(schema.JobKey("room-1", "job-w"))); err != nil {
		t.Fatal(err)
	}
	next(t, wakes, "the wake of a stored job")
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got jetstream.Msg
	for m := range batch.Messages() {
		got = m
	}
	if got == nil {
		t.Fatalf("no job fetched: %v", batch.Error())
	}
	if err := got.InProgress(); err != nil {
		t.Fatal(err)
	}
	if err := got.DoubleAck(ctx); err != nil {
		t.Fatalf("ack the job: %v", err)
	}

	// Publishes replies (on the default subject and on an inbox),
	// results, events and its registry entry.
	replies := subscribe(t, a.root, s.Reply("room-1", "job-w"))
	inbox := subscribe(t, a.root, topology.InboxPrefix("room-1")+".job-w")
	if err := nc.Publish(s.Reply("room-1", "job-w"), []byte("token")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(topology.InboxPrefix("room-1")+".job-w", []byte("token")); err != nil {
		t.Fatal(err)
	}
	next(t, replies, "the worker's reply")
	next(t, inbox, "the worker's reply on an inbox")
	res := &schema.Result{JobID: "job-w", Status: schema.StatusOK, Text: "done"}
	if _, err := js.PublishMsg(ctx, encode(t, s.ClientResult("job-w", "room-1"), res)); err != nil {
		t.Fatalf("publish a result: %v", err)
	}
	if _, err := js.PublishMsg(ctx, encode(t, s.Heartbeat("w2"), &schema.Heartbeat{Worker: "w2"})); err != nil {
		t.Fatalf("publish a heartbeat: %v", err)
	}
	if _, err := js.PublishMsg(ctx, encode(t, s.Device("w2"), &schema.DeviceEvent{Worker: "w2", Type: "ready"})); err != nil {
		t.Fatalf("publish a device event: %v", err)
	}
	workersKV, err := js.KeyValue(ctx, topo.WorkersBucket())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := workersKV.Put(ctx, "w2", []byte(`{"worker":"w2"}`)); err != nil {
		t.Fatalf("register: %v", err)
	}
	// Reads the results stored before it (a redelivered job's).
	resultsStream, err := js.Stream(ctx, results)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := resultsStream.GetLastMsgForSubject(ctx, s.ClientResult("job-w", "room-1")); err != nil {
		t.Errorf("read a stored result: %v", err)
	}

	// Hears cancels, on the subject and in the bucket, of client and
	// anonymous jobs.
	for _, cancel := range []string{s.ClientCancel("room-1", "job-w"), s.Cancel("job-w")} {
		if err := a.root.Publish(cancel, nil); err != nil {
			t.Fatal(err)
		}
		next(t, cancels, "a cancel on "+cancel)
	}
	rootCancelKV, err := a.rootJS.KeyValue(ctx, topo.CancelBucket())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rootCancelKV.Put(ctx, "job-w", []byte("now")); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-watch.Updates():
		if e == nil || e.Key() != "job-w" {
			t.Errorf("cancel bucket watch: %v", e)
		}
	case <-ctx.Done():
		t.Fatal("the cancel bucket watch saw no put")
	}

	// Settles a job no worker could finish: it hears the advisory, reads
	// and deletes the job.
	job = encode(t, s.Job(schema.KindChat, "echo", schema.LaneHigh), chatJob("job-doomed"))
	if _, err := a.rootJS.PublishMsg(ctx, job, jetstream.WithMsgID("job-doomed")); err != nil {
		t.Fatal(err)
	}
	for range topo.MaxDeliver {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			if err := m.Nak(); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The server notices the exhausted job when a worker pulls again.
	pull := topology.APISubject(topology.APIConsumerNext, jobs, topology.ConsumerName(schema.KindChat, "echo", schema.LaneHigh))
	if err := nc.PublishRequest(pull, nc.NewRespInbox(), []byte(`{"batch":1,"expires":10000000000}`)); err != nil {
		t.Fatal(err)
	}
	adv := next(t, exhausted, "the max-deliveries advisory")
	var exhaustedJob struct {
		StreamSeq uint64 `json:"stream_seq"`
	}
	if err := schema.JSON.Unmarshal(adv.Data, &exhaustedJob); err != nil {
		t.Fatal(err)
	}
	jobsStream, err := js.Stream(ctx, jobs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jobsStream.GetMsg(ctx, exhaustedJob.StreamSeq); err != nil {
		t.Errorf("read the exhausted job: %v", err)
	}
	if err := jobsStream.DeleteMsg(ctx, exhaustedJob.StreamSeq); err != nil {
		t.Errorf("delete the exhausted job: %v", err)
	}

	// Submits and cancels nothing.
	deniedPub(t, nc, "publishing a job", s.Job(schema.KindChat, "echo", schema.LaneNormal))
	deniedPub(t, nc, "publishing a client's job", s.ClientJob(schema.KindChat, "echo", schema.LaneNormal, "room-1"))
	deniedPub(t, nc, "publishing a cancel", s.Cancel("job-x"))
	deniedPub(t, nc, "publishing a client's cancel", s.ClientCancel("room-1", "job-x"))
	deniedPub(t, nc, "putting into the cancel bucket", topology.KVKey(topo.CancelBucket(), "job-x"))
	deniedPub(t, nc, "making a consumer on the results", topology.APISubject(topology.APIConsumerCreate, results))
}

// observer checks that an observer reads the registry, queue depths and
// events and asks workers for their status, and submits, cancels and
// publishes nothing and reads no replies or results.
func (a *account) observer(t *testing.T) {
	ctx := testContext(t)
	s, topo := a.subj, a.topo
	jobs, results := topo.JobsStream(), topo.ResultsStream()
	// A worker answering status requests, as worker.startMicro does.
	wnc := a.login(t, auth.WorkerName)
	svc, err := micro.AddService(wnc, micro.Config{Name: "kiln-worker", Version: "1.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()
	err = svc.AddEndpoint("status", micro.HandlerFunc(func(r micro.Request) { _ = r.Respond([]byte(`{"worker":"w1"}`)) }),
		micro.WithEndpointSubject(s.Status("w1")), micro.WithEndpointQueueGroupDisabled())
	if err != nil {
		t.Fatal(err)
	}
	if err := wnc.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := topology.EnsureConsumer(ctx, a.rootJS, topo, schema.KindChat, "echo", schema.LaneNormal); err != nil {
		t.Fatal(err)
	}

	nc := a.login(t, "lobby")
	c, err := client.New(nc, client.WithClientID("lobby"), client.WithoutWorkerCheck())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Reads the registry, the queue depths and the events.
	if ws, err := c.Workers(ctx); err != nil || len(ws) == 0 || ws[0].Worker != "w1" {
		t.Errorf("the observer's view of the workers: %+v, %v", ws, err)
	}
	if q, err := c.Queue(ctx); err != nil || len(q) == 0 {
		t.Errorf("the observer's view of the queue: %+v, %v", q, err)
	}
	live := subscribe(t, nc, s.Events())
	if _, err := a.rootJS.PublishMsg(ctx, encode(t, s.Heartbeat("w1"), &schema.Heartbeat{Worker: "w1"})); err != nil {
		t.Fatal(err)
	}
	next(t, live, "a heartbeat as it happens")
	errSeen := errors.New("seen")
	err = c.Watch(ctx, time.Hour, func(ev client.FleetEvent) error {
		if ev.Heartbeat != nil && ev.Heartbeat.Worker == "w1" {
			return errSeen
		}
		return nil
	})
	if !errors.Is(err, errSeen) {
		t.Errorf("watching the events stream: %v", err)
	}

	// Asks workers for their status.
	if m, err := nc.Request(s.Status("w1"), nil, 10*time.Second); err != nil || !strings.Contains(string(m.Data), "w1") {
		t.Errorf("asking w1 for its status: %v", err)
	}
	ping, err := micro.ControlSubject(micro.PingVerb, "kiln-worker", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Request(ping, nil, 10*time.Second); err != nil {
		t.Errorf("pinging the workers (%s): %v", ping, err)
	}

	// Submits, cancels, reads replies and results, publishes nothing.
	deniedPub(t, nc, "publishing a job", s.Job(schema.KindChat, "echo", schema.LaneNormal))
	deniedPub(t, nc, "publishing a job as itself", s.ClientJob(schema.KindChat, "echo", schema.LaneNormal, "lobby"))
	deniedPub(t, nc, "publishing a cancel", s.Cancel("job-x"))
	deniedPub(t, nc, "publishing a cancel as itself", s.ClientCancel("lobby", "job-x"))
	deniedPub(t, nc, "putting into the cancel bucket", topology.KVKey(topo.CancelBucket(), "job-x"))
	deniedPub(t, nc, "reading a result", topology.APISubject(topology.APIDirectGet, results, s.ClientResult("job-done", "room-1")))
	deniedPub(t, nc, "publishing a heartbeat", s.Heartbeat("fake"))
	deniedPub(t, nc, "publishing a registry entry", topology.KVKey(topo.WorkersBucket(), "fake"))
	deniedPub(t, nc, "pulling a job", topology.APISubject(topology.APIConsumerNext, jobs, topology.ConsumerName(schema.KindChat, "echo", schema.LaneNormal)))
	deniedSub(t, nc, "subscribing to replies", s.Replies())
	deniedSub(t, nc, "subscribing to room-1's inboxes", topology.Inboxes("room-1"))
	deniedSub(t, nc, "subscribing to status requests", s.Statuses())
}

// admin checks that admin may do anything in the account.
func (a *account) admin(t *testing.T) {
	ctx := testContext(t)
	s, topo := a.subj, a.topo
	results := topo.ResultsStream()
	nc := a.login(t, auth.AdminName)
	everything := subscribe(t, nc, ">")
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// What the other roles may not: submit and publish events, read any
	// client's result, make and delete consumers anywhere, subscribe to
	// everything.
	if _, err := js.PublishMsg(ctx, encode(t, s.Job(schema.KindChat, "echo", schema.LaneNormal), chatJob("job-admin"))); err != nil {
		t.Errorf("publish a job: %v", err)
	}
	if _, err := js.PublishMsg(ctx, encode(t, s.Heartbeat("w9"), &schema.Heartbeat{Worker: "w9"})); err != nil {
		t.Errorf("publish a heartbeat: %v", err)
	}
	next(t, everything, "anything, subscribed to >")
	c, err := client.New(nc, client.WithClientID(auth.AdminName), client.WithoutWorkerCheck())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res := &schema.Result{JobID: "job-audit", Status: schema.StatusOK, Text: "for room-2"}
	if _, err := a.rootJS.PublishMsg(ctx, encode(t, s.ClientResult("job-audit", "room-2"), res)); err != nil {
		t.Fatal(err)
	}
	if res, err := c.AnyResult(ctx, "job-audit"); err != nil || res.Text != "for room-2" {
		t.Errorf("read another client's result: %+v, %v", res, err)
	}
	if _, err := js.CreateConsumer(ctx, results, jetstream.ConsumerConfig{Name: "audit"}); err != nil {
		t.Errorf("make a consumer on the results: %v", err)
	}
	if err := js.DeleteConsumer(ctx, results, "audit"); err != nil {
		t.Errorf("delete it: %v", err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := nc.LastError(); err != nil {
		t.Errorf("admin was refused something: %v", err)
	}
}

// inProcessUser checks the broker's own user, which provisioned the
// topology and set up every other check (registry, jobs, results, replies,
// cancels): it was refused nothing.
func (a *account) inProcessUser(t *testing.T) {
	if err := a.root.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := a.root.LastError(); err != nil {
		t.Errorf("the broker's own user was refused something: %v", err)
	}
}

// testContext bounds a check: a refused operation that is not a publish or
// a subscription (a JetStream request) fails when it ends.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}
