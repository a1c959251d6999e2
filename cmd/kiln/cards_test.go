package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
)

// kiln up on a host with two cards (the simulator told to list two
// devices) runs one worker per card, each named <host>-card<N> and serving
// the packages on its own card; --card picks one, and --name, which names
// one worker, needs it.
func TestUpServesEveryCard(t *testing.T) {
	lib := cardsim.Library(t)
	t.Setenv("KILN_SIM_DEVICES", "1,3")
	models := chatPackage(t)

	code, _, stderr := kiln(t, t.Context(), "up", "--listen", freeAddr(t), "--data", t.TempDir(), "--models", models, "--lib", lib, "--name", "shelf")
	if code != 1 || !strings.Contains(stderr, "--name names one worker and this host has 2 cards") {
		t.Fatalf("kiln up --name with two cards: %d %q", code, stderr)
	}

	u := startUp(t, "--models", models, "--lib", lib)
	st := waitStatus(t, u.url, func(st *fleetStatus) bool {
		if len(st.Workers) != 2 {
			return false
		}
		for _, w := range st.Workers {
			if w.State != "ready" || len(w.Models) != 1 || w.CardTempC <= 0 {
				return false
			}
		}
		return true
	})
	names := []string{st.Workers[0].Worker, st.Workers[1].Worker}
	slices.Sort(names)
	if host, ok := strings.CutSuffix(names[0], "-card0"); !ok || names[1] != host+"-card1" {
		t.Fatalf("workers %v, want <host>-card0 and <host>-card1", names)
	}
	code, out, stderr := kiln(t, t.Context(), "chat", "--nats", u.url, "--max-tokens", "5", "hi")
	if code != 0 || strings.TrimSpace(out) == "" {
		t.Fatalf("kiln chat: %d %q %q", code, out, stderr)
	}
	u.cancel()
	if code, stderr := u.wait(); code != 0 {
		t.Fatalf("kiln up stopped with %d: %s", code, stderr)
	}

	one := startUp(t, "--models", models, "--lib", lib, "--card", "1", "--name", "shelf-card1")
	st = waitStatus(t, one.url, oneReadyWorker(1))
	if st.Workers[0].Worker != "shelf-card1" {
		t.Fatalf("kiln up --card 1: workers %+v", st.Workers)
	}
}
