package llm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/kiln-project/kiln/worker/npu"
)

// Request is one generation.
type Request struct {
	// Prompt is the token ids of the whole prompt (chat template applied).
	Prompt []int
	// MaxTokens bounds the reply; 0 means up to the end of the context. A
	// larger value than the context leaves is clamped: the reply then ends
	// with FinishLength at the context end.
	MaxTokens int
	// Sampling picks each token.
	Sampling Sampling
	// StopIDs end the reply when sampled (they are not passed to the
	// callback); nil means the model's StopIDs.
	StopIDs []int
	// CachePrefix is how many leading prompt tokens are worth keeping in
	// the prefix cache (the rendered system prompt); 0 caches nothing.
	CachePrefix int
	// Images are the request's images in prompt order, each Width × Height
	// × 3 bytes (RGB) for the model's Vision; the prompt holds Tokens
	// placeholder ids for each, whose rows the encoder's output replaces.
	Images [][]byte
}

// Token is one generated token.
type Token struct {
	ID    int
	Index int // 0 for the first token of the reply
}

// Finish says why a reply ended.
type Finish string

const (
	// FinishStop: a stop token was sampled or the callback returned ErrStop.
	FinishStop Finish = "stop"
	// FinishLength: MaxTokens or the end of the context was reached.
	FinishLength Finish = "length"
)

// ErrStop, returned by the token callback, ends the reply with FinishStop
// (a stop string was found).
var ErrStop = errors.New("llm: stop requested")

// ErrTokenRange: a prompt token id outside the model's vocabulary (a
// tokenizer that does not belong to the model).
var ErrTokenRange = errors.New("llm: token id outside the vocabulary")

// ErrPromptTooLong is matched by a *LimitError.
var ErrPromptTooLong = errors.New("llm: prompt too long")

// LimitError refuses a prompt longer than the model's context allows.
type LimitError struct {
	Tokens  int // prompt tokens
	Limit   int // the most the model takes
	Context int // the model's context
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("llm: the prompt is %d tokens; the model's context holds %d tokens (prompt and reply), so a prompt may have at most %d",
		e.Tokens, e.Context, e.Limit)
}

// Is matches ErrPromptTooLong.
func (e *LimitError) Is(target error) bool { return target == ErrPromptTooLong }

// PrefillStats counts the prefill work of a request.
type PrefillStats struct {
	// Chunks is the number of prefill group executes (per layer).
	Chunks int
	// Positions is the token positions the executed groups processed:
	// Chunk per prefill execute (padding included), one per token that
	// went through the decode group.
	Positions int
	// Columns is the attention width summed over those positions: a chunk
	// in a group with history H counts Chunk × (H + Chunk), a decode-group
	// token Context + 1. It is what the choice of group changes.
	Columns int
}

// Result is the outcome of Generate.
type Result struct {
	PromptTokens     int
	CompletionTokens int // stop tokens not included
	// CachedTokens is how many prompt tokens were not prefilled: their K/V
	// rows were still on the card from the previous request (same tokens at
	// the same positions, so the same rows) or came back from the prefix
	// cache.
	CachedTokens int
	// RestoredTokens is how many of those were copied from the host
	// prefix cache.
	RestoredTokens int
	// CopiedTokens is how many of those were copied on the card from
	// another slot's rows (a prompt sharing its start with a running or
	// earlier request in another slot).
	CopiedTokens int
	Finish       Finish
	Prefill      PrefillStats
	// TTFT is from the start of Generate to the first token.
	TTFT time.Duration
	// Decode is from the first token to the last.
	Decode time.Duration

	slot *state // the slot the request ran in
}

// TokensPerSecond is the decode speed: tokens after the first over Decode.
func (r *Result) TokensPerSecond() float64 {
	if r.CompletionTokens < 2 || r.Decode <= 0 {
		return 0
	}
	return float64(r.CompletionTokens-1) / r.Decode.Seconds()
}

