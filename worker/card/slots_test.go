package card_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/test/wait"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/card"
	"github.com/kiln-project/kiln/worker/llm"
	"github.com/kiln-project/kiln/worker/workertest"
)

// slotsCard opens the simulator with the tiny Qwen3 package under
// "qwen3-tiny", each chat model with slots K/V slots, and loads it.
func slotsCard(t *testing.T, slots int) *card.Card {
	t.Helper()
	lib := cardsim.Library(t)
	models := t.TempDir()
	spec := cardsim.TinyQwen3()
	spec.TokenizerDir = "../tokenize/testdata/qwen3"
	if err := cardsim.WriteLLMPackage(filepath.Join(models, "qwen3-tiny"), spec); err != nil {
		t.Fatal(err)
	}
	c, err := card.Open(t.Context(), card.Config{Library: lib, ModelsDir: models, Slots: slots, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(t.Context()) })
	if err := c.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	return c
}

// A card configured with three slots per chat model says so to the worker
// (Capacity, MaxJobs); the worker runs several jobs on it at once through
// the queue, each getting the reply it gets alone, and its heartbeats
// report the slots.
func TestCardSlotsThroughTheQueue(t *testing.T) {
	c := slotsCard(t, 3)
	h := c.ChatHandlers()["qwen3-tiny"]
	capacity, ok := h.(worker.Capacity)
	if !ok {
		t.Fatal("the card's chat handler does not report its Capacity")
	}
	if used, total := capacity.Capacity(); used != 0 || total != 3 || c.MaxJobs() != 3 {
		t.Fatalf("capacity %d/%d, MaxJobs %d; want 0/3 and 3", used, total, c.MaxJobs())
	}
	q := workertest.StartQueue(t, workertest.QueueOptions{})
	w := q.Worker(t, "slots0", func(cfg *worker.Config) {
		cfg.Chat, cfg.MaxJobs, cfg.Device, cfg.StatusFunc = c.ChatHandlers(), c.MaxJobs(), c, c.Status
	})
	cl := q.Client(t)
	ctx := workertest.Context(t)
	job := func(i int) *schema.ChatJob {
		return &schema.ChatJob{JobHeader: schema.JobHeader{Model: "qwen3-tiny"}, MaxTokens: 24,
			Messages: []schema.Message{{Role: "user", Content: "visitor " + strconv.Itoa(i) + strings.Repeat(" tell me more", i)}}}
	}
	solo := make([]string, 4)
	for i := range solo {
		res, err := cl.Chat(ctx, job(i), nil)
		if err != nil {
			t.Fatal(err)
		}
		solo[i] = res.Text
	}
	var wg sync.WaitGroup
	got := make([]string, 4)
	for i := range got {
		wg.Go(func() {
			res, err := cl.Chat(ctx, job(i), nil)
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = res.Text
		})
	}
	wg.Wait()
	for i := range got {
		if got[i] != solo[i] {
			t.Errorf("visitor %d: %q beside others, %q alone", i, got[i], solo[i])
		}
	}
	wait.For(t, 30*time.Second, 5*time.Millisecond, func() error {
		st := w.Status()
		m := st.Models[0]
		if m.SlotsTotal != 3 || m.SlotsUsed != 0 || st.MaxJobs != 3 || st.JobsOK != 8 {
			return fmt.Errorf("status %+v: want slots 0/3, MaxJobs 3, 8 jobs ok", st)
		}
		return nil
	})
}

// More slots than the card's CMM holds beside the model: the package is
// refused with the figures (llm.SlotBudgetError), the card still loads.
func TestCardRefusesSlotsBeyondTheCMMBudget(t *testing.T) {
	one := slotsCard(t, 1)
	hb := schema.Heartbeat{Models: []schema.ModelInfo{{Name: "qwen3-tiny", Kind: schema.KindChat}}}
	one.Status(&hb)
	if err := one.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Room for the model with one slot and a few more, not for sixteen.
	t.Setenv("KILN_SIM_CMM_MIB", strconv.Itoa(hb.Models[0].CMMMiB+2))
	c := slotsCard(t, llm.MaxSlots)
	err := c.ModelErr(schema.KindChat, "qwen3-tiny")
	var be *llm.SlotBudgetError
	if !errors.As(err, &be) || be.Slots != llm.MaxSlots || be.Fit < 1 || be.Fit >= llm.MaxSlots ||
		!strings.Contains(err.Error(), fmt.Sprintf("%d K/V slots", llm.MaxSlots)) {
		t.Fatalf("ModelErr = %v; want a SlotBudgetError naming %d slots and how many fit", err, llm.MaxSlots)
	}
	hb = schema.Heartbeat{Models: []schema.ModelInfo{{Name: "qwen3-tiny", Kind: schema.KindChat}}}
	c.Status(&hb)
	if hb.Models[0].State != schema.ModelFailed || !strings.Contains(hb.Models[0].Error, "room for") {
		t.Fatalf("heartbeat %+v: want the package failed with the figures", hb.Models[0])
	}
}
