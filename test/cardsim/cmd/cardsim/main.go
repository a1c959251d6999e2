// Command cardsim builds the card simulator (a stand-in libaxcl_rt.so) and writes simulated
// model packages: `make sim` runs
//
//	go run ./test/cardsim/cmd/cardsim -lib build/cardsim/libaxcl_rt.so -models build/models
//
// which writes build/models/qwen3-tiny/, build/models/qwen3-vl-tiny/ (with a simulated vision
// encoder), build/models/smolvlm-tiny/ (laid out as SmolVLM-256M-Instruct.axera publishes it),
// build/models/qwen3-axllm-tiny/ (three decode groups, a 2026 axllm config.json), build/models/qwen3-vl-2b-tiny/
// (laid out as Qwen3-VL.AXERA builds Qwen3-VL-2B) and build/models/sd15-lcm/ (add -qwen3-4b for the
// full Qwen3-4B shapes, meant for KILN_SIM_NOCOMPUTE=1 benchmarks).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"

	"github.com/kiln-project/kiln/test/cardsim"
)

func main() {
	libPath := flag.String("lib", "build/cardsim/libaxcl_rt.so", "where to build the simulator library (empty: skip)")
	models := flag.String("models", "build/models", "folder for the simulated model packages (empty: skip)")
	qwenTok := flag.String("qwen3-tokenizer", "", "folder of Qwen3 tokenizer files to copy into the chat packages (default: worker/tokenize/testdata/qwen3 if present)")
	clipTok := flag.String("clip-tokenizer", "", "folder of CLIP tokenizer files to copy into sd15-lcm/tokenizer (default: worker/tokenize/testdata/clip if present)")
	big := flag.Bool("qwen3-4b", false, "also write qwen3-4b (full Qwen3-4B shapes, sparse embedding table)")
	sdTall := flag.Bool("sd-1024x768", false, "also write sd15-lcm-1024x768 (the vendor's txt2img-only variant: 768 wide, 1024 high)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *libPath, *models, defaultDir(*qwenTok, "worker/tokenize/testdata/qwen3"),
		defaultDir(*clipTok, "worker/tokenize/testdata/clip"), *big, *sdTall); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func defaultDir(flagValue, fallback string) string {
	if flagValue != "" {
		return flagValue
	}
	if st, err := os.Stat(fallback); err == nil && st.IsDir() {
		return fallback
	}
	return ""
}

func run(ctx context.Context, libPath, models, qwenTok, clipTok string, big, sdTall bool) error {
	if libPath != "" {
		if err := cardsim.Build(ctx, libPath); err != nil {
			return err
		}
		fmt.Printf("cardsim: built %s\n", libPath)
	}
	if models == "" {
		return nil
	}
	smol := cardsim.TinySmolVLM()
	smol.Name = "smolvlm-tiny"
	llms := []cardsim.LLMSpec{cardsim.TinyQwen3(), cardsim.TinyQwen3VL(), smol, cardsim.TinyAxllm2026(), cardsim.TinyQwen3VLVendor()}
	if big {
		llms = append(llms, cardsim.Qwen3_4B())
	}
	for _, s := range llms {
		tok := "generated"
		if s.Layout == "" {
			s.TokenizerDir, tok = qwenTok, qwenTok
		}
		dir := filepath.Join(models, s.Name)
		if err := cardsim.WriteLLMPackage(dir, s); err != nil {
			return err
		}
		fmt.Printf("cardsim: wrote %s (%d layers, hidden %d, kv_dim %d, context %d, decode contexts %v, prefill groups %v, tokenizer %q)\n",
			dir, s.Layers, s.Hidden, s.KVDim, s.MaxCtx, s.DecodeContexts, s.Histories, tok)
	}
	sds := []cardsim.SDSpec{cardsim.SD15LCM()}
	if sdTall {
		sds = append(sds, cardsim.SD15LCM1024x768())
	}
	for _, sd := range sds {
		sd.TokenizerDir = clipTok
		dir := filepath.Join(models, sd.Name)
		if err := cardsim.WriteSDPackage(dir, sd); err != nil {
			return err
		}
		fmt.Printf("cardsim: wrote %s (%dx%d, img2img %v, tokenizer %q)\n", dir, sd.Width, sd.Height, sd.VAEEncoder, clipTok)
	}
	return nil
}
