package card

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/npu"
)

// modelRuntime turns one kind of model package into a handler.
type modelRuntime struct {
	// name says which runtime it is in logs ("llm", "sd").
	name string
	// kind is the kind of job its packages serve (schema.KindChat, KindImage).
	kind string
	// detect reports whether the package folder is one this runtime serves.
	detect func(dir string) bool
	// open loads the package onto the card; bind, when not nil, records what
	// it binds to each role (kiln models check); slots is Config.Slots (a
	// chat model's K/V slots; other runtimes run one job at a time).
	open func(ctx context.Context, dev *npu.Device, model, dir string, log *slog.Logger, bind *npu.Bindings, slots int) (*servedModel, error)
}

// servedModel is a package resident on the card with its handler.
type servedModel struct {
	chat   worker.Handler[schema.ChatJob]
	image  worker.Handler[schema.ImageJob]
	cmmMiB int
	close  func(context.Context) error
	// slots reports the jobs running and the most that may run at once
	// (a chat model's K/V slots); nil: one at a time.
	slots func() (used, total int)
}

// modelRuntimes lists the runtimes in the order they are asked.
func modelRuntimes() []modelRuntime {
	return []modelRuntime{llmRuntime(), sdRuntime()}
}

// runtimeFor is the first runtime that recognises the package at path, nil
// when none does.
func runtimeFor(path string) *modelRuntime {
	for _, r := range modelRuntimes() {
		if r.detect(path) {
			return &r
		}
	}
	return nil
}

// modelPackages lists the sub-folders of dir whose names are subject
// tokens, sorted (a missing dir is no packages).
func modelPackages(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("models folder %s: %w", dir, err)
	}
	var names []string
	for _, en := range entries {
		if en.IsDir() && schema.ValidToken(en.Name()) {
			names = append(names, en.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}
