package broker_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker"
	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/broker/topology"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestTopologyIsProvisionedAndIdempotent(t *testing.T) {
	t.Parallel()
	b := brokertest.Run(t, &brokertest.Options{Topology: topology.Config{MaxQueuedJobs: 77}})
	js, _ := jetstream.New(brokertest.Connect(t, b))
	cfg := topology.Config{MaxQueuedJobs: 77}
	// A second provisioning (another worker starting, an external broker) changes nothing.
	if err := topology.Provision(ctx(t), js, cfg); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx(t), "KILN_JOBS")
	if err != nil {
		t.Fatal(err)
	}
	info, _ := st.Info(ctx(t))
	c := info.Config
	if c.Retention != jetstream.WorkQueuePolicy || c.Discard != jetstream.DiscardNew || c.MaxMsgs != 77 ||
		c.Duplicates != 2*time.Minute || c.MaxAge != 10*time.Minute+topology.JobMaxAgeMargin || c.MaxMsgSize != 8<<20 ||
		c.Storage != jetstream.FileStorage || !slices.Equal(c.Subjects, []string{"kiln.jobs.*.*.*", "kiln.jobs.*.*.*.*"}) ||
		topology.JobMaxAgeOf(c) != 10*time.Minute {
		t.Fatalf("KILN_JOBS config %+v", c)
	}
	if c.RePublish == nil || !c.RePublish.HeadersOnly || c.RePublish.Source != "kiln.jobs.>" ||
		c.RePublish.Destination != "kiln.wake.>" {
		t.Fatalf("KILN_JOBS republish %+v", c.RePublish)
	}
	res, _ := js.Stream(ctx(t), "KILN_RESULTS")
	ri, _ := res.Info(ctx(t))
	if ri.Config.MaxMsgsPerSubject != 1 || ri.Config.MaxAge != time.Hour {
		t.Fatalf("KILN_RESULTS config %+v", ri.Config)
	}
	for _, bucket := range []string{"kiln_workers", "kiln_cancel"} {
		if _, err := js.KeyValue(ctx(t), bucket); err != nil {
			t.Fatalf("bucket %s: %v", bucket, err)
		}
	}
	cons, err := topology.EnsureConsumer(ctx(t), js, cfg, "chat", "qwen3-4b", "high")
	if err != nil {
		t.Fatal(err)
	}
	ci, _ := cons.Info(ctx(t))
	if !slices.Equal(ci.Config.FilterSubjects, []string{"kiln.jobs.chat.qwen3-4b.high", "kiln.jobs.chat.qwen3-4b.high.*"}) ||
		ci.Config.MaxDeliver != 5 || ci.Config.AckWait != 30*time.Second {
		t.Fatalf("consumer %+v", ci.Config)
	}
	if _, err := topology.EnsureConsumer(ctx(t), js, cfg, "chat", "qwen3-4b", "high"); err != nil {
		t.Fatalf("second EnsureConsumer: %v", err)
	}
}

// TestClientJobSubjects checks the two shapes of job subject on a real
// broker: KILN_JOBS stores both and announces both on the wake subjects, a
// consumer of one (kind, model, lane) takes both and the consumers of the
// other lanes and models do not overlap it (a work-queue stream refuses
// overlapping filters), and a consumer an older kiln made with the
// anonymous filter only is widened once, keeping its other settings.
func TestClientJobSubjects(t *testing.T) {
	t.Parallel()
	b := brokertest.Run(t, nil)
	nc := brokertest.Connect(t, b)
	js, _ := jetstream.New(nc)
	cfg := topology.Config{}.WithDefaults()
	s := cfg.Subjects()

	// An older kiln's consumer: one filter subject, an operator's MaxDeliver.
	old := cfg.ConsumerConfig("chat", "m", "normal")
	old.FilterSubjects, old.FilterSubject, old.MaxDeliver = nil, s.Job("chat", "m", "normal"), 2
	if _, err := js.CreateConsumer(ctx(t), cfg.JobsStream(), old); err != nil {
		t.Fatal(err)
	}
	cons, err := topology.EnsureConsumer(ctx(t), js, cfg, "chat", "m", "normal")
	if err != nil {
		t.Fatalf("widening an older consumer: %v", err)
	}
	got := cons.CachedInfo().Config
	if !slices.Equal(got.FilterSubjects, s.JobFilters("chat", "m", "normal")) || got.FilterSubject != "" || got.MaxDeliver != 2 {
		t.Fatalf("the older consumer after EnsureConsumer: filters %q %q, MaxDeliver %d", got.FilterSubject, got.FilterSubjects, got.MaxDeliver)
	}
	for _, other := range [][3]string{{"chat", "m", "high"}, {"chat", "m2", "normal"}, {"image", "m", "normal"}} {
		if _, err := topology.EnsureConsumer(ctx(t), js, cfg, other[0], other[1], other[2]); err != nil {
			t.Fatalf("consumer %v beside it: %v", other, err)
		}
	}

	wakes, err := nc.SubscribeSync(s.Wakes())
	if err != nil {
		t.Fatal(err)
	}
	for i, subject := range []string{s.Job("chat", "m", "normal"), s.ClientJob("chat", "m", "normal", "room-1")} {
		if _, err := js.Publish(ctx(t), subject, []byte("job"), jetstream.WithMsgID(fmt.Sprint(i))); err != nil {
			t.Fatalf("publish on %s: %v", subject, err)
		}
		wake, err := wakes.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("no wake for %s: %v", subject, err)
		}
		if want := strings.Replace(subject, ".jobs.", ".wake.", 1); wake.Subject != want || len(wake.Data) != 0 {
			t.Errorf("wake %s (%d bytes), want %s without a body", wake.Subject, len(wake.Data), want)
		}
	}
	batch, err := cons.Fetch(2, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var fetched []string
	for m := range batch.Messages() {
		fetched = append(fetched, m.Subject())
		_ = m.Ack()
	}
	if want := []string{s.Job("chat", "m", "normal"), s.ClientJob("chat", "m", "normal", "room-1")}; !slices.Equal(fetched, want) {
		t.Fatalf("the consumer took %q, want %q", fetched, want)
	}
	// Nothing else is a job.
	for _, subject := range []string{"kiln.jobs.chat.m", "kiln.jobs.chat.m.normal.room-1.extra"} {
		if _, err := js.Publish(ctx(t), subject, []byte("job")); err == nil {
			t.Errorf("KILN_JOBS stored a job on %s", subject)
		}
	}
}

