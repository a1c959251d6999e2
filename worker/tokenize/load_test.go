package tokenize

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// tinyTokenizer returns a small byte-level tokenizer.json: the 256 byte
// symbols, four merges that spell "Ġthe" and "Ġt", and one added token.
// preTokenizer is the JSON of the pre_tokenizer.
func tinyTokenizer(preTokenizer string) []byte {
	vocab := map[string]int{}
	for b := range 256 {
		vocab[string(byteToRune[b])] = b
	}
	vocab["Ġt"] = 256
	vocab["he"] = 257
	vocab["Ġthe"] = 258
	vocab["ll"] = 259
	doc := map[string]any{
		"version":    "1.0",
		"normalizer": map[string]any{"type": "NFC"},
		"added_tokens": []any{map[string]any{
			"id": 260, "content": "<|end|>", "single_word": false, "lstrip": false, "rstrip": false,
			"normalized": false, "special": true,
		}},
		"pre_tokenizer": json.RawMessage(preTokenizer),
		"decoder":       map[string]any{"type": "ByteLevel"},
		"model": map[string]any{
			"type": "BPE", "vocab": vocab,
			"merges": [][2]string{{"Ġ", "t"}, {"h", "e"}, {"Ġt", "he"}, {"l", "l"}},
		},
	}
	out, err := json.Marshal(doc)
	if err != nil {
		panic(err)
	}
	return out
}

var qwenPreTokenizer = `{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":` +
	mustJSON(qwenPattern) + `},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":false,"use_regex":false}]}`

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func TestTinyTokenizer(t *testing.T) {
	t.Parallel()
	for _, pre := range []string{
		qwenPreTokenizer,
		`{"type":"ByteLevel","add_prefix_space":false,"use_regex":true}`,
	} {
		tok, err := Parse(tinyTokenizer(pre))
		if err != nil {
			t.Fatal(err)
		}
		got := tok.Encode("hello the<|end|> the")
		// he ll o | Ġthe | <|end|> | Ġthe
		want := []int{257, 259, 'o', 258, 260, 258}
		if !slices.Equal(got, want) {
			t.Errorf("%s: got %v want %v", pre, got, want)
		}
		if s := tok.Decode(got); s != "hello the<|end|> the" {
			t.Errorf("decode %q", s)
		}
		if !tok.IsSpecial(260) || tok.IsSpecial(258) {
			t.Error("IsSpecial")
		}
		if id, ok := tok.TokenID("Ġthe"); !ok || id != 258 {
			t.Errorf("TokenID = %d %v", id, ok)
		}
		if tok.VocabSize() != 261 {
			t.Errorf("VocabSize %d", tok.VocabSize())
		}
	}
}

// TestSplitRemovedInvert keeps only the regex matches, as gpt-4o's file asks:
// the spaces disappear, so " the" is not "Ġthe".
func TestSplitRemovedInvert(t *testing.T) {
	t.Parallel()
	tok, err := Parse(tinyTokenizer(`{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"\\w+|[^\\w\\s]+"},"behavior":"Removed","invert":true},{"type":"ByteLevel","add_prefix_space":false,"use_regex":false}]}`))
	if err != nil {
		t.Fatal(err)
	}
	got := tok.Encode("hello  the!")
	want := []int{257, 259, 'o', 't', 257, '!'}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v want %v", got, want)
	}
}

