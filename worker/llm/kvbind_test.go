package llm

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/npu"
)

// kvPackages are test packages with Qwen3's 2048-byte K/V rows (kv_dim
// 1024), so decode binds its K/V outputs in place, written once per binary.
var kvPackages struct {
	mu   sync.Mutex
	dirs map[string]string
	refs map[string]*cardsim.Reference
}

func kvPackage(t *testing.T, s cardsim.LLMSpec) (string, *cardsim.Reference) {
	t.Helper()
	kvPackages.mu.Lock()
	defer kvPackages.mu.Unlock()
	if dir, ok := kvPackages.dirs[s.Name]; ok {
		return dir, kvPackages.refs[s.Name]
	}
	root, err := packagesDir()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "kv-"+s.Name)
	if err := cardsim.WriteLLMPackage(dir, s); err != nil {
		t.Fatal(err)
	}
	ref, err := cardsim.LoadReference(dir)
	if err != nil {
		t.Fatal(err)
	}
	if kvPackages.dirs == nil {
		kvPackages.dirs, kvPackages.refs = map[string]string{}, map[string]*cardsim.Reference{}
	}
	kvPackages.dirs[s.Name], kvPackages.refs[s.Name] = dir, ref
	return dir, ref
}

// kvSpec is the test package with kv_dim 1024 and prefill groups that end
// at 256 rows, so prompts past them prefill through the decode group.
func kvSpec() cardsim.LLMSpec {
	s := testSpec()
	s.Name, s.KVDim, s.Histories = "qwen3-kv1024", 1024, []int{0, 128}
	return s
}

func loadKV(t *testing.T, s cardsim.LLMSpec, opts *Options) (*Model, *cardsim.Reference, *npu.Device) {
	t.Helper()
	dir, ref := kvPackage(t, s)
	dev := openDevice(t)
	m, err := Load(bg, dev, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(context.Background()) })
	return m, ref, dev
}

// refCheck runs the cacheless reference once over prompt and the reply
// got (but its last token) and reports whether every token of got is the
// reference's greedy pick after what precedes it, and whether the model's
// last logits (in the sampler) are the reference's, bit for bit.
func refCheck(t *testing.T, m *Model, ref *cardsim.Reference, prompt, got []int) (tokens, logits bool) {
	t.Helper()
	rows, err := ref.HiddenStates(slices.Concat(prompt, got[:len(got)-1]))
	if err != nil {
		t.Fatal(err)
	}
	tokens = true
	var lg []float32
	for i, tok := range got {
		lg = ref.Post.Logits(rows[len(prompt)-1+i])
		if ref.PostBF16 {
			for j, v := range lg {
				lg[j] = cardsim.BF16ToFloat(cardsim.FloatToBF16(v))
			}
		}
		tokens = tokens && argmax(lg) == tok
	}
	return tokens, sameAsLogits(m, lg)
}

func sameAsLogits(m *Model, want []float32) bool {
	m.loadLogits()
	return slices.Equal(m.st.samp.logits, want)
}

