package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/card"
	"github.com/kiln-project/kiln/worker/llm"
	"github.com/kiln-project/kiln/worker/npu"
)

// The first measurements to take on a real card (docs/card.md, "First
// measurements"): each `kiln card probe NAME` takes one. A probe holds the
// card's lock for its run, so it refuses a card a worker holds.

// probe is one measurement.
type probe struct {
	summary string
	run     func(ctx context.Context, f cardFlags, fs *flag.FlagSet, args []string, stdout io.Writer) error
	flags   func(fs *flag.FlagSet) // the probe's own flags, nil for none
}

// probes are the measurements by name; each is one entry.
var probes = map[string]probe{
	"copy":       {"cost of one small synchronous copy on the card (D2D, H2D, D2H, pinned and not) against copies queued on the stream", probeCopy, probeCopyFlags},
	"load-order": {"load a pulsar2-built (ONNX) engine after an llm_build engine and execute both: does the card survive?", probeLoadOrder, probeLoadOrderFlags},
	"kv-inplace": {"decode PACKAGE twice, K/V rows staged and bound in place: are the rows and tokens identical?", probeKVInPlace, probeKVInPlaceFlags},
}

func probeUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: kiln card probe NAME [--card N] [--lib PATH] [flags] [ARGS]\n\nprobes:")
	listSummaries(w, 11, probes, func(p probe) string { return p.summary })
	fmt.Fprintln(w, "\nkiln card probe NAME -h shows its flags.")
}

func runCardProbe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		probeUsage(stdout)
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	p, ok := probes[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "kiln card probe: unknown probe %q\n\n", args[0])
		probeUsage(stderr)
		return errUsage
	}
	var extra *flag.FlagSet
	f, pos, err := parseCardWith("probe "+args[0], args[1:], stderr, func(fs *flag.FlagSet) {
		if p.flags != nil {
			p.flags(fs)
		}
		extra = fs
	})
	if err != nil {
		return err
	}
	lock, err := card.LockIndex(ctx, f.lib, f.lock, f.card)
	if err != nil {
		return err
	}
	defer lock.Release()
	return p.run(ctx, f, extra, pos, stdout)
}

// openProbeCard opens card f.card without the properties sampler.
func openProbeCard(ctx context.Context, f cardFlags) (*npu.Device, error) {
	return npu.Open(ctx, npu.Config{Library: f.lib, Index: f.card, SampleInterval: -1})
}

func probeCopyFlags(fs *flag.FlagSet) {
	fs.Int("bytes", 2048, "bytes per copy, 1 … 1048576 (2048 = one K or V row of Qwen3-0.6B/1.7B/4B)")
	fs.Int("rounds", 200, "rounds per measurement, 1 … 10000 (the median is printed)")
}

