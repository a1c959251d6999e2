package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/wait"
)

// kiln up's gateway serves the dashboard at / and /metrics beside the API,
// and --websocket opens a NATS WebSocket listener a client can use.
func TestUpServesDashboardMetricsAndWebSocket(t *testing.T) {
	gw, ws := freeAddr(t), freeAddr(t)
	startUp(t, "--gateway", gw, "--websocket", ws)
	get := func(path string) (string, string) {
		t.Helper()
		var body, ctype string
		wait.For(t, 30*time.Second, 50*time.Millisecond, func() error {
			resp, err := http.Get("http://" + gw + path)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK || err != nil {
				return fmt.Errorf("GET %s: %s %v", path, resp.Status, err)
			}
			body, ctype = string(b), resp.Header.Get("Content-Type")
			return nil
		})
		return body, ctype
	}
	if page, ctype := get("/"); !strings.HasPrefix(ctype, "text/html") || !strings.Contains(page, "/dashboard/assets/app.js") {
		t.Errorf("GET /: %s %q", ctype, page)
	}
	if js, _ := get("/dashboard/assets/app.js"); !strings.Contains(js, "EventSource") {
		t.Error("GET /dashboard/assets/app.js: not the dashboard's script")
	}
	wait.For(t, 30*time.Second, 100*time.Millisecond, func() error {
		text, _ := get("/metrics")
		p := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := p.TextToMetricFamilies(strings.NewReader(text))
		if err != nil {
			t.Fatalf("/metrics does not parse: %v", err)
		}
		if f := fams["kiln_workers"]; f == nil || f.GetMetric()[0].GetGauge().GetValue() != 1 {
			return fmt.Errorf("kiln_workers is not 1 yet")
		}
		return nil
	})

	nc, err := nats.Connect("ws://" + ws)
	if err != nil {
		t.Fatalf("connect over websocket: %v", err)
	}
	defer nc.Close()
	c, err := client.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ws, err := c.Workers(t.Context()); err != nil || len(ws) != 1 {
		t.Errorf("the registry over websocket: %v %v", ws, err)
	}
}

// A kiln gateway logged in as a gateway identity of init-auth reads the
// fleet like an observer and follows the jobs of its own and its API keys'
// clients only: a job of its key's client is counted in /metrics and
// listed on the dashboard, another controller's is not, and nothing it
// reads is refused.
func TestGatewayIdentityFollowsItsClients(t *testing.T) {
	dir := t.TempDir()
	if code, _, errOut := kiln(t, t.Context(), "broker", "init-auth", "--controllers", "room-1", "--gateways", "gw",
		"--gateway-clients", "kiosk", dir); code != 0 {
		t.Fatalf("init-auth: %s", errOut)
	}
	conf := filepath.Join(dir, "broker.conf")
	if err := os.WriteFile(conf, []byte("include auth.conf\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	u := startUp(t, "--config", conf, "--unserved-grace", "1s")
	addr := freeAddr(t)
	gw := background(t, "", "gateway", "--nats", u.url, "--nkey", filepath.Join(dir, "gw.nk"), "--client-id", "gw",
		"--gateway", addr, "--gateway-keys", "kiosk:sk-kiosk")
	scrape := func() map[string]*dto.MetricFamily {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return nil
		}
		defer resp.Body.Close()
		p := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := p.TextToMetricFamilies(resp.Body)
		if err != nil {
			t.Fatalf("/metrics does not parse: %v", err)
		}
		return fams
	}
	wait.For(t, 30*time.Second, 100*time.Millisecond, func() error {
		if f := scrape()["kiln_workers"]; f == nil || f.GetMetric()[0].GetGauge().GetValue() != 1 {
			return fmt.Errorf("kiln gateway's /metrics shows no worker yet: %s", gw.stderr.String())
		}
		return nil
	})

	// The admin queues a job for a model nobody serves as room-1, then as
	// kiosk; the janitor answers each no_worker after the grace.
	seed, err := nats.NkeyOptionFromSeed(filepath.Join(dir, "admin.nk"))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(u.url, seed)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx := t.Context()
	admin, err := client.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	submit := func(as string) string {
		t.Helper()
		c, err := client.New(nc, client.WithClientID(as), client.WithoutWorkerCheck())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		p, err := c.Submit(ctx, &schema.ChatJob{JobHeader: schema.JobHeader{Model: "nobody"}, Messages: []schema.Message{{Role: "user", Content: "hi"}}})
		if err != nil {
			t.Fatalf("submit as %s: %v", as, err)
		}
		p.Close()
		wait.For(t, 30*time.Second, 100*time.Millisecond, func() error {
			_, err := admin.AnyResult(ctx, p.ID)
			return err
		})
		return p.ID
	}
	other, mine := submit("room-1"), submit("kiosk")
	wait.For(t, 30*time.Second, 100*time.Millisecond, func() error {
		fams := scrape()
		for _, name := range []string{"kiln_jobs_total", "kiln_job_errors_total"} {
			f := fams[name]
			if f == nil || len(f.GetMetric()) != 1 || f.GetMetric()[0].GetCounter().GetValue() != 1 {
				return fmt.Errorf("%s: %v, want kiosk's job alone", name, f.GetMetric())
			}
		}
		return nil
	})
	resp, err := http.Get("http://" + addr + "/dashboard/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	feed := bufio.NewReader(resp.Body)
	first, err := feed.ReadString('\n')
	for err == nil && !strings.HasPrefix(first, "data: ") {
		first, err = feed.ReadString('\n')
	}
	var view struct {
		Jobs []struct{ ID, Client, Model, State string }
	}
	if err := json.Unmarshal([]byte(strings.TrimPrefix(first, "data: ")), &view); err != nil {
		t.Fatalf("dashboard feed %q: %v", first, err)
	}
	if len(view.Jobs) != 1 || view.Jobs[0].ID != mine || view.Jobs[0].Client != "kiosk" || view.Jobs[0].Model != "nobody" || view.Jobs[0].State != schema.StatusError {
		t.Errorf("dashboard jobs %+v: want kiosk's %s alone, not room-1's %s", view.Jobs, mine, other)
	}
	if log := gw.stderr.String(); strings.Contains(log, "cannot read") || strings.Contains(strings.ToLower(log), "permissions violation") {
		t.Errorf("the gateway was refused part of the fleet: %s", log)
	}
}
