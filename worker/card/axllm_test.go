package card_test

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/llm"
	"github.com/kiln-project/kiln/worker/npu"
	"github.com/kiln-project/kiln/worker/tokenize"
)

// TestAxllm2026PackageThroughQueue: a package shaped as a 2026 ax-llm
// package may be (three decode groups of contexts 255, 1023 and 511, the
// largest not first, and the 2026 config.json's loading and serving keys)
// loads, decodes in the largest group, and a chat job through the real
// queue whose prompt and reply run past both smaller contexts streams
// exactly the tokens of the cacheless reference.
func TestAxllm2026PackageThroughQueue(t *testing.T) {
	lib := cardsim.Library(t)
	spec := cardsim.TinyAxllm2026()
	spec.Layers, spec.TokenizerDir = 2, "../tokenize/testdata/qwen3"
	dir := filepath.Join(t.TempDir(), spec.Name)
	ref := writePackage(t, dir, spec)
	var bound npu.Bindings
	m := openModel(t, lib, dir, &llm.Options{Logger: quiet, Bindings: &bound})
	if s := m.Shape(); s.Decode != 1 || s.Context != 1023 || !slices.Equal(s.UnusedDecode, []int{0, 2}) || len(s.Prefill) != 5 {
		t.Fatalf("shape %+v: want decode group 1 of context 1023, groups 0 and 2 unused, 5 prefill groups", s)
	}
	// The report says which group decodes and which do not.
	uses := map[int]string{}
	for _, b := range bound.List() {
		if b.Role == "K_cache" {
			uses[b.Group] = b.Use
		}
	}
	if uses[1] != "decode, context 1023" || uses[0] != "decode, unused (context 255 < 1023)" ||
		uses[2] != "decode, unused (context 511 < 1023)" || uses[7] != "prefill 128 tokens, history 768" {
		t.Fatalf("K_cache bindings by group: %v", uses)
	}

	c := serveChat(t, spec.Name, m)
	greedy := 0.0
	const n = 24
	content := "Tell me about the kiln. " + strings.Repeat("Fire, clay, ash and patience make the glaze. ", 50)
	prompt := m.Tokenizer().Encode(tokenize.RenderQwen3([]tokenize.Message{{Role: "user", Content: content}}, tokenize.TemplateOptions{AddGenerationPrompt: true}))
	if len(prompt) <= 511 || len(prompt)+n >= 1023 {
		t.Fatalf("prompt of %d tokens: want one past the 511-token decode group that fits the context", len(prompt))
	}
	out, err := ref.Greedy(prompt, n)
	if err != nil {
		t.Fatal(err)
	}
	want := m.Tokenizer().Decode(untilStop(m, out))
	job := &schema.ChatJob{JobHeader: schema.JobHeader{Model: spec.Name}, MaxTokens: n, Temperature: &greedy,
		Messages: []schema.Message{{Role: "user", Content: content}}}
	res, streamed, err := streamChat(t, c, job)
	if err != nil {
		t.Fatal(err)
	}
	if res.Text != want || streamed != want || res.Usage.PromptTokens != len(prompt) {
		t.Fatalf("result %q, streamed %q (prompt %d tokens, usage %+v), reference %q", res.Text, streamed, len(prompt), res.Usage, want)
	}
}
