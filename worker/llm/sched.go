package llm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/npu"
	"github.com/kiln-project/kiln/worker/tokenize"
)

// The scheduler: one goroutine per Model owns the device work of every
// running request. A request (Generate, Logits) takes a slot from the
// semaphore, hands a job to the scheduler and reads its tokens from a
// channel. The scheduler runs rounds: it admits the jobs that arrived,
// then steps every running job once, in arrival order — a step is one
// decode step with its sample, or for a newcomer its start (prefix rows
// copied or restored, images encoded) or one prefill chunk. So each running
// chat advances one token per round, and every newcomer's prefill advances
// one chunk per round too: a newcomer's first token comes after its own
// prefill chunks, each interleaved with one step of every other running
// job — the k-th of k visitors arriving together sees its first token after
// k prefills, where serving the whole replies one after the other makes it
// wait for k−1 replies, and a short prompt never waits behind a long one's
// whole prefill. A
// decode step stays one trip to the device thread with one stream sync.

// jobPhase is where a job is.
type jobPhase int

const (
	phaseStart   jobPhase = iota // rows to reuse, images
	phasePrefill                 // prompt chunks
	phaseDecode                  // one token per step
)

// job is one request in the scheduler.
type job struct {
	ctx        context.Context
	req        Request
	stops      []int
	logitsOnly bool // Logits: prefill from position 0, no reuse, no sampling

	st         *state
	phase      jobPhase
	firstImage int // first image placeholder (len(prompt) without images)
	prefilled  bool
	generated  int
	limit      int

	// Owned by the scheduler until done is closed.
	res    Result
	err    error
	logits []float32

	toks chan Token    // capacity limit: the scheduler never blocks on it
	stop atomic.Bool   // the caller wants no more tokens
	done chan struct{} // closed when the job has left the scheduler and its slot
}

// startScheduler starts the scheduler goroutine and fills the semaphore.
func (m *Model) startScheduler() {
	m.sem = make(chan struct{}, len(m.slots))
	m.jobs = make(chan *job, len(m.slots))
	m.quit, m.halted = make(chan struct{}), make(chan struct{})
	m.st = m.slots[0]
	go m.schedule()
}

// stopScheduler stops the scheduler (no job may be running).
func (m *Model) stopScheduler() {
	if m.quit == nil {
		return
	}
	close(m.quit)
	<-m.halted
	m.quit = nil
}

// acquire takes a free slot, waiting for one until ctx ends.
func (m *Model) acquire(ctx context.Context) error {
	select {
	case m.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		<-m.sem
		return errors.New("llm: model closed")
	}
	return nil
}

// acquireAll takes every slot: no request runs until they are released.
func (m *Model) acquireAll() {
	for range cap(m.sem) {
		m.sem <- struct{}{}
	}
}

// exclusive runs fn while no request runs (kiln card probe's mode switch).
func (m *Model) exclusive(ctx context.Context, fn func() error) error {
	n := 0
	defer func() {
		for range n {
			<-m.sem
		}
	}()
	for range cap(m.sem) {
		if err := m.acquire(ctx); err != nil {
			return err
		}
		n++
	}
	return fn()
}

// run hands j to the scheduler (its slot taken) and delivers its tokens to
// fn from the calling goroutine; it returns when the job has left the
// scheduler.
func (m *Model) run(ctx context.Context, j *job, fn func(Token) error, start time.Time) (*Result, error) {
	if err := m.acquire(ctx); err != nil {
		return &Result{PromptTokens: len(j.req.Prompt)}, err
	}
	defer func() { <-m.sem }()
	j.ctx, j.done = ctx, make(chan struct{})
	j.toks = make(chan Token, max(j.limit, 1))
	m.jobs <- j // never blocks: at most one job per slot is queued
	if m.test.queued != nil {
		m.test.queued(j.req.Prompt)
	}
	var (
		delivered int
		first     time.Time
		last      time.Time
		fnErr     error
		stopped   bool
	)
	deliver := func(tk Token) {
		if stopped || fnErr != nil {
			return
		}
		if err := ctx.Err(); err != nil {
			fnErr = err // not one more token once ctx ended
			j.stop.Store(true)
			return
		}
		if first.IsZero() {
			first = time.Now()
		}
		delivered++
		last = time.Now()
		if err := fn(tk); err != nil {
			if errors.Is(err, ErrStop) {
				stopped = true
			} else {
				fnErr = err
			}
			j.stop.Store(true)
		}
	}
	for wait := true; wait; {
		select {
		case tk := <-j.toks:
			deliver(tk)
		case <-j.done:
			for more := true; more; {
				select {
				case tk := <-j.toks:
					deliver(tk)
				default:
					more = false
				}
			}
			wait = false
		}
	}
	res := j.res
	res.CompletionTokens = delivered
	if !first.IsZero() {
		res.TTFT, res.Decode = first.Sub(start), last.Sub(first)
	}
	switch {
	case fnErr != nil:
		return &res, fnErr
	case stopped:
		res.Finish = FinishStop
		return &res, nil
	}
	return &res, j.err
}