// probeCopy times small copies (npu.MeasureCopies): the synchronous numbers
// are the per-call cost the decode projection in docs/BENCHMARKS.md assumes
// (457 µs in the field).
func probeCopy(ctx context.Context, f cardFlags, fs *flag.FlagSet, pos []string, stdout io.Writer) error {
	size, rounds := intFlag(fs, "bytes"), intFlag(fs, "rounds")
	if len(pos) != 0 {
		return fmt.Errorf("unexpected argument %q: %w", pos[0], errUsage)
	}
	dev, err := openProbeCard(ctx, f)
	if err != nil {
		return err
	}
	defer dev.Close(context.WithoutCancel(ctx))
	c, err := dev.MeasureCopies(ctx, size, rounds)
	if err != nil {
		return err
	}
	if f.json {
		return cardJSON(stdout, c)
	}
	fmt.Fprintf(stdout, "card %d (device %d), runtime %s\n", f.card, dev.ID(), dev.Runtime().Path())
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

func intFlag(fs *flag.FlagSet, name string) int {
	return fs.Lookup(name).Value.(flag.Getter).Get().(int)
}

// errProbeDiffers is the exit of a probe that found the two paths differ.
var errProbeDiffers = errors.New("in-place K/V rows differ from the staging path")

func probeKVInPlaceFlags(fs *flag.FlagSet) {
	fs.Int("tokens", 32, "greedy tokens to decode, 1 … 1024")
}

// probeKVInPlace loads the LLM package (a folder) and runs a fixed prompt
// and N greedy tokens twice from a clean cache: once with decode writing
// each token's K/V rows through the staging outputs and a copy on the
// card, once with the decode group's K_cache_out/V_cache_out bound
// straight into the cache row (what kiln does when rows are 2 KiB
// multiples). It compares every K and V row of every layer and the
// tokens, and fails when they differ: then run workers with
// KILN_KV_STAGING=1.
func probeKVInPlace(ctx context.Context, f cardFlags, fs *flag.FlagSet, pos []string, stdout io.Writer) error {
	tokens := intFlag(fs, "tokens")
	if len(pos) != 1 || tokens < 1 || tokens > 1024 {
		return fmt.Errorf("one PACKAGE folder and --tokens between 1 and 1024 are required: %w", errUsage)
	}
	quiet := slog.New(slog.DiscardHandler)
	dev, err := openProbeCard(ctx, f)
	if err != nil {
		return err
	}
	defer dev.Close(context.WithoutCancel(ctx))
	m, err := llm.Load(ctx, dev, pos[0], &llm.Options{Logger: quiet, PrefixCacheBytes: -1})
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

func probeLoadOrderFlags(fs *flag.FlagSet) {
	fs.String("llm", "", "an engine built by pulsar2 llm_build (a decoder layer, e.g. qwen3_p128_l0_together.axmodel)")
	fs.String("onnx", "", "an engine built by pulsar2 build from ONNX (a vision encoder, an SD VAE or text encoder)")
	fs.Duration("timeout", 60*time.Second, "how long to wait for the card to come back if the probe drops it")
}

// probeLoadOrder loads --llm, then --onnx (the order that dropped cards in
// the field, card-field-notes.md §2), and executes each once. When the card
// drops, it reboots it.
func probeLoadOrder(ctx context.Context, f cardFlags, fs *flag.FlagSet, _ []string, stdout io.Writer) error {
	llmFile := fs.Lookup("llm").Value.String()
	onnxFile := fs.Lookup("onnx").Value.String()
	timeout := fs.Lookup("timeout").Value.(flag.Getter).Get().(time.Duration)
	if llmFile == "" || onnxFile == "" {
		return fmt.Errorf("--llm and --onnx are both required: %w", errUsage)
	}
	fmt.Fprintln(stdout, "loading the llm_build engine, then the pulsar2 (ONNX) engine: on some runtimes this drops the card; kiln reboots it if so")
	dev, err := openProbeCard(ctx, f)
	if err != nil {
		return err
	}
	id := dev.ID()
	var step string
	for _, file := range []string{llmFile, onnxFile} {
		step = "load " + file
		if _, err = dev.LoadModel(ctx, file, nil); err != nil {
			break
		}
	}
	if err == nil {
		step = "execute"
		err = executeAll(ctx, dev)
	}
	lost := dev.Err()
	_ = dev.Close(context.WithoutCancel(ctx)) // unloads both
	full := dev.Runtime().FullVersion()
	switch {
	case err == nil:
		fmt.Fprintf(stdout, "the card loaded and executed both (runtime %s): load order does not drop the card on this runtime\n", full)
		return nil
	case lost == nil && !errors.Is(err, axcl.ErrDeviceLost):
		return fmt.Errorf("%s: %w (the card is still up: not a load-order drop)", step, err)
	}
	fmt.Fprintf(stdout, "the card dropped at %s: %v\nload order matters on this runtime (%s): kiln's order (ONNX-built first) is needed\n", step, err, full)
	if rerr := npu.Reboot(ctx, npu.RebootConfig{Library: f.lib, Device: id, Timeout: timeout}); rerr != nil {
		return fmt.Errorf("the card did not come back: %w", rerr)
	}
	fmt.Fprintln(stdout, "card rebooted and back")
	return nil
}

// executeAll executes every model loaded on dev once, in its smallest
// shape group.
func executeAll(ctx context.Context, dev *npu.Device) error {
	return dev.Do(ctx, func(t *npu.Thread) error {
		for _, m := range t.Models() {
			if err := t.Execute(m, m.SmallestGroup()); err != nil {
				return err
			}
		}
		return nil
	})
}

func runCardReboot(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var timeout time.Duration
	f, pos, err := parseCardWith("reboot", args, stderr, func(fs *flag.FlagSet) {
		fs.DurationVar(&timeout, "timeout", 60*time.Second, "how long to wait for the card to come back")
	})
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		fmt.Fprintf(stderr, "kiln card reboot: unexpected argument %q\n", pos[0])
		return errUsage
	}
	lock, err := card.LockIndex(ctx, f.lib, f.lock, f.card)
	if err != nil {
		return err
	}
	defer lock.Release()
	start := time.Now()
	if err := npu.Reboot(ctx, npu.RebootConfig{Library: f.lib, Index: f.card, Timeout: timeout}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "card %d rebooted: back after %v\n", f.card, time.Since(start).Round(time.Millisecond))
	return nil
}
