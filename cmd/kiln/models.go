package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/card"
	"github.com/kiln-project/kiln/worker/npu"
)

// modelsUsage is the help text of kiln models.
const modelsUsage = `usage: kiln models check [--json] [--lib PATH] [--card N] [DIR...]

check  what kiln will do with each model package folder DIR (default: every
       package of --models, else $KILN_MODELS, else /var/lib/kiln/models):
       its files, the runtime that recognises it and the kind of jobs it
       serves, its tokenizer, every model file's shape groups and tensors
       (index, name, dtype, dims) as the card reads them, which tensor of
       which file and shape group kiln binds to each role (and what runs
       each group), and, for a package kiln refuses, exactly why. Each
       package is loaded on the card the way the worker loads it, then
       unloaded. Exits 1 when any package is refused.

The card runtime is --lib, else KILN_AXCL_LIB, else
/usr/lib/axcl/libaxcl_rt.so (the card simulator works: make sim).
It refuses a card a kiln worker holds (its lock in --lock-dir).
`

func runModels(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, modelsUsage)
		return errUsage
	}
	switch args[0] {
	case "check":
		return runModelsCheck(ctx, args[1:], e.stdout, e.stderr)
	case "help", "-h", "--help":
		fmt.Fprint(e.stdout, modelsUsage)
		return nil
	}
	fmt.Fprintf(e.stderr, "kiln models: unknown sub-command %q\n\n%s", args[0], modelsUsage)
	return errUsage
}

func runModelsCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("kiln models check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print one JSON array")
	lib := fs.String("lib", "", "path of libaxcl_rt.so (default $"+axcl.EnvLibrary+", else "+axcl.DefaultLibraryPath+")")
	index := fs.Int("card", 0, "the card to load the packages on (its index)")
	models := fs.String("models", getenv(envModels, defaultModels), "folder of model packages checked when no DIR is given ($"+envModels+")")
	lockDir := fs.String("lock-dir", getenv(envLockDir, ""), "folder of the per-card locks ($"+envLockDir+"; unset: /run/kiln when it exists, else $TMPDIR/kiln)")
	slots := slotsFlag(fs)
	fs.Usage = func() {
		fmt.Fprint(stderr, modelsUsage)
		fmt.Fprintln(stderr, "\nflags:")
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil { // flags may follow the folders
		return err
	}
	if err := checkSlots(*slots); err != nil {
		return err
	}
	dirs := fs.Args()
	if len(dirs) == 0 {
		var err error
		if dirs, err = card.PackageDirs(*models); err != nil {
			return err
		}
		if len(dirs) == 0 {
			return fmt.Errorf("no model packages in %s (one sub-folder per model)", *models)
		}
	}
	lock, err := card.LockIndex(ctx, *lib, *lockDir, *index)
	if err != nil {
		return err
	}
	defer lock.Release()
	reports, err := card.Check(ctx, card.CheckConfig{Library: *lib, Index: *index, Slots: *slots}, dirs)
	if err != nil {
		return err
	}
	if *asJSON {
		if err := cardJSON(stdout, reports); err != nil {
			return err
		}
	} else if err := printReports(stdout, reports); err != nil {
		return err
	}
	var refused []string
	for _, r := range reports {
		if r.Refused != "" {
			refused = append(refused, r.Name)
		}
	}
	if len(refused) > 0 {
		return fmt.Errorf("%d of %d packages refused: %s", len(refused), len(reports), strings.Join(refused, ", "))
	}
	return nil
}

func printReports(w io.Writer, reports []card.PackageReport) error {
	for i, r := range reports {
		if i > 0 {
			fmt.Fprintln(w)
		}
		verdict := fmt.Sprintf("serves %s jobs (runtime %s, %d MiB of CMM)", r.Kind, r.Runtime, r.CMMMiB)
		if r.Slots > 0 {
			verdict = fmt.Sprintf("serves %s jobs (runtime %s, %d MiB of CMM with %d K/V slots: %d jobs at once)", r.Kind, r.Runtime, r.CMMMiB, r.Slots, r.Slots)
		}
		if r.Refused != "" {
			verdict = "REFUSED: " + r.Refused
		}
		fmt.Fprintf(w, "package    %s  (%s)\n%s\n", r.Name, r.Dir, verdict)
		fmt.Fprintf(w, "files      %d: %s\n", len(r.Files), strings.Join(r.Files, ", "))
		if len(r.Tokenizer) > 0 {
			fmt.Fprintf(w, "tokenizer  %s\n", strings.Join(r.Tokenizer, ", "))
		} else {
			fmt.Fprintln(w, "tokenizer  none found")
		}
		if err := printBindings(w, r.Bindings); err != nil {
			return err
		}
		for _, m := range r.Models {
			if m.Error != "" {
				fmt.Fprintf(w, "\nmodel %s: unreadable: %s\n", m.File, m.Error)
				continue
			}
			fmt.Fprintf(w, "\nmodel %s  (%d shape groups)\n", m.File, len(m.Info.Groups))
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "  GROUP\tDIR\t#\tNAME\tDTYPE\tDIMS")
			for g, grp := range m.Info.Groups {
				for _, dir := range []axcl.Direction{axcl.Input, axcl.Output} {
					list := grp.Inputs
					if dir == axcl.Output {
						list = grp.Outputs
					}
					for _, t := range list {
						fmt.Fprintf(tw, "  %d\t%s\t%d\t%s\t%s\t%s\n", g, dir, t.Index, t.Name, t.DataType, cardDims(t.Dims))
					}
				}
			}
			if err := tw.Flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// printBindings prints what the runtime bound to each role: file, shape
// group ("*": every group) and what runs it, the tensor's index and name.
func printBindings(w io.Writer, bindings []npu.Binding) error {
	if len(bindings) == 0 {
		return nil
	}
	fmt.Fprintf(w, "\nbindings   %d: what kiln binds to each role\n", len(bindings))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  FILE\tGROUP\tUSE\tROLE\tDIR\t#\tNAME\tDTYPE\tDIMS")
	for _, b := range bindings {
		group, index, dir, dims := "*", "-", b.Dir, ""
		if b.Group >= 0 {
			group = fmt.Sprint(b.Group)
		}
		if b.Index >= 0 {
			index, dims = fmt.Sprint(b.Index), cardDims(b.Dims)
		}
		if dir == "" {
			dir = "file"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", b.Model, group, dash(b.Use), b.Role, dir, index, dash(b.Name), dash(b.DataType), dims)
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