// state is a slot: its K/V caches and decode mask on the card and the
// state of the request running in it, kept between requests (the rows
// still valid on the card). The host staging slices point into the pinned
// buffers every slot shares: the scheduler fills and reads them within one
// step of one slot.
type state struct {
	index  int
	kc, vc []*npu.Buffer // per layer: K and V cache, Context rows of KVDim bf16
	dmask  *npu.Buffer   // the slot's decode mask (Context+1 elements)
	samp   *sampler
	busy   bool // a request holds the slot (scheduler goroutine)
	// cut bounds the rows of resident another slot may copy: the first
	// image placeholder of the request running here.
	cut int

	pos       int // tokens in the KV cache
	maskAt    int // dmask holds the decode mask for this position; -1: it does not
	tok       int // token of the decode step
	logits    bool
	chunkIn   []byte
	chunkIdx  []byte
	chunkMask []byte
	chunkN    int
	chunkH    int
	chunkG    int
	decMask   []byte
	raw       []byte // logits as read
	history   []int
	resident  []int       // tokens whose K/V rows 0..len-1 on the card are valid
	row       []byte      // embedding row of the decode step when it is not the token's (an image row)
	runs      []int       // prompt positions where each image's rows start
	imgRows   []byte      // the images' rows, bf16
	deep      []byte      // deepstack features, fp32: per image, per layer, Tokens rows (qwen3vl.go)
	dsBuf     []byte      // staging for the deepstack additions, one chunk of rows
	mpos      [3][]uint32 // mRoPE positions of the prompt (t, h, w), with images
	ropeShift int         // decode position − KV row after an image prompt (≤ 0)
	restore   *prefixEntry
	restoreN  int
	save      *prefixEntry
	copyFrom  *state // copyStep: the slot whose rows 0..restoreN-1 are copied
}

var (
	maskHidden  = [2]byte{0x80, 0xC7} // bf16 −65536, little endian
	maskVisible = [2]byte{0, 0}
)

func newState(index int, s *Shape) *state {
	st := &state{index: index, maskAt: -1} // samp: allocSlots, once the vocabulary is known
	if s.MRoPE {
		st.dsBuf = make([]byte, s.Chunk*s.Hidden*2)
		for r := range st.mpos {
			st.mpos[r] = make([]uint32, s.Context)
		}
	}
	st.history = make([]int, 0, s.Context)
	st.resident = make([]int, 0, s.Context)
	return st
}

func (m *Model) bindSteps() {
	m.decodeFn = m.decodeStep
	m.chunkFn = m.chunkStep
	m.restoreFn = m.restoreStep
	m.saveFn = m.saveStep
	m.copyFn = m.copyStep
}

func (m *Model) embedRow(tok int) []byte {
	n := m.shape.Hidden * 2
	return m.embed[tok*n : (tok+1)*n]
}

// decodeStep runs token st.tok at position st.pos through the decode group
// of every layer, appends its K/V rows, and with st.logits runs the post
// model and reads the logits (device thread). Everything is queued on the
// device's stream and waited for once, at the end: the embedding row goes
// up from pinned memory, the position and the mask element are copied on
// the card from tables made at load, each layer writes its K/V rows
// straight into the cache row (in place) or into the staging outputs that
// are then copied there, and the logits come back into pinned memory. It
// allocates nothing.
func (m *Model) decodeStep(t *npu.Thread) error { return settle(t, m.queueDecode(t)) }

// settle waits for the work queued on the device's stream and returns err,
// else the wait's error. It waits after a failure too: nothing a failed
// step queued may run into the next one.
func settle(t *npu.Thread, err error) error {
	if serr := t.Sync(); err == nil {
		err = serr
	}
	return err
}

// queueDecode queues decodeStep's work.
func (m *Model) queueDecode(t *npu.Thread) error {
	st, s := m.st, &m.shape
	p := st.pos
	if p >= s.Context || st.tok < 0 || st.tok >= s.Vocab {
		return fmt.Errorf("llm: decode token %d at position %d: outside vocabulary %d or context %d", st.tok, p, s.Vocab, s.Context)
	}
	row := st.row
	if row == nil {
		row = m.embedRow(st.tok)
	}
	n := copy(m.pin.row.Bytes(), row)
	if err := t.WriteAsync(m.hid[0], 0, m.pin.row, 0, uint64(n)); err != nil {
		return err
	}
	// indices and mask: shared by every layer, written once per token.
	if err := t.CopyAsync(m.idx, 0, m.posTab, uint64(m.decodePos(p))*4, 4); err != nil {
		return err
	}
	if err := m.queueMask(t); err != nil {
		return err
	}
	if err := m.bindSlot(t, s.Decode); err != nil {
		return err
	}
	kv := uint64(s.KVDim * 2)
	for i, l := range m.layers {
		if m.kv.inPlace {
			if err := m.bindRow(t, i, uint64(p)*kv+m.kv.skew); err != nil {
				return err
			}
		}
		if err := t.ExecuteAsync(l, s.Decode); err != nil {
			return err
		}
		if m.kv.inPlace {
			continue
		}
		if err := t.CopyAsync(st.kc[i], uint64(p)*kv, m.kOut, 0, kv); err != nil {
			return err
		}
		if err := t.CopyAsync(st.vc[i], uint64(p)*kv, m.vOut, 0, kv); err != nil {
			return err
		}
	}
	if !st.logits {
		return nil
	}
	return m.postStep(t, 0)
}

