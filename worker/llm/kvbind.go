package llm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/npu"
)

// KVBindAlign is the alignment, in bytes, of a K/V row offset that decode
// binds the K_cache_out/V_cache_out outputs at. The field's in-place binds
// used 2 KB-aligned offsets (Qwen3's rows are 8 KV heads × 128 × bf16 =
// 2048 bytes; research/card-field-notes.md §4); nothing smaller is known to
// work, so rows of other sizes keep the staging copy.
const KVBindAlign = 2048

// kvWrite is how decode writes a token's K/V rows into the caches.
type kvWrite struct {
	inPlace    bool   // the decode group's outputs are bound into the cache row
	why        string // why not, when not
	kIdx, vIdx int    // K_cache_out, V_cache_out: output indexes of the layer models
	row        uint64 // bytes of one row
	skew       uint64 // tests only: added to the row offset (a wrong row must fail the reference)
}

func (k *kvWrite) mode() string {
	if k.inPlace {
		return "in place"
	}
	return "staging copy (" + k.why + ")"
}

// chooseKVWrite decides, once at load, whether decode binds the K/V outputs
// straight into the cache row: only when every row offset is KVBindAlign
// aligned and the decode group writes exactly one row. Prefill chunks
// always keep their staging outputs and the copy.
func (m *Model) chooseKVWrite() error {
	s, l0 := &m.shape, m.layers[0]
	k := kvWrite{row: uint64(s.KVDim * 2)}
	// The decode group's K/V outputs: by name, else by the per-group name
	// <name>_<group> of llm_build2 engines (as the vendor runner looks them up).
	index := func(name string) (int, error) {
		if i, err := l0.Index(npu.Out(name)); err == nil {
			return i, nil
		}
		return l0.Index(npu.Out(fmt.Sprintf("%s_%d", name, s.Decode)))
	}
	var err error
	if k.kIdx, err = index("K_cache_out"); err != nil {
		return err
	}
	if k.vIdx, err = index("V_cache_out"); err != nil {
		return err
	}
	kt := l0.Describe()[s.Decode].Outputs[k.kIdx]
	switch {
	case m.opts.KVStaging:
		k.why = "Options.KVStaging"
	case k.row%KVBindAlign != 0:
		k.why = fmt.Sprintf("a row is %d bytes, not a multiple of %d", k.row, KVBindAlign)
	case kt.Size != k.row:
		k.why = fmt.Sprintf("the decode group writes %d bytes of K, not one %d-byte row", kt.Size, k.row)
	default:
		k.inPlace = true
	}
	m.kv = k
	return nil
}

// bindRow binds layer i's decode K/V outputs at byte offset off of its
// caches (the row the token writes).
func (m *Model) bindRow(t *npu.Thread, i int, off uint64) error {
	l, g := m.layers[i], m.shape.Decode
	if err := t.Rebind(l, g, axcl.Output, m.kv.kIdx, m.st.kc[i], off, m.kv.row); err != nil {
		return err
	}
	return t.Rebind(l, g, axcl.Output, m.kv.vIdx, m.st.vc[i], off, m.kv.row)
}

// useKVInPlace switches the decode path (device thread); back to staging it
// binds the staging outputs again.
func (m *Model) useKVInPlace(t *npu.Thread, on bool) error {
	if !on {
		for _, l := range m.layers {
			if err := t.Rebind(l, m.shape.Decode, axcl.Output, m.kv.kIdx, m.kOut, 0, m.kv.row); err != nil {
				return err
			}
			if err := t.Rebind(l, m.shape.Decode, axcl.Output, m.kv.vIdx, m.vOut, 0, m.kv.row); err != nil {
				return err
			}
		}
	}
	m.kv.inPlace = on
	return nil
}

// pinned are the host buffers that move data to and from the card, from
// axclrtMallocHost: the runtime pins unpinned memory on every transfer.
type pinned struct {
	row, decMask, chunkIn, chunkIdx, chunkMask, logits *npu.HostBuffer
}

