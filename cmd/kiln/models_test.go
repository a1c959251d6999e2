package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/npu"
)

// kiln models check on the simulator: a good chat and a good image package
// print their files, tokenizer, every model's tensors and what kiln binds to
// each role; a package with a missing layer file and one whose layer has a
// misnamed tensor (it loads, as on a card, and kiln refuses it naming the
// tensor) are refused, each named with why, and the command exits 1.
func TestModelsCheck(t *testing.T) {
	lib := cardsim.Library(t)
	models := t.TempDir()
	spec := cardsim.TinyQwen3()
	spec.Layers, spec.TokenizerDir = 2, "../../worker/tokenize/testdata/qwen3"
	for _, name := range []string{"qwen3-tiny", "qwen3-missing", "qwen3-misnamed"} {
		if err := cardsim.WriteLLMPackage(filepath.Join(models, name), spec); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(filepath.Join(models, "qwen3-missing", spec.ModelDir, spec.LayerFile(1))); err != nil {
		t.Fatal(err)
	}
	layer := spec.LayerSpec(0)
	renamed := false
	for i := range layer.Inputs {
		if layer.Inputs[i].Name == "mask" {
			layer.Inputs[i].Name, renamed = "attention_mask", true
		}
	}
	b, err := layer.Marshal()
	if !renamed || err != nil {
		t.Fatalf("rename the mask input: %v %v", renamed, err)
	}
	if err := os.WriteFile(filepath.Join(models, "qwen3-misnamed", spec.ModelDir, spec.LayerFile(0)), b, 0o644); err != nil {
		t.Fatal(err)
	}
	sdSpec := cardsim.SD15LCM()
	sdSpec.TokenizerDir = "../../worker/tokenize/testdata/clip"
	if err := cardsim.WriteSDPackage(filepath.Join(models, "sd15-lcm"), sdSpec); err != nil {
		t.Fatal(err)
	}

	// Every package of the folder.
	code, out, stderr := kiln(t, t.Context(), "models", "check", "--lib", lib, "--models", models)
	if code != 1 || !strings.Contains(stderr, "2 of 4 packages refused: qwen3-misnamed, qwen3-missing") {
		t.Fatalf("models check: %d %q", code, stderr)
	}
	for _, want := range []string{
		"package    qwen3-tiny", "serves chat jobs (runtime llm",
		"package    sd15-lcm", "serves image jobs (runtime sd",
		"REFUSED: ", spec.LayerFile(1) + " is missing",
		spec.LayerFile(0) + `: shape group 0 has no input "mask", not an Axera LLM layer; inputs found: 0 "input", 1 "indices", 2 "attention_mask", 3 "K_cache", 4 "V_cache"`,
		"model unet.axmodel", "K_cache", "tokenizer  ",
		// the bindings: layer roles per group and what runs the group, the
		// post model, the embedding table, the SD roles by vendor name
		"bindings   ",
		"  " + spec.ModelDir + "/" + spec.LayerFile(0) + " (and layers 1..1 alike)  0      decode, context 1023",
		"prefill 128 tokens, history 768  K_cache",
		"logits", "embedding table",
		"unet.axmodel", "unet input sample", "/down_blocks.0/resnets.0/act_1/Mul_output_0",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("models check output lacks %q; refusals:%s", want, refusals(out))
		}
	}

	// Good packages named on the command line: exit 0, JSON with tensors.
	code, out, stderr = kiln(t, t.Context(), "models", "check", "--json", "--lib", lib,
		filepath.Join(models, "qwen3-tiny"), filepath.Join(models, "sd15-lcm"))
	var reports []struct { // card.PackageReport, tensors by name only
		Name      string
		Refused   string
		Tokenizer []string
		CMMMiB    int `json:"cmm_mib"`
		Bindings  []npu.Binding
		Models    []struct {
			File string
			Info *struct {
				Groups []struct{ Inputs []struct{ Name string } }
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &reports); code != 0 || err != nil || len(reports) != 2 {
		t.Fatalf("models check --json on the good packages: %d %v %q", code, err, stderr)
	}
	for _, r := range reports {
		if r.Refused != "" || len(r.Models) == 0 || len(r.Tokenizer) == 0 || r.CMMMiB <= 0 {
			t.Errorf("report %+v", r)
		}
		roles := map[string]bool{}
		for _, b := range r.Bindings {
			if b.Model == "" || b.Role == "" || (b.Index >= 0 && b.Name == "" && b.Role != "unet output (noise)") {
				t.Errorf("%s: binding %+v", r.Name, b)
			}
			roles[b.Role] = true
		}
		for _, want := range map[string][]string{
			"qwen3-tiny": {"input", "indices", "mask", "K_cache", "V_cache", "K_cache_out", "V_cache_out", "output", "logits", "post input (last hidden row)"},
			"sd15-lcm":   {"text encoder input", "text encoder output", "unet input sample", "unet input time embedding", "unet input encoder_hidden_states", "vae_decoder input"},
		}[r.Name] {
			if !roles[want] {
				t.Errorf("%s: no binding for role %q: %+v", r.Name, want, r.Bindings)
			}
		}
		for _, m := range r.Models {
			if m.Info == nil || len(m.Info.Groups) == 0 || len(m.Info.Groups[0].Inputs) == 0 || m.Info.Groups[0].Inputs[0].Name == "" {
				t.Errorf("%s/%s: no tensors: %+v", r.Name, m.File, m)
			}
		}
	}
}

// refusals are the REFUSED lines of kiln models check's output.
func refusals(out string) string {
	var lines []string
	for l := range strings.Lines(out) {
		if strings.HasPrefix(l, "REFUSED") {
			lines = append(lines, l)
		}
	}
	return "\n" + strings.Join(lines, "")
}
