package dashboard_test

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/gateway/dashboard"
	"github.com/kiln-project/kiln/gateway/watch"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/echo"
	"github.com/kiln-project/kiln/test/wait"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/workertest"
)

// serve starts a dashboard on a real queue (no workers) acting as client
// "dash", with configure applied to its config.
func serve(t *testing.T, configure func(*dashboard.Config)) string {
	t.Helper()
	q := workertest.StartQueue(t, workertest.QueueOptions{})
	w, err := watch.Start(t.Context(), watch.Config{Conn: brokertest.Connect(t, q.Broker), Client: q.Client(t),
		Topology: q.Topology, PollInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	cfg := dashboard.Config{Watcher: w, Client: q.Client(t, client.WithClientID("dash")), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if configure != nil {
		configure(&cfg)
	}
	d, err := dashboard.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(d)
	t.Cleanup(srv.Close)
	return srv.URL
}

type answer struct {
	status int
	param  string
	msg    string
}

func post(t *testing.T, url, ctype, origin, body string) answer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", ctype)
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e struct {
		Error struct{ Param, Message string }
	}
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return answer{resp.StatusCode, e.Error.Param, e.Error.Message}
}

// The dashboard's cancel refuses what a page of its own would not send:
// another content type, another origin, bad or unknown fields (naming the
// field), another client's job; a read-only dashboard refuses every cancel.
func TestDashboardRefuses(t *testing.T) {
	url := serve(t, nil)
	resp, err := http.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("page CSP %q: it must forbid other origins", csp)
	}
	const j = "application/json"
	for _, c := range []struct {
		what, path, ctype, origin, body string
		want                            answer
	}{
		{"a form post", dashboard.PathCancel, "application/x-www-form-urlencoded", "", "id=x", answer{status: 415}},
		{"another site's page", dashboard.PathCancel, j, "http://evil.example", `{"id":"x","client":"dash"}`, answer{status: 403}},
		{"an unknown field", dashboard.PathCancel, j, "", `{"id":"x","clnt":"dash"}`, answer{status: 400}},
		{"a bad id", dashboard.PathCancel, j, "", `{"id":"a.b","client":"dash"}`, answer{status: 400, param: "id"}},
		{"another client's job", dashboard.PathCancel, j, "", `{"id":"x","client":"room-2"}`, answer{status: 403, param: "client"}},
		{"an anonymous job", dashboard.PathCancel, j, "", `{"id":"x"}`, answer{status: 403, param: "client"}},
	} {
		got := post(t, url+c.path, c.ctype, c.origin, c.body)
		if got.status != c.want.status || got.param != c.want.param || got.msg == "" {
			t.Errorf("%s: %+v, want status %d param %q and a message", c.what, got, c.want.status, c.want.param)
		}
	}
	if got := post(t, url+dashboard.PathCancel, j, url, `{"id":"x","client":"dash"}`); got.status != http.StatusOK {
		t.Errorf("cancel of its own job from its own page: %+v", got)
	}

	ro := serve(t, func(c *dashboard.Config) { c.ReadOnly = true; c.CancelAny = true })
	if got := post(t, ro+dashboard.PathCancel, j, "", `{"id":"x","client":"dash"}`); got.status != http.StatusForbidden {
		t.Errorf("read-only cancel: %+v, want 403", got)
	}
}

// A dashboard whose watch follows given clients (a gateway identity's own
// and its API keys' clients) lists their jobs, with their text, and no
// other client's.
func TestDashboardFollowsItsClients(t *testing.T) {
	q := workertest.StartQueue(t, workertest.QueueOptions{Chat: map[string]worker.Handler[schema.ChatJob]{"echo": echo.Chat}})
	q.Worker(t, "w1", nil)
	w, err := watch.Start(t.Context(), watch.Config{Conn: brokertest.Connect(t, q.Broker), Client: q.Client(t),
		Topology: q.Topology, Clients: []string{"gw", "kiosk"}, PollInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	ctx := workertest.Context(t)
	ids := map[string]string{}
	for _, c := range []string{"gw", "kiosk", "room-2"} {
		res, err := q.Client(t, client.WithClientID(c)).Chat(ctx, &schema.ChatJob{JobHeader: schema.JobHeader{Model: "echo"},
			Messages: []schema.Message{{Role: "user", Content: "hello " + c}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ids[c] = res.JobID
	}
	wait.For(t, 10*time.Second, 20*time.Millisecond, func() error {
		seen := map[string]watch.Job{}
		for _, j := range w.Snapshot().Jobs {
			seen[j.Client] = j
		}
		for _, c := range []string{"gw", "kiosk"} {
			if j := seen[c]; j.ID != ids[c] || j.State != schema.StatusOK || j.Model != "echo" || !strings.Contains(j.Text, c) {
				return fmt.Errorf("%s's job not listed done: %+v", c, j)
			}
		}
		if j, ok := seen["room-2"]; ok {
			t.Fatalf("room-2's job listed: %+v", j)
		}
		return nil
	})
}
