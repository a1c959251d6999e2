package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
)

// kiln up on the simulated card: an injected execute failure resets the
// card and reloads the chat package (the chat still answers), kiln status
// shows the governor and both temperatures, and a lost card makes kiln up
// exit non-zero so that systemd restarts it.
func TestUpResetsCardAndExitsWhenLost(t *testing.T) {
	sim := cardsim.Controls(t)
	lib := sim.Library()

	models := chatPackage(t)
	zone := filepath.Join(t.TempDir(), "temp")
	if err := os.WriteFile(zone, []byte("61500\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	u := startUp(t, "--models", models, "--lib", lib, "--name", "shelf-card0", "--soc-zone", zone, "--thermal-interval", "50ms")
	url := u.url
	st := waitStatus(t, url, oneReadyWorker(1))
	if w := st.Workers[0]; w.Governor.State != "ok" || w.SoCTempC != 61.5 || w.CardTempC <= 0 {
		t.Fatalf("status %+v: want governor ok, SoC 61.5 °C and a card temperature", w)
	}
	code, out, _ := kiln(t, t.Context(), "status", "--nats", url)
	if code != 0 || !strings.Contains(out, "61.5") || !strings.Contains(out, "ok") {
		t.Fatalf("kiln status: %d %q", code, out)
	}

	sim.SetFaults(t, "fail_execute=3")
	code, out, stderr := kiln(t, t.Context(), "chat", "--nats", url, "--json", "--max-tokens", "5", "hi")
	var res struct {
		Status  string
		Attempt int
	}
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || res.Status != "ok" || res.Attempt != 2 {
		t.Fatalf("chat across a card reset: %d %q %q", code, out, stderr)
	}

	sim.SetFaults(t, "lose_device=1")
	cctx, ccancel := context.WithCancel(t.Context())
	chatDone := make(chan struct{})
	go func() {
		defer close(chatDone)
		kiln(t, cctx, "chat", "--nats", url, "--max-tokens", "5", "hi")
	}()
	upCode, upErr := u.wait() // kiln up exits on its own
	ccancel()
	<-chatDone
	if upCode != 1 || !strings.Contains(upErr, "card lost") {
		t.Fatalf("kiln up after losing its card: exit %d, stderr %q", upCode, upErr)
	}
}