// TestInPlaceDecodeMatchesReference: with 2048-byte rows decode binds its
// K/V outputs into the cache rows; the greedy tokens and the logits of the
// last one are bit-identical to the cacheless reference — for prompts in
// one chunk, over several chunks and groups, past the largest prefill
// group (the decode group prefills), with the prompt's rows reused from the
// card and restored from the prefix cache — and to the staging path.
func TestInPlaceDecodeMatchesReference(t *testing.T) {
	m, ref, _ := loadKV(t, kvSpec(), nil)
	if !m.kv.inPlace {
		t.Fatalf("2048-byte rows: decode writes by %s", m.kv.mode())
	}
	staged, _, _ := loadKV(t, kvSpec(), &Options{KVStaging: true})
	if staged.kv.inPlace {
		t.Fatal("Options.KVStaging: decode still binds in place")
	}
	r := rand.New(rand.NewPCG(7, 8))
	// The reference recomputes the whole sequence per token at kv_dim
	// 1024: fewer cases under the race detector.
	cases := []struct{ n, k int }{{1, 4}, {129, 4}, {260, 4}}
	requests := []bool{false, false, true} // drop the card's rows first
	if raceEnabled {
		cases = []struct{ n, k int }{{1, 4}, {260, 4}}
	}
	for _, c := range cases {
		n, k := c.n, c.k
		prompt := randomPrompt(r, n)
		got, _ := generate(t, m, greedy(prompt, k))
		if toks, logits := refCheck(t, m, ref, prompt, got); !toks || !logits {
			t.Fatalf("prompt of %d: greedy %v: reference tokens %v, logits %v", n, got, toks, logits)
		}
		gotStaged, _ := generate(t, staged, greedy(prompt, k))
		staged.loadLogits()
		if !slices.Equal(gotStaged, got) || !slices.Equal(staged.st.samp.logits, m.st.samp.logits) {
			t.Fatalf("prompt of %d: staging path gave %v, in place %v", n, gotStaged, got)
		}
	}

	// Prefix reuse: the same 150-token system prompt with other questions,
	// its rows kept on the card, then restored from the host cache.
	const k = 4
	system := randomPrompt(r, 150)
	for i, drop := range requests {
		prompt := slices.Concat(system, randomPrompt(r, 20))
		if drop {
			m.st.resident = m.st.resident[:0]
		}
		got, res := generate(t, m, Request{Prompt: prompt, MaxTokens: k, StopIDs: []int{}, CachePrefix: 150})
		if toks, logits := refCheck(t, m, ref, prompt, got); !toks || !logits {
			t.Fatalf("request %d (kept %d, restored %d): greedy %v: reference tokens %v, logits %v", i, res.CachedTokens, res.RestoredTokens, got, toks, logits)
		}
		if i > 0 && res.CachedTokens < 150 {
			t.Fatalf("request %d reused %d rows, want the 150 of the system prompt", i, res.CachedTokens)
		}
		if drop && res.RestoredTokens != 150 {
			t.Fatalf("request %d restored %d rows from the prefix cache, want 150", i, res.RestoredTokens)
		}
	}
}

// TestInPlaceDecodeWithImages: the SmolVLM package with 2048-byte rows,
// an image in the prompt: greedy tokens and logits are the reference's
// with the encoder's rows over the placeholders.
func TestInPlaceDecodeWithImages(t *testing.T) {
	spec := cardsim.TinySmolVLM()
	spec.Name, spec.KVDim = "SmolVLM-kv1024-AX650", 1024
	m, ref, _ := loadKV(t, spec, nil)
	if !m.kv.inPlace {
		t.Fatalf("decode writes by %s", m.kv.mode())
	}
	v, _ := m.Vision()
	r := rand.New(rand.NewPCG(9, 10))
	prompt := slices.Concat(randomPrompt(r, 30), slices.Repeat([]int{v.ImageTokenID}, v.Tokens), randomPrompt(r, 12))
	for i := range prompt {
		if prompt[i] != v.ImageTokenID {
			prompt[i] %= spec.Vocab
		}
	}
	img := randomImage(r, v.Width*v.Height*3)
	const k = 3
	toks := slices.Clone(prompt)
	var want []float32
	for range k {
		want = refImageLogits(t, ref, spec, toks, []int{30}, [][]byte{img})
		toks = append(toks, argmax(want))
	}
	got, _ := generate(t, m, Request{Prompt: prompt, MaxTokens: k, StopIDs: []int{}, Images: [][]byte{img}})
	if !slices.Equal(got, toks[len(prompt):]) {
		t.Fatalf("greedy %v, reference %v", got, toks[len(prompt):])
	}
	if !sameAsLogits(m, want) {
		t.Fatal("logits of the last token differ from the reference")
	}
}

