package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/wait"
)

// initAuth runs `kiln broker init-auth` into a new folder and copies
// deploy/nats/single.conf beside it; it returns the folder.
func initAuth(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "etc-kiln")
	kiln(t, nil, "broker", "init-auth", "--controllers", "room-1,room-2", "--observers", "lobby", dir)
	src, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "nats", "single.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "single.conf"), src, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// violations collects a connection's asynchronous permission errors.
type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.errs = append(v.errs, err.Error())
}

// wait waits until a permission violation naming subject was reported.
func (v *violations) wait(t *testing.T, what, subject string) {
	t.Helper()
	err := wait.Poll(5*time.Second, 20*time.Millisecond, func() error {
		v.mu.Lock()
		defer v.mu.Unlock()
		for _, e := range v.errs {
			if strings.Contains(strings.ToLower(e), "permissions violation") && strings.Contains(e, subject) {
				return nil
			}
		}
		return fmt.Errorf("no permissions violation for %s (errors seen: %v)", subject, v.errs)
	})
	if err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

// login connects as one of init-auth's identities, with its inbox.
func login(t testing.TB, url, dir, id string, v *violations) *nats.Conn {
	t.Helper()
	seed, err := nats.NkeyOptionFromSeed(filepath.Join(dir, id+".nk"))
	if err != nil {
		t.Fatal(err)
	}
	opts := []nats.Option{seed, nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond)}
	if id != "worker" {
		opts = append(opts, nats.CustomInboxPrefix("_INBOX."+id))
	}
	if v != nil {
		opts = append(opts, nats.ErrorHandler(v.handler))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("login as %s: %v", id, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func TestPermissions(t *testing.T) {
	t.Parallel()
	dir := initAuth(t)
	n := singleNode(t, "--config", filepath.Join(dir, "single.conf"))
	startWorker(t, n.url, "w1", filepath.Join(dir, "worker.nk"), 10*time.Second)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	// Nobody gets in without credentials, nor with a key the broker does not know.
	if _, err := nats.Connect(n.url); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("unauthenticated connect: %v, want an authorization violation", err)
	}

	// room-1 submits and reads its own reply and result.
	nc1 := login(t, n.url, dir, "room-1", nil)
	room1, err := client.New(nc1, client.WithClientID("room-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer room1.Close()
	waitServed(t, room1)

	var v2 violations
	nc2 := login(t, n.url, dir, "room-2", &v2)
	spy, err := nc2.SubscribeSync("kiln.reply.room-1.>")
	if err != nil {
		t.Fatal(err)
	}
	v2.wait(t, "room-2 subscribing to room-1's replies", "kiln.reply.room-1.>")

	res, err := room1.Chat(ctx, &schema.ChatJob{JobHeader: schema.JobHeader{Model: "echo"},
		Messages: []schema.Message{{Role: "user", Content: "private words"}}}, nil)
	if err != nil || res.Text != "echo: private words" {
		t.Fatalf("room-1's job: %+v, %v", res, err)
	}
	if stored, err := room1.Result(ctx, res.JobID); err != nil || stored.Text != res.Text {
		t.Fatalf("room-1 reading its own result: %+v, %v", stored, err)
	}
	if m, err := spy.NextMsg(300 * time.Millisecond); err == nil {
		t.Fatalf("room-2 read room-1's reply %q", m.Data)
	}

	// room-1 may cancel its jobs.
	p, err := room1.Submit(ctx, echoJob("slow", 50, 50))
	if err != nil {
		t.Fatal(err)
	}
	if err := room1.Cancel(ctx, p.ID); err != nil {
		t.Fatalf("room-1 cancelling its job: %v", err)
	}
	if _, err := p.Wait(ctx, nil); !errors.Is(err, client.ErrCancelled) {
		t.Fatalf("room-1's cancelled job: %v, want ErrCancelled", err)
	}
	p.Close()

	// room-2 cannot read room-1's stored result.
	room2, err := client.New(nc2, client.WithClientID("room-2"))
	if err != nil {
		t.Fatal(err)
	}
	defer room2.Close()
	getSubj := "$JS.API.DIRECT.GET.KILN_RESULTS.kiln.results." + res.JobID + ".room-1"
	if m, err := nc2.Request(getSubj, nil, 500*time.Millisecond); err == nil {
		t.Fatalf("room-2 read room-1's result: %q", m.Data)
	}
	v2.wait(t, "room-2 reading room-1's result", getSubj)
	if _, err := room2.Result(ctx, res.JobID); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("room-2's lookup of room-1's job: %v, want ErrNotFound (its own results only)", err)
	}

	// room-2 cannot take jobs off the queue, nor make a consumer of its own.
	if m, err := nc2.Request("$JS.API.CONSUMER.MSG.NEXT.KILN_JOBS.chat_echo_normal", []byte(`{"batch":1,"no_wait":true}`), 500*time.Millisecond); err == nil {
		t.Fatalf("room-2 pulled from the job queue: %q", m.Header)
	}
	v2.wait(t, "room-2 pulling jobs", "$JS.API.CONSUMER.MSG.NEXT.KILN_JOBS.chat_echo_normal")
	js2, _ := jetstream.New(nc2)
	cctx, ccancel := context.WithTimeout(ctx, time.Second)
	if _, err := js2.CreateConsumer(cctx, "KILN_JOBS", jetstream.ConsumerConfig{Name: "thief", FilterSubject: "kiln.jobs.chat.echo.high"}); err == nil {
		t.Fatal("room-2 created a consumer on the job queue")
	}
	ccancel()

	// room-2 cannot publish events: an observer watching them sees nothing from it.
	var vObs violations
	ncObs := login(t, n.url, dir, "lobby", &vObs)
	fake, err := ncObs.SubscribeSync("kiln.events.heartbeat.fake")
	if err != nil {
		t.Fatal(err)
	}
	real, err := ncObs.SubscribeSync("kiln.events.heartbeat.w1")
	if err != nil {
		t.Fatal(err)
	}
	if err := ncObs.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := nc2.Publish("kiln.events.heartbeat.fake", []byte(`{"worker":"fake","state":"ready"}`)); err != nil {
		t.Fatal(err)
	}
	v2.wait(t, "room-2 publishing an event", "kiln.events.heartbeat.fake")
	if _, err := real.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("the observer does not see the worker's heartbeats: %v", err)
	}
	if m, err := fake.NextMsg(300 * time.Millisecond); err == nil {
		t.Fatalf("a controller published an event: %q", m.Data)
	}

	// The observer reads the fleet but submits nothing.
	obs, err := client.New(ncObs, client.WithClientID("lobby"), client.WithoutWorkerCheck())
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Close()
	if ws, err := obs.Workers(ctx); err != nil || len(ws) != 1 || ws[0].Worker != "w1" {
		t.Fatalf("observer's view of the workers: %+v, %v", ws, err)
	}
	if q, err := obs.Queue(ctx); err != nil || len(q) == 0 {
		t.Fatalf("observer's view of the queue: %+v, %v", q, err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	errSeen := errors.New("seen")
	err = obs.Watch(wctx, time.Minute, func(ev client.FleetEvent) error {
		if ev.Heartbeat != nil && ev.Heartbeat.Worker == "w1" {
			return errSeen
		}
		return nil
	})
	wcancel()
	if !errors.Is(err, errSeen) {
		t.Fatalf("observer watching the events: %v", err)
	}
	if m, err := ncObs.Request("kiln.status.w1", nil, 5*time.Second); err != nil || !strings.Contains(string(m.Data), "w1") {
		t.Fatalf("observer asking worker w1 for its status: %v", err)
	}
	sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = obs.Submit(sctx, &schema.ChatJob{JobHeader: schema.JobHeader{Model: "echo"},
		Messages: []schema.Message{{Role: "user", Content: "x"}}})
	scancel()
	if err == nil {
		t.Fatal("an observer submitted a job")
	}
	vObs.wait(t, "the observer submitting a job", "kiln.jobs.chat.echo.normal")

	// The kiln commands log in with the files init-auth wrote.
	out := kiln(t, []string{"KILN_NATS_URL=" + n.url}, "chat", "--nkey", filepath.Join(dir, "room-2.nk"),
		"--client-id", "room-2", "--model", "echo", "hello from the cli")
	if !strings.Contains(out, "echo: hello from the cli") {
		t.Fatalf("kiln chat as room-2: %q", out)
	}
	out = kiln(t, []string{"KILN_NATS_URL=" + n.url, "KILN_NKEY=" + filepath.Join(dir, "lobby.nk"), "KILN_CLIENT_ID=lobby"}, "status")
	if !strings.Contains(out, "w1") || !strings.Contains(out, "chat/echo") {
		t.Fatalf("kiln status as the observer: %q", out)
	}
}

// waitServed waits until a worker serving echo is registered.
func waitServed(t testing.TB, c *client.Client) {
	t.Helper()
	wait.For(t, 30*time.Second, 50*time.Millisecond, func() error {
		ws, err := c.Workers(t.Context())
		if err != nil {
			return err
		}
		for _, w := range ws {
			if w.Serves(schema.KindChat, "echo") {
				return nil
			}
		}
		return fmt.Errorf("no worker serving echo registered (%d workers)", len(ws))
	})
}

// TestLeafNodeJoinsHub runs a worker on a leaf Pi (`kiln broker --leaf` with
// deploy/nats/leaf.conf) that joined a hub (deploy/nats/hub.conf): a
// controller on the hub gets its job done by the worker behind the leaf.
func TestLeafNodeJoinsHub(t *testing.T) {
	t.Parallel()
	leafPort := freePort(t)
	dir := filepath.Join(t.TempDir(), "etc-kiln")
	kiln(t, nil, "broker", "init-auth", "--controllers", "room-1", "--hub", fmt.Sprintf("127.0.0.1:%d", leafPort), dir)
	for _, f := range []string{"hub.conf", "leaf.conf"} {
		src, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "nats", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), src, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	hub := &node{name: "hub", port: freePort(t), args: []string{"--config", filepath.Join(dir, "hub.conf"), "--data", t.TempDir()},
		env: []string{fmt.Sprintf("KILN_LEAF_LISTEN=127.0.0.1:%d", leafPort)}}
	hub.url = fmt.Sprintf("nats://127.0.0.1:%d", hub.port)
	hub.start(t)
	leaf := &node{name: "leaf", port: freePort(t), args: []string{"--config", filepath.Join(dir, "leaf.conf")}, env: []string{"KILN_LEAF=1"}}
	leaf.url = fmt.Sprintf("nats://127.0.0.1:%d", leaf.port)
	leaf.start(t)
	startWorker(t, leaf.url, "behind-leaf", filepath.Join(dir, "worker.nk"), 10*time.Second)

	c, err := client.New(login(t, hub.url, dir, "room-1", nil), client.WithClientID("room-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitServed(t, c)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	res, err := c.Chat(ctx, &schema.ChatJob{JobHeader: schema.JobHeader{Model: "echo"},
		Messages: []schema.Message{{Role: "user", Content: "across the leaf"}}}, nil)
	if err != nil || res.Text != "echo: across the leaf" || res.Worker != "behind-leaf" {
		t.Fatalf("job through the leaf: %+v, %v", res, err)
	}
}

// TestTLS runs the broker with the certificate `kiln broker init-auth --tls`
// made: plain connections are refused, tls:// with the CA works for the
// worker and for `kiln chat`.
func TestTLS(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "etc-kiln")
	kiln(t, nil, "broker", "init-auth", "--controllers", "room-1", "--tls", "127.0.0.1,localhost", dir)
	src, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "nats", "single.conf"))
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "single-tls.conf")
	if err := os.WriteFile(conf, append(src, "include tls.conf\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	n := &node{name: "tls", port: freePort(t), args: []string{"--config", conf, "--data", t.TempDir()}}
	n.start(t)
	url := fmt.Sprintf("tls://127.0.0.1:%d", n.port)
	ca := filepath.Join(dir, "ca.pem")
	seed, _ := nats.NkeyOptionFromSeed(filepath.Join(dir, "room-1.nk"))
	if nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", n.port), seed, nats.Timeout(2*time.Second)); err == nil {
		nc.Close()
		t.Fatal("a connection without TLS was accepted")
	}
	if nc, err := nats.Connect(url, seed, nats.Timeout(2*time.Second)); err == nil {
		nc.Close()
		t.Fatal("a TLS connection that does not know the CA was accepted")
	}
	startWorker(t, url, "w-tls", filepath.Join(dir, "worker.nk"), 10*time.Second, envTLSCA+"="+ca)
	// The worker may not have registered yet.
	wait.For(t, 30*time.Second, 200*time.Millisecond, func() error {
		out, err := kilnTry(t, []string{"KILN_NATS_URL=" + url, "KILN_TLS_CA=" + ca, "KILN_NKEY=" + filepath.Join(dir, "room-1.nk"),
			"KILN_CLIENT_ID=room-1"}, "chat", "--model", "echo", "over tls")
		if err != nil || !strings.Contains(out, "echo: over tls") {
			return fmt.Errorf("kiln chat over TLS: %v\n%s", err, out)
		}
		return nil
	})
}
