// Package simfleet starts, for the gateway's tests, a real queue (an
// embedded broker) with one worker on the simulated card (test/cardsim,
// through the real purego binding) serving a tiny chat model and the SD 1.5
// LCM image model, with its thermal governor reading the card.
package simfleet

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/card"
	"github.com/kiln-project/kiln/worker/thermal"
	"github.com/kiln-project/kiln/worker/workertest"
)

// The models the simulated card serves, and its worker's name.
const (
	ChatModel  = "qwen3-test"
	ImageModel = "sd15-lcm"
	WorkerName = "sim-card0"
)

// Fleet is the queue and its one simulated card.
type Fleet struct {
	Queue  *workertest.Queue
	Worker *worker.Worker
	// Control drives the simulator (faults, settings).
	Control *cardsim.Control

	tempFile string
}

var packages struct {
	once sync.Once
	dir  string
	err  error
}

// repoDir is the repository's root, for the tokenizers the packages copy.
func repoDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// modelsDir writes the two packages once per test binary.
func modelsDir(tb testing.TB) string {
	packages.once.Do(func() {
		dir, err := os.MkdirTemp("", "kiln-gateway-models-")
		if err != nil {
			packages.err = err
			return
		}
		chat := cardsim.TinyQwen3()
		chat.Name, chat.Layers, chat.MaxCtx = ChatModel, 2, 639
		chat.Histories = []int{0, 128, 256, 384}
		chat.TokenizerDir = filepath.Join(repoDir(), "worker", "tokenize", "testdata", "qwen3")
		if packages.err = cardsim.WriteLLMPackage(filepath.Join(dir, ChatModel), chat); packages.err != nil {
			return
		}
		sd := cardsim.SD15LCM()
		sd.TokenizerDir = filepath.Join(repoDir(), "worker", "tokenize", "testdata", "clip")
		packages.err = cardsim.WriteSDPackage(filepath.Join(dir, ImageModel), sd)
		packages.dir = dir
	})
	if packages.err != nil {
		tb.Fatal(packages.err)
	}
	return packages.dir
}

// Start starts the queue and the simulated card's worker (ready, its models
// loaded), all stopped when tb ends. The card's temperature is what
// SetTempC last set (40 °C at start).
func Start(tb testing.TB) *Fleet {
	tb.Helper()
	ctrl := cardsim.Controls(tb)
	f := &Fleet{Control: ctrl, tempFile: filepath.Join(tb.TempDir(), "card-temp")}
	f.SetTempC(tb, 40)
	models := modelsDir(tb)
	f.Queue = workertest.StartQueue(tb, workertest.QueueOptions{})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	c, err := card.Open(tb.Context(), card.Config{Library: ctrl.Library(), ModelsDir: models, Logger: log})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.Close(ctx)
	})
	f.Worker = f.Queue.Worker(tb, WorkerName, func(cfg *worker.Config) {
		cfg.Chat, cfg.Image, cfg.StatusFunc, cfg.Device = c.ChatHandlers(), c.ImageHandlers(), c.Status, c
		cfg.Thermal = &thermal.MonitorConfig{Card: c.TempNow, Interval: 200 * time.Millisecond, Logger: log}
	})
	ctrl.Config(tb, "temp_file="+f.tempFile, "temp_file=")
	return f
}

// SetTempC sets the simulated card's temperature, which holds until the
// next SetTempC.
func (f *Fleet) SetTempC(tb testing.TB, celsius int) {
	tb.Helper()
	if err := os.WriteFile(f.tempFile, []byte(strconv.Itoa(celsius)+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
}
