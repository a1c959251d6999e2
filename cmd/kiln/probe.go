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
       kiln card probe copy [--json] [--lib PATH] [--bytes N] [--rounds N]

kv-inplace  loads the LLM package (a folder) on the first card and runs a
            fixed prompt and N greedy tokens (default 32) twice from a clean
            cache: once with decode writing each token's K/V rows through
            the staging outputs and a copy on the card, once with the decode
            group's K_cache_out/V_cache_out bound straight into the cache row
            (what kiln does when rows are 2 KiB multiples). It compares every
            K and V row of every layer and the tokens, and exits 1 when they
            differ: then run workers with KILN_KV_STAGING=1. Stop the worker
            that holds the card first.
copy        times small copies on the first card (default 2048 bytes, the
            size of a Qwen3 K/V row, median of 200 rounds): synchronous
            device-to-device, host-to-device and device-to-host from pinned
            (axclrtMallocHost) and unpinned memory, one stream sync, and a
            copy queued on the stream; plus one properties sample. The
            synchronous numbers are the per-call cost the decode projection
            in docs/BENCHMARKS.md assumes (457 µs).
`

// errProbeDiffers is the exit of a probe that found the two paths differ.
var errProbeDiffers = errors.New("in-place K/V rows differ from the staging path")

// runCardProbe is kiln card probe.
func runCardProbe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, probeUsage)
		return errUsage
	}
	switch args[0] {
	case "kv-inplace":
		return runProbeKV(ctx, args[1:], stdout, stderr)
	case "copy":
		return runProbeCopy(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "kiln card probe: unknown probe %q\n\n%s", args[0], probeUsage)
	return errUsage
}

// probeFlags is the flag set of one probe with --json and --lib.
func probeFlags(name string, f *cardFlags, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("kiln card probe "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&f.json, "json", false, "print one JSON object")
	fs.StringVar(&f.lib, "lib", "", "path of libaxcl_rt.so (default $"+axcl.EnvLibrary+", else "+axcl.DefaultLibraryPath+")")
	fs.Usage = func() { fmt.Fprint(stderr, probeUsage) }
	return fs
}

func runProbeKV(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f cardFlags
	tokens := 32
	fs := probeFlags("kv-inplace", &f, stderr)
	fs.IntVar(&tokens, "tokens", tokens, "greedy tokens to decode")
	if err := parse(fs, args); err != nil {
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

func runProbeCopy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f cardFlags
	bytes, rounds := 2048, 200
	fs := probeFlags("copy", &f, stderr)
	fs.IntVar(&bytes, "bytes", bytes, "bytes per copy (1 … 1048576)")
	fs.IntVar(&rounds, "rounds", rounds, "rounds per measurement (1 … 10000)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 || bytes < 1 || bytes > 1<<20 || rounds < 1 || rounds > 10000 {
		fmt.Fprintln(stderr, "kiln card probe copy: no arguments; --bytes 1 … 1048576, --rounds 1 … 10000")
		return errUsage
	}
	dev, err := npu.Open(ctx, npu.Config{Library: f.lib, SampleInterval: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer dev.Close(context.WithoutCancel(ctx))
	c, err := dev.MeasureCopies(ctx, bytes, rounds)
	if err != nil {
		return err
	}
	if f.json {
		return cardJSON(stdout, c)
	}
	fmt.Fprintf(stdout, "copies of %d bytes, median of %d rounds (µs per call)\n", c.Bytes, c.Rounds)
	fmt.Fprintf(stdout, "  device→device, synchronous        %8.1f\n", c.D2DSyncUS)
	fmt.Fprintf(stdout, "  host→device, pinned / unpinned    %8.1f / %.1f\n", c.H2DPinnedSyncUS, c.H2DUnpinnedUS)
	fmt.Fprintf(stdout, "  device→host, pinned / unpinned    %8.1f / %.1f\n", c.D2HPinnedSyncUS, c.D2HUnpinnedUS)
	fmt.Fprintf(stdout, "  one queued copy + stream sync     %8.1f\n", c.EmptySyncUS)
	fmt.Fprintf(stdout, "  per copy, 32 queued + one sync    %8.1f\n", c.QueuedCopyUS)
	if c.PropertiesSample > 0 {
		fmt.Fprintf(stdout, "  one properties sample             %8.1f\n", c.PropertiesSample)
	}
	if !c.Streams {
		fmt.Fprintln(stdout, "  (the runtime has no streams: queued copies ran synchronously)")
	}
	return nil
}
