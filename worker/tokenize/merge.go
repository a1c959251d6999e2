package tokenize

// mergeTable holds the BPE merges keyed by the ids of the two symbols. The
// value packs the merge rank (high 32 bits) and the id of the merged token
// (low 32 bits), so comparing two values compares ranks first.
type mergeTable map[uint64]uint64

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// shortWord is the longest word merged with the quadratic scan; longer words
// use the heap so that a pathological input (100k letters without a space)
// stays O(n log n).
const shortWord = 96

// merge applies the merges to syms in place: it repeatedly merges the pair
// with the lowest rank, the leftmost one when a pair occurs more than once,
// until no adjacent pair has a merge. This is the order of the Hugging Face
// tokenizers BPE (Word::merge_all). It returns the shortened slice.
func (m mergeTable) merge(syms []int32, sc *scratch) []int32 {
	if len(syms) < 2 {
		return syms
	}
	if len(syms) > shortWord {
		return m.mergeHeap(syms, sc)
	}
	// ranks[i] is the table value for the pair (syms[i], syms[i+1]), or
	// noMerge.
	const noMerge = ^uint64(0)
	ranks := sc.ranks[:0]
	for i := 0; i+1 < len(syms); i++ {
		v, ok := m[pairKey(syms[i], syms[i+1])]
		if !ok {
			v = noMerge
		}
		ranks = append(ranks, v)
	}
	for len(syms) > 1 {
		best, bi := noMerge, -1
		for i, v := range ranks {
			if v < best {
				best, bi = v, i
			}
		}
		if bi < 0 {
			break
		}
		syms[bi] = int32(uint32(best))
		copy(syms[bi+1:], syms[bi+2:])
		syms = syms[:len(syms)-1]
		copy(ranks[bi:], ranks[bi+1:])
		ranks = ranks[:len(ranks)-1]
		if bi > 0 {
			v, ok := m[pairKey(syms[bi-1], syms[bi])]
			if !ok {
				v = noMerge
			}
			ranks[bi-1] = v
		}
		if bi+1 < len(syms) {
			v, ok := m[pairKey(syms[bi], syms[bi+1])]
			if !ok {
				v = noMerge
			}
			ranks[bi] = v
		}
	}
	sc.ranks = ranks[:0]
	return syms
}

// mergeCand is a pending merge of the symbol at pos with its right neighbour.
type mergeCand struct {
	val uint64 // rank<<32 | new id, as in mergeTable
	pos int32
}

// candHeap is a binary min-heap of merge candidates ordered by (rank,
// position), written out to avoid container/heap's interface boxing.
type candHeap []mergeCand

func (h candHeap) less(i, j int) bool {
	if h[i].val>>32 != h[j].val>>32 {
		return h[i].val < h[j].val
	}
	return h[i].pos < h[j].pos
}

func (h *candHeap) push(c mergeCand) {
	*h = append(*h, c)
	q := *h
	for i := len(q) - 1; i > 0; {
		p := (i - 1) / 2
		if !q.less(i, p) {
			break
		}
		q[i], q[p] = q[p], q[i]
		i = p
	}
}

func (h *candHeap) pop() mergeCand {
	q := *h
	top := q[0]
	n := len(q) - 1
	q[0] = q[n]
	q = q[:n]
	for i := 0; ; {
		l, m := 2*i+1, i
		if l < n && q.less(l, m) {
			m = l
		}
		if r := l + 1; r < n && q.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		q[i], q[m] = q[m], q[i]
		i = m
	}
	*h = q
	return top
}

// mergeHeap is merge for long words: a linked list of symbols and a heap of
// candidate merges ordered by (rank, position).
func (m mergeTable) mergeHeap(syms []int32, sc *scratch) []int32 {
	n := len(syms)
	if n < 2 {
		return syms
	}
	prev := make([]int32, n)
	next := make([]int32, n)
	alive := make([]bool, n)
	h := make(candHeap, 0, n)
	for i := range syms {
		prev[i] = int32(i - 1)
		next[i] = int32(i + 1)
		alive[i] = true
		if i+1 < n {
			if v, ok := m[pairKey(syms[i], syms[i+1])]; ok {
				h.push(mergeCand{val: v, pos: int32(i)})
			}
		}
	}
	next[n-1] = -1
	for len(h) > 0 {
		c := h.pop()
		p := c.pos
		if !alive[p] || next[p] < 0 {
			continue
		}
		q := next[p]
		if v, ok := m[pairKey(syms[p], syms[q])]; !ok || v != c.val {
			continue // stale: one side was merged since this was queued
		}
		syms[p] = int32(uint32(c.val))
		alive[q] = false
		next[p] = next[q]
		if next[q] >= 0 {
			prev[next[q]] = p
		}
		if pp := prev[p]; pp >= 0 {
			if v, ok := m[pairKey(syms[pp], syms[p])]; ok {
				h.push(mergeCand{val: v, pos: pp})
			}
		}
		if nn := next[p]; nn >= 0 {
			if v, ok := m[pairKey(syms[p], syms[nn])]; ok {
				h.push(mergeCand{val: v, pos: p})
			}
		}
	}
	out := syms[:0]
	for i := 0; i >= 0 && i < n; i = int(next[i]) {
		out = append(out, syms[i])
	}
	return out
}

// scratch holds per-call buffers so that encoding does not allocate.
type scratch struct {
	syms  []int32
	ranks []uint64
	whole []int
	key   []byte
}
