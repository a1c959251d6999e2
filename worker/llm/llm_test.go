package llm

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
)

var bg = context.Background()

func randomPrompt(r *rand.Rand, n int) []int {
	p := make([]int, n)
	for i := range p {
		p[i] = r.IntN(151936)
	}
	return p
}

// generate runs a request and returns its tokens.
func generate(t *testing.T, m *Model, req Request) ([]int, *Result) {
	t.Helper()
	var toks []int
	res, err := m.Generate(bg, req, func(tk Token) error {
		if tk.Index != len(toks) {
			t.Fatalf("token index %d, want %d", tk.Index, len(toks))
		}
		toks = append(toks, tk.ID)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.CompletionTokens != len(toks) {
		t.Fatalf("result counts %d tokens, callback saw %d", res.CompletionTokens, len(toks))
	}
	return toks, res
}

// sameLogits checks the logits of the first token of the last greedy
// request (left in the sampler) against the reference's for prompt.
func sameLogits(t *testing.T, m *Model, ref *cardsim.Reference, prompt []int) {
	t.Helper()
	want, err := ref.Logits(prompt)
	if err != nil {
		t.Fatal(err)
	}
	m.loadLogits()
	for i, w := range want {
		if m.st.samp.logits[i] != w {
			t.Fatalf("prompt of %d: logit %d = %v, reference %v", len(prompt), i, m.st.samp.logits[i], w)
		}
	}
}

func greedy(prompt []int, n int) Request {
	return Request{Prompt: prompt, MaxTokens: n, StopIDs: []int{}}
}

// TestCachedRuntimeMatchesReference: for prompts shorter than a chunk,
// spanning several chunks and groups, past the largest prefill group (the
// decode-group path) and at the context limit, the logits after the prompt
// are bit-identical to the cacheless reference, and so are greedy tokens.
func TestCachedRuntimeMatchesReference(t *testing.T) {
	m, ref, _ := loadTest(t, nil)
	s := m.Shape()
	if s.Context != 639 || s.Chunk != 128 || s.Hidden != 64 || s.KVDim != 32 || s.Vocab != 151936 || s.Layers != 2 {
		t.Fatalf("shape %+v", s)
	}
	if got := histories(s.Prefill); !slices.Equal(got, []int{0, 128, 256, 384}) {
		t.Fatalf("prefill histories %v", got)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 7, 127, 128, 129, 300, 512, 530, s.MaxPrompt()} {
		prompt := randomPrompt(r, n)
		got, err := m.Logits(bg, prompt)
		if err != nil {
			t.Fatal(err)
		}
		want, err := ref.Logits(prompt)
		if err != nil {
			t.Fatal(err)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("prompt of %d: logit %d = %v, reference %v", n, i, got[i], want[i])
			}
		}
		k := min(3, s.Context-n)
		if n > 256 {
			k = min(2, k) // the reference recomputes the whole sequence per token
		}
		toks, res := generate(t, m, greedy(prompt, k))
		wantToks, err := ref.Greedy(prompt, k)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(toks, wantToks) {
			t.Fatalf("prompt of %d: greedy %v, reference %v", n, toks, wantToks)
		}
		if res.Finish != FinishLength || res.PromptTokens != n {
			t.Fatalf("prompt of %d: result %+v", n, res)
		}
		// Logits left the prompt's rows on the card: all but the last token
		// are kept, and the last runs alone in the group that fits.
		if res.CachedTokens != n-1 || res.RestoredTokens != 0 {
			t.Fatalf("prompt of %d: kept %d rows (restored %d), want %d", n, res.CachedTokens, res.RestoredTokens, n-1)
		}
		if want := s.PlanPrefill(n-1, 1); res.Prefill != want {
			t.Fatalf("prompt of %d: prefill %+v, plan %+v", n, res.Prefill, want)
		}
	}
}

func TestPromptTooLongNamesTheLimit(t *testing.T) {
	m, _, _ := loadTest(t, nil)
	prompt := randomPrompt(rand.New(rand.NewPCG(3, 4)), m.Shape().Context)
	_, err := m.Generate(bg, Request{Prompt: prompt}, func(Token) error { return nil })
	var le *LimitError
	if !errors.As(err, &le) || !errors.Is(err, ErrPromptTooLong) || le.Limit != 638 || le.Tokens != 639 {
		t.Fatalf("err = %v", err)
	}
	if _, err := m.Generate(bg, Request{Prompt: []int{151936}}, func(Token) error { return nil }); !errors.Is(err, ErrTokenRange) {
		t.Fatal("a token id outside the vocabulary was accepted")
	}
}

// TestInterleavedJobsMatchAlone: jobs with different prompts, run one after
// the other in any order, give exactly the tokens each gives alone — greedy
// ones the reference's, sampled ones their own first run's.
func TestInterleavedJobsMatchAlone(t *testing.T) {
	m, ref, _ := loadTest(t, nil)
	r := rand.New(rand.NewPCG(5, 6))
	prompts := [][]int{randomPrompt(r, 40), randomPrompt(r, 200), randomPrompt(r, 9)}
	alone := make([][]int, len(prompts))
	for i, p := range prompts {
		w, err := ref.Greedy(p, 5)
		if err != nil {
			t.Fatal(err)
		}
		alone[i] = w
	}
	sampled := func(p []int) Request {
		return Request{Prompt: p, MaxTokens: 6, StopIDs: []int{}, Sampling: Sampling{Temperature: 0.9, TopP: 0.95, TopK: 50, Seed: 42}}
	}
	first := map[int][]int{}
	for _, i := range []int{0, 1, 2, 1, 0, 2, 2, 0} {
		got, _ := generate(t, m, greedy(prompts[i], 5))
		if !slices.Equal(got, alone[i]) {
			t.Fatalf("prompt %d: %v, alone %v", i, got, alone[i])
		}
		s, _ := generate(t, m, sampled(prompts[i]))
		if f, ok := first[i]; ok && !slices.Equal(s, f) {
			t.Fatalf("prompt %d sampled: %v, first run %v", i, s, f)
		}
		first[i] = s
	}
}

// TestPrefixCacheHitMatchesMiss: the second request with the same system
// prefix restores its K/V instead of prefilling it and gives exactly the
// tokens of the miss (and of the reference).
func TestPrefixCacheHitMatchesMiss(t *testing.T) {
	m, ref, _ := loadTest(t, nil)
	r := rand.New(rand.NewPCG(7, 8))
	system := randomPrompt(r, 300)
	q1, q2 := randomPrompt(r, 20), randomPrompt(r, 150)
	p1, p2 := slices.Concat(system, q1), slices.Concat(system, q2)

	miss, mres := generate(t, m, Request{Prompt: p1, MaxTokens: 5, StopIDs: []int{}, CachePrefix: len(system)})
	if mres.CachedTokens != 0 {
		t.Fatalf("first request restored %d tokens from an empty cache", mres.CachedTokens)
	}
	if n, _ := m.PrefixCache(); n != 1 {
		t.Fatalf("%d prefixes cached, want 1", n)
	}
	// The same prompt again: the rows are still on the card.
	again, ares := generate(t, m, Request{Prompt: p1, MaxTokens: 5, StopIDs: []int{}, CachePrefix: len(system)})
	if ares.CachedTokens != len(p1)-1 || ares.RestoredTokens != 0 || !slices.Equal(again, miss) {
		t.Fatalf("same prompt: kept %d rows (restored %d), tokens %v, first %v", ares.CachedTokens, ares.RestoredTokens, again, miss)
	}
	// After another prompt overwrote them, the system prompt comes back
	// from host memory.
	generate(t, m, greedy(randomPrompt(r, 340), 2))
	hit, hres := generate(t, m, Request{Prompt: p1, MaxTokens: 5, StopIDs: []int{}, CachePrefix: len(system)})
	if hres.CachedTokens != len(system) || hres.RestoredTokens != len(system) {
		t.Fatalf("after another prompt: kept %d rows, restored %d, want %d", hres.CachedTokens, hres.RestoredTokens, len(system))
	}
	if !slices.Equal(hit, miss) {
		t.Fatalf("hit %v, miss %v", hit, miss)
	}
	want, _ := ref.Greedy(p1, 5)
	if !slices.Equal(miss, want) {
		t.Fatalf("miss %v, reference %v", miss, want)
	}
	if hres.Prefill.Positions >= mres.Prefill.Positions || hres.Prefill != m.Shape().PlanPrefill(300, 20) {
		t.Fatalf("prefill work: miss %+v, hit %+v", mres.Prefill, hres.Prefill)
	}
	if n, _ := m.PrefixCache(); n != 1 {
		t.Fatalf("%d prefixes cached, want 1", n)
	}
	// Another question after the same system prompt, the rows restored
	// from host memory: the logits after the prompt are bit-identical to
	// the reference's.
	generate(t, m, greedy(randomPrompt(r, 30), 1))
	got, res := generate(t, m, Request{Prompt: p2, MaxTokens: 1, StopIDs: []int{}, CachePrefix: len(system)})
	sameLogits(t, m, ref, p2)
	want, _ = ref.Greedy(p2, 1)
	if res.RestoredTokens != len(system) || !slices.Equal(got, want) {
		t.Fatalf("second question: restored %d, tokens %v, reference %v", res.RestoredTokens, got, want)
	}
	// And with the rows still on the card from the first question.
	generate(t, m, Request{Prompt: p1, MaxTokens: 1, StopIDs: []int{}})
	got, res = generate(t, m, Request{Prompt: p2, MaxTokens: 1, StopIDs: []int{}, CachePrefix: len(system)})
	sameLogits(t, m, ref, p2)
	if res.CachedTokens != len(system) || res.RestoredTokens != 0 || !slices.Equal(got, want) {
		t.Fatalf("second question on the card: kept %d, restored %d, tokens %v, reference %v", res.CachedTokens, res.RestoredTokens, got, want)
	}
	// A prompt that is the cached prefix itself: all but its last token restored.
	generate(t, m, greedy(randomPrompt(r, 30), 1))
	got, res = generate(t, m, greedy(system, 1))
	sameLogits(t, m, ref, system)
	want, _ = ref.Greedy(system, 1)
	if res.CachedTokens != len(system)-1 || !slices.Equal(got, want) {
		t.Fatalf("prefix alone: restored %d, tokens %v, reference %v", res.CachedTokens, got, want)
	}
}

func TestPrefixCacheIsBounded(t *testing.T) {
	// Two layers × K and V × 32 tokens × 32 × 2 bytes = 8 KiB per 32-token prefix.
	m, _, _ := loadTest(t, &Options{PrefixCacheBytes: 20 << 10, PrefixCacheEntries: 8})
	r := rand.New(rand.NewPCG(9, 10))
	for i := range 4 {
		p := randomPrompt(r, 40)
		generate(t, m, Request{Prompt: p, MaxTokens: 1, StopIDs: []int{}, CachePrefix: 32})
		n, size := m.PrefixCache()
		if size > 20<<10 || n != min(i+1, 2) {
			t.Fatalf("after %d prefixes: %d cached, %d bytes", i+1, n, size)
		}
	}
}

// TestCancelStopsWithinOneToken: a context cancelled while a token is being
// delivered ends the request before the next one.
func TestCancelStopsWithinOneToken(t *testing.T) {
	m, _, _ := loadTest(t, nil)
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	n := 0
	res, err := m.Generate(ctx, Request{Prompt: []int{1, 2, 3}, StopIDs: []int{}}, func(Token) error {
		n++
		if n == 3 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) || n != 3 || res.CompletionTokens != 3 {
		t.Fatalf("err %v after %d tokens (result %d)", err, n, res.CompletionTokens)
	}
	// A callback error ends it too, and ErrStop ends it as a stop.
	boom := errors.New("boom")
	if _, err := m.Generate(bg, Request{Prompt: []int{1}, StopIDs: []int{}}, func(Token) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the callback's", err)
	}
	res, err = m.Generate(bg, Request{Prompt: []int{1}, StopIDs: []int{}}, func(Token) error { return ErrStop })
	if err != nil || res.Finish != FinishStop || res.CompletionTokens != 1 {
		t.Fatalf("ErrStop: %v %+v", err, res)
	}
}

// TestStopTokenEndsReply: a sampled stop id ends the reply without being
// delivered.
func TestStopTokenEndsReply(t *testing.T) {
	m, ref, _ := loadTest(t, nil)
	prompt := []int{5, 6, 7}
	want, _ := ref.Greedy(prompt, 4)
	got, res := generate(t, m, Request{Prompt: prompt, StopIDs: []int{want[2]}})
	if res.Finish != FinishStop || !slices.Equal(got, want[:2]) {
		t.Fatalf("tokens %v (%s), want %v then stop", got, res.Finish, want[:2])
	}
}

// TestDeviceFaultIsAnError: an execute failing mid-request is an error
// returned to the caller, and the next request runs clean.
func TestDeviceFaultIsAnError(t *testing.T) {
	m, ref, _ := loadTest(t, nil)
	prompt := randomPrompt(rand.New(rand.NewPCG(11, 12)), 140)
	cardsim.Controls(t).SetFaults(t, "fail_execute=9") // two chunks × 2 layers + post = 5 executes, then decode
	_, res := func() ([]int, *Result) {
		res, err := m.Generate(bg, greedy(prompt, 10), func(Token) error { return nil })
		if err == nil || errors.Is(err, ErrPromptTooLong) {
			t.Fatalf("err = %v, want a device error", err)
		}
		return nil, res
	}()
	if res.CompletionTokens == 0 || res.CompletionTokens >= 10 {
		t.Fatalf("failed after %d tokens", res.CompletionTokens)
	}
	got, _ := generate(t, m, greedy(prompt, 4))
	want, _ := ref.Greedy(prompt, 4)
	if !slices.Equal(got, want) {
		t.Fatalf("after the fault: %v, reference %v", got, want)
	}
}

// TestSeedGivesSameTokens: the same seed and request give the same sampled
// tokens; top_k 1 is greedy.
func TestSeedGivesSameTokens(t *testing.T) {
	m, ref, _ := loadTest(t, nil)
	prompt := []int{10, 20, 30, 40}
	req := Request{Prompt: prompt, MaxTokens: 8, StopIDs: []int{}, Sampling: Sampling{Temperature: 1.5, Seed: 7, RepetitionPenalty: 1.3}}
	a, _ := generate(t, m, req)
	b, _ := generate(t, m, req)
	if !slices.Equal(a, b) {
		t.Fatalf("same seed: %v then %v", a, b)
	}
	differ := false
	for seed := uint64(8); seed < 12 && !differ; seed++ {
		req.Sampling.Seed = seed
		c, _ := generate(t, m, req)
		differ = !slices.Equal(a, c)
	}
	if !differ {
		t.Fatal("four other seeds all gave the same tokens at temperature 1.5")
	}
	g, _ := generate(t, m, Request{Prompt: prompt, MaxTokens: 4, StopIDs: []int{}, Sampling: Sampling{Temperature: 1, TopK: 1, Seed: 3}})
	want, _ := ref.Greedy(prompt, 4)
	if !slices.Equal(g, want) {
		t.Fatalf("top_k 1: %v, greedy reference %v", g, want)
	}
}

// TestPackageWithoutConfig: the mid-2025 packages ship an empty config.json;
// the files are found by their vendor names and the sizes come from the models.
func TestPackageWithoutConfig(t *testing.T) {
	dir := t.TempDir()
	s := testSpec()
	s.Vocab, s.Layers, s.TokenizerDir = 1000, 3, ""
	if err := cardsim.WriteLLMPackage(dir, s); err != nil {
		t.Fatal(err)
	}
	if err := writeEmpty(dir + "/config.json"); err != nil {
		t.Fatal(err)
	}
	p, err := ReadPackage(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Layers) != 3 || p.Vocab != 0 || p.Defaults.TopK != 1 || !p.Defaults.Greedy() {
		t.Fatalf("package %+v", p)
	}
	if !Detect(dir) || Detect(t.TempDir()) {
		t.Fatal("Detect is wrong")
	}
	// The Qwen3 packages ship two tokenizer folders; the one named after the
	// architecture is the model's.
	for _, sub := range []string{"qwen2.5_tokenizer", "qwen3_tokenizer"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, sub, "tokenizer.json"), []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := ReadPackage(dir); err != nil || filepath.Base(p.Tokenizer) != "qwen3_tokenizer" {
		t.Fatalf("tokenizer folder %v (%v)", p, err)
	}
	// A missing layer file is named.
	if err := removeFile(p.Layers[1]); err != nil {
		t.Fatal(err)
	}
	s.Layers = 3
	if err := cardsim.WriteLLMPackage(dir, s); err != nil { // restores config.json
		t.Fatal(err)
	}
	if err := removeFile(p.Layers[2]); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadPackage(dir); !errors.Is(err, ErrPackage) || !contains(err.Error(), "l2_together.axmodel is missing") {
		t.Fatalf("err = %v", err)
	}
	// An embedding table of the wrong size is refused.
	if err := cardsim.WriteLLMPackage(dir, s); err != nil {
		t.Fatal(err)
	}
	if err := truncate(p.Embed, 1000); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadPackage(dir); !errors.Is(err, ErrPackage) || !contains(err.Error(), "bytes") {
		t.Fatalf("err = %v", err)
	}
}
