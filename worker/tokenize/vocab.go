package tokenize

import (
	"fmt"
	"runtime"
	"sync"
	"unicode/utf8"
)

// vocabBuilder collects vocabulary entries in one byte arena, so that the
// 151k token strings of a Qwen3 vocabulary cost one allocation, not 151k.
type vocabBuilder struct {
	arena []byte
	ents  []vocabEnt
	str   string // the arena as a string, set by build
}

type vocabEnt struct {
	off, n uint32
	id     int32
}

func (v *vocabBuilder) add(tok []byte, id int32) error {
	if len(v.arena)+len(tok) > 1<<31 {
		return fmt.Errorf("vocabulary too large")
	}
	v.ents = append(v.ents, vocabEnt{off: uint32(len(v.arena)), n: uint32(len(tok)), id: id})
	v.arena = append(v.arena, tok...)
	return nil
}

// build returns the token -> id map and the largest id. It fails on a token
// listed twice.
func (v *vocabBuilder) build() (map[string]int32, int32, error) {
	s := string(v.arena)
	v.str = s
	m := make(map[string]int32, len(v.ents)+64)
	maxID := int32(-1)
	for _, e := range v.ents {
		m[s[e.off:e.off+e.n]] = e.id
		maxID = max(maxID, e.id)
	}
	if len(m) != len(v.ents) {
		seen := make(map[string]bool, len(v.ents))
		for _, e := range v.ents {
			t := s[e.off : e.off+e.n]
			if seen[t] {
				return nil, 0, fmt.Errorf("token %q appears twice", t)
			}
			seen[t] = true
		}
	}
	return m, maxID, nil
}

// mergeList collects merges as "left" and "right" stored next to each other
// in one arena, so that the merged token is a substring too.
type mergeList struct {
	arena []byte
	ents  []mergeEnt
}

type mergeEnt struct{ off, l, r uint32 }

func (ml *mergeList) add(l, r []byte) error {
	if len(ml.arena)+len(l)+len(r) > 1<<31 {
		return fmt.Errorf("merges too large")
	}
	ml.ents = append(ml.ents, mergeEnt{off: uint32(len(ml.arena)), l: uint32(len(l)), r: uint32(len(r))})
	ml.arena = append(append(ml.arena, l...), r...)
	return nil
}

// resolve looks up the three tokens of every merge in vocab, spread over the
// available cores (map reads are safe concurrently), and builds the merge
// table. When a pair is listed twice the first (lowest) rank wins.
//
// Trained vocabularies give merge i the id first+i (Qwen3: 256+i, CLIP:
// 512+i); that guess is checked against the token text by id, which saves a
// third of the map lookups.
func (ml *mergeList) resolve(vocab map[string]int32, vb *vocabBuilder, maxID int32) (mergeTable, error) {
	s := string(ml.arena)
	n := len(ml.ents)
	byID := make([]string, maxID+1)
	for _, e := range vb.ents {
		if e.id >= 0 && e.id <= maxID {
			byID[e.id] = vb.str[e.off : e.off+e.n]
		}
	}
	first := int32(-1)
	if n > 0 {
		e := ml.ents[0]
		if id, ok := vocab[s[e.off:e.off+e.l+e.r]]; ok {
			first = id
		}
	}
	keys := make([]uint64, n)
	vals := make([]uint64, n)
	workers := max(1, min(runtime.GOMAXPROCS(0), 4, n/20000))
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		lo, hi := n*w/workers, n*(w+1)/workers
		wg.Go(func() {
			for i := lo; i < hi; i++ {
				e := ml.ents[i]
				l := s[e.off : e.off+e.l]
				r := s[e.off+e.l : e.off+e.l+e.r]
				li, ok1 := vocab[l]
				ri, ok2 := vocab[r]
				joined := s[e.off : e.off+e.l+e.r]
				ji, ok3 := first+int32(i), true
				if first < 0 || int(ji) >= len(byID) || byID[ji] != joined {
					ji, ok3 = vocab[joined]
				}
				if !ok1 || !ok2 || !ok3 {
					missing := l
					switch {
					case !ok1:
					case !ok2:
						missing = r
					default:
						missing = l + r
					}
					errs[w] = fmt.Errorf("merge %d %q %q: token %q is not in the vocab", i, l, r, missing)
					return
				}
				keys[i] = pairKey(li, ri)
				vals[i] = uint64(i)<<32 | uint64(uint32(ji))
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	t := make(mergeTable, n)
	for i := n - 1; i >= 0; i-- {
		t[keys[i]] = vals[i]
	}
	return t, nil
}

// byteLevelPieces maps every vocabulary token back to the bytes it stands
// for, all in one arena. Ids up to maxID without a token get "". A token
// with characters outside the byte-level alphabet stands for its own text.
func byteLevelPieces(vb *vocabBuilder, maxID int32) ([]string, error) {
	out := make([]byte, 0, len(vb.arena))
	set := make([]bool, maxID+1)
	type span struct{ off, n uint32 }
	spans := make([]span, maxID+1)
	for _, e := range vb.ents {
		if e.id < 0 || e.id > maxID {
			return nil, fmt.Errorf("id %d out of range", e.id)
		}
		if set[e.id] {
			return nil, fmt.Errorf("id %d is used twice", e.id)
		}
		set[e.id] = true
		start := len(out)
		tok := vb.arena[e.off : e.off+e.n]
		for i := 0; i < len(tok); {
			r, w := utf8.DecodeRune(tok[i:])
			if int(r) >= len(runeToByte) || runeToByte[r] < 0 {
				// Not in the alphabet (DeepSeek lists its special tokens in
				// the vocab): the token stands for its own text, as in the
				// Hugging Face ByteLevel decoder.
				out = append(out[:start], tok...)
				break
			}
			out = append(out, byte(runeToByte[r]))
			i += w
		}
		spans[e.id] = span{uint32(start), uint32(len(out) - start)}
	}
	s := string(out)
	pieces := make([]string, maxID+1)
	for id, sp := range spans {
		pieces[id] = s[sp.off : sp.off+sp.n]
	}
	return pieces, nil
}
