package llm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"

	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/npu"
	"github.com/kiln-project/kiln/worker/tokenize"
)

// Options adjust Load. The zero value means defaults.
type Options struct {
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// PrefixCacheBytes bounds the host memory of the prefix cache
	// (default 256 MiB; negative disables the cache).
	PrefixCacheBytes int64
	// PrefixCacheEntries bounds the number of cached prefixes (default 8).
	PrefixCacheEntries int
	// MinPrefix is the shortest prefix worth caching or restoring, in
	// tokens (default 16).
	MinPrefix int
	// Progress, when set, is called after each model file is loaded.
	Progress func(done, total int)
	// Bindings, when set, records which tensor of which file Load binds to
	// each role (kiln models check), as far as it got.
	Bindings *npu.Bindings
	// KVStaging makes decode write each token's K/V rows through the
	// staging outputs and a copy on the card, as prefill chunks do, instead
	// of binding the outputs straight into the cache row (the default when
	// rows are KVBindAlign aligned). For a card on which `kiln card probe
	// kv-inplace` finds the two differ.
	KVStaging bool
	// Slots is the number of K/V caches ("slots") kept on the card, so as
	// many requests run at once (slots.go); 0 means one. More than the CMM
	// budget holds beside the model fails Load with a *SlotBudgetError.
	Slots int
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.PrefixCacheBytes == 0 {
		o.PrefixCacheBytes = 256 << 20
	}
	if o.PrefixCacheEntries <= 0 {
		o.PrefixCacheEntries = 8
	}
	if o.MinPrefix <= 0 {
		o.MinPrefix = 16
	}
	return o
}

// Group is one prefill shape group: Chunk tokens that see History cached
// rows.
type Group struct {
	Index   int // shape group index in the layer models
	History int // cached rows the group can see (K_cache rows; 0: none)
}

// Shape is what the layer and post models' tensors say about the model.
type Shape struct {
	Layers  int
	Hidden  int
	KVDim   int // kv heads × head dim
	Vocab   int // logits per token (post model output)
	Context int // decode context: the mask of the decode group has Context+1 elements
	Chunk   int // prefill chunk (128)
	Decode  int // the decode shape group (one token) kiln runs: the one with the largest context
	// UnusedDecode lists the package's other decode groups (smaller
	// contexts): bound to the same buffers, never run.
	UnusedDecode []int
	// Prefill lists the prefill groups by growing history.
	Prefill []Group
	// PostFP32 is true when the post model writes fp32 logits (else bf16).
	PostFP32 bool
	// MRoPE is true when the prefill groups take 3 rows of positions (t, h, w;
	// Qwen3-VL), indices [3, Chunk].
	MRoPE bool
}

// MaxPrompt is the longest prompt, in tokens: the context less one, so at
// least one token can be generated.
func (s Shape) MaxPrompt() int { return s.Context - 1 }

// Model is an LLM package resident on the card. Generate may be called
// concurrently: each call holds one of the model's K/V slots (slots.go) and
// the model's scheduler interleaves the calls' work on the device thread.
type Model struct {
	dev   *npu.Device
	pkg   *Package
	tok   *tokenize.BPE
	log   *slog.Logger
	opts  Options
	shape Shape

	layers  []*npu.Model
	layerIO layerIO // the tensors of shape group 0 of every layer, by role
	post    *npu.Model
	hid     [2]*npu.Buffer
	idx     *npu.Buffer // indices, shared by every layer
	mask    *npu.Buffer // mask, shared by every layer
	// maskOf is the slot whose decode mask (for its position maskOf.maskAt)
	// the mask buffer holds; nil after a prefill chunk wrote it.
	maskOf *state
	kOut   *npu.Buffer // K_cache_out, shared by every layer
	vOut   *npu.Buffer // V_cache_out
	postIn *npu.Buffer
	pOut   *npu.Buffer
	posTab *npu.Buffer // uint32 positions 0..Context-1: the decode indices, copied on the card
	zero   *npu.Buffer // a visible (0) mask element, copied on the card
	owned  []*npu.Buffer
	pin    pinned       // pinned host buffers (kvbind.go)
	kv     kvWrite      // how decode writes the K/V rows (kvbind.go)
	vision *visionModel // nil: text only
	embed  []byte       // memory-mapped table
	cmm    uint64       // CMM charged by Load
	// cacheBytes is one layer's K (or V) cache of one slot.
	cacheBytes uint64

	// Slots (slots.go, sched.go): the per-request state and K/V caches of
	// each, the semaphore of the free ones, the scheduler goroutine's
	// queue, and which slot's caches every shape group's K/V inputs are
	// bound to (device thread).
	slots  []*state
	st     *state // the slot being stepped (scheduler goroutine)
	sem    chan struct{}
	jobs   chan *job
	quit   chan struct{}
	halted chan struct{}
	kvIn   []kvInput // per shape group
	bound  []int     // per shape group: slot index, -1: unknown
	test   slotFaults

	decodeFn, chunkFn, restoreFn, saveFn, copyFn func(*npu.Thread) error

	mu       sync.Mutex // guards everything below
	closed   bool
	prefixes *prefixCache
}

