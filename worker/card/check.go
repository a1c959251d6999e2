package card

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/npu"
)

// CheckConfig configures Check.
type CheckConfig struct {
	// Library is the card runtime ("" = axcl.LibraryPath(): $KILN_AXCL_LIB,
	// else the default path); the card simulator works too.
	Library string
	// Index is the card to check on.
	Index int
	// Slots is the K/V slots of each chat model, as Config.Slots: a package
	// whose slots do not fit the CMM budget is Refused with the figures.
	Slots int
	// Logger (default: discard; the loaders log their progress).
	Logger *slog.Logger
}

// PackageReport is what kiln will do with one package folder (Check).
type PackageReport struct {
	Dir  string `json:"dir"`
	Name string `json:"name"` // the model name kiln serves it under: the folder's name
	// Files are the package's files, relative to Dir, sorted.
	Files []string `json:"files"`
	// Runtime is the runtime that recognises the package ("llm", "sd"), ""
	// when none does; Kind is the kind of job it serves.
	Runtime string `json:"runtime,omitempty"`
	Kind    string `json:"kind,omitempty"`
	// Tokenizer lists the package's tokenizer files and folders.
	Tokenizer []string `json:"tokenizer,omitempty"`
	// Models are the package's .axmodel files as the card reads them: shape
	// groups and every input and output (index, name, dtype, dims).
	Models []ModelReport `json:"models"`
	// Bindings are what the runtime bound to each of its roles while
	// loading the package: model file, shape group (-1: every group), the
	// tensor's index and name; for a refused package, as far as it got.
	Bindings []npu.Binding `json:"bindings"`
	// Refused says exactly why kiln will not serve the package ("" when it
	// loaded on the card). CMMMiB is what it took when it did.
	Refused string `json:"refused,omitempty"`
	CMMMiB  int    `json:"cmm_mib,omitempty"`
	// Slots is how many jobs of a chat package run at once: its K/V slots
	// (CMMMiB holds them all); 0 for a package that runs one at a time.
	Slots int `json:"slots,omitempty"`
}

// ModelReport is one model file of a package.
type ModelReport struct {
	File  string         `json:"file"` // relative to the package folder
	Info  *npu.ModelInfo `json:"info,omitempty"`
	Error string         `json:"error,omitempty"` // the card could not read it
}

// ErrNoRuntime is matched by Check's error when no card runtime is
// installed at the library path.
var ErrNoRuntime = errors.New("card: no card runtime")

// Check opens the card (or the simulator) and, for each package folder of
// dirs in order, lists its files, the runtime that recognises it, its
// tokenizer and every model file's shape groups and tensors, then loads it
// the way the worker does, recording what the runtime binds to each role
// (Bindings), and unloads it: a package that does not load is Refused with
// the loader's error. It fails only when the card does (no
// runtime, a device fault).
func Check(ctx context.Context, cfg CheckConfig, dirs []string) (_ []PackageReport, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	lib := cfg.Library
	if lib == "" {
		lib = axcl.LibraryPath()
	}
	if _, err := os.Stat(lib); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w at %s: install the axclhost package (docs/card.md), or set --lib / KILN_AXCL_LIB (the simulator: make sim)", ErrNoRuntime, lib)
	}
	dev, err := npu.Open(ctx, npu.Config{Library: lib, Index: cfg.Index, SampleInterval: -1, Logger: cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("card %d: %w", cfg.Index, err)
	}
	defer func() {
		if cerr := dev.Close(context.WithoutCancel(ctx)); cerr != nil && err == nil {
			err = fmt.Errorf("close card %d: %w", cfg.Index, cerr)
		}
	}()
	reports := make([]PackageReport, 0, len(dirs))
	for _, dir := range dirs {
		r := checkPackage(ctx, dev, dir, cfg.Slots, cfg.Logger)
		if derr := dev.Err(); derr != nil {
			return reports, fmt.Errorf("card %d failed while checking %s: %w", cfg.Index, dir, derr)
		}
		if err := ctx.Err(); err != nil {
			return reports, err
		}
		reports = append(reports, r)
	}
	return reports, nil
}

func checkPackage(ctx context.Context, dev *npu.Device, dir string, slots int, log *slog.Logger) PackageReport {
	r := PackageReport{Dir: dir, Name: filepath.Base(filepath.Clean(dir))}
	st, err := os.Stat(dir)
	if err != nil {
		r.Refused = err.Error()
		return r
	}
	if !st.IsDir() {
		r.Refused = fmt.Sprintf("%s is not a folder: a package is a folder of files", dir)
		return r
	}
	r.Files, err = packageFiles(dir)
	if err != nil {
		r.Refused = err.Error()
		return r
	}
	for _, f := range r.Files {
		top := strings.SplitN(f, "/", 2)[0]
		if strings.Contains(strings.ToLower(top), "tokenizer") && !slices.Contains(r.Tokenizer, top) {
			r.Tokenizer = append(r.Tokenizer, top)
		}
		if strings.HasSuffix(f, ".axmodel") {
			m := ModelReport{File: f}
			if m.Info, err = dev.Inspect(ctx, filepath.Join(dir, f)); err != nil {
				m.Error = err.Error()
			}
			r.Models = append(r.Models, m)
		}
	}
	rt := runtimeFor(dir)
	switch {
	case !schema.ValidToken(r.Name):
		r.Refused = fmt.Sprintf("folder name %q is not a model name (letters, digits, - and _ only; it becomes a subject token)", r.Name)
	case rt == nil:
		r.Refused = "no runtime of this build recognises its files (llm: a Qwen3/Llama-style package with config.json or " +
			"*_p<N>_l<i>_together.axmodel layers; sd: unet.axmodel, vae_decoder.axmodel, time_input_txt2img.npy and text_encoder/*.axmodel)"
	}
	if rt != nil {
		r.Runtime, r.Kind = rt.name, rt.kind
	}
	if r.Refused != "" {
		return r
	}
	var bound npu.Bindings
	m, err := rt.open(ctx, dev, r.Name, dir, log, &bound, slots)
	r.Bindings = bound.List()
	if err != nil {
		r.Refused = err.Error()
		return r
	}
	r.CMMMiB = m.cmmMiB
	if m.slots != nil {
		_, r.Slots = m.slots()
	}
	if m.close != nil {
		if err := m.close(ctx); err != nil {
			r.Refused = fmt.Sprintf("loaded, but unloading it failed: %v", err)
		}
	}
	return r
}

// packageFiles lists the files under dir, relative and slash-separated,
// sorted (symbolic links are listed, not followed).
func packageFiles(dir string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		files = append(files, filepath.ToSlash(rel))
		return nil
	})
	slices.Sort(files)
	return files, err
}

// PackageDirs lists the package folders of a models folder (its
// sub-folders whose names are model names), as the worker finds them.
func PackageDirs(modelsDir string) ([]string, error) {
	names, err := modelPackages(modelsDir)
	if err != nil {
		return nil, err
	}
	dirs := make([]string, len(names))
	for i, n := range names {
		dirs[i] = filepath.Join(modelsDir, n)
	}
	return dirs, nil
}
