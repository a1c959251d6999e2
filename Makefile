# kiln — `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BUILD := build
KILN := $(BUILD)/kiln
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
REAL_RUNTIME := /usr/lib/axcl/libaxcl_rt.so
# The static analyser, pinned: `go run` fetches this version through the module proxy (checksummed) once.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: help build sim run test test/short cross vet fuzz bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z/_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build the kiln binary into build/kiln
	$(GO) build -ldflags "$(LDFLAGS)" -o $(KILN) ./cmd/kiln

sim: ## build the card simulator (build/cardsim/libaxcl_rt.so) and simulated model packages (build/models)
	$(GO) run ./test/cardsim/cmd/cardsim -lib $(BUILD)/cardsim/libaxcl_rt.so -models $(BUILD)/models

# make run: kiln up with the environment passed through. Without a card
# runtime installed (and no KILN_AXCL_LIB given) it runs on the simulator.
run: build ## start kiln (embedded broker + worker); on the simulator when no card runtime is installed
	@if [ -z "$$KILN_AXCL_LIB" ] && [ ! -e $(REAL_RUNTIME) ]; then \
		echo "kiln: no card runtime at $(REAL_RUNTIME): running on the card simulator (make sim)"; \
		$(MAKE) --no-print-directory sim; \
		export KILN_AXCL_LIB=$(CURDIR)/$(BUILD)/cardsim/libaxcl_rt.so; \
		export KILN_MODELS=$${KILN_MODELS:-$(CURDIR)/$(BUILD)/models}; \
	fi; \
	export KILN_DATA=$${KILN_DATA:-$(CURDIR)/$(BUILD)/data}; \
	export KILN_MODELS=$${KILN_MODELS:-$(CURDIR)/$(BUILD)/models}; \
	exec $(KILN) up

vet: ## gofmt, go vet and staticcheck
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

cross: ## the Pi build: linux/arm64 without cgo
	GOOS=linux GOARCH=arm64 CGO_ENABLED=0 $(GO) build ./...
	GOOS=linux GOARCH=arm64 CGO_ENABLED=0 $(GO) build -o /dev/null ./cmd/kiln

test: vet cross ## everything CI runs: vet, the Pi build, all tests with -race (fuzz seeds included)
	$(GO) test -race -count=1 -timeout 12m ./...

fuzz: ## run every fuzz target for FUZZTIME each (default 20s)
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
			echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $${FUZZTIME:-20s} $$pkg || exit 1; \
		done; \
	done

bench: ## run the benchmarks (results go to docs/BENCHMARKS.md by hand, with machine and date)
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean: ## remove build outputs
	rm -rf $(BUILD)