// Load reads the package in dir, loads its layers and post model onto the
// card and prepares the device buffers. The shapes (context, chunk, prefill
// groups, hidden and kv sizes, vocabulary) are derived from the models; a
// missing or inconsistent file is an error wrapping ErrPackage.
func Load(ctx context.Context, dev *npu.Device, dir string, opts *Options) (_ *Model, err error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	o = o.withDefaults()
	slots, err := o.slotCount()
	if err != nil {
		return nil, err
	}
	pkg, tok, err := openPackage(dir)
	if err != nil {
		return nil, err
	}
	m := &Model{dev: dev, pkg: pkg, tok: tok, log: o.Logger.With("model", pkg.Name), opts: o}
	defer func() {
		if err != nil {
			m.release(context.WithoutCancel(ctx))
		}
	}()
	used0, err := dev.CMMUsed(ctx)
	if err != nil {
		return nil, err
	}
	// The vision encoder is built by `pulsar2 build` (ONNX): it loads before
	// any llm_build engine, the layer inspected next included
	// (worker/card/order.go, card-field-notes.md §2).
	if err := m.loadVision(ctx); err != nil {
		return nil, err
	}
	info, err := dev.Inspect(ctx, pkg.Layers[0])
	if err != nil {
		return nil, fmt.Errorf("llm: inspect %s: %w", pkg.Layers[0], err)
	}
	shape, sizes, ios, err := pkg.layerShape(info.Groups)
	if err != nil {
		return nil, err
	}
	pkg.recordLayer(o.Bindings, &shape, ios)
	m.shape, m.layerIO = shape, ios[0]
	if err := m.allocBuffers(ctx, sizes); err != nil {
		return nil, fmt.Errorf("llm: %s: device buffers: %w", pkg.Name, err)
	}
	if err := m.loadLayers(ctx, info.Groups); err != nil {
		return nil, err
	}
	if err := m.loadPost(ctx); err != nil {
		return nil, err
	}
	if err := m.checkVision(); err != nil {
		return nil, err
	}
	if err := pkg.checkVocab(m.shape.Vocab); err != nil {
		return nil, err
	}
	if err := m.mapEmbed(); err != nil {
		return nil, err
	}
	if err := m.allocSlots(ctx, slots, used0); err != nil {
		return nil, err
	}
	used1, err := dev.CMMUsed(ctx)
	if err != nil {
		return nil, err
	}
	m.cmm = used1 - min(used0, used1)
	m.prefixes = newPrefixCache(o.PrefixCacheBytes, o.PrefixCacheEntries)
	if err := m.allocPinned(ctx); err != nil {
		return nil, fmt.Errorf("llm: %s: pinned host buffers: %w", pkg.Name, err)
	}
	if err := m.chooseKVWrite(); err != nil {
		return nil, err
	}
	if err := m.findKVInputs(); err != nil {
		return nil, err
	}
	m.bindSteps()
	m.startScheduler()
	m.log.Info("llm: model loaded", "layers", shape.Layers, "hidden", shape.Hidden, "kv_dim", shape.KVDim,
		"context", shape.Context, "chunk", shape.Chunk, "prefill_histories", histories(shape.Prefill),
		"vocab", m.shape.Vocab, "cmm_mib", m.cmm>>20, "kv_rows", m.kv.mode(),
		"slots", len(m.slots), "slot_mib", SlotBytes(shape)>>20)
	return m, nil
}

