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

	"github.com/kiln-project/kiln/client"
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
	return loadedCard(t, card.Config{Library: cardsim.Library(t), ModelsDir: tinyModels(t, 4), Slots: slots})
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

// An execute failure while three chats run in the model's slots: every
// running job is handed back, the card is reset and reloaded, and each job
// ends with one result, the reply it gets alone.
func TestCardSlotsFaultHandsEveryJobBack(t *testing.T) {
	sim := cardsim.Controls(t)
	c := slotsCard(t, 3)
	q := workertest.StartQueue(t, workertest.QueueOptions{})
	q.Worker(t, "fault0", func(cfg *worker.Config) {
		cfg.Chat, cfg.MaxJobs, cfg.Device, cfg.StatusFunc = c.ChatHandlers(), c.MaxJobs(), c, c.Status
		cfg.ResetDelays = []time.Duration{10 * time.Millisecond}
	})
	cl := q.Client(t)
	ctx := workertest.Context(t)
	job := func(i int) *schema.ChatJob {
		return &schema.ChatJob{JobHeader: schema.JobHeader{Model: "qwen3-tiny"}, MaxTokens: 200,
			Messages: []schema.Message{{Role: "user", Content: "visitor " + strconv.Itoa(i)}}}
	}
	solo := make([]string, 3)
	for i := range solo {
		res, err := cl.Chat(ctx, job(i), nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.Usage.CompletionTokens < 20 {
			t.Fatalf("visitor %d: a reply of %d tokens is too short to be running when the fault comes", i, res.Usage.CompletionTokens)
		}
		solo[i] = res.Text
	}
	// Slow the card down so the three are surely running together when
	// the fault comes.
	sim.Config(t, "exec_us=2000", "exec_us=0")
	var ps []*client.Pending
	for i := range 3 {
		p, err := cl.Submit(ctx, job(i))
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	capacity := c.ChatHandlers()["qwen3-tiny"].(worker.Capacity)
	wait.For(t, 30*time.Second, time.Millisecond, func() error {
		if used, _ := capacity.Capacity(); used != 3 {
			return fmt.Errorf("%d chats running", used)
		}
		return nil
	})
	sim.SetFaults(t, "fail_execute=1")
	for i, p := range ps {
		res, err := p.Wait(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.Text != solo[i] || res.Attempt != 2 {
			t.Errorf("visitor %d after the fault: attempt %d %q; want attempt 2 with %q", i, res.Attempt, res.Text, solo[i])
		}
	}
}

// Chat packages load after the others, so their slots take what the CMM
// budget leaves beside the image model: slots that do not fit refuse the
// chat package (with the figures), and the image model, though its name
// sorts after, still serves.
func TestSlotsTakeWhatTheImageModelLeaves(t *testing.T) {
	lib := cardsim.Library(t)
	models := tinyModels(t, 4)
	sdSpec := cardsim.SD15LCM()
	sdSpec.TokenizerDir = "../tokenize/testdata/clip"
	if err := cardsim.WriteSDPackage(filepath.Join(models, "sd15-lcm"), sdSpec); err != nil {
		t.Fatal(err)
	}
	open := func(slots int) (*card.Card, schema.Heartbeat) {
		c, err := card.Open(t.Context(), card.Config{Library: lib, ModelsDir: models, Slots: slots, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Load(t.Context()); err != nil {
			t.Fatal(err)
		}
		hb := schema.Heartbeat{Models: []schema.ModelInfo{{Name: "qwen3-tiny", Kind: schema.KindChat}, {Name: "sd15-lcm", Kind: schema.KindImage}}}
		c.Status(&hb)
		return c, hb
	}
	one, hb := open(1)
	if err := one.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if hb.Models[0].CMMMiB <= 0 || hb.Models[1].CMMMiB <= 0 {
		t.Fatalf("both packages with one slot: %+v", hb.Models)
	}
	// Room for both with one slot and a few more, not for sixteen.
	t.Setenv("KILN_SIM_CMM_MIB", strconv.Itoa(hb.Models[0].CMMMiB+hb.Models[1].CMMMiB+2))
	c, hb := open(llm.MaxSlots)
	t.Cleanup(func() { _ = c.Close(t.Context()) })
	if !errors.Is(c.ModelErr(schema.KindChat, "qwen3-tiny"), llm.ErrSlotBudget) || hb.Models[0].State != schema.ModelFailed {
		t.Fatalf("chat package with %d slots: %v, %+v; want refused for the CMM budget", llm.MaxSlots, c.ModelErr(schema.KindChat, "qwen3-tiny"), hb.Models[0])
	}
	if err := c.ModelErr(schema.KindImage, "sd15-lcm"); err != nil || hb.Models[1].State != schema.ModelReady {
		t.Fatalf("image package beside it: %v, %+v; want it serving", err, hb.Models[1])
	}
}