// postStep queues the post model on row r of the last layer's output and
// the read of the logits.
func (m *Model) postStep(t *npu.Thread, r int) error {
	n := uint64(m.shape.Hidden * 2)
	if err := t.CopyAsync(m.postIn, 0, m.hid[len(m.layers)%2], uint64(r)*n, n); err != nil {
		return err
	}
	if err := t.ExecuteAsync(m.post, 0); err != nil {
		return err
	}
	return t.ReadAsync(m.pin.logits, 0, m.pOut, 0, uint64(len(m.st.raw)))
}

// queueMask queues the decode mask of the slot's position st.pos: rows
// before it visible, the rest hidden, the token's own element visible. The
// slot keeps its mask on the card (dmask) and updates it by one element
// per token; the mask buffer the layers read gets the slot's mask copied
// in on the card when another slot's (or a prefill chunk's) is there, else
// the same one element.
func (m *Model) queueMask(t *npu.Thread) error {
	st, s := m.st, &m.shape
	p := st.pos
	next := st.maskAt == p-1 && p > 0 // dmask holds the mask of the previous position
	if next {
		if err := t.CopyAsync(st.dmask, uint64(p-1)*2, m.zero, 0, 2); err != nil {
			return err
		}
	} else {
		for j := 0; j < s.Context; j++ {
			if j < p {
				copy(st.decMask[2*j:], maskVisible[:])
			} else {
				copy(st.decMask[2*j:], maskHidden[:])
			}
		}
		copy(st.decMask[2*s.Context:], maskVisible[:])
		if err := t.WriteAsync(st.dmask, 0, m.pin.decMask, 0, uint64(len(st.decMask))); err != nil {
			return err
		}
	}
	st.maskAt = p
	if next && (m.maskOf == st || m.test.stickyMask && m.maskOf != nil) {
		m.maskOf = st
		return t.CopyAsync(m.mask, uint64(p-1)*2, m.zero, 0, 2)
	}
	m.maskOf = st
	return t.CopyAsync(m.mask, 0, st.dmask, 0, uint64(s.Context+1)*2)
}

// chunkStep runs the staged chunk (st.chunkN tokens at st.pos) through
// prefill group st.chunkG of every layer (device thread).
func (m *Model) chunkStep(t *npu.Thread) error {
	st, s := m.st, &m.shape
	if err := t.Write(m.hid[0], 0, st.chunkIn); err != nil {
		return err
	}
	if err := t.Write(m.idx, 0, st.chunkIdx); err != nil {
		return err
	}
	if err := t.Write(m.mask, 0, st.chunkMask[:s.Chunk*(st.chunkH+s.Chunk)*2]); err != nil {
		return err
	}
	m.maskOf = nil
	if err := m.bindSlot(t, st.chunkG); err != nil {
		return err
	}
	row := uint64(s.KVDim * 2)
	n := uint64(st.chunkN) * row
	for i, l := range m.layers {
		if err := t.Execute(l, st.chunkG); err != nil {
			return err
		}
		if err := m.addDeepstack(t, i); err != nil {
			return err
		}
		if err := t.Copy(st.kc[i], uint64(st.pos)*row, m.kOut, 0, n); err != nil {
			return err
		}
		if err := t.Copy(st.vc[i], uint64(st.pos)*row, m.vOut, 0, n); err != nil {
			return err
		}
	}
	if !st.logits {
		return nil
	}
	return settle(t, m.postStep(t, st.chunkN-1))
}

// stageChunk fills the host staging buffers for tokens at st.pos in a group
// with history h: embedding rows (zero padded), absolute positions (0 for
// padding), and the mask — row r sees the st.pos cached rows and the chunk's
// rows up to itself; padding rows see nothing.
func (m *Model) stageChunk(toks []int, h int) {
	st, s := m.st, &m.shape
	n, d := len(toks), s.Hidden*2
	for i, tok := range toks {
		row := m.imageRow(st.pos + i)
		if row == nil {
			row = m.embedRow(tok)
		}
		copy(st.chunkIn[i*d:(i+1)*d], row)
	}
	clear(st.chunkIn[n*d:])
	m.stageIndices(n)
	cols := h + s.Chunk
	mask := st.chunkMask[:s.Chunk*cols*2]
	for r := range s.Chunk {
		rowMask := mask[r*cols*2 : (r+1)*cols*2]
		for c := range cols {
			vis := r < n && (c < st.pos || c >= h && c-h <= r)
			if vis {
				copy(rowMask[2*c:], maskVisible[:])
			} else {
				copy(rowMask[2*c:], maskHidden[:])
			}
		}
	}
	st.chunkN, st.chunkH = n, h
}

