package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/card"
	"github.com/kiln-project/kiln/worker/npu"
)

// cardUsage is the help text of kiln card.
const cardUsage = `usage: kiln card info [--json] [--lib PATH]
       kiln card inspect [--json] [--lib PATH] FILE
       kiln card reboot [--card N] [--lib PATH]
       kiln card probe copy|load-order|kv-inplace [flags] [ARGS]

info     the runtime version and, per card, its id (PCIe bus number), PCI
         address, firmware, temperature, CMM used/total and NPU/CPU load,
         like axcl-smi.
inspect  loads the model FILE (.axmodel) on the first card and prints its
         shape groups and, per group, every input and output: name, data
         type, layout, dims and bytes. Nothing is executed.
reboot   reboots the card's firmware (axclrtRebootDevice) and waits for it
         to come back: the software rescue of a wedged card (docs/card.md).
probe    measurements to take on a real card (docs/card.md, "First
         measurements"); kiln card probe help lists them.

inspect, reboot and probe refuse a card a kiln worker holds (its lock in
--lock-dir): stop the worker first.

The runtime library is --lib, else KILN_AXCL_LIB, else
/usr/lib/axcl/libaxcl_rt.so (point it at the card simulator to try kiln
without a card). --json prints one JSON object.
`

// runCard is the kiln card sub-command.
func runCard(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, cardUsage)
		return errUsage
	}
	switch args[0] {
	case "info":
		return runCardInfo(ctx, args[1:], stdout, stderr)
	case "inspect":
		return runCardInspect(ctx, args[1:], stdout, stderr)
	case "reboot":
		return runCardReboot(ctx, args[1:], stdout, stderr)
	case "probe":
		return runCardProbe(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, cardUsage)
		return nil
	}
	fmt.Fprintf(stderr, "kiln card: unknown sub-command %q\n\n%s", args[0], cardUsage)
	return errUsage
}

// cardFlags holds the flags the sub-commands take.
type cardFlags struct {
	json bool
	lib  string
	lock string
	card int
}

// parseCard parses flags placed before or after the positional arguments
// and returns the positional ones.
func parseCard(name string, args []string, stderr io.Writer) (cardFlags, []string, error) {
	return parseCardWith(name, args, stderr, nil)
}

// parseCardWith is parseCard with more flags, registered by extra.
func parseCardWith(name string, args []string, stderr io.Writer, extra func(*flag.FlagSet)) (cardFlags, []string, error) {
	var f cardFlags
	fs := flag.NewFlagSet("kiln card "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&f.json, "json", false, "print one JSON object")
	fs.StringVar(&f.lib, "lib", "", "path of libaxcl_rt.so (default $"+axcl.EnvLibrary+", else "+axcl.DefaultLibraryPath+")")
	fs.StringVar(&f.lock, "lock-dir", getenv(envLockDir, ""), "folder of the per-card locks ($"+envLockDir+"; unset: /run/kiln when it exists, else $TMPDIR/kiln)")
	if name != "info" && name != "inspect" {
		fs.IntVar(&f.card, "card", 0, "the card (its index)")
	}
	if extra != nil {
		extra(fs)
	}
	fs.Usage = func() {
		fmt.Fprint(stderr, cardUsage)
		fmt.Fprintln(stderr, "\nflags:")
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil { // flags may follow the arguments
		return f, nil, err
	}
	return f, fs.Args(), nil
}

func runCardInfo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, pos, err := parseCard("info", args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		fmt.Fprintf(stderr, "kiln card info: unexpected argument %q\n", pos[0])
		return errUsage
	}
	info, err := npu.CardInfo(ctx, f.lib)
	if err != nil {
		return err
	}
	if f.json {
		return cardJSON(stdout, info)
	}
	full := info.FullVersion
	if full == "" {
		full = "build unknown" // no axclrtGetFullVersion: an older SDK
	}
	fmt.Fprintf(stdout, "runtime  %s (%s)  soc %s\nlibrary  %s\n\n", full, info.Version, info.SoC, info.Library)
	if len(info.Cards) == 0 {
		fmt.Fprintln(stdout, "no card found")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CARD\tID\tPCI\tFIRMWARE\tTEMP\tCMM USED/TOTAL\tMEM USED/TOTAL\tNPU\tCPU")
	for _, c := range info.Cards {
		if c.HealthUnknown {
			fmt.Fprintf(tw, "%d\t%d\t-\tunknown\t-\t-\t-\t-\t-\t(the runtime has no axclrtGetDeviceProperties: health unknown)\n", c.Index, c.ID)
			continue
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%.1f °C\t%d / %d MiB\t%d / %d MiB\t%.0f %%\t%.0f %%\n",
			c.Index, c.ID, c.PCI, c.Firmware, c.TemperatureC, c.CMMUsedMiB, c.CMMTotalMiB,
			c.MemUsedMiB, c.MemTotalMiB, c.NPULoadPercent, c.CPULoadPercent)
	}
	return tw.Flush()
}

func runCardInspect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, pos, err := parseCard("inspect", args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "kiln card inspect: one model FILE is required")
		return errUsage
	}
	lock, err := card.LockIndex(ctx, f.lib, f.lock, 0)
	if err != nil {
		return err
	}
	defer lock.Release()
	info, err := npu.Inspect(ctx, npu.Config{Library: f.lib}, pos[0])
	if err != nil {
		return err
	}
	if f.json {
		return cardJSON(stdout, info)
	}
	fmt.Fprintf(stdout, "model     %s\ncompiler  %s\nmemory    CMM %.1f MiB, system %.1f MiB\ngroups    %d\n",
		info.Path, info.Compiler, float64(info.CMMBytes)/(1<<20), float64(info.SysBytes)/(1<<20), len(info.Groups))
	for g, grp := range info.Groups {
		fmt.Fprintf(stdout, "\ngroup %d\n", g)
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  DIR\t#\tNAME\tDTYPE\tLAYOUT\tDIMS\tBYTES")
		for _, dir := range []axcl.Direction{axcl.Input, axcl.Output} {
			list := grp.Inputs
			if dir == axcl.Output {
				list = grp.Outputs
			}
			for _, t := range list {
				fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%s\t%s\t%d\n", dir, t.Index, t.Name, t.DataType, t.Layout, cardDims(t.Dims), t.Size)
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

func cardDims(dims []int) string {
	parts := make([]string, len(dims))
	for i, d := range dims {
		parts[i] = fmt.Sprint(d)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func cardJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
