package card_test

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/card"
	"github.com/kiln-project/kiln/worker/npu"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestFaultClassification(t *testing.T) {
	runtimeErr := &axcl.Error{Op: "axclrtEngineExecute", Code: 0x80300184}
	for _, tc := range []struct {
		name        string
		err         error
		fault, lost bool
	}{
		{"runtime error", fmt.Errorf("chat: %w", runtimeErr), true, false},
		{"lost device", &npu.LostError{Device: 1, Cause: runtimeErr}, true, true},
		{"hung execute", fmt.Errorf("token 3: %w", errors.Join(npu.ErrHung, npu.ErrLost)), true, true},
		{"closed device", fmt.Errorf("token 3: %w", npu.ErrStopped), true, false},
		{"request error", schema.Errorf(schema.CodeOverLimit, "messages", "too long"), false, false},
		{"package error", worker.Permanent(errors.New("token id outside the vocabulary")), false, false},
		{"no error", nil, false, false},
	} {
		if got := card.IsFault(tc.err); got != tc.fault {
			t.Errorf("%s: IsFault = %v, want %v", tc.name, got, tc.fault)
		}
		if got := card.IsLost(tc.err); got != tc.lost {
			t.Errorf("%s: IsLost = %v, want %v", tc.name, got, tc.lost)
		}
	}
}

