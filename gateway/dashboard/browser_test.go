package dashboard_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/gateway"
	"github.com/kiln-project/kiln/gateway/dashboard"
	"github.com/kiln-project/kiln/gateway/internal/simfleet"
	"github.com/kiln-project/kiln/gateway/watch"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker/workertest"
)

// chromiumPath is Debian's chromium.
const chromiumPath = "/usr/bin/chromium"

// browser starts a headless Chromium for t (skipping t when there is none,
// unless KILN_REQUIRE_CHROMIUM=1) and returns a context of its first tab,
// and every URL the tab has requested so far.
func browser(t *testing.T) (context.Context, func() []string) {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("KILN_REQUIRE_CHROMIUM") == "1" {
			t.Fatalf("KILN_REQUIRE_CHROMIUM=1 but %s: %v (apt-get install chromium)", chromiumPath, err)
		}
		t.Skipf("no %s: apt-get install chromium", chromiumPath)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath), chromedp.Headless, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()), chromedp.NoSandbox, chromedp.DisableGPU,
		// Without these Chromium calls Google's services, which hang here.
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.WindowSize(412, 915), // a phone
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(t.Context(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	var mu sync.Mutex
	var urls []string
	err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok {
			mu.Lock()
			urls = append(urls, e.Request.URL)
			mu.Unlock()
		}
	})
	if err == nil {
		// Starts the browser; chromedp enables the network domain itself.
		_, err = chromedp.Run(ctx, chromedp.Evaluate[string]("navigator.userAgent"))
	}
	if err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), urls...)
	}
}

// waitJS waits until the JavaScript expression cond is true on the page.
func waitJS(t *testing.T, ctx context.Context, what, cond string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](cond, chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
		html, _ := chromedp.Run(context.WithoutCancel(ctx), chromedp.Evaluate[string]("document.querySelector('main').outerHTML"))
		t.Fatalf("the page never showed %s (%s): %v\n%s", what, cond, err, html)
	}
}

func jsString(s string) string { b, _ := json.Marshal(s); return string(b) }

// eval evaluates a JavaScript expression on the page.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	return v
}

// do runs browser actions, failing t on an error.
func do(t *testing.T, ctx context.Context, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatal(err)
	}
}

