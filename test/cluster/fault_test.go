package cluster

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/wait"
)

// echoJob is a chat job of n words, each taking delayMS on the worker.
func echoJob(tag string, n, delayMS int) *schema.ChatJob {
	words := make([]string, n)
	for i := range words {
		words[i] = fmt.Sprintf("%s-%d", tag, i)
	}
	return &schema.ChatJob{
		JobHeader: schema.JobHeader{Model: "echo", Metadata: map[string]string{"delay_ms": fmt.Sprint(delayMS)}},
		Messages:  []schema.Message{{Role: "user", Content: strings.Join(words, " ")}},
	}
}

func TestSingleNodeRestartKeepsQueuedJobs(t *testing.T) {
	t.Parallel()
	n := singleNode(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	nc, err := nats.Connect(n.url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c, err := client.New(nc, client.WithoutWorkerCheck(), client.WithResultPoll(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const jobs = 20
	var pending []*client.Pending
	for i := range jobs {
		p, err := c.Submit(ctx, echoJob(fmt.Sprint("q", i), 2, 0))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		pending = append(pending, p)
	}
	// kill -9: what the broker acknowledged must be on disk.
	n.p.kill()
	n.start(t)
	js, _ := jetstream.New(nc)
	st, err := js.Stream(ctx, "KILN_JOBS")
	if err != nil {
		t.Fatal(err)
	}
	if info, err := st.Info(ctx); err != nil || info.State.Msgs != jobs {
		t.Fatalf("after the restart KILN_JOBS holds %+v (%v), want %d jobs", info.State, err, jobs)
	}
	startWorker(t, n.url, "after-restart", "", 10*time.Second)
	for i, p := range pending {
		res, err := p.Wait(ctx, nil)
		if err != nil || res.Text != fmt.Sprintf("echo: q%d-0 q%d-1", i, i) || res.Worker != "after-restart" {
			t.Fatalf("job %d after the restart: %+v, %v", i, res, err)
		}
	}
}

// TestClusterFailoverLosesNothing runs a stream of jobs on a 3-node R3
// cluster with two workers, kills the KILN_JOBS stream leader with kill -9
// mid-run and a worker mid-job, and checks that every accepted job ends
// with exactly one final result at its client.
func TestClusterFailoverLosesNothing(t *testing.T) {
	t.Parallel()
	dir := initAuth(t)
	nodes := startCluster(t, dir)
	all := urls(nodes)
	const ackWait = 3 * time.Second
	w1 := startWorker(t, all, "w1", filepath.Join(dir, "worker.nk"), ackWait)
	startWorker(t, all, "w2", filepath.Join(dir, "worker.nk"), ackWait)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Second)
	defer cancel()

	nc := login(t, all, dir, "room-1", nil)
	c, err := client.New(nc, client.WithClientID("room-1"), client.WithResultPoll(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitServedBy(t, c, 2)
	js, _ := jetstream.New(login(t, all, dir, "admin", nil)) // the test's own look at the streams
	if info := streamInfo(t, ctx, js, "KILN_JOBS"); info.Config.Replicas != 3 {
		t.Fatalf("KILN_JOBS has %d replicas on a 3-node cluster, want 3", info.Config.Replicas)
	}
	// Against an external cluster, topology finds the size by itself.
	if err := topology.Ensure(ctx, js, topology.Config{Prefix: "art"}); err != nil {
		t.Fatal(err)
	}
	if info := streamInfo(t, ctx, js, "ART_JOBS"); info.Config.Replicas != 3 {
		t.Fatalf("ART_JOBS provisioned with %d replicas on a 3-node cluster, want 3", info.Config.Replicas)
	}
	// Every result event the client gets, by job: "exactly one final result".
	var mu sync.Mutex
	finals := map[string]map[string]bool{}
	spy, err := nc.Subscribe("kiln.reply.room-1.>", func(m *nats.Msg) {
		var ev schema.Event
		if schema.Msgpack.Unmarshal(m.Data, &ev) == nil && ev.Type == schema.EventResult {
			mu.Lock()
			if finals[ev.JobID] == nil {
				finals[ev.JobID] = map[string]bool{}
			}
			finals[ev.JobID][fmt.Sprintf("%s#%d %s %q", ev.Result.Worker, ev.Result.Attempt, ev.Result.Status, ev.Result.Text)] = true
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer spy.Unsubscribe()

	const senders, perSender = 4, 15
	type outcome struct {
		id, want string
		res      *schema.Result
		err      error
	}
	out := make(chan outcome, senders*perSender)
	var wg sync.WaitGroup
	started := make(chan string, senders*perSender)
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perSender {
				tag := fmt.Sprintf("s%dj%d", s, i)
				p, err := c.Submit(ctx, echoJob(tag, 4, 60))
				if err != nil {
					out <- outcome{err: fmt.Errorf("submit %s: %w", tag, err)}
					continue // not accepted: nothing owed
				}
				res, err := p.Wait(ctx, func(ev schema.Event) error {
					if ev.Type == schema.EventStarted {
						select {
						case started <- ev.Worker:
						default:
						}
					}
					return nil
				})
				p.Close()
				out <- outcome{id: p.ID, want: fmt.Sprintf("echo: %s-0 %s-1 %s-2 %s-3", tag, tag, tag, tag), res: res, err: err}
			}
		}()
	}
	// Mid-run: kill -9 the stream leader, then worker w1 while it runs a job.
	for range 10 {
		select {
		case <-started:
		case <-ctx.Done():
			t.Fatal("fewer than 10 jobs started")
		}
	}
	leader := streamInfo(t, ctx, js, "KILN_JOBS").Cluster.Leader
	var killed *node
	for _, n := range nodes {
		if n.name == leader {
			killed = n
		}
	}
	if killed == nil {
		t.Fatalf("stream leader %q is none of the nodes", leader)
	}
	killed.p.kill()
	t.Logf("killed the KILN_JOBS leader %s", leader)
	for w := ""; w != "w1"; {
		select {
		case w = <-started:
		case <-ctx.Done():
			t.Fatal("worker w1 started no job after the leader was killed")
		}
	}
	w1.kill()
	t.Log("killed worker w1 mid-job")
	wg.Wait()
	close(out)

	accepted := 0
	for o := range out {
		if o.id == "" {
			t.Logf("not accepted: %v", o.err) // a refused submit is allowed, a lost job is not
			continue
		}
		accepted++
		if o.err != nil || o.res == nil || o.res.Status != schema.StatusOK || o.res.Text != o.want {
			t.Errorf("job %s: %+v, %v; want %q", o.id, o.res, o.err, o.want)
			continue
		}
		stored, err := c.Result(ctx, o.id)
		if err != nil || stored.Text != o.want {
			t.Errorf("job %s: stored result %+v, %v", o.id, stored, err)
		}
	}
	if accepted < senders*perSender/2 {
		t.Fatalf("only %d of %d jobs accepted", accepted, senders*perSender)
	}
	time.Sleep(200 * time.Millisecond) // late duplicate events, if any, arrive now
	mu.Lock()
	defer mu.Unlock()
	redelivered := 0
	for id, rs := range finals {
		if len(rs) != 1 {
			t.Errorf("job %s ended with %d different results: %v", id, len(rs), rs)
		}
		for r := range rs {
			if !strings.Contains(r, "#1 ") {
				redelivered++
			}
		}
	}
	t.Logf("%d jobs accepted and finished, %d of them on a later delivery", accepted, redelivered)
}

func streamInfo(t *testing.T, ctx context.Context, js jetstream.JetStream, name string) *jetstream.StreamInfo {
	t.Helper()
	var info *jetstream.StreamInfo
	wait.For(t, 10*time.Second, 100*time.Millisecond, func() error {
		st, err := js.Stream(ctx, name)
		if err != nil {
			return fmt.Errorf("stream %s: %w", name, err)
		}
		if info, err = st.Info(ctx); err != nil {
			return fmt.Errorf("stream %s: %w", name, err)
		}
		if info.Cluster == nil || info.Cluster.Leader == "" {
			return fmt.Errorf("stream %s has no leader", name)
		}
		return nil
	})
	return info
}

// waitServedBy waits until n workers serving echo are registered.
func waitServedBy(t testing.TB, c *client.Client, n int) {
	t.Helper()
	wait.For(t, 30*time.Second, 50*time.Millisecond, func() error {
		ws, err := c.Workers(t.Context())
		if err == nil && len(ws) < n {
			err = fmt.Errorf("%d workers registered, want %d", len(ws), n)
		}
		return err
	})
}
