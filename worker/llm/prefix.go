package llm

import (
	"context"
	"slices"

	"github.com/kiln-project/kiln/worker/npu"
)

// prefixEntry is the K/V of a prompt prefix in host memory.
type prefixEntry struct {
	tokens []int
	// kv[i] holds layer i's K rows then its V rows, len(tokens) rows each.
	kv   [][]byte
	size int64
	used uint64
}

// prefixCache is a bounded LRU of prefixes, keyed by token ids. Guarded by
// Model.mu.
type prefixCache struct {
	entries    []*prefixEntry
	maxBytes   int64
	maxEntries int
	size       int64
	clock      uint64
}

func newPrefixCache(maxBytes int64, maxEntries int) *prefixCache {
	return &prefixCache{maxBytes: maxBytes, maxEntries: maxEntries}
}

// lookup returns the entry sharing the longest common prefix with prompt
// and the length of that prefix, at most limit.
func (c *prefixCache) lookup(prompt []int, limit int) (*prefixEntry, int) {
	var best *prefixEntry
	bestN := 0
	for _, e := range c.entries {
		n := 0
		for n < len(e.tokens) && n < len(prompt) && n < limit && e.tokens[n] == prompt[n] {
			n++
		}
		if n > bestN {
			best, bestN = e, n
		}
	}
	if best != nil {
		c.clock++
		best.used = c.clock
	}
	return best, bestN
}

func (c *prefixCache) has(tokens []int) bool {
	for _, e := range c.entries {
		if slices.Equal(e.tokens, tokens) {
			return true
		}
	}
	return false
}

func (c *prefixCache) add(e *prefixEntry) {
	if c.maxBytes < 0 || e.size > c.maxBytes {
		return
	}
	for len(c.entries) > 0 && (c.size+e.size > c.maxBytes || len(c.entries) >= c.maxEntries) {
		lru := 0
		for i, x := range c.entries {
			if x.used < c.entries[lru].used {
				lru = i
			}
		}
		c.size -= c.entries[lru].size
		c.entries = slices.Delete(c.entries, lru, lru+1)
	}
	c.clock++
	e.used = c.clock
	c.entries = append(c.entries, e)
	c.size += e.size
}

// Len is the number of cached prefixes and the host memory they hold.
func (c *prefixCache) stats() (int, int64) { return len(c.entries), c.size }

// restoreStep writes the first st.restoreN rows of the cached prefix into
// every layer's K and V cache (device thread).
func (m *Model) restoreStep(t *npu.Thread) error {
	e, n := m.st.restore, m.st.restoreN
	row := m.shape.KVDim * 2
	all := len(e.tokens) * row
	for i := range m.layers {
		if err := t.Write(m.st.kc[i], 0, e.kv[i][:n*row]); err != nil {
			return err
		}
		if err := t.Write(m.st.vc[i], 0, e.kv[i][all:all+n*row]); err != nil {
			return err
		}
	}
	return nil
}

// saveStep reads the rows of st.save's tokens from every layer's K and V
// cache (device thread).
func (m *Model) saveStep(t *npu.Thread) error {
	e := m.st.save
	n := len(e.tokens) * m.shape.KVDim * 2
	for i := range m.layers {
		if err := t.Read(e.kv[i][:n], m.st.kc[i], 0); err != nil {
			return err
		}
		if err := t.Read(e.kv[i][n:], m.st.vc[i], 0); err != nil {
			return err
		}
	}
	return nil
}

// copyStep copies rows 0..st.restoreN-1 of every layer's K and V cache
// from slot st.copyFrom into the current slot, on the card (device thread).
func (m *Model) copyStep(t *npu.Thread) error {
	st := m.st
	src, n := st.copyFrom, uint64(st.restoreN*m.shape.KVDim*2)
	for i := range m.layers {
		if err := t.Copy(st.kc[i], 0, src.kc[i], 0, n); err != nil {
			return err
		}
		if err := t.Copy(st.vc[i], 0, src.vc[i], 0, n); err != nil {
			return err
		}
	}
	return nil
}

// savePrefix copies the K/V rows of tokens (a prefix of the request just
// run in the current slot) to host memory and adds them to the cache
// (scheduler goroutine).
func (m *Model) savePrefix(ctx context.Context, tokens []int) {
	if m.opts.PrefixCacheBytes < 0 {
		return
	}
	n := len(tokens) * m.shape.KVDim * 2
	size := int64(2 * n * len(m.layers))
	if size > m.opts.PrefixCacheBytes {
		return
	}
	e := &prefixEntry{tokens: slices.Clone(tokens), kv: make([][]byte, len(m.layers)), size: size}
	for i := range e.kv {
		e.kv[i] = make([]byte, 2*n)
	}
	m.st.save = e
	err := m.do(ctx, m.saveFn)
	m.st.save = nil
	if err != nil {
		m.log.Warn("llm: prefix not cached", "tokens", len(tokens), "err", err)
		return
	}
	m.mu.Lock()
	m.prefixes.add(e)
	m.mu.Unlock()
	m.log.Debug("llm: prefix cached", "tokens", len(tokens), "bytes", size)
}

// PrefixCache reports the number of cached prefixes and their host memory
// in bytes.
func (m *Model) PrefixCache() (entries int, bytes int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.prefixes.stats()
}