// allocBuffers allocates the device buffers the layers share (see the
// package doc) and the K and V cache of every layer, zeroed, and writes
// the table of decode positions.
func (m *Model) allocBuffers(ctx context.Context, sizes bufferSizes) error {
	shape := &m.shape
	m.cacheBytes = sizes.cache
	return m.dev.Do(ctx, func(t *npu.Thread) error {
		var err error
		for i := range m.hid {
			if m.hid[i], err = m.allocZeroed(t, max(sizes.input, sizes.output)); err != nil {
				return err
			}
		}
		for _, p := range []struct {
			b **npu.Buffer
			n uint64
		}{{&m.idx, sizes.indices}, {&m.mask, sizes.mask}, {&m.kOut, sizes.kOut}, {&m.vOut, sizes.kOut},
			{&m.posTab, uint64(shape.Context) * 4}, {&m.zero, 16}} {
			if *p.b, err = m.allocZeroed(t, p.n); err != nil {
				return err
			}
		}
		pos := make([]byte, shape.Context*4)
		for i := range shape.Context {
			binary.LittleEndian.PutUint32(pos[4*i:], uint32(i))
		}
		if err := t.Write(m.posTab, 0, pos); err != nil {
			return err
		}
		m.slots = []*state{newState(0, shape)}
		return m.allocCaches(t, m.slots[0])
	})
}

// allocZeroed allocates n bytes on the card, owned by m (freed on Close),
// and fills them with zeros (device thread).
func (m *Model) allocZeroed(t *npu.Thread, n uint64) (*npu.Buffer, error) {
	b, err := t.Alloc(n)
	if err != nil {
		return nil, err
	}
	m.owned = append(m.owned, b)
	return b, t.Fill(b, 0, n, 0)
}

// allocCaches allocates st's K and V cache of every layer and its decode
// mask, zeroed: rows a request has not written are masked, and zeros
// (unlike whatever the CMM held) cannot turn a masked score into NaN
// (device thread).
func (m *Model) allocCaches(t *npu.Thread, st *state) error {
	s := &m.shape
	cache := m.cacheBytes
	for range m.pkg.Layers {
		k, err := m.allocZeroed(t, cache)
		if err != nil {
			return err
		}
		v, err := m.allocZeroed(t, cache)
		if err != nil {
			return err
		}
		st.kc, st.vc = append(st.kc, k), append(st.vc, v)
	}
	var err error
	st.dmask, err = m.allocZeroed(t, uint64(s.Context+1)*2)
	return err
}

// loadLayers loads every layer model with its tensors bound to the shared
// buffers and its own caches; each must have the shape groups of layer 0
// (layer0).
func (m *Model) loadLayers(ctx context.Context, layer0 []axcl.ShapeGroup) error {
	pkg, total := m.pkg, len(m.pkg.Layers)+1
	x := &m.layerIO
	ref := func(t *axcl.Tensor) npu.TensorRef {
		if t == x.ko() || t == x.vo() || t == x.out() {
			return npu.Out(t.Name)
		}
		return npu.In(t.Name)
	}
	for i, path := range pkg.Layers {
		lm, err := m.dev.LoadModel(ctx, path, &npu.LoadOptions{
			Name: fmt.Sprintf("%s/l%d", pkg.Name, i),
			Bind: map[npu.TensorRef]*npu.Buffer{
				ref(x.in()): m.hid[i%2], ref(x.out()): m.hid[(i+1)%2],
				ref(x.idx()): m.idx, ref(x.mask()): m.mask,
				ref(x.k()): m.slots[0].kc[i], ref(x.v()): m.slots[0].vc[i],
				ref(x.ko()): m.kOut, ref(x.vo()): m.vOut,
			},
		})
		if err != nil {
			return fmt.Errorf("llm: %s: layer %d: %w", pkg.Name, i, err)
		}
		m.layers = append(m.layers, lm)
		if i > 0 && !sameShapes(layer0, lm.Describe()) {
			return pkgErr("%s has other tensor shapes than %s", path, pkg.Layers[0])
		}
		if m.opts.Progress != nil {
			m.opts.Progress(i+1, total)
		}
	}
	return nil
}