// Generate runs req from a clean state and calls fn with every generated
// token, in order, from the calling goroutine. It returns when a stop token
// is sampled, fn returns ErrStop, MaxTokens or the end of the context is
// reached (a nil error), fn returns another error (that error), or ctx ends
// (ctx's error, checked before every token and prefill chunk); fn may be
// nil. The Result is filled in every case. A device error is returned
// wrapped; the next request starts clean regardless.
//
// Generate may be called from several goroutines at once (slots.go): each
// call holds one slot from its first prefill chunk to its last token, and
// waits for a free slot (or ctx's end) when every slot is taken. fn runs
// while the scheduler goes on: a reply whose fn returns ErrStop may have
// had a token more computed, never delivered.
func (m *Model) Generate(ctx context.Context, req Request, fn func(Token) error) (*Result, error) {
	start := time.Now()
	if fn == nil {
		fn = func(Token) error { return nil }
	}
	defer m.dev.Busy()() // no properties sample between the tokens of a reply
	if err := m.check(req.Prompt); err != nil {
		return &Result{PromptTokens: len(req.Prompt)}, err
	}
	if err := req.Sampling.validate(); err != nil {
		return &Result{PromptTokens: len(req.Prompt)}, err
	}
	j := &job{req: req, stops: req.StopIDs, limit: m.shape.Context - len(req.Prompt)}
	if j.stops == nil {
		j.stops = m.tok.StopIDs()
	}
	if req.MaxTokens > 0 {
		j.limit = min(j.limit, req.MaxTokens)
	}
	return m.run(ctx, j, fn, start)
}

// Logits runs the whole prompt from position 0 (no rows reused, prefix
// cache not used) and returns the logits after its last token: what the
// first sampled token is drawn from.
func (m *Model) Logits(ctx context.Context, prompt []int) ([]float32, error) {
	if err := m.check(prompt); err != nil {
		return nil, err
	}
	j := &job{req: Request{Prompt: prompt}, logitsOnly: true}
	if _, err := m.run(ctx, j, func(Token) error { return nil }, time.Now()); err != nil {
		return nil, err
	}
	return j.logits, nil
}

func (m *Model) check(prompt []int) error {
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return errors.New("llm: model closed")
	}
	if len(prompt) == 0 {
		return errors.New("llm: empty prompt")
	}
	if len(prompt) > m.shape.MaxPrompt() {
		return &LimitError{Tokens: len(prompt), Limit: m.shape.MaxPrompt(), Context: m.shape.Context}
	}
	for _, t := range prompt {
		if t < 0 || t >= m.shape.Vocab {
			return fmt.Errorf("%w: %d is not below %d", ErrTokenRange, t, m.shape.Vocab)
		}
	}
	return nil
}

// schedule is the scheduler goroutine.
func (m *Model) schedule() {
	defer close(m.halted)
	var running []*job
	for {
		if len(running) == 0 {
			select {
			case j := <-m.jobs:
				running = append(running, m.admit(j))
			case <-m.quit:
				return
			}
		}
		for more := true; more; {
			select {
			case j := <-m.jobs:
				running = append(running, m.admit(j))
			default:
				more = false
			}
		}
		n := 0
		for _, j := range running {
			if m.step(j) {
				running[n] = j
				n++
				continue
			}
			m.finish(j)
		}
		clear(running[n:])
		running = running[:n]
	}
}

// admit gives j a free slot: the one whose rows on the card share the
// longest prefix with the prompt (no copy needed), lowest index on ties.
func (m *Model) admit(j *job) *job {
	prompt := j.req.Prompt
	j.firstImage = len(prompt)
	if len(j.req.Images) > 0 && m.vision != nil {
		if runs := tokenize.ImageRuns(prompt, m.vision.info.ImageTokenID); len(runs) > 0 {
			j.firstImage = runs[0][0]
		}
	}
	best, bestN := (*state)(nil), -1
	for _, st := range m.slots {
		if st.busy {
			continue
		}
		n := commonPrefix(st.resident, prompt, len(prompt))
		if j.logitsOnly {
			n = 0
		}
		if n > bestN {
			best, bestN = st, n
		}
	}
	best.busy, best.cut = true, j.firstImage
	j.st = best
	return j
}

