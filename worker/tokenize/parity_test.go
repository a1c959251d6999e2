package tokenize

import (
	"encoding/json"
	"slices"
	"sync"
	"testing"
)

type testCase struct {
	Text  string `json:"text"`
	IDs   []int  `json:"ids"`
	IDs77 []int  `json:"ids77"`
	Note  string `json:"note"`
}

func readCases(t testing.TB, path string) []testCase {
	t.Helper()
	data, err := readFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cs []testCase
	if err := json.Unmarshal(data, &cs); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(cs) == 0 {
		t.Fatalf("%s: no cases", path)
	}
	return cs
}

var (
	qwenOnce sync.Once
	qwenTok  *BPE
	qwenErr  error
)

// qwen3 loads the Qwen3 tokenizer once per test binary: the 11 MB file is
// slow to parse under -race.
func qwen3(t testing.TB) *BPE {
	t.Helper()
	qwenOnce.Do(func() { qwenTok, qwenErr = LoadDir("testdata/qwen3") })
	if qwenErr != nil {
		t.Fatal(qwenErr)
	}
	return qwenTok
}

func TestQwen3Cases(t *testing.T) {
	t.Parallel()
	tok := qwen3(t)
	cases := readCases(t, "testdata/qwen3/cases.json")
	cases = append(cases, readCases(t, "testdata/qwen3/extra_cases.json.gz")...)
	for i, c := range cases {
		got := tok.Encode(c.Text)
		if !slices.Equal(got, c.IDs) {
			t.Errorf("case %d %q:\n got %v\nwant %v", i, c.Text, got, c.IDs)
		}
	}
}

var (
	clipOnce sync.Once
	clipTok  *CLIP
	clipErr  error
)

func clip(t testing.TB) *CLIP {
	t.Helper()
	clipOnce.Do(func() { clipTok, clipErr = LoadCLIP("testdata/clip") })
	if clipErr != nil {
		t.Fatal(clipErr)
	}
	return clipTok
}

func TestCLIPCases(t *testing.T) {
	t.Parallel()
	tok := clip(t)
	for i, c := range readCases(t, "testdata/clip/extra_cases.json.gz") {
		if got := tok.Encode(c.Text); !slices.Equal(got, c.IDs) {
			t.Errorf("extra case %d %q ids:\n got %v\nwant %v", i, c.Text, got, c.IDs)
		}
	}
	for i, c := range readCases(t, "testdata/clip/cases.json") {
		got := tok.Encode(c.Text)
		if !slices.Equal(got, c.IDs) {
			t.Errorf("case %d %q ids:\n got %v\nwant %v", i, c.Text, got, c.IDs)
		}
		got77 := tok.Encode77(c.Text)
		want77 := make([]int32, len(c.IDs77))
		for k, id := range c.IDs77 {
			want77[k] = int32(id)
		}
		if !slices.Equal(got77[:], want77) {
			t.Errorf("case %d %q ids77:\n got %v\nwant %v", i, c.Text, got77, want77)
		}
	}
}

// TestQwen3BenchText checks the benchmark text (prose, Go, Python, JSON,
// shell, a table) against ids from the Rust library (testdata/reference).
func TestQwen3BenchText(t *testing.T) {
	t.Parallel()
	text, err := readFile("testdata/bench_text.txt")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := readFile("testdata/bench_text.ids.json")
	if err != nil {
		t.Fatal(err)
	}
	var want []int
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	got := qwen3(t).Encode(string(text))
	if !slices.Equal(got, want) {
		t.Fatalf("bench text: %d ids, want %d", len(got), len(want))
	}
}
