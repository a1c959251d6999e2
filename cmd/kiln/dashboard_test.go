package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kiln-project/kiln/client"
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