// step advances j by one step in its slot; false when j is done.
func (m *Model) step(j *job) bool {
	m.st = j.st
	if m.test.beforeStep != nil {
		m.test.beforeStep(j.st.index, j.phase, j.req.Prompt)
	}
	if j.stop.Load() {
		j.err = ErrStop
		return false
	}
	if err := j.ctx.Err(); err != nil {
		j.err = err
		return false
	}
	if j.phase == phaseStart { // cheap unless it copies rows or encodes images: no step of its own
		if err := m.start(j); err != nil {
			return m.fail(j, err)
		}
		j.phase = phasePrefill
	}
	if j.phase == phasePrefill {
		if err := m.prefillOne(j.ctx, j.req.Prompt, &j.res.Prefill); err != nil {
			return m.fail(j, err)
		}
		if j.st.pos < len(j.req.Prompt) {
			return true
		}
		j.prefilled, j.phase = true, phaseDecode
		if j.logitsOnly {
			m.loadLogits()
			j.logits = slices.Clone(j.st.samp.logits)
			return false
		}
		return m.sample(j)
	}
	st := j.st
	st.logits = true
	if err := m.do(j.ctx, m.decodeFn); err != nil {
		st.resident = st.resident[:0]
		return m.fail(j, fmt.Errorf("llm: decode at position %d: %w", st.pos, err))
	}
	st.resident = append(st.resident, st.tok)
	st.pos++
	return m.sample(j)
}

// fail ends j with err.
func (m *Model) fail(j *job, err error) bool {
	j.err = err
	return false
}

// sample picks the next token of j from the logits in the pinned buffer and
// sends it; false when the reply ends.
func (m *Model) sample(j *job) bool {
	st := j.st
	tok := m.next(&j.req.Sampling)
	if isStop(tok, j.stops) {
		j.res.Finish = FinishStop
		return false
	}
	st.history = append(st.history, tok)
	j.toks <- Token{ID: tok, Index: j.generated}
	j.generated++
	if j.generated >= j.limit {
		j.res.Finish = FinishLength
		return false
	}
	st.tok = tok
	return true
}

// start prepares j's slot: a clean request state, its images encoded, and
// the rows it can take over — the slot's own rows of the longest common
// prefix with the prompt, or more copied on the card from another slot or
// restored from the host prefix cache, one token short of the prompt at
// most (the last prompt token must run for its logits) and never at or past
// an image placeholder (those rows depend on the image). Everything past
// them is masked: the request sees only what it computes itself.
func (m *Model) start(j *job) error {
	st, prompt := j.st, j.req.Prompt
	st.pos, st.maskAt, st.history = 0, -1, st.history[:0]
	st.samp.reset(j.req.Sampling.Seed)
	j.res.PromptTokens = len(prompt)
	j.res.slot = st
	if j.logitsOnly {
		st.resident, st.runs = st.resident[:0], st.runs[:0]
		return nil
	}
	if _, err := m.prepareImages(j.ctx, &j.req); err != nil {
		st.runs = st.runs[:0]
		return err
	}
	reusable := min(len(prompt)-1, j.firstImage)
	keep := commonPrefix(st.resident, prompt, reusable)
	from, fromN := (*state)(nil), keep
	for _, o := range m.slots {
		if o == st {
			continue
		}
		if n := commonPrefix(o.resident[:min(len(o.resident), o.cut)], prompt, reusable); n > fromN {
			from, fromN = o, n
		}
	}
	m.mu.Lock()
	e, n := m.prefixes.lookup(prompt, reusable)
	m.mu.Unlock()
	switch {
	case e != nil && n >= m.opts.MinPrefix && n > fromN:
		st.restore, st.restoreN = e, n
		err := m.do(j.ctx, m.restoreFn)
		st.restore = nil
		if err != nil {
			st.resident = st.resident[:0]
			return fmt.Errorf("llm: restore cached prefix: %w", err)
		}
		st.resident = append(st.resident[:0], prompt[:n]...)
		keep, j.res.RestoredTokens = n, n
	case from != nil:
		st.copyFrom, st.restoreN = from, fromN
		err := m.do(j.ctx, m.copyFn)
		st.copyFrom = nil
		if err != nil {
			st.resident = st.resident[:0]
			return fmt.Errorf("llm: copy prefix rows from slot %d: %w", from.index, err)
		}
		st.resident = append(st.resident[:0], prompt[:fromN]...)
		keep, j.res.CopiedTokens = fromN, fromN
	}
	st.resident = st.resident[:keep]
	st.pos, j.res.CachedTokens = keep, keep
	return nil
}

