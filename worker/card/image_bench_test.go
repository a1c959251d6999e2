package card_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/llm"
	"github.com/kiln-project/kiln/worker/sd"
)

// The vendor's figures scaled down 20× per execute (docs/BENCHMARKS.md,
// "An image job mid-chat"): a Qwen3-4B decode-group or post execute
// (274 ms per token / 37), a prefill chunk's layer execute, and the SD 1.5
// LCM trips on the AX650N (text encoder 9.8 ms, UNet step 437 ms, VAE
// decoder 930 ms).
const imageMidChatSim = "exec_us=370,prefill_exec_us=1795,text_exec_us=490,unet_exec_us=21850,vae_exec_us=46500,nocompute=1"

// BenchmarkImageMidChat measures what an image job does to a chat that is
// replying on the same card: both share the card's device thread, whose
// queue is FIFO, so the image's trips (text encoder, each UNet step, VAE
// decoder) fall between the chat's decode steps. One chat reply of 96
// tokens runs (llm.Model.Generate); at its 8th token an image starts
// (sd.Pipeline.Generate, 4 LCM steps) on the same device, as the card's
// two handlers run them (worker/card takes only a read lock around a job).
// It reports the chat's largest gap between consecutive tokens while the
// image runs (gap_max_ms) and their median (gap_image_p50_ms), its usual
// gap outside the image (gap_p50_ms), and the image's trips measured with
// no chat beside it (the quickest of three): unet_step_ms (one UNet step
// with its copies), vae_decode_ms and text_encoder_ms.
func BenchmarkImageMidChat(b *testing.B) {
	sc := simCardWithSD(b)
	sim, dev, pipe := sc.sim, sc.dev, sc.pipe
	ls := cardsim.TinyQwen3()
	ls.Name, ls.Layers, ls.LayerWeightBytes = "qwen3-36", 36, 1<<20
	ls.TokenizerDir = "../tokenize/testdata/qwen3"
	llmDir := filepath.Join(b.TempDir(), ls.Name)
	if err := cardsim.WriteLLMPackage(llmDir, ls); err != nil {
		b.Fatal(err)
	}
	lm, err := llm.Load(b.Context(), dev, llmDir, &llm.Options{Logger: quiet, PrefixCacheBytes: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = lm.Close(context.Background()) })
	sim.Config(b, imageMidChatSim, "exec_us=0,prefill_exec_us=0,text_exec_us=0,unet_exec_us=0,vae_exec_us=0,nocompute=0")

	const reply, imageAt = 96, 8
	prompt := make([]int, 100) // one prefill chunk
	for i := range prompt {
		prompt[i] = 1000 + 7*i
	}
	image := func(seed uint64) (*sd.Result, error) {
		return pipe.Generate(b.Context(), &sd.Request{Prompt: "a kiln at night", Seed: seed}, nil)
	}
	// The image alone: its trips without a chat in the FIFO (the quickest
	// of three, after a warm-up).
	var unet, vae, text time.Duration
	for i := range 4 {
		res, err := image(uint64(i))
		if err != nil {
			b.Fatal(err)
		}
		if i == 0 {
			continue
		}
		tm := res.Timings
		u := tm.UNet / time.Duration(len(sd.Timesteps))
		if unet == 0 || u < unet {
			unet = u
		}
		if vae == 0 || tm.VAEDecoder < vae {
			vae = tm.VAEDecoder
		}
		if text == 0 || tm.TextEncoder < text {
			text = tm.TextEncoder
		}
	}

	var maxGap, during time.Duration
	var normal, inImage []time.Duration
	iters := 0
	for b.Loop() {
		var times []time.Time
		var imgStart, imgEnd time.Time
		imgDone := make(chan error, 1)
		started := false
		_, err := lm.Generate(b.Context(), llm.Request{Prompt: prompt, MaxTokens: reply, StopIDs: []int{}}, func(t llm.Token) error {
			times = append(times, time.Now())
			if len(times) == imageAt && !started {
				started = true
				imgStart = time.Now()
				go func() {
					_, err := image(uint64(100 + iters))
					imgEnd = time.Now()
					imgDone <- err
				}()
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		if err := <-imgDone; err != nil {
			b.Fatal(err)
		}
		if !imgEnd.Before(times[len(times)-1]) {
			b.Fatalf("the image ended %v after the chat's last token: make the reply longer", imgEnd.Sub(times[len(times)-1]))
		}
		var worst time.Duration
		for i := 1; i < len(times); i++ {
			gap := times[i].Sub(times[i-1])
			if times[i].After(imgStart) && times[i-1].Before(imgEnd) {
				worst = max(worst, gap)
				inImage = append(inImage, gap)
			} else {
				normal = append(normal, gap)
			}
		}
		maxGap += worst
		during += imgEnd.Sub(imgStart)
		iters++
	}
	slices.Sort(normal)
	slices.Sort(inImage)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
	b.ReportMetric(ms(maxGap)/float64(iters), "gap_max_ms")
	b.ReportMetric(ms(normal[len(normal)/2]), "gap_p50_ms")
	b.ReportMetric(ms(inImage[len(inImage)/2]), "gap_image_p50_ms")
	b.ReportMetric(ms(unet), "unet_step_ms")
	b.ReportMetric(ms(vae), "vae_decode_ms")
	b.ReportMetric(ms(text), "text_encoder_ms")
	b.ReportMetric(ms(during)/float64(iters), "image_mid_chat_ms")
}