// TestWrongKVRowFailsReference: decode binding its K/V outputs one row
// past the token's position breaks the reference check, and the probe
// names the first row that differs; bound at the right row both agree.
func TestWrongKVRowFailsReference(t *testing.T) {
	m, ref, _ := loadKV(t, kvSpec(), nil)
	prompt := randomPrompt(rand.New(rand.NewPCG(11, 12)), 40)
	const k = 5
	want, _ := generate(t, m, greedy(prompt, k))
	if toks, logits := refCheck(t, m, ref, prompt, want); !toks || !logits {
		t.Fatalf("rows at the right offset: reference tokens %v, logits %v", toks, logits)
	}
	pr, err := m.ProbeKVInPlace(bg, prompt, k)
	if err != nil {
		t.Fatal(err)
	}
	if !pr.Identical || !pr.Aligned || pr.Rows != 40+k-1 || !slices.Equal(pr.InPlace, want) {
		t.Fatalf("probe %+v, reference tokens %v", pr, want)
	}

	m.kv.skew = m.kv.row
	got, _ := generate(t, m, greedy(prompt, k))
	if toks, logits := refCheck(t, m, ref, prompt, got); toks && logits {
		t.Fatal("K/V rows one row off still match the reference")
	}
	pr, err = m.ProbeKVInPlace(bg, prompt, k)
	if err != nil {
		t.Fatal(err)
	}
	if pr.Identical || pr.FirstDifference != "layer 0 K row 40" {
		t.Fatalf("probe with rows one off: %+v", pr)
	}
}

// TestMisalignedRowsKeepTheStagingCopy: 64-byte rows (kv_dim 32) cannot be
// bound at their offsets (the simulator, like the field's rule, refuses
// offsets that are not 2 KiB multiples), so decode copies them; the probe
// runs the staging path only.
func TestMisalignedRowsKeepTheStagingCopy(t *testing.T) {
	m, _, _ := loadTest(t, nil)
	if m.kv.inPlace {
		t.Fatal("64-byte rows bound in place")
	}
	pr, err := m.ProbeKVInPlace(bg, []int{1, 2, 3}, 2)
	if err != nil {
		t.Fatal(err)
	}
	if pr.Aligned || pr.InPlace != nil || len(pr.Staging) != 2 || pr.RowBytes != 64 {
		t.Fatalf("probe %+v", pr)
	}
	if err := m.setKVMode(bg, true); err == nil {
		t.Fatal("in-place binds of 64-byte rows were accepted")
	}
}

// TestNoPropertiesSampleMidReply: the device thread samples the card's
// properties every 5 ms between replies, never between the tokens of one.
func TestNoPropertiesSampleMidReply(t *testing.T) {
	dir, _ := testPackage(t)
	dev, err := npu.Open(bg, npu.Config{Library: cardsim.Library(t), SampleInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close(context.Background()) })
	m, err := Load(bg, dev, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(context.Background()) })
	sampled := func() time.Time {
		p, err := dev.Properties(bg)
		if err != nil {
			t.Fatal(err)
		}
		return p.SampledAt
	}
	var first time.Time
	_, err = m.Generate(bg, greedy([]int{1, 2, 3}, 4), func(tk Token) error {
		if tk.Index == 0 {
			first = sampled()
		}
		time.Sleep(20 * time.Millisecond) // four ticks per token
		if s := sampled(); !s.Equal(first) {
			t.Errorf("token %d: properties sampled mid-reply (%v after %v)", tk.Index, s, first)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for sampled().Equal(first) {
		if time.Now().After(deadline) {
			t.Fatal("no properties sample after the reply")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDecodeWithoutStreams: on a runtime without the stream calls the same
// decode path runs synchronously — in place, bit-identical to the
// reference — with one synchronous call per copy and execute.
func TestDecodeWithoutStreams(t *testing.T) {
	dir, ref := kvPackage(t, kvSpec())
	dev, err := npu.Open(bg, npu.Config{Library: cardsim.NoStreamsLibrary(t), SampleInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close(context.Background()) })
	if dev.Runtime().HasStreams() {
		t.Fatal("the simulator built without streams has them")
	}
	m, err := Load(bg, dev, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(context.Background()) })
	prompt := randomPrompt(rand.New(rand.NewPCG(13, 14)), 20)
	got, _ := generate(t, m, greedy(prompt, 4))
	if toks, logits := refCheck(t, m, ref, prompt, got); !toks || !logits || !m.kv.inPlace {
		t.Fatalf("without streams (%s): greedy %v: reference tokens %v, logits %v", m.kv.mode(), got, toks, logits)
	}
}
