package llm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// Sampling says how the next token is picked from the logits.
//
// Order: repetition penalty, temperature, top-k, top-p, then a draw from
// what is left with the request's seed. Greedy (argmax, lowest id on ties)
// when Temperature ≤ 0 or TopK == 1.
type Sampling struct {
	// Temperature divides the logits; ≤ 0 means greedy.
	Temperature float64
	// TopK keeps the k most likely tokens; 0 keeps all.
	TopK int
	// TopP keeps the smallest set of most likely tokens whose probability
	// reaches p; 1 (or ≤ 0) keeps all.
	TopP float64
	// RepetitionPenalty makes tokens of the reply's last PenaltyWindow
	// tokens less likely (above 1) or more likely (below 1): positive logits
	// are divided by it, negative ones multiplied (CTRL / Hugging Face).
	// 0 or 1 means none.
	RepetitionPenalty float64
	// PenaltyWindow is how many of the latest generated tokens the penalty
	// looks at (0: DefaultPenaltyWindow).
	PenaltyWindow int
	// Seed seeds the draw: the same seed and request give the same tokens.
	Seed uint64
}

// DefaultPenaltyWindow is the repetition penalty's window when the
// package names none.
const DefaultPenaltyWindow = 64

// Greedy reports whether s always picks the most likely token.
func (s Sampling) Greedy() bool { return s.Temperature <= 0 || s.TopK == 1 }

func (s Sampling) validate() error {
	switch {
	case math.IsNaN(s.Temperature) || s.Temperature < 0:
		return fmt.Errorf("llm: temperature %v is negative", s.Temperature)
	case s.TopK < 0:
		return fmt.Errorf("llm: top_k %d is negative", s.TopK)
	case math.IsNaN(s.TopP) || s.TopP > 1:
		return fmt.Errorf("llm: top_p %v is above 1", s.TopP)
	case math.IsNaN(s.RepetitionPenalty) || s.RepetitionPenalty < 0:
		return fmt.Errorf("llm: repetition_penalty %v is negative", s.RepetitionPenalty)
	}
	return nil
}

// sampler holds the buffers of one model's sampling, reused by every
// request so that picking a token allocates nothing.
type sampler struct {
	logits []float32 // vocab
	probs  []float32 // vocab
	idx    []int32   // vocab: candidate ids
	rng    *rand.Rand
	pcg    *rand.PCG
}

func newSampler(vocab int) *sampler {
	pcg := rand.NewPCG(0, 0)
	return &sampler{
		logits: make([]float32, vocab),
		probs:  make([]float32, vocab),
		idx:    make([]int32, vocab),
		pcg:    pcg,
		rng:    rand.New(pcg),
	}
}

func (sp *sampler) reset(seed uint64) { sp.pcg.Seed(seed, 0x6b696c6e2d6c6c6d) }

// argmax is the id of the largest logit, the lowest id on ties; NaN never wins.
func argmax(lg []float32) int {
	best := 0
	for best < len(lg) && lg[best] != lg[best] {
		best++
	}
	if best == len(lg) {
		return 0
	}
	bv, base := lg[best], best+1
	for v, x := range lg[base:] {
		if x > bv {
			best, bv = base+v, x
		}
	}
	return best
}

