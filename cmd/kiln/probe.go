package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/llm"
	"github.com/kiln-project/kiln/worker/npu"
)

// probeUsage is the help text of kiln card probe.
const probeUsage = `usage: kiln card probe kv-inplace [--json] [--lib PATH] [--tokens N] PACKAGE

kv-inplace  loads the LLM package (a folder) on the first card and runs a
            fixed prompt and N greedy tokens (default 32) twice from a clean
            cache: once with decode writing each token's K/V rows through
            the staging outputs and a copy on the card, once with the decode
            group's K_cache_out/V_cache_out bound straight into the cache row
            (what kiln does when rows are 2 KiB multiples). It compares every
            K and V row of every layer and the tokens, and exits 1 when they
            differ: then run workers with KILN_KV_STAGING=1. Stop the worker
            that holds the card first.
`

// errProbeDiffers is the exit of a probe that found the two paths differ.
var errProbeDiffers = errors.New("in-place K/V rows differ from the staging path")

// runCardProbe is kiln card probe.
func runCardProbe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "kv-inplace" {
		fmt.Fprint(stderr, probeUsage)
		return errUsage
	}
	var f cardFlags
	tokens := 32
	fs := flag.NewFlagSet("kiln card probe kv-inplace", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&f.json, "json", false, "print one JSON object")
	fs.StringVar(&f.lib, "lib", "", "path of libaxcl_rt.so (default $"+axcl.EnvLibrary+", else "+axcl.DefaultLibraryPath+")")
	fs.IntVar(&tokens, "tokens", tokens, "greedy tokens to decode")
	fs.Usage = func() { fmt.Fprint(stderr, probeUsage) }
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if fs.NArg() != 1 || tokens < 1 || tokens > 1024 {
		fmt.Fprintln(stderr, "kiln card probe kv-inplace: one PACKAGE folder and --tokens between 1 and 1024 are required")
		return errUsage
	}
	quiet := slog.New(slog.DiscardHandler)
	dev, err := npu.Open(ctx, npu.Config{Library: f.lib, SampleInterval: -1, Logger: quiet})
	if err != nil {
		return err
	}
	defer dev.Close(context.WithoutCancel(ctx))
	m, err := llm.Load(ctx, dev, fs.Arg(0), &llm.Options{Logger: quiet, PrefixCacheBytes: -1})
	if err != nil {
		return err
	}
	defer m.Close(context.WithoutCancel(ctx))
	prompt := m.Tokenizer().Encode("A kiln fires clay slowly; the potter watches the cones bend and writes down the temperature of every hour.")
	if len(prompt) == 0 {
		prompt = []int{1}
	}
	pr, err := m.ProbeKVInPlace(ctx, prompt, min(tokens, m.Shape().Context-len(prompt)))
	if err != nil {
		return err
	}
	if f.json {
		if err := cardJSON(stdout, pr); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "package   %s (%d layers, K/V rows of %d bytes)\nrows      %d K and %d V rows per layer compared\n",
			m.Package().Name, pr.Layers, pr.RowBytes, pr.Rows, pr.Rows)
		switch {
		case !pr.Aligned:
			fmt.Fprintf(stdout, "result    rows are not %d-byte multiples: kiln keeps the staging copy for this package; nothing to compare\n", llm.KVBindAlign)
		case pr.Identical:
			fmt.Fprintln(stdout, "result    identical: in-place K/V binds give the staging path's rows and tokens")
		default:
			fmt.Fprintf(stdout, "result    DIFFERENT: first at %s; run workers with KILN_KV_STAGING=1\n", pr.FirstDifference)
		}
	}
	if pr.Aligned && !pr.Identical {
		return errProbeDiffers
	}
	return nil
}
