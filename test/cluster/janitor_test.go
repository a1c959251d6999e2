package cluster

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/schema"
)

// TestClusterAnswersJobsNobodyServes publishes by hand, as a controller
// with plain nats.go, to a model nobody serves and to a lane that does not
// exist on a 3-node cluster, whose three brokers each run a janitor: each
// job gets exactly one coded error result.
func TestClusterAnswersJobsNobodyServes(t *testing.T) {
	t.Parallel()
	dir := initAuth(t)
	nodes := startCluster(t, dir, "--unserved-grace", "2s")
	nc := login(t, urls(nodes), dir, "room-1", nil)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ subject, code string }{
		{"kiln.jobs.chat.nobody.normal.room-1", "no_worker"},
		{"kiln.jobs.chat.nobody.urgent.room-1", "bad_subject"},
	} {
		id := schema.NewID()
		reply := "kiln.reply.room-1." + id
		sub, err := nc.SubscribeSync(reply)
		if err != nil {
			t.Fatal(err)
		}
		msg := nats.NewMsg(tc.subject)
		msg.Data = []byte(`{"id": "` + id + `", "model": "nobody", "messages": [{"role": "user", "content": "hello"}]}`)
		msg.Header.Set("Nats-Msg-Id", "room-1."+id)
		msg.Header.Set("Kiln-Reply-To", reply)
		msg.Header.Set("Content-Type", "application/json")
		var published bool
		for range 50 { // the stream may still be electing its leader
			if _, err := js.PublishMsg(t.Context(), msg); err == nil {
				published = true
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if !published {
			t.Fatalf("publish to %s failed", tc.subject)
		}
		m, err := sub.NextMsg(60 * time.Second)
		if err != nil {
			t.Fatalf("job on %s: no result: %v", tc.subject, err)
		}
		var ev struct {
			Type   string `json:"type"`
			Result struct {
				JobID  string `json:"job_id"`
				Status string `json:"status"`
				Error  struct{ Code, Message string }
			} `json:"result"`
		}
		if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Type != "result" || ev.Result.JobID != id ||
			ev.Result.Status != "error" || ev.Result.Error.Code != tc.code {
			t.Fatalf("job on %s: %v %s", tc.subject, err, m.Data)
		}
		if extra, err := sub.NextMsg(2 * time.Second); err == nil {
			t.Fatalf("job on %s: a second event: %s", tc.subject, extra.Data)
		}
		_ = sub.Unsubscribe()
	}
}