// group is the smallest prefill group whose history holds start rows, or
// false when none does.
func (s *Shape) group(start int) (Group, bool) {
	for _, g := range s.Prefill {
		if g.History >= start && start+s.Chunk <= s.Context+1 {
			return g, true
		}
	}
	return Group{}, false
}

// PlanPrefill returns the work of prefilling n tokens after start cached
// ones: 128-token chunks, each in the smallest group that fits its history;
// tokens past the largest group go one by one through the decode group.
func (s Shape) PlanPrefill(start, n int) PrefillStats {
	var ps PrefillStats
	for pos := start; pos < start+n; {
		g, ok := s.group(pos)
		if !ok {
			rest := start + n - pos
			ps.Positions += rest
			ps.Columns += rest * (s.Context + 1)
			break
		}
		ps.Chunks++
		ps.Positions += s.Chunk
		ps.Columns += s.Chunk * (g.History + s.Chunk)
		pos += min(s.Chunk, start+n-pos)
	}
	return ps
}

func (m *Model) do(ctx context.Context, fn func(*npu.Thread) error) error {
	return m.dev.Do(ctx, fn)
}

// prefillOne runs the next chunk of prompt[st.pos:] (or, past the largest
// prefill group, the next token through the decode group) in the current
// slot; after the last one st.raw holds the last token's logits.
// st.resident holds prompt[:st.pos] on entry and on success.
func (m *Model) prefillOne(ctx context.Context, prompt []int, ps *PrefillStats) error {
	st, s := m.st, &m.shape
	g, ok := s.group(st.pos)
	if !ok {
		// Past the largest prefill group: the decode group, one token at a time.
		st.tok, st.row = prompt[st.pos], m.imageRow(st.pos)
		st.logits = st.pos == len(prompt)-1
		err := m.do(ctx, m.decodeFn)
		st.row = nil
		if err != nil {
			st.resident = st.resident[:0]
			return fmt.Errorf("llm: prefill at position %d: %w", st.pos, err)
		}
		ps.Positions++
		ps.Columns += s.Context + 1
		st.resident = append(st.resident, st.tok)
		st.pos++
		return nil
	}
	n := min(s.Chunk, len(prompt)-st.pos)
	m.stageChunk(prompt[st.pos:st.pos+n], g.History)
	st.chunkG = g.Index
	st.logits = st.pos+n == len(prompt)
	if err := m.do(ctx, m.chunkFn); err != nil {
		st.resident = st.resident[:0]
		return fmt.Errorf("llm: prefill chunk at position %d (group %d): %w", st.pos, g.Index, err)
	}
	ps.Chunks++
	ps.Positions += s.Chunk
	ps.Columns += s.Chunk * (g.History + s.Chunk)
	st.resident = append(st.resident, prompt[st.pos:st.pos+n]...)
	st.pos += n
	return nil
}

// loadLogits converts st.raw into the sampler's float32 logits.
func (m *Model) loadLogits() {
	lg, raw := m.st.samp.logits, m.st.raw
	if m.shape.PostFP32 {
		for i := range lg {
			lg[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
		return
	}
	for i := range lg {
		lg[i] = math.Float32frombits(uint32(raw[2*i])<<16 | uint32(raw[2*i+1])<<24)
	}
}

// next picks the next token from the logits in st.raw. Greedy without a
// repetition penalty reads the bf16 logits as they came from the card;
// everything else converts them to float32 first.
func (m *Model) next(s *Sampling) int {
	if s.Greedy() && (s.RepetitionPenalty == 0 || s.RepetitionPenalty == 1) && !m.shape.PostFP32 {
		return argmaxBF16(m.st.raw[:2*m.shape.Vocab])
	}
	m.loadLogits()
	return m.st.samp.pick(s, m.st.history)
}

// argmaxBF16 is argmax over little-endian bf16 values (lowest id on ties,
// NaN never wins): the bits map to integers in the order of the values.
func argmaxBF16(raw []byte) int {
	best, bestKey := -1, -1
	for i := 0; i+1 < len(raw); i += 2 {
		u := uint16(raw[i]) | uint16(raw[i+1])<<8
		if u == 0x8000 {
			u = 0 // -0 ties with +0
		}
		key := int(u | 0x8000)
		if u&0x8000 != 0 {
			key = int(^u)
		}
		if key > bestKey && u&0x7fff <= 0x7f80 {
			best, bestKey = i/2, key
		}
	}
	return max(best, 0)
}

// commonPrefix is the length of the common prefix of a and b, at most limit.
func commonPrefix(a, b []int, limit int) int {
	n := 0
	for n < len(a) && n < len(b) && n < limit && a[n] == b[n] {
		n++
	}
	return n
}

func isStop(tok int, stops []int) bool {
	for _, s := range stops {
		if s == tok {
			return true
		}
	}
	return false
}