// Without a card runtime a Card holds no device and serves none of the
// packages it finds; it still gives the worker (empty) handlers and status.
func TestOpenWithoutRuntimeServesNothing(t *testing.T) {
	models := t.TempDir()
	spec := cardsim.TinyQwen3()
	if err := cardsim.WriteLLMPackage(filepath.Join(models, "qwen3-tiny"), spec); err != nil {
		t.Fatal(err)
	}
	lib := filepath.Join(t.TempDir(), "libaxcl_rt.so") // not there
	if n, err := card.Count(t.Context(), lib); n != 0 || err != nil {
		t.Fatalf("Count without a runtime: %d, %v", n, err)
	}
	c, err := card.Open(t.Context(), card.Config{Library: lib, ModelsDir: models, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if c.Present() || len(c.ChatHandlers()) != 0 || len(c.ImageHandlers()) != 0 {
		t.Fatalf("card without a runtime: present %v, chat %v, image %v", c.Present(), c.ChatHandlers(), c.ImageHandlers())
	}
	if _, err := c.Temp(t.Context()); err == nil {
		t.Error("Temp without a device: no error")
	}
	hb := schema.Heartbeat{Models: []schema.ModelInfo{{Name: "qwen3-tiny", Kind: schema.KindChat}}}
	c.Status(&hb)
	if hb.CardTempC != 0 || hb.Models[0].CMMMiB != 0 {
		t.Errorf("status without a device: %+v", hb)
	}
	if err := c.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// On the simulated card a Card serves the chat package it finds, loads it
// when the worker asks, and reports its CMM and the card's temperature.
func TestOpenLoadsPackagesOnTheCard(t *testing.T) {
	lib := cardsim.Library(t)
	models := tinyModels(t, 4)
	if err := os.MkdirAll(filepath.Join(models, "notes"), 0o755); err != nil { // no runtime recognises it
		t.Fatal(err)
	}
	if n, err := card.Count(t.Context(), lib); n != 1 || err != nil {
		t.Fatalf("Count on the simulator: %d, %v", n, err)
	}
	c, err := card.Open(t.Context(), card.Config{Library: lib, ModelsDir: models, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(t.Context()) })
	chat := c.ChatHandlers()
	if !c.Present() || len(chat) != 1 || chat["qwen3-tiny"] == nil || len(c.ImageHandlers()) != 0 {
		t.Fatalf("served: present %v, chat %v, image %v", c.Present(), chat, c.ImageHandlers())
	}
	if err := c.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	hb := schema.Heartbeat{Models: []schema.ModelInfo{{Name: "qwen3-tiny", Kind: schema.KindChat}}}
	c.Status(&hb)
	if hb.Models[0].CMMMiB <= 0 || hb.CardTempC <= 0 || hb.CMMTotalMiB <= 0 {
		t.Fatalf("status after load: %+v", hb)
	}
	if temp, err := c.TempNow(t.Context()); err != nil || temp <= 0 {
		t.Fatalf("TempNow: %v, %v", temp, err)
	}
	if err := c.Lost(); err != nil {
		t.Fatalf("Lost on a healthy card: %v", err)
	}
}

// One package that fails to load does not take the card down: the good one
// serves, the broken one is marked failed with its reason (ModelErr,
// heartbeats), and a reset reloads them the same way.
func TestBrokenPackageLeavesTheOthersServing(t *testing.T) {
	lib := cardsim.Library(t)
	models := t.TempDir()
	spec := cardsim.TinyQwen3()
	spec.Layers, spec.TokenizerDir = 2, "../tokenize/testdata/qwen3"
	for _, name := range []string{"qwen3-broken", "qwen3-tiny"} {
		if err := cardsim.WriteLLMPackage(filepath.Join(models, name), spec); err != nil {
			t.Fatal(err)
		}
	}
	missing := spec.LayerFile(1)
	if err := os.Remove(filepath.Join(models, "qwen3-broken", spec.ModelDir, missing)); err != nil {
		t.Fatal(err)
	}
	c, err := card.Open(t.Context(), card.Config{Library: lib, ModelsDir: models, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(t.Context()) })
	hb := schema.Heartbeat{Models: []schema.ModelInfo{
		{Name: "qwen3-broken", Kind: schema.KindChat}, {Name: "qwen3-tiny", Kind: schema.KindChat}}}
	c.Status(&hb)
	if hb.Models[0].State != schema.ModelLoading || hb.Models[1].State != schema.ModelLoading {
		t.Fatalf("status before load: %+v", hb.Models)
	}
	check := func(when string) {
		t.Helper()
		if err := c.ModelErr(schema.KindChat, "qwen3-broken"); err == nil || !strings.Contains(err.Error(), missing) {
			t.Errorf("%s: ModelErr(broken) = %v, want the missing %s named", when, err, missing)
		}
		if err := c.ModelErr(schema.KindChat, "qwen3-tiny"); err != nil {
			t.Errorf("%s: ModelErr(good) = %v", when, err)
		}
		hb := schema.Heartbeat{Models: []schema.ModelInfo{
			{Name: "qwen3-broken", Kind: schema.KindChat}, {Name: "qwen3-tiny", Kind: schema.KindChat}}}
		c.Status(&hb)
		broken, good := hb.Models[0], hb.Models[1]
		if broken.State != schema.ModelFailed || !strings.Contains(broken.Error, missing) || broken.Serving() {
			t.Errorf("%s: broken model in heartbeat %+v", when, broken)
		}
		if good.State != schema.ModelReady || good.CMMMiB <= 0 || !hb.Serves(schema.KindChat, "qwen3-tiny") ||
			hb.Serves(schema.KindChat, "qwen3-broken") {
			t.Errorf("%s: heartbeat %+v", when, hb)
		}
		job := worker.NewJob(&schema.ChatJob{Messages: []schema.Message{{Role: "user", Content: "hi"}}, MaxTokens: 2}, nil)
		if _, err := c.ChatHandlers()["qwen3-tiny"].Handle(t.Context(), job); err != nil {
			t.Errorf("%s: chat on the good package: %v", when, err)
		}
		if _, err := c.ChatHandlers()["qwen3-broken"].Handle(t.Context(), job); err == nil || !strings.Contains(err.Error(), "did not load") {
			t.Errorf("%s: chat on the broken package: %v", when, err)
		}
	}
	if err := c.Load(t.Context()); err != nil {
		t.Fatalf("Load with one broken package: %v", err)
	}
	check("after Load")
	if err := c.Reset(t.Context()); err != nil {
		t.Fatalf("Reset with one broken package: %v", err)
	}
	check("after Reset")
}

// On a runtime without axclrtGetDeviceProperties (older SDKs) a Card opens,
// loads and serves; its health is unknown (no temperature in heartbeats,
// Temp fails so that the governor leaves the card out).
func TestOldRuntimeCardHealthUnknown(t *testing.T) {
	lib := cardsim.OldRuntimeLibrary(t)
	c := loadedCard(t, card.Config{Library: lib, ModelsDir: tinyModels(t, 2)})
	hb := schema.Heartbeat{Models: []schema.ModelInfo{{Name: "qwen3-tiny", Kind: schema.KindChat}}}
	c.Status(&hb)
	if hb.CardTempC != 0 || hb.CMMTotalMiB != 0 || hb.Models[0].State != schema.ModelReady {
		t.Fatalf("status on an old runtime: %+v", hb)
	}
	if _, err := c.Temp(t.Context()); !errors.Is(err, npu.ErrNoProperties) {
		t.Fatalf("Temp on an old runtime = %v, want npu.ErrNoProperties", err)
	}
	job := worker.NewJob(&schema.ChatJob{Messages: []schema.Message{{Role: "user", Content: "hi"}}, MaxTokens: 2}, nil)
	if _, err := c.ChatHandlers()["qwen3-tiny"].Handle(t.Context(), job); err != nil {
		t.Fatalf("chat on an old runtime: %v", err)
	}
}