// allocPinned allocates the pinned buffers and points the state's staging
// slices at them.
func (m *Model) allocPinned(ctx context.Context) error {
	s := &m.shape
	maxH := 0
	for _, g := range s.Prefill {
		maxH = max(maxH, g.History)
	}
	idxRows := 1 // mRoPE chunks have three rows of positions (t, h, w)
	if s.MRoPE {
		idxRows = 3
	}
	logits := s.Vocab * 2
	if s.PostFP32 {
		logits = s.Vocab * 4
	}
	return m.dev.Do(ctx, func(t *npu.Thread) error {
		for _, b := range []struct {
			h **npu.HostBuffer
			n int
			s func(*state) *[]byte // the slots' view of it
		}{
			{&m.pin.row, s.Hidden * 2, nil},
			{&m.pin.decMask, (s.Context + 1) * 2, func(st *state) *[]byte { return &st.decMask }},
			{&m.pin.chunkIn, s.Chunk * s.Hidden * 2, func(st *state) *[]byte { return &st.chunkIn }},
			{&m.pin.chunkIdx, s.Chunk * 4 * idxRows, func(st *state) *[]byte { return &st.chunkIdx }},
			{&m.pin.chunkMask, s.Chunk * (maxH + s.Chunk) * 2, func(st *state) *[]byte { return &st.chunkMask }},
			{&m.pin.logits, logits, func(st *state) *[]byte { return &st.raw }},
		} {
			h, err := t.AllocHost(uint64(b.n))
			if err != nil {
				return err
			}
			*b.h = h
			if b.s != nil {
				for _, st := range m.slots {
					*b.s(st) = h.Bytes()
				}
			}
		}
		return nil
	})
}

// free releases the pinned buffers (device thread).
func (p *pinned) free(t *npu.Thread) error {
	var errs []error
	for _, h := range []**npu.HostBuffer{&p.row, &p.decMask, &p.chunkIn, &p.chunkIdx, &p.chunkMask, &p.logits} {
		if *h != nil {
			errs = append(errs, t.FreeHost(*h))
		}
	}
	return errors.Join(errs...)
}

// forget drops every view of the pinned buffers (they are freed, or will
// be with the device).
func (p *pinned) forget(slots []*state) {
	*p = pinned{}
	for _, st := range slots {
		st.decMask, st.chunkIn, st.chunkIdx, st.chunkMask, st.raw = nil, nil, nil, nil, nil
	}
}

// KVProbe is what ProbeKVInPlace found.
type KVProbe struct {
	RowBytes int  `json:"row_bytes"`
	Aligned  bool `json:"aligned"` // rows are KVBindAlign multiples: in-place binds were tried
	Layers   int  `json:"layers"`
	Rows     int  `json:"rows"` // K and V rows compared per layer (prompt and reply)
	// Staging and InPlace are the greedy tokens of each run.
	Staging []int `json:"staging_tokens"`
	InPlace []int `json:"in_place_tokens,omitempty"`
	// Identical: every K and V row and every token is the same.
	Identical bool `json:"identical"`
	// FirstDifference names the first row that differs ("" when none).
	FirstDifference string `json:"first_difference,omitempty"`
}

