package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
)

// kiln card probe kv-inplace on the simulator: a package with Qwen3's
// 2048-byte K/V rows gives identical rows both ways; one with 64-byte rows
// keeps the staging copy and has nothing to compare.
func TestCardProbeKVInPlace(t *testing.T) {
	lib := cardsim.Library(t)
	spec := cardsim.TinyQwen3()
	spec.Layers, spec.MaxCtx, spec.Histories = 2, 255, []int{0, 128}
	spec.TokenizerDir = "../../worker/tokenize/testdata/qwen3"
	small := spec
	spec.KVDim = 1024
	dir, smallDir := filepath.Join(t.TempDir(), "qwen3-kv1024"), filepath.Join(t.TempDir(), "qwen3-kv32")
	if err := cardsim.WriteLLMPackage(dir, spec); err != nil {
		t.Fatal(err)
	}
	if err := cardsim.WriteLLMPackage(smallDir, small); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := kiln(t, t.Context(), "card", "probe", "kv-inplace", "--json", "--tokens", "6", "--lib", lib, dir)
	if code != 0 {
		t.Fatalf("kiln card probe kv-inplace: %d %s", code, errOut)
	}
	var pr struct {
		RowBytes  int   `json:"row_bytes"`
		Aligned   bool  `json:"aligned"`
		Rows      int   `json:"rows"`
		Identical bool  `json:"identical"`
		Staging   []int `json:"staging_tokens"`
	}
	if err := json.Unmarshal([]byte(out), &pr); err != nil || !pr.Aligned || !pr.Identical || pr.RowBytes != 2048 || len(pr.Staging) != 6 || pr.Rows < 6 {
		t.Fatalf("probe: %q (%v)", out, err)
	}
	code, out, errOut = kiln(t, t.Context(), "card", "probe", "kv-inplace", "--lib", lib, smallDir)
	if code != 0 || !strings.Contains(out, "not 2048-byte multiples") {
		t.Fatalf("probe of 64-byte rows: %d %q %s", code, out, errOut)
	}
	if code, _, _ := kiln(t, t.Context(), "card", "probe", "copy-cost"); code == 0 {
		t.Fatal("an unknown probe succeeded")
	}
}

// kiln card probe copy on the simulator with a 300 µs round trip: every
// measurement is there and the runtime has streams (timings are not
// asserted).
func TestCardProbeCopy(t *testing.T) {
	lib := cardsim.Library(t)
	t.Setenv("KILN_SIM_SYNC_US", "300")
	code, out, errOut := kiln(t, t.Context(), "card", "probe", "copy", "--json", "--rounds", "5", "--lib", lib)
	if code != 0 {
		t.Fatalf("kiln card probe copy: %d %s", code, errOut)
	}
	var c map[string]any
	if err := json.Unmarshal([]byte(out), &c); err != nil {
		t.Fatalf("probe copy: %q (%v)", out, err)
	}
	for _, k := range []string{"d2d_sync_us", "h2d_pinned_sync_us", "h2d_unpinned_sync_us", "d2h_pinned_sync_us",
		"d2h_unpinned_sync_us", "stream_sync_us", "queued_copy_us", "properties_sample_us"} {
		if v, ok := c[k].(float64); !ok || v <= 0 {
			t.Errorf("%s = %v", k, c[k])
		}
	}
	if c["bytes"] != 2048.0 || c["rounds"] != 5.0 || c["streams"] != true {
		t.Errorf("probe copy: %v", c)
	}
	code, out, _ = kiln(t, t.Context(), "card", "probe", "copy", "--rounds", "3", "--lib", lib)
	if code != 0 || !strings.Contains(out, "device→device, synchronous") {
		t.Fatalf("probe copy text: %d %q", code, out)
	}
}