func TestLoadErrors(t *testing.T) {
	t.Parallel()
	valid := string(tinyTokenizer(qwenPreTokenizer))
	replace := func(old, new string) string {
		if !strings.Contains(valid, old) {
			t.Fatalf("tiny tokenizer has no %q", old)
		}
		return strings.Replace(valid, old, new, 1)
	}
	cases := []struct {
		name, doc, want string
	}{
		{"not json", "hello", "not a tokenizer.json"},
		{"empty", "", "not a tokenizer.json"},
		{"array", "[]", "not a tokenizer.json"},
		{"no model", `{"version":"1.0"}`, "no model"},
		{"truncated", valid[:len(valid)/2], "not a tokenizer.json"},
		{"trailing", valid + "x", "data after the top-level object"},
		{"wordpiece", replace(`"type":"BPE"`, `"type":"WordPiece"`), `model type "WordPiece" is not supported`},
		{"unknown merge token", replace(`["l","l"]`, `["l","zz"]`), `token "zz" is not in the vocab`},
		{"merged token missing", replace(`["l","l"]`, `["l","o"]`), `token "lo" is not in the vocab`},
		{"merge not a pair", replace(`["l","l"]`, `["l","l","x"]`), "merge 3 is not a pair"},
		{"merge string", replace(`["l","l"]`, `"l l x"`), "not two tokens separated by one space"},
		{"vocab id twice", replace(`"ll":259`, `"ll":258`), "id 258 is used twice"},
		{"vocab not ints", replace(`"ll":259`, `"ll":"x"`), "want a non-negative integer"},
		{"metaspace", replace(`"pre_tokenizer":{`, `"pre_tokenizer":{"type":"Metaspace"},"x":{`), `pre_tokenizer type "Metaspace" is not supported`},
		{"no byte level", replace(`{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":false,"use_regex":false}`, `{"type":"Digits"}`), "no ByteLevel step"},
		{"split behavior", replace(`"behavior":"Isolated"`, `"behavior":"MergedWithPrevious"`), `Split with behavior "MergedWithPrevious" invert false is not supported`},
		{"bad regex", replace(`"Regex":"(?i:`, `"Regex":"((?i:`), "pre_tokenizer Split regex"},
		{"lowercase normalizer", replace(`{"type":"NFC"}`, `{"type":"Lowercase"}`), `normalizer type "Lowercase" is not supported`},
		{"added token single word", replace(`"single_word":false`, `"single_word":true`), "single_word is not supported"},
		{"added token no id", replace(`"id":260,`, ``), "has no valid id"},
		{"added token id gap", replace(`"id":260,`, `"id":300,`), "Hugging Face tokenizers gives it 260"},
		{"huge id", replace(`"ll":259`, `"ll":99999999`), "implausibly large"},
		{"bad escape", replace(`"ll":259`, `"l\q":259`), "bad escape"},
		{"deep nesting", strings.Replace(valid, `"version":"1.0"`, `"version":`+strings.Repeat("[", 2000)+strings.Repeat("]", 2000), 1), "nested too deeply"},
	}
	for _, c := range cases {
		_, err := Parse([]byte(c.doc))
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		if !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v does not wrap ErrFormat", c.name, err)
		}
		if !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "tokenize: ") {
			t.Errorf("%s: error %q, want it to contain %q", c.name, err, c.want)
		}
	}
}

func TestLoadFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// Missing files.
	if _, err := Load(filepath.Join(dir, "tokenizer.json")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := LoadDir(dir); !errors.Is(err, ErrNotFound) {
		t.Fatalf("empty dir: %v", err)
	}
	if _, err := LoadCLIP(dir); !errors.Is(err, ErrNotFound) {
		t.Fatalf("empty dir: %v", err)
	}
	// A corrupt gzip file says so.
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json.gz"), []byte{0x1f, 0x8b, 8, 0, 1, 2, 3}, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadDir(dir); !errors.Is(err, ErrFormat) {
		t.Fatalf("corrupt gzip: %v", err)
	}

	// The plain tokenizer.json gives the same tokenizer as the .gz.
	raw, err := readFile("testdata/qwen3/tokenizer.json.gz")
	if err != nil {
		t.Fatal(err)
	}
	// An Axera-style package: the tokenizer in a qwen3_tokenizer/ subfolder.
	pkg := filepath.Join(dir, "package")
	plain := filepath.Join(pkg, "qwen3_tokenizer")
	if err := os.MkdirAll(plain, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(plain, "tokenizer.json"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	tok, err := LoadDir(pkg)
	if err != nil {
		t.Fatal(err)
	}
	if sp := tok.Special(); sp.EOS != -1 {
		t.Fatalf("no tokenizer_config.json, but EOS %d", sp.EOS)
	}
	ref := qwen3(t)
	for _, c := range readCases(t, "testdata/qwen3/cases.json") {
		if !slices.Equal(tok.Encode(c.Text), ref.Encode(c.Text)) {
			t.Fatalf("plain and gzip tokenizers differ on %q", c.Text)
		}
	}

	// A second tokenizer folder makes the choice ambiguous.
	other := filepath.Join(pkg, "qwen2.5_tokenizer")
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(plain, "tokenizer.json"), filepath.Join(other, "tokenizer.json")); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadDir(pkg); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "qwen2.5_tokenizer, qwen3_tokenizer") {
		t.Fatalf("two tokenizer folders: %v", err)
	}

	// CLIP from plain files in the tokenizer/ folder of a diffusers layout.
	sd := filepath.Join(dir, "sd15")
	clipDir := filepath.Join(sd, "tokenizer")
	if err := os.MkdirAll(clipDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"vocab.json", "merges.txt"} {
		data, err := readFile("testdata/clip/" + n + ".gz")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(clipDir, n), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c, err := LoadCLIP(sd)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Encode("a photo of a cat"); !slices.Equal(got, []int{49406, 320, 1125, 539, 320, 2368, 49407}) {
		t.Fatalf("clip from plain files: %v", got)
	}
}