// finish ends j: the slot keeps the rows before the first image, the
// marked prefix goes to the host prefix cache, and the slot is free.
func (m *Model) finish(j *job) {
	st := j.st
	m.st = st
	st.resident = st.resident[:min(len(st.resident), j.firstImage)]
	st.runs = st.runs[:0]
	if j.prefilled && !j.logitsOnly {
		prompt := j.req.Prompt
		save := min(j.req.CachePrefix, len(prompt), j.firstImage)
		m.mu.Lock()
		want := save >= m.opts.MinPrefix && !m.prefixes.has(prompt[:save])
		m.mu.Unlock()
		if want && m.dev.Err() == nil {
			m.savePrefix(context.WithoutCancel(j.ctx), prompt[:save])
		}
	}
	st.busy, st.cut = false, len(st.resident)
	close(j.done)
}

// kvInput is where the K and V cache inputs of one shape group are.
type kvInput struct {
	k, v int    // input indexes
	n    uint64 // bytes the group binds (its K_cache size)
}

// findKVInputs finds the K_cache and V_cache inputs of every shape group:
// bindSlot rebinds them to a slot's caches.
func (m *Model) findKVInputs() error {
	desc := m.layers[0].Describe()
	m.kvIn, m.bound = make([]kvInput, len(desc)), make([]int, len(desc))
	for g := range desc {
		in := &m.kvIn[g]
		in.k, in.v = -1, -1
		for i, t := range desc[g].Inputs {
			switch t.Name {
			case m.layerIO.k().Name:
				in.k, in.n = i, t.Size
			case m.layerIO.v().Name:
				in.v = i
			}
		}
		if in.k < 0 || in.v < 0 {
			return pkgErr("%s: shape group %d has no %s or %s input", m.pkg.Layers[0], g, m.layerIO.k().Name, m.layerIO.v().Name)
		}
	}
	return nil
}

// bindSlot binds the K and V cache inputs of shape group g of every layer
// to the current slot's caches, when another slot's are bound there
// (device thread). It allocates nothing: 2 × layers binds when the slot
// changes, none while one slot runs alone.
func (m *Model) bindSlot(t *npu.Thread, g int) error {
	st := m.st
	if m.bound[g] == st.index || m.test.noRebind {
		return nil
	}
	m.bound[g] = -1
	in := m.kvIn[g]
	for i, l := range m.layers {
		if err := t.Rebind(l, g, axcl.Input, in.k, st.kc[i], 0, in.n); err != nil {
			return err
		}
		if err := t.Rebind(l, g, axcl.Input, in.v, st.vc[i], 0, in.n); err != nil {
			return err
		}
	}
	m.bound[g] = st.index
	return nil
}

// slotFaults break the slots on purpose (tests only): the exactness tests
// must fail with them. beforeStep, when set, is called by the scheduler
// before every step, and queued once a request's job is queued (tests: the
// trace, and requests started at given steps).
type slotFaults struct {
	beforeStep func(slot int, phase jobPhase, prompt []int)
	queued     func(prompt []int)
	// noRebind leaves the K/V inputs bound to whichever slot's caches they
	// were: a request reads another's rows.
	noRebind bool
	// stickyMask keeps the mask buffer's contents when another slot's
	// decode step follows, only adding the new position: a request sees
	// another's mask.
	stickyMask bool
}

// allocSlots allocates the K/V caches of slots 1..n-1 after the model and
// its first slot are loaded, refusing (a *SlotBudgetError) more than the
// CMM budget holds.
func (m *Model) allocSlots(ctx context.Context, n int, used0 uint64) error {
	per := m.SlotBytes()
	return m.dev.Do(ctx, func(t *npu.Thread) error {
		if need, free := uint64(n-1)*per, t.FreeBudget(); need > free {
			budget := m.dev.Budget()
			used := budget - free // with the model and its first slot
			return &SlotBudgetError{Model: m.pkg.Name, Slots: n, PerSlot: per, Free: free, Budget: budget,
				Fit: 1 + int(free/per), Loaded: used - min(used0, used)}
		}
		for i := 1; i < n; i++ {
			st := newState(i, &m.shape)
			if err := m.allocCaches(t, st); err != nil {
				return err
			}
			m.slots = append(m.slots, st)
		}
		for _, st := range m.slots {
			st.samp = newSampler(m.shape.Vocab)
		}
		return nil
	})
}
