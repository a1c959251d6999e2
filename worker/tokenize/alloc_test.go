//go:build !race

package tokenize

import "testing"

// The race detector makes sync.Pool drop items, so this runs without -race.
func TestEncodeAppendDoesNotAllocate(t *testing.T) {
	tok := qwen3(t)
	text := "The quick brown fox, <|im_end|> and some code: for i := 0; i < n; i++ {}\n"
	dst := make([]int, 0, 256)
	tok.EncodeAppend(dst, text) // warm the pool
	if n := testing.AllocsPerRun(20, func() { dst = tok.EncodeAppend(dst[:0], text) }); n != 0 {
		t.Fatalf("EncodeAppend allocated %.1f times per run", n)
	}
}
