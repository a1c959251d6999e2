package llm

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestTopKIsTheKLargest(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	lg := make([]float32, 5000)
	for i := range lg {
		lg[i] = float32(r.IntN(300)) // many ties
	}
	all := make([]int32, len(lg))
	for i := range all {
		all[i] = int32(i)
	}
	want := slices.Clone(all)
	slices.SortStableFunc(want, func(a, b int32) int { return cmp.Compare(lg[b], lg[a]) })
	for _, k := range []int{1, 2, 40, 999} {
		got := topK(slices.Clone(all), lg, k)
		if !slices.Equal(got, want[:k]) {
			t.Fatalf("top %d: %v, want %v", k, got[:min(k, 8)], want[:min(k, 8)])
		}
	}
}

// TestNucleusIsExact compares the nucleus with a full sort, for a peaked
// distribution (the fast path) and a flat one (the fallback).
func TestNucleusIsExact(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	for _, spread := range []float64{8, 0.01} {
		sp := newSampler(3000)
		cand := make([]int32, 3000)
		var sum float64
		for i := range cand {
			cand[i] = int32(i)
			sp.probs[i] = float32(math.Exp(r.NormFloat64() * spread))
			sum += float64(sp.probs[i])
		}
		order := slices.Clone(cand)
		slices.SortFunc(order, func(a, b int32) int {
			if c := cmp.Compare(sp.probs[b], sp.probs[a]); c != 0 {
				return c
			}
			return int(a - b)
		})
		var acc float64
		n := 0
		for acc < 0.9*sum {
			acc += float64(sp.probs[order[n]])
			n++
		}
		got, mass := sp.nucleus(cand, sum, 0.9)
		if !slices.Equal(got, order[:n]) || math.Abs(mass-acc) > 1e-9*sum {
			t.Fatalf("spread %v: nucleus of %d tokens, want %d", spread, len(got), n)
		}
	}
}

// TestSamplingFollowsTheDistribution: with temperature 1 and no cut, each
// token is drawn about as often as its softmax probability says.
func TestSamplingFollowsTheDistribution(t *testing.T) {
	sp := newSampler(4)
	sp.reset(9)
	base := []float32{0, float32(math.Log(2)), float32(math.Log(3)), float32(math.Log(4))} // 1:2:3:4
	count := make([]int, 4)
	const n = 20000
	s := Sampling{Temperature: 1, TopP: 1}
	for range n {
		copy(sp.logits, base)
		count[sp.pick(&s, nil)]++
	}
	for i, c := range count {
		want := float64(i+1) / 10
		if got := float64(c) / n; math.Abs(got-want) > 0.02 {
			t.Fatalf("token %d drawn %.3f of the time, want %.1f", i, got, want)
		}
	}
}

// TestDecodeAllocatesNothingPerToken: a longer reply costs no more
// allocations than a short one, with the K/V rows copied (the test
// package's 64-byte rows) and bound in place (2048-byte rows).
func TestDecodeAllocatesNothingPerToken(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under the race detector")
	}
	m, _, _ := loadTest(t, nil)
	inPlace, _, _ := loadKV(t, kvSpec(), nil)
	for _, m := range []*Model{m, inPlace} {
		decodeAllocs(t, m)
	}
}

func decodeAllocs(t *testing.T, m *Model) {
	run := func(n int) func() {
		return func() {
			_, err := m.Generate(bg, Request{Prompt: []int{1, 2, 3}, MaxTokens: n, StopIDs: []int{}}, func(Token) error { return nil })
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	short, long := testing.AllocsPerRun(5, run(4)), testing.AllocsPerRun(5, run(64))
	if long > short {
		t.Fatalf("K/V rows by %s: %v allocations for 4 tokens, %v for 64", m.kv.mode(), short, long)
	}
}

func TestArgmaxBF16MatchesFloatArgmax(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	for range 200 {
		n := 1 + r.IntN(50)
		raw := make([]byte, 2*n)
		lg := make([]float32, n)
		for i := range n {
			u := uint16(r.Uint32())
			if r.IntN(4) == 0 {
				u = uint16(r.IntN(3)) | uint16(r.IntN(2))<<15 // ±0 and tiny values, ties
			}
			raw[2*i], raw[2*i+1] = byte(u), byte(u>>8)
			lg[i] = math.Float32frombits(uint32(u) << 16)
		}
		if got, want := argmaxBF16(raw), argmax(lg); got != want {
			t.Fatalf("argmaxBF16 %d (%v), argmax %d (%v)", got, lg[got], want, lg[want])
		}
	}
}

func TestExp32(t *testing.T) {
	for x := float32(-90); x <= 1; x += 0.001 {
		got, want := float64(exp32(x)), math.Exp(float64(x))
		if x <= -87 {
			if got != 0 {
				t.Fatalf("exp32(%v) = %v, want 0", x, got)
			}
			continue
		}
		if math.Abs(got-want) > 1e-5*want {
			t.Fatalf("exp32(%v) = %v, math.Exp %v", x, got, want)
		}
	}
}
