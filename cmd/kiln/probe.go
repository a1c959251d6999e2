package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"sort"
	"time"

	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/card"
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
	"copy":       {"cost of one small on-card copy (D2D) and of 4-byte host writes and reads", probeCopy, probeCopyFlags},
	"load-order": {"load a pulsar2-built (ONNX) engine after an llm_build engine and execute both: does the card survive?", probeLoadOrder, probeLoadOrderFlags},
}

func probeUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: kiln card probe NAME [--card N] [--lib PATH] [flags] [ARGS]\n\nprobes:")
	names := make([]string, 0, len(probes))
	for n := range probes {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-11s %s\n", n, probes[n].summary)
	}
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
	fs.Int("n", 1000, "copies to time")
	fs.Int("bytes", 2048, "bytes per on-card copy (2048 = one K or V row of Qwen3-0.6B/1.7B/4B)")
}

// durations summarises timings: mean, median and 99th percentile.
type durations []time.Duration

func (d durations) String() string {
	s := slices.Clone(d)
	slices.Sort(s)
	var sum time.Duration
	for _, v := range s {
		sum += v
	}
	q := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	return fmt.Sprintf("mean %.1f µs, median %.1f µs, p99 %.1f µs over %d",
		us(sum/time.Duration(len(s))), us(q(0.5)), us(q(0.99)), len(s))
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func probeCopy(ctx context.Context, f cardFlags, fs *flag.FlagSet, _ []string, stdout io.Writer) error {
	n := fs.Lookup("n").Value.(flag.Getter).Get().(int)
	size := fs.Lookup("bytes").Value.(flag.Getter).Get().(int)
	if n < 1 || n > 1_000_000 {
		return fmt.Errorf("--n %d: want 1 to 1000000", n)
	}
	if size < 1 || size > 64<<20 {
		return fmt.Errorf("--bytes %d: want 1 to %d", size, 64<<20)
	}
	dev, err := openProbeCard(ctx, f)
	if err != nil {
		return err
	}
	defer dev.Close(context.WithoutCancel(ctx))
	copies, writes, reads := make(durations, n), make(durations, n), make(durations, n)
	word := make([]byte, 4)
	err = dev.Do(ctx, func(t *npu.Thread) error {
		a, err := t.Alloc(uint64(size))
		if err != nil {
			return err
		}
		defer t.Free(a)
		b, err := t.Alloc(uint64(size))
		if err != nil {
			return err
		}
		defer t.Free(b)
		for i := range n {
			start := time.Now()
			if err := t.Copy(b, 0, a, 0, uint64(size)); err != nil {
				return err
			}
			copies[i] = time.Since(start)
			start = time.Now()
			if err := t.Write(a, 0, word); err != nil {
				return err
			}
			writes[i] = time.Since(start)
			start = time.Now()
			if err := t.Read(word, b, 0); err != nil {
				return err
			}
			reads[i] = time.Since(start)
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "card %d (device %d), runtime %s\n", f.card, dev.ID(), dev.Runtime().Path())
	fmt.Fprintf(stdout, "D2D copy of %d B (axclrtMemcpy, synchronous): %s\n", size, copies)
	fmt.Fprintf(stdout, "H2D write of 4 B from Go memory:            %s\n", writes)
	fmt.Fprintf(stdout, "D2H read of 4 B into Go memory:             %s\n", reads)
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