func TestRestartKeepsQueuedJobs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b, err := broker.New(broker.Config{Listen: "127.0.0.1:0", StoreDir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if !b.Server().JetStreamConfig().SyncAlways {
		t.Fatal("the embedded broker must sync before it acknowledges")
	}
	nc, err := b.Connect()
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	for _, id := range []string{"a", "b", "c"} {
		if _, err := js.Publish(ctx(t), "kiln.jobs.chat.m.normal", []byte(id), jetstream.WithMsgID(id)); err != nil {
			t.Fatal(err)
		}
	}
	nc.Close()
	if err := b.Shutdown(ctx(t)); err != nil {
		t.Fatal(err)
	}
	again := brokertest.Run(t, &brokertest.Options{StoreDir: dir})
	js2, _ := jetstream.New(brokertest.Connect(t, again))
	st, err := js2.Stream(ctx(t), "KILN_JOBS")
	if err != nil {
		t.Fatal(err)
	}
	info, _ := st.Info(ctx(t))
	if info.State.Msgs != 3 {
		t.Fatalf("%d jobs after restart, want 3", info.State.Msgs)
	}
	// The duplicate window survives too: a re-published id is not queued twice.
	ack, err := js2.Publish(ctx(t), "kiln.jobs.chat.m.normal", []byte("a"), jetstream.WithMsgID("a"))
	if err != nil || !ack.Duplicate {
		t.Fatalf("republish after restart: %+v, %v", ack, err)
	}
}

func TestConfigFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	conf := filepath.Join(dir, "nats.conf")
	store := filepath.Join(dir, "store")
	if err := os.WriteFile(conf, []byte("listen: 127.0.0.1:-1\nserver_name: shelf-pi-1\njetstream { store_dir: \""+store+"\" }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Config{ConfigFile: conf, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx(t)); err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown(context.Background())
	if b.Server().Name() != "shelf-pi-1" || b.ClientURL() == "" {
		t.Fatalf("server name %q url %q", b.Server().Name(), b.ClientURL())
	}
	if _, err := os.Stat(filepath.Join(store, "jetstream")); err != nil {
		t.Fatalf("store folder from the config file: %v", err)
	}
	if _, err := broker.New(broker.Config{ConfigFile: filepath.Join(dir, "missing.conf")}); err != nil {
		t.Fatal(err) // New does not read the file
	}
	bad, _ := broker.New(broker.Config{ConfigFile: filepath.Join(dir, "missing.conf")})
	if err := bad.Start(ctx(t)); err == nil {
		t.Fatal("a missing config file was accepted")
	}
}

func TestStoreDirIsRequired(t *testing.T) {
	t.Parallel()
	if _, err := broker.New(broker.Config{}); err == nil {
		t.Fatal("a broker without a store folder was accepted")
	}
}

func TestEnsureCreatesWhatIsMissingAndChangesNothing(t *testing.T) {
	t.Parallel()
	b := brokertest.Run(t, &brokertest.Options{Topology: topology.Config{MaxQueuedJobs: 77}})
	js, _ := jetstream.New(brokertest.Connect(t, b))
	// A worker's view (default limits) leaves the broker's alone.
	if err := topology.Ensure(ctx(t), js, topology.Config{}); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx(t), "KILN_JOBS")
	if err != nil {
		t.Fatal(err)
	}
	if c := st.CachedInfo().Config; c.MaxMsgs != 77 || c.Replicas != 1 {
		t.Fatalf("KILN_JOBS after Ensure: max msgs %d, replicas %d; want 77, 1", c.MaxMsgs, c.Replicas)
	}
	// A topology nobody provisioned is created, with the replicas a single
	// server allows (found by probing), and the probe is gone.
	art := topology.Config{Prefix: "art"}
	if err := topology.Ensure(ctx(t), js, art); err != nil {
		t.Fatal(err)
	}
	names := map[string]int{}
	for info := range js.ListStreams(ctx(t)).Info() {
		names[info.Config.Name] = info.Config.Replicas
	}
	if names["ART_JOBS"] != 1 || names["ART_RESULTS"] != 1 || names["KV_art_workers"] != 1 {
		t.Fatalf("streams after Ensure of prefix art: %v", names)
	}
	for n := range names {
		if strings.Contains(n, "PROBE") {
			t.Fatalf("the replicas probe %s was left behind", n)
		}
	}
}
