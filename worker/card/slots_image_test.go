package card_test

import (
	"bytes"
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/llm"
	"github.com/kiln-project/kiln/worker/sd"
)

// Three chats interleaved on a 3-slot model with an SD image running on the
// same card between their tokens give exactly the tokens each gives alone
// on a one-slot model, and the image is byte for byte its solo image. The
// chat and the image share only the card's device thread; this shows no
// state crosses from one to the other.
//
// The interleaving is forced, not left to timing: chat A starts the image
// at its 3rd token, starts B (greedy, sharing A's system prompt) at its 6th
// and C (seeded sampling) at its 10th; the image holds after its first UNet
// step until A has given its 14th token, so the image's text encoder and
// first step fall among A's decode steps, and its other steps and VAE
// decoder among A's, B's and C's.
func TestChatsBesideAnImageGiveTheirSoloTokens(t *testing.T) {
	sc := simCardWithSD(t)
	dev, pipe := sc.dev, sc.pipe
	ls := cardsim.TinyQwen3()
	ls.TokenizerDir = "../tokenize/testdata/qwen3"
	llmDir := filepath.Join(t.TempDir(), "qwen3-tiny")
	if err := cardsim.WriteLLMPackage(llmDir, ls); err != nil {
		t.Fatal(err)
	}
	load := func(slots int) *llm.Model {
		m, err := llm.Load(t.Context(), dev, llmDir, &llm.Options{Logger: quiet, Slots: slots, PrefixCacheBytes: -1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Close(context.Background()) })
		return m
	}
	one, three := load(1), load(3)

	prompt := func(start, n int) []int {
		p := make([]int, n)
		for i := range p {
			p[i] = 1000 + (start+i*7)%5000
		}
		return p
	}
	system := prompt(0, 40)
	reqs := []llm.Request{
		{Prompt: append(slices.Clone(system), prompt(11, 9)...), MaxTokens: 40, CachePrefix: len(system)},
		{Prompt: append(slices.Clone(system), prompt(23, 17)...), MaxTokens: 24, CachePrefix: len(system)},
		{Prompt: prompt(37, 21), MaxTokens: 30, Sampling: llm.Sampling{Temperature: 0.9, TopK: 40, TopP: 0.95, Seed: 7}},
	}
	for i := range reqs {
		reqs[i].StopIDs = []int{} // every reply runs its MaxTokens
	}
	imageReq := &sd.Request{Prompt: "a kiln glowing at night", Seed: 42}

	solo := make([][]int, len(reqs))
	for i, req := range reqs {
		if _, err := one.Generate(t.Context(), req, func(tk llm.Token) error {
			solo[i] = append(solo[i], tk.ID)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	soloImage, err := pipe.Generate(t.Context(), imageReq, nil)
	if err != nil {
		t.Fatal(err)
	}

	got := make([][]int, len(reqs))
	results := make([]*llm.Result, len(reqs))
	var image *sd.Result
	var wg sync.WaitGroup
	aReached14, aDone := make(chan struct{}), make(chan struct{})
	var run func(i int)
	onToken := func(i int, tk llm.Token) {
		got[i] = append(got[i], tk.ID)
		if i != 0 {
			return
		}
		switch tk.Index {
		case 2:
			wg.Go(func() {
				res, err := pipe.Generate(t.Context(), imageReq, func(step, _ int) error {
					if step == 1 {
						select {
						case <-aReached14:
						case <-aDone:
						}
					}
					return nil
				})
				if err != nil {
					t.Error(err)
				}
				image = res
			})
		case 5:
			run(1)
		case 9:
			run(2)
		case 13:
			close(aReached14)
		}
	}
	run = func(i int) {
		wg.Go(func() {
			if i == 0 {
				defer close(aDone)
			}
			res, err := three.Generate(t.Context(), reqs[i], func(tk llm.Token) error {
				onToken(i, tk)
				return nil
			})
			if err != nil {
				t.Error(err)
			}
			results[i] = res
		})
	}
	run(0)
	wg.Wait()
	if t.Failed() {
		return
	}
	for i := range reqs {
		if !slices.Equal(got[i], solo[i]) {
			t.Errorf("chat %d beside the image and two chats: %v\nalone: %v", i, got[i], solo[i])
		}
	}
	if results[1].CopiedTokens < len(system) {
		t.Errorf("chat B copied %d rows from chat A's slot, want the %d of the system prompt", results[1].CopiedTokens, len(system))
	}
	if image == nil || !bytes.Equal(image.PNG, soloImage.PNG) {
		t.Error("the image made between the chats' tokens differs from the image made alone")
	}
}
