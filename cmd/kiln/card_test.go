package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/npu"
)

func cardTemp(t *testing.T, lib string) float64 {
	t.Helper()
	code, out, errOut := kiln(t, t.Context(), "card", "info", "--json", "--lib", lib)
	if code != 0 {
		t.Fatalf("kiln card info: %d %s", code, errOut)
	}
	var info struct {
		Cards []struct {
			TemperatureC float64 `json:"temperature_c"`
		} `json:"cards"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Cards) != 1 {
		t.Fatalf("kiln card info --json: %q (%v)", out, err)
	}
	return info.Cards[0].TemperatureC
}

// KILN_AXCL_LIB=<simulator> kiln card info shows a temperature that rises
// while models execute on the card.
func TestCardInfoTemperatureRisesWhileModelsExecute(t *testing.T) {
	lib := cardsim.Library(t)
	t.Setenv("KILN_SIM_EXEC_US", "20000")
	t.Setenv("KILN_SIM_HEAT_C_PER_S", "40")
	dir := t.TempDir()
	if err := cardsim.WriteLLMPackage(dir, cardsim.TinyQwen3()); err != nil {
		t.Fatal(err)
	}
	layers, _ := filepath.Glob(filepath.Join(dir, "*", "qwen3_p128_l0_together.axmodel"))
	if len(layers) != 1 {
		t.Fatalf("layer file not found under %s", dir)
	}
	ctx := context.Background()
	dev, err := npu.Open(ctx, npu.Config{Library: lib})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close(ctx)
	m, err := dev.LoadModel(ctx, layers[0], nil)
	if err != nil {
		t.Fatal(err)
	}
	before := cardTemp(t, lib)
	for range 20 {
		if err := dev.Execute(ctx, m, 0); err != nil {
			t.Fatal(err)
		}
	}
	if after := cardTemp(t, lib); after <= before {
		t.Fatalf("card temperature %.2f °C before and %.2f °C after 20 executes", before, after)
	}
	code, out, _ := kiln(t, t.Context(), "card", "inspect", "--lib", lib, layers[0])
	if code != 0 || !strings.Contains(out, "K_cache") || !strings.Contains(out, "group 0") {
		t.Fatalf("kiln card inspect: %d %q", code, out)
	}
}

func TestCardInfoWithoutRuntimeSaysHowToInstall(t *testing.T) {
	code, _, errOut := kiln(t, t.Context(), "card", "info", "--lib", "/nonexistent/libaxcl_rt.so")
	if code != 1 || !strings.Contains(errOut, "KILN_AXCL_LIB") {
		t.Fatalf("card info without a runtime: %d %q", code, errOut)
	}
}

func TestTokenizeMatchesReferenceIDs(t *testing.T) {
	code, out, errOut := kiln(t, t.Context(), "tokenize", "--tokenizer", "../../worker/tokenize/testdata/qwen3/tokenizer.json.gz", "<|im_start|>user\nhello")
	if code != 0 {
		t.Fatalf("tokenize: %d %s", code, errOut)
	}
	var ids []int
	if err := json.Unmarshal([]byte(out), &ids); err != nil || len(ids) < 3 || ids[0] != 151644 {
		t.Fatalf("tokenize printed %q (%v); want <|im_start|> = 151644 first", out, err)
	}
}
