package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/test/echo"
	"github.com/kiln-project/kiln/test/wait"
	"github.com/kiln-project/kiln/worker"
)

// kiln status shows a model's slots in use and every job running on a
// card that runs several at once.
func TestStatusShowsSlotsAndEveryRunningJob(t *testing.T) {
	topo := topology.Config{HeartbeatInterval: time.Hour}
	b := brokertest.Run(t, &brokertest.Options{Topology: topo})
	w, err := worker.New(brokertest.Connect(t, b), worker.Config{Name: "slots1", Topology: topo, Logger: quietLog(), MaxJobs: 2,
		Chat: map[string]worker.Handler[schema.ChatJob]{"echo": echo.Slots(echo.Chat, 2)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.StopAndCancel(context.Background()) })
	c, err := client.New(brokertest.Connect(t, b))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 2 {
		p, err := c.Submit(t.Context(), chatJob(strings.Repeat("slow ", 100), map[string]string{"delay_ms": "200"}))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
	}
	wait.For(t, 30*time.Second, 5*time.Millisecond, func() error {
		if n := len(w.Status().RunningJobs); n != 2 {
			return fmt.Errorf("%d jobs running", n)
		}
		return nil
	})
	url := b.ClientURL()
	code, out, errOut := kiln(t, t.Context(), "status", "--json", "--nats", url)
	var st struct{ Workers []schema.Heartbeat }
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Workers) != 1 {
		t.Fatalf("kiln status --json: %d %q %q", code, out, errOut)
	}
	hb := st.Workers[0]
	if m := hb.Models[0]; m.SlotsUsed != 2 || m.SlotsTotal != 2 || len(hb.RunningJobs) != 2 || hb.MaxJobs != 2 {
		t.Fatalf("status %+v: want slots 2/2 and both jobs running", hb)
	}
	code, out, _ = kiln(t, t.Context(), "status", "--nats", url)
	if code != 0 || !strings.Contains(out, "chat/echo 2/2") || !strings.Contains(out, hb.CurrentJob+" +1") {
		t.Fatalf("kiln status: %d %q; want chat/echo 2/2 and %s +1", code, out, hb.CurrentJob)
	}
	// kiln cancel finds the job that is not the oldest as running.
	code, out, errOut = kiln(t, t.Context(), "cancel", "--nats", url, hb.RunningJobs[1])
	if code != 0 || !strings.Contains(out+errOut, "cancelled while running") {
		t.Fatalf("kiln cancel of the second running job: %d %q %q", code, out, errOut)
	}
}

// kiln models check --slots loads a chat package with that many K/V slots
// and says so; a count beyond llm.MaxSlots is refused before the card is
// touched.
func TestModelsCheckSlots(t *testing.T) {
	lib := cardsim.Library(t)
	models := chatPackage(t)
	code, out, stderr := kiln(t, t.Context(), "models", "check", "--slots", "3", "--lib", lib, filepath.Join(models, "qwen3-tiny"))
	if code != 0 || !strings.Contains(out, "with 3 K/V slots: 3 jobs at once") {
		t.Fatalf("models check --slots 3: %d %q %q", code, out, stderr)
	}
	code, _, stderr = kiln(t, t.Context(), "models", "check", "--slots", "17", "--lib", lib, filepath.Join(models, "qwen3-tiny"))
	if code == 0 || !strings.Contains(stderr, "--slots is 17: it must be 1 to 16") {
		t.Fatalf("models check --slots 17: %d %q", code, stderr)
	}
}
