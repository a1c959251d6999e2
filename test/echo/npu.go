package echo

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/card"
	"github.com/kiln-project/kiln/worker/npu"
)

// Card is a test card: an npu.Device (the simulator, loaded through the
// real binding) with one small simulated model resident, a chat handler
// that runs that model once per token so the simulated card heats and its
// faults reach the worker as they would from a real runtime, and the
// worker.Device hooks (Fault, Lost, Reset).
type Card struct {
	cfg   npu.Config
	model string // model file

	mu     sync.Mutex
	dev    *npu.Device
	m      *npu.Model
	resets atomic.Int64
}

// OpenCard opens the card of cfg and loads a small simulated LLM layer
// (written into dir) on it.
func OpenCard(ctx context.Context, cfg npu.Config, dir string) (*Card, error) {
	s := cardsim.LLMSpec{Name: "tiny", Arch: "tiny", ModelDir: "tiny", Layers: 1, Hidden: 16, KVDim: 8, Vocab: 64,
		MaxCtx: 63, Prefill: 16, Histories: []int{0}, Seed: 7, LayerWeightBytes: 1 << 20}
	b, err := s.LayerSpec(0).Marshal()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, s.LayerFile(0))
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return nil, fmt.Errorf("echo: %w", err)
	}
	c := &Card{cfg: cfg, model: path}
	if err := c.open(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Card) open(ctx context.Context) error {
	dev, err := npu.Open(ctx, c.cfg)
	if err != nil {
		return fmt.Errorf("echo: open card: %w", err)
	}
	m, err := dev.LoadModel(ctx, c.model, nil)
	if err != nil {
		_ = dev.Close(ctx)
		return fmt.Errorf("echo: load model: %w", err)
	}
	c.mu.Lock()
	c.dev, c.m = dev, m
	c.mu.Unlock()
	return nil
}

func (c *Card) current() (*npu.Device, *npu.Model) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dev, c.m
}

// Device is the open device (a new one after each Reset).
func (c *Card) Device() *npu.Device {
	d, _ := c.current()
	return d
}

// Resets counts the successful resets.
func (c *Card) Resets() int { return int(c.resets.Load()) }

// Chat streams "echo:" and the words of the last message like Chat, but
// executes the model on the card before each token.
func (c *Card) Chat() worker.Handler[schema.ChatJob] {
	return worker.HandlerFunc[schema.ChatJob](func(ctx context.Context, job *worker.Job[schema.ChatJob]) (*schema.Result, error) {
		md := job.Args.Metadata
		if err := misbehave(md, job.Attempt); err != nil {
			return nil, err
		}
		words := append([]string{"echo:"}, strings.Fields(job.Args.Messages[len(job.Args.Messages)-1].Content)...)
		var text strings.Builder
		for i, w := range words {
			if err := wait(ctx, md); err != nil {
				return &schema.Result{Text: text.String()}, err
			}
			dev, m := c.current()
			if err := dev.Execute(ctx, m, 0); err != nil {
				return nil, fmt.Errorf("echo: token %d: %w", i, err)
			}
			if i > 0 {
				w = " " + w
			}
			text.WriteString(w)
			if err := job.Token(w); err != nil {
				return nil, err
			}
		}
		return &schema.Result{Text: text.String(), FinishReason: schema.FinishStop,
			Usage: schema.Usage{CompletionTokens: len(words)}}, nil
	})
}

// Temp reads the card's Tj from the latest device sample (a
// thermal.Source).
func (c *Card) Temp(ctx context.Context) (float64, error) {
	p, err := c.Device().Properties(ctx)
	if err != nil {
		return 0, err
	}
	return float64(p.TemperatureMilliC) / 1000, nil
}

// TempNow samples the card's Tj afresh on the device thread (a
// thermal.Source for MonitorConfig.CardNow).
func (c *Card) TempNow(ctx context.Context) (float64, error) {
	p, err := c.Device().Refresh(ctx)
	if err != nil {
		return 0, err
	}
	return float64(p.TemperatureMilliC) / 1000, nil
}

// Fault implements worker.Device with the card supervisor's
// classification (card.IsFault): runtime errors, a lost or closed device.
func (c *Card) Fault(err error) bool { return card.IsFault(err) }

// Lost implements worker.Device: the device's error when it is lost
// (card.IsLost).
func (c *Card) Lost() error {
	if err := c.Device().Err(); card.IsLost(err) {
		return err
	}
	return nil
}

// Reset implements worker.Device: close the device, open it again and
// reload the model.
func (c *Card) Reset(ctx context.Context) error {
	if err := c.Device().Close(ctx); err != nil {
		return fmt.Errorf("echo: close for reset: %w", err)
	}
	if err := c.open(ctx); err != nil {
		return err
	}
	c.resets.Add(1)
	return nil
}

// Close closes the device.
func (c *Card) Close(ctx context.Context) error { return c.Device().Close(ctx) }