// loadPost loads the post model and binds its input and logits.
func (m *Model) loadPost(ctx context.Context) error {
	pkg := m.pkg
	var err error
	if m.post, err = m.dev.LoadModel(ctx, pkg.Post, &npu.LoadOptions{Name: pkg.Name + "/post"}); err != nil {
		return fmt.Errorf("llm: %s: post model: %w", pkg.Name, err)
	}
	if total := len(pkg.Layers) + 1; m.opts.Progress != nil {
		m.opts.Progress(total, total)
	}
	out, err := postLogits(pkg.Post, m.post.Describe(), m.shape.Hidden)
	if err != nil {
		return err
	}
	pkg.recordPost(m.opts.Bindings, m.post.Describe(), out)
	m.shape.PostFP32 = out.DataType == axcl.TypeFP32
	m.shape.Vocab = elems(out)
	if m.postIn, err = m.post.BufferAt(0, axcl.Input, 0); err != nil {
		return err
	}
	m.pOut, err = m.post.BufferAt(0, axcl.Output, out.Index)
	return err
}

func histories(gs []Group) []int {
	var h []int
	for _, g := range gs {
		h = append(h, g.History)
	}
	return h
}

func elems(t *axcl.Tensor) int {
	n := 1
	for _, d := range t.Dims {
		n *= d
	}
	return n
}

func tensor(list []axcl.Tensor, name string) *axcl.Tensor {
	for i := range list {
		if list[i].Name == name {
			return &list[i]
		}
	}
	return nil
}

func (m *Model) mapEmbed() error {
	f, err := os.Open(m.pkg.Embed)
	if err != nil {
		return pkgErr("%v", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return pkgErr("%v", err)
	}
	want := int64(m.shape.Vocab) * int64(m.shape.Hidden) * 2
	if st.Size() != want {
		return pkgErr("%s has %d bytes; vocab %d × hidden %d × 2 is %d", m.pkg.Embed, st.Size(), m.shape.Vocab, m.shape.Hidden, want)
	}
	b, err := syscall.Mmap(int(f.Fd()), 0, int(want), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("llm: map %s: %w", m.pkg.Embed, err)
	}
	m.embed = b
	return nil
}

// Shape describes the model as the card runs it.
func (m *Model) Shape() Shape { return m.shape }

// Package is the package the model was loaded from.
func (m *Model) Package() *Package { return m.pkg }

// Tokenizer is the package's tokenizer.
func (m *Model) Tokenizer() *tokenize.BPE { return m.tok }

// Defaults are the sampling defaults of the package's post_config.json.
func (m *Model) Defaults() Sampling { return m.pkg.Defaults }

// CMMBytes is the card memory the model holds: weights, KV caches and IO
// buffers.
func (m *Model) CMMBytes() uint64 { return m.cmm }

// StopIDs are the token ids that end a reply by default: the tokenizer's
// end-of-turn and end-of-text tokens.
func (m *Model) StopIDs() []int { return m.tok.StopIDs() }

// Close unloads the models, frees the device buffers and unmaps the
// embedding table. Running Generate calls finish first; calls waiting for
// a slot, and later ones, fail.
func (m *Model) Close(ctx context.Context) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	m.acquireAll()
	m.stopScheduler()
	return m.release(ctx)
}

func (m *Model) release(ctx context.Context) error {
	var errs []error
	if m.dev.Err() == nil {
		errs = append(errs, m.dev.Do(ctx, func(t *npu.Thread) error {
			var errs []error
			if m.post != nil {
				errs = append(errs, t.Unload(m.post))
			}
			if m.vision != nil {
				errs = append(errs, t.Unload(m.vision.model))
			}
			for _, l := range m.layers {
				errs = append(errs, t.Unload(l))
			}
			for _, b := range m.owned {
				errs = append(errs, t.Free(b))
			}
			errs = append(errs, m.pin.free(t))
			return errors.Join(errs...)
		}))
	}
	m.post, m.layers, m.owned, m.vision = nil, nil, nil, nil
	if m.embed != nil {
		errs = append(errs, syscall.Munmap(m.embed))
		m.embed = nil
	}
	m.pin.forget(m.slots)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("llm: close %s: %w", m.pkg.Name, err)
	}
	return nil
}