// ProbeKVInPlace runs prompt and n greedy tokens twice from a clean cache,
// first with decode writing the K/V rows through the staging outputs and a
// copy, then bound in place into the cache rows, and compares every K and
// V row of every layer and the tokens. It tells whether in-place binds
// work on this card and runtime (the simulator runs it too). The model's
// own decode path is restored afterwards.
func (m *Model) ProbeKVInPlace(ctx context.Context, prompt []int, n int) (*KVProbe, error) {
	s := m.shape
	pr := &KVProbe{RowBytes: int(m.kv.row), Aligned: m.kv.row%KVBindAlign == 0, Layers: s.Layers}
	if n < 1 || len(prompt)+n > s.Context {
		return nil, fmt.Errorf("llm: probe: %d prompt tokens and %d more do not fit the context of %d", len(prompt), n, s.Context)
	}
	var was bool
	if err := m.exclusive(ctx, func() error { was = m.kv.inPlace; return nil }); err != nil {
		return nil, err
	}
	defer m.setKVMode(context.WithoutCancel(ctx), was)
	run := func(inPlace bool) ([]int, [][]byte, error) {
		if err := m.setKVMode(ctx, inPlace); err != nil {
			return nil, nil, err
		}
		// Zero the rows the run writes in every slot: a row the other run
		// left behind must not stand in for one this run failed to write.
		if err := m.exclusive(ctx, func() error {
			return m.do(ctx, func(t *npu.Thread) error {
				n := uint64(len(prompt)+n) * m.kv.row
				for _, st := range m.slots {
					for i := range s.Layers {
						if err := t.Fill(st.kc[i], 0, n, 0); err != nil {
							return err
						}
						if err := t.Fill(st.vc[i], 0, n, 0); err != nil {
							return err
						}
					}
				}
				return nil
			})
		}); err != nil {
			return nil, nil, err
		}
		var toks []int
		res, err := m.Generate(ctx, Request{Prompt: prompt, MaxTokens: n, StopIDs: []int{}}, func(t Token) error {
			toks = append(toks, t.ID)
			return nil
		})
		if err != nil {
			return nil, nil, err
		}
		st := res.slot
		kv := make([][]byte, 2*s.Layers)
		err = m.exclusive(ctx, func() error {
			rows := st.pos
			pr.Rows = rows
			return m.do(ctx, func(t *npu.Thread) error {
				for i := range s.Layers {
					kv[2*i], kv[2*i+1] = make([]byte, uint64(rows)*m.kv.row), make([]byte, uint64(rows)*m.kv.row)
					if err := t.Read(kv[2*i], st.kc[i], 0); err != nil {
						return err
					}
					if err := t.Read(kv[2*i+1], st.vc[i], 0); err != nil {
						return err
					}
				}
				return nil
			})
		})
		return toks, kv, err
	}
	staged, a, err := run(false)
	if err != nil {
		return nil, fmt.Errorf("llm: probe, staging run: %w", err)
	}
	pr.Staging = staged
	if !pr.Aligned {
		return pr, nil
	}
	inPlace, b, err := run(true)
	if err != nil {
		return nil, fmt.Errorf("llm: probe, in-place run: %w", err)
	}
	pr.InPlace = inPlace
	pr.FirstDifference = firstRowDifference(a, b, int(m.kv.row))
	if pr.FirstDifference == "" && !slices.Equal(staged, inPlace) {
		pr.FirstDifference = "tokens"
	}
	pr.Identical = pr.FirstDifference == ""
	return pr, nil
}

// setKVMode switches the decode path and drops the card's rows, so the next
// request prefills from scratch.
func (m *Model) setKVMode(ctx context.Context, inPlace bool) error {
	if inPlace && m.kv.row%KVBindAlign != 0 {
		return fmt.Errorf("llm: K/V rows of %d bytes cannot be bound in place (not a multiple of %d)", m.kv.row, KVBindAlign)
	}
	return m.exclusive(ctx, func() error {
		for _, st := range m.slots {
			st.resident = st.resident[:0]
		}
		return m.do(ctx, func(t *npu.Thread) error { return m.useKVInPlace(t, inPlace) })
	})
}

// firstRowDifference names the first differing row of the per-layer K and V
// caches a and b (K of layer i at 2i, V at 2i+1).
func firstRowDifference(a, b [][]byte, row int) string {
	for j := range a {
		for r := 0; r*row < len(a[j]); r++ {
			x, y := a[j][r*row:(r+1)*row], b[j][r*row:(r+1)*row]
			if !bytes.Equal(x, y) {
				return fmt.Sprintf("layer %d %s row %d", j/2, [2]string{"K", "V"}[j%2], r)
			}
		}
	}
	return ""
}