// The dashboard in a real headless Chromium, on a phone-sized window, served
// beside the gateway's API: it shows the simulated card and its
// temperature live, the playground streams a chat answer and shows an
// image with its step bar (through the gateway's OpenAI endpoints), a cancel
// button cancels a queued job of the dashboard's identity (and another
// client's job has none), and no request leaves the machine.
func TestDashboardInChromium(t *testing.T) {
	ctx, requests := browser(t)
	f := simfleet.Start(t)
	const id = "dash"
	w, err := watch.Start(t.Context(), watch.Config{Conn: brokertest.Connect(t, f.Queue.Broker), Client: f.Queue.Client(t),
		Topology: f.Queue.Topology, PollInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := dashboard.New(dashboard.Config{Watcher: w, Client: f.Queue.Client(t, client.WithClientID(id)), Title: "kiln test shelf",
		Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	// The page beside the gateway's API, as kiln up serves it: the
	// playground uses the gateway's OpenAI endpoints, as the same client.
	gw, err := gateway.New(gateway.Config{Conn: brokertest.Connect(t, f.Queue.Broker), Topology: f.Queue.Topology, ClientID: id,
		Routes: map[string]http.Handler{"/": d}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw.Handler())
	t.Cleanup(srv.Close)

	// The card and its temperature, live.
	f.SetTempC(t, 61)
	card := `document.querySelector('[data-worker="` + simfleet.WorkerName + `"]')`
	do(t, ctx, chromedp.Navigate(srv.URL))
	waitJS(t, ctx, "the card at 61 °C, ready", card+`?.querySelector('.temp-card').textContent.startsWith('61.0 °C') && `+
		card+`.querySelector('.state').textContent === 'ready'`)
	f.SetTempC(t, 64)
	waitJS(t, ctx, "the card at 64 °C with its history", card+`.querySelector('.temp-card').textContent.startsWith('64.0 °C') && `+
		card+`.querySelector('.spark') !== null`)
	waitJS(t, ctx, "both models in the playground", `[...document.querySelectorAll('#play-chat-model option')].some(o => o.value === '`+
		simfleet.ChatModel+`') && [...document.querySelectorAll('#play-image-model option')].some(o => o.value === '`+simfleet.ImageModel+`')`)

	// The playground streams a chat answer: tokens one by one, then the
	// result's text, which is the one the queue stored.
	do(t, ctx, chromedp.SendKeys(chromedp.CSS("#play-chat-prompt"), "hello kiln"), chromedp.Click(chromedp.CSS("#play-chat-send")))
	waitJS(t, ctx, "a chat answer", `document.querySelector('#play-chat').dataset.status === 'ok'`)
	answer := eval[string](t, ctx, `document.querySelector('#play-chat-out').textContent`)
	chatJob := eval[string](t, ctx, `document.querySelector('#play-chat').dataset.job`)
	tokens := eval[string](t, ctx, `document.querySelector('#play-chat-out').dataset.tokens`)
	owner := f.Queue.Client(t, client.WithClientID(id))
	stored, err := owner.Result(workertest.Context(t), chatJob)
	if err != nil {
		t.Fatalf("stored result of the playground's job %q: %v", chatJob, err)
	}
	if stored.Text == "" || answer != stored.Text {
		t.Errorf("playground shows %q, the stored result is %q", answer, stored.Text)
	}
	if n := stored.Usage.CompletionTokens; tokens == "" || tokens == "0" || (n > 1 && tokens == "1") {
		t.Errorf("the answer came in %s token events for %d tokens: not streamed", tokens, n)
	}

	// An image, with its step bar filled, shown decoded; its thumbnail in
	// the recent jobs.
	do(t, ctx, chromedp.SendKeys(chromedp.CSS("#play-image-prompt"), "a kiln at night"), chromedp.Click(chromedp.CSS("#play-image-send")))
	waitJS(t, ctx, "a generated image", `document.querySelector('#play-image').dataset.status === 'ok' && document.querySelector('#play-image-out').naturalWidth > 0`)
	type stepBar struct {
		Seen  string  `json:"seen"`
		Value float64 `json:"value"`
		Max   float64 `json:"max"`
	}
	steps := eval[stepBar](t, ctx, `(b => ({seen: b.dataset.seen, value: b.value, max: b.max}))(document.querySelector('#play-image-steps'))`)
	if steps.Seen == "0" || steps.Max < 1 || steps.Value != steps.Max {
		t.Errorf("step bar %+v: want a progress event per step and the bar full", steps)
	}
	waitJS(t, ctx, "the image's thumbnail in the recent jobs", `[...document.querySelectorAll('.job img')].some(i => i.complete && i.naturalWidth > 0)`)

	// Cancel: the card is hot, so jobs wait. The dashboard's own job has a
	// cancel button; another client's has none, and the endpoint refuses it.
	f.SetTempC(t, 85)
	waitJS(t, ctx, "the card paused", card+`.querySelector('.state').textContent === 'paused'`)
	jctx := workertest.Context(t)
	chat := func(text string) *schema.ChatJob {
		return &schema.ChatJob{JobHeader: schema.JobHeader{Model: simfleet.ChatModel}, MaxTokens: 4, Messages: []schema.Message{{Role: "user", Content: text}}}
	}
	mine, err := owner.Submit(jctx, chat("cancel me"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := f.Queue.Client(t, client.WithClientID("other")).Submit(jctx, chat("leave me"))
	if err != nil {
		t.Fatal(err)
	}
	row := func(id string) string { return `document.querySelector('[data-job=` + jsString(id) + `]')` }
	waitJS(t, ctx, "both jobs queued", row(mine.ID)+`?.dataset.state === 'queued' && `+row(other.ID)+`?.dataset.state === 'queued'`)
	if eval[int](t, ctx, row(other.ID)+`.querySelectorAll('button.cancel').length`) != 0 {
		t.Error("another client's job has a cancel button")
	}
	body, _ := json.Marshal(map[string]string{"id": other.ID, "client": "other"})
	req, _ := http.NewRequest(http.MethodPost, srv.URL+dashboard.PathCancel, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("cancel of another client's job: %v %v, want 403", resp, err)
	} else {
		resp.Body.Close()
	}
	do(t, ctx, chromedp.Click(chromedp.CSS(`[data-job="`+mine.ID+`"] button.cancel`)))
	waitJS(t, ctx, "the cancel sent", row(mine.ID)+`.querySelector('button.cancel')?.textContent === 'Cancel sent'`)
	f.SetTempC(t, 40)
	res, err := mine.Wait(jctx, nil)
	if res == nil || res.Status != schema.StatusCancelled {
		t.Fatalf("the job cancelled from the page ended %+v (%v), want cancelled", res, err)
	}
	if res, err := other.Wait(jctx, nil); err != nil || res.Status != schema.StatusOK {
		t.Errorf("the other client's job: %+v %v", res, err)
	}
	waitJS(t, ctx, "the job cancelled", row(mine.ID)+`.dataset.state === 'cancelled' && `+row(other.ID)+`.dataset.state === 'ok'`)

	// A screenshot of the page on a phone, to look at: KILN_DASHBOARD_SCREENSHOT=/tmp/dash.png.
	if out := os.Getenv("KILN_DASHBOARD_SCREENSHOT"); out != "" {
		png, _ := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		_ = os.WriteFile(out, png, 0o644)
	}
	// Nothing but the test server was asked for anything.
	host := strings.TrimPrefix(srv.URL, "http://")
	var n int
	for _, raw := range requests() {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "data" && u.Scheme != "blob" && u.Host != host) {
			t.Errorf("the page requested %s: not the gateway (%s)", raw, host)
		}
		n++
	}
	if n < 4 {
		t.Errorf("only %d requests seen: is the network listener working?", n)
	}
	t.Logf("%d requests, all to %s", n, host)
}