// pick chooses the next token from sp.logits. history is the reply so far.
func (sp *sampler) pick(s *Sampling, history []int) int {
	lg := sp.logits
	if s.RepetitionPenalty > 0 && s.RepetitionPenalty != 1 && len(history) > 0 {
		w := s.PenaltyWindow
		if w <= 0 {
			w = DefaultPenaltyWindow
		}
		win := history[max(0, len(history)-w):]
		for i, t := range win {
			if t < 0 || t >= len(lg) || slices.Contains(win[:i], t) {
				continue
			}
			if lg[t] > 0 {
				lg[t] = float32(float64(lg[t]) / s.RepetitionPenalty)
			} else {
				lg[t] = float32(float64(lg[t]) * s.RepetitionPenalty)
			}
		}
	}
	if s.Greedy() {
		return argmax(lg)
	}
	inv := float32(1 / s.Temperature)
	// Candidates: the top k (a partial selection), or every finite logit.
	cand := sp.idx[:0]
	mx := float32(math.Inf(-1))
	for v, x := range lg {
		if x == x && !math.IsInf(float64(x), -1) {
			cand = append(cand, int32(v))
			mx = max(mx, x)
		}
	}
	if len(cand) == 0 {
		return argmax(lg)
	}
	if s.TopK > 0 && s.TopK < len(cand) {
		cand = topK(cand, lg, s.TopK)
	}
	// Softmax over the candidates (unnormalised: the draw scales by the
	// sum). A token more than 50 temperatures below the best has a weight
	// under e^-50 ≈ 2e-22 of it; all of them together stay below the
	// resolution of the draw, so they get weight 0 without an exp.
	var sum float64
	floor := -50 * float32(s.Temperature)
	for _, v := range cand {
		var p float32
		if d := lg[v] - mx; d > floor {
			p = exp32(d * inv)
		}
		sp.probs[v] = p
		sum += float64(p)
	}
	if s.TopP > 0 && s.TopP < 1 {
		cand, sum = sp.nucleus(cand, sum, s.TopP)
	}
	u := sp.rng.Float64() * sum
	var acc float64
	for _, v := range cand {
		acc += float64(sp.probs[v])
		if u < acc {
			return int(v)
		}
	}
	return int(cand[len(cand)-1])
}

// topK reorders cand so that its first k entries are the k largest logits
// (ties: lower id first) and returns them.
func topK(cand []int32, lg []float32, k int) []int32 {
	// A min-heap of the best k seen so far at cand[:k].
	less := func(a, b int32) bool { // a ranks below b
		return lg[a] < lg[b] || lg[a] == lg[b] && a > b
	}
	h := cand[:k]
	down := func(i int) {
		for {
			l := 2*i + 1
			if l >= k {
				return
			}
			m := l
			if r := l + 1; r < k && less(h[r], h[l]) {
				m = r
			}
			if !less(h[m], h[i]) {
				return
			}
			h[i], h[m] = h[m], h[i]
			i = m
		}
	}
	for i := k/2 - 1; i >= 0; i-- {
		down(i)
	}
	for _, v := range cand[k:] {
		if less(h[0], v) {
			h[0] = v
			down(0)
		}
	}
	slices.SortFunc(h, func(a, b int32) int {
		if less(b, a) {
			return -1
		}
		if less(a, b) {
			return 1
		}
		return 0
	})
	return h
}

// nucleus keeps the most likely candidates whose probability reaches p of
// sum. Only candidates at least 1e-4 of the largest are sorted; when they
// hold the mass, every token below them is outside the nucleus, so the
// result is exact. Otherwise all candidates are sorted.
func (sp *sampler) nucleus(cand []int32, sum, p float64) ([]int32, float64) {
	probs := sp.probs
	var pmax float32
	for _, v := range cand {
		pmax = max(pmax, probs[v])
	}
	byProb := func(a, b int32) int {
		switch {
		case probs[a] > probs[b]:
			return -1
		case probs[a] < probs[b]:
			return 1
		}
		return int(a - b)
	}
	want := p * sum
	cut := pmax * 1e-4
	n := 0
	var mass float64
	for i, v := range cand {
		if probs[v] >= cut {
			cand[i], cand[n] = cand[n], v
			mass += float64(probs[v])
			n++
		}
	}
	head := cand[:n]
	if mass < want {
		head = cand
	}
	slices.SortFunc(head, byProb)
	var acc float64
	for i, v := range head {
		acc += float64(probs[v])
		if acc >= want {
			return head[:i+1], acc
		}
	}
	return head, acc
}

// exp32 is e^x for x ≤ 0 to about 2e-7 relative error: 2^(x·log2 e) split
// into an integer power (exponent bits) and a degree-6 polynomial of the
// fraction. Four times faster than math.Exp, which matters once per
// vocabulary entry and token.
func exp32(x float32) float32 {
	if !(x > -87) {
		return 0
	}
	if x > 88 {
		x = 88
	}
	t := x * 1.442695041
	n := int32(t)
	if float32(n) > t {
		n--
	}
	f := t - float32(n)
	p := float32(1.535336188e-4)
	p = p*f + 1.339887440e-3
	p = p*f + 9.618437357e-3
	p = p*f + 5.550332471e-2
	p = p*f + 2.402264791e-1
	p = p*f + 6.931472028e-1
	p = p*f + 1
	return p * math.Float32frombits(uint32(n+127)<<23)
}
