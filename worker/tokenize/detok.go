package tokenize

// Detokenizer turns a stream of generated token ids into text pieces that
// always end on a whole UTF-8 character: bytes of a character split over
// several tokens are held back until the character is complete. The pieces
// of Add followed by Flush concatenate to exactly Decode of all the ids,
// replacement characters for invalid bytes included. A Detokenizer is for
// one stream and one goroutine; Reset reuses it.
type Detokenizer struct {
	tok     *BPE
	pending []byte // bytes not yet emitted: an incomplete character
	out     []byte
}

// NewDetokenizer returns a streaming decoder for ids of b.
func (b *BPE) NewDetokenizer() *Detokenizer {
	return &Detokenizer{tok: b, pending: make([]byte, 0, 8), out: make([]byte, 0, 64)}
}

// Add takes the next id and returns the text that is now complete, possibly
// "". Unknown ids add nothing.
func (d *Detokenizer) Add(id int) string {
	d.pending = append(d.pending, d.tok.piece(id)...)
	hold := incompleteTail(d.pending)
	ready := len(d.pending) - hold
	if ready == 0 {
		return ""
	}
	s := d.emit(d.pending[:ready])
	d.pending = d.pending[:copy(d.pending, d.pending[ready:])]
	return s
}

// Flush returns the bytes still held back, as U+FFFD if they never became a
// whole character, and empties the decoder.
func (d *Detokenizer) Flush() string {
	if len(d.pending) == 0 {
		return ""
	}
	s := d.emit(d.pending)
	d.pending = d.pending[:0]
	return s
}

// Pending reports how many bytes are held back.
func (d *Detokenizer) Pending() int { return len(d.pending) }

// Reset drops any held-back bytes so the decoder can start a new stream.
func (d *Detokenizer) Reset() { d.pending = d.pending[:0] }

func (d *Detokenizer) emit(b []byte) string {
	for _, c := range b {
		if c >= 0x80 {
			d.out = appendLossy(d.out[:0], b)
			return string(d.out)
		}
	}
	return string(b)
}