func TestLoadDirConfig(t *testing.T) {
	t.Parallel()
	tok := qwen3(t)
	sp := tok.Special()
	if sp.EOS != 151645 || sp.PAD != 151643 || sp.BOS != -1 {
		t.Fatalf("special tokens %+v", sp)
	}
	if got := tok.StopIDs(); !slices.Equal(got, []int{151643, 151645}) {
		t.Fatalf("StopIDs %v", got)
	}
	if !strings.Contains(tok.ChatTemplate(), "enable_thinking") {
		t.Fatal("chat template not read")
	}
	if tok.VocabSize() != 151669 {
		t.Fatalf("VocabSize %d", tok.VocabSize())
	}
	added := tok.AddedTokens()
	if len(added) != 26 || added[0] != 151643 || added[25] != 151668 {
		t.Fatalf("added tokens %v", added)
	}
	for _, name := range []string{"<|im_start|>", "<|im_end|>", "<|endoftext|>"} {
		id, ok := tok.TokenID(name)
		if !ok || !tok.IsSpecial(id) {
			t.Errorf("%s: id %d ok %v special %v", name, id, ok, tok.IsSpecial(id))
		}
	}
	if id, _ := tok.TokenID("<think>"); tok.IsSpecial(id) {
		t.Error("<think> is an added token but not special")
	}
}

func TestCLIPParseErrors(t *testing.T) {
	t.Parallel()
	vocab, err := readFile("testdata/clip/vocab.json.gz")
	if err != nil {
		t.Fatal(err)
	}
	merges, err := readFile("testdata/clip/merges.txt.gz")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name          string
		vocab, merges []byte
		want          string
	}{
		{"vocab not json", []byte("nope"), merges, "vocab.json"},
		{"vocab without specials", []byte(`{"a": 0}`), merges, "has no <|startoftext|>"},
		{"merge line", vocab, []byte("#version: 0.2\na b c\n"), "not two tokens separated by one space"},
		{"merge unknown", vocab, []byte("#version: 0.2\nqqqqq zzzzz\n"), "is not in the vocab"},
		{"no merges", vocab, []byte("#version: 0.2\n"), "has no merges"},
		{"gzip bytes as merges", vocab, mustGzip([]byte("a b\n")), "not two tokens"},
	}
	for _, c := range cases {
		_, err := ParseCLIP(c.vocab, c.merges)
		if err == nil || !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an ErrFormat containing %q", c.name, err, c.want)
		}
	}
}

func mustGzip(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// TestAddedTokenStrip checks lstrip/rstrip added tokens against the Rust
// library: testdata/reference/strip_tokenizer.json is the tiny tokenizer
// with <a> (lstrip), <b> (rstrip) and <c> (both) added, and strip_cases.json
// its reference ids for 509 texts (testdata/reference/README.md).
func TestAddedTokenStrip(t *testing.T) {
	t.Parallel()
	tok, err := Load("testdata/reference/strip_tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range readCases(t, "testdata/reference/strip_cases.json") {
		if got := tok.Encode(c.Text); !slices.Equal(got, c.IDs) {
			t.Errorf("%q: got %v want %v", c.Text, got, c.IDs)
		}
	}
}
