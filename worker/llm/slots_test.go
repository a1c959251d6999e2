package llm

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/npu"
)

// planned is a request of an interleaving test, submitted when the
// scheduler is about to take its at-th step (0: at the start).
type planned struct {
	req Request
	at  int
}

// ran is what a request gave: its tokens and result, and the scheduler's
// steps of its slot (by global step number).
type ran struct {
	toks  []int
	res   *Result
	err   error
	steps []int
}

// interleave runs the plan on m: requests are submitted at the given steps
// of the scheduler (the scheduler waits until the newcomer is queued, so
// the schedule is the same on every run), and returns what each gave.
// Requests are told apart by their prompt's backing array (give each its own).
func interleave(t *testing.T, m *Model, plan []planned) []ran {
	t.Helper()
	out := make([]ran, len(plan))
	var (
		wg      sync.WaitGroup
		step    int
		started = make([]bool, len(plan))
		queued  = make([]chan struct{}, len(plan))
		slotOf  = map[int]int{} // slot -> request running in it
	)
	which := func(prompt []int) int {
		for k := range plan {
			if &plan[k].req.Prompt[0] == &prompt[0] {
				return k
			}
		}
		panic("a request not in the plan")
	}
	for k := range queued {
		queued[k] = make(chan struct{})
	}
	launch := func(k int) { // started[k] is set by the caller
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &out[k]
			r.res, r.err = m.Generate(bg, plan[k].req, func(tk Token) error {
				r.toks = append(r.toks, tk.ID)
				return nil
			})
		}()
		<-queued[k] // admitted at the next round
	}
	m.test.queued = func(prompt []int) { close(queued[which(prompt)]) }
	m.test.beforeStep = func(slot int, phase jobPhase, prompt []int) {
		if phase == phaseStart {
			slotOf[slot] = which(prompt)
		}
		out[slotOf[slot]].steps = append(out[slotOf[slot]].steps, step)
		for k := range plan {
			if !started[k] && plan[k].at == step+1 {
				started[k] = true
				launch(k)
			}
		}
		step++
	}
	defer func() { m.test.beforeStep, m.test.queued = nil, nil }()
	// The requests at step 0 are marked started before any is launched: the
	// scheduler reads started while this goroutine launches the next one.
	var first []int
	for k := range plan {
		if plan[k].at == 0 {
			started[k] = true
			first = append(first, k)
		}
	}
	for _, k := range first {
		launch(k)
	}
	wg.Wait()
	for k := range plan {
		if !started[k] {
			t.Fatalf("request %d planned at step %d: the others were done after %d steps", k, plan[k].at, step)
		}
		if out[k].err != nil {
			t.Fatalf("request %d: %v", k, out[k].err)
		}
	}
	return out
}

// overlapped checks that every request ran interleaved with another: some
// other request stepped between its first and its last step.
func overlapped(t *testing.T, rs []ran) {
	t.Helper()
	for k, r := range rs {
		first, last := r.steps[0], r.steps[len(r.steps)-1]
		found := false
		for o, x := range rs {
			if o != k && slices.ContainsFunc(x.steps, func(s int) bool { return s > first && s < last }) {
				found = true
			}
		}
		if !found {
			t.Fatalf("request %d (steps %d..%d) ran alone", k, first, last)
		}
	}
}

// interleavedAsSolo runs plan interleaved on m, checks that every request
// ran interleaved with another and gave its solo tokens want, and returns
// the runs.
func interleavedAsSolo(t *testing.T, m *Model, plan []planned, want [][]int) []ran {
	t.Helper()
	got := interleave(t, m, plan)
	overlapped(t, got)
	for k, r := range got {
		t.Logf("request %d: slot %d, steps %v, cached %d (copied %d, restored %d)", k, r.res.slot.index, r.steps, r.res.CachedTokens, r.res.CopiedTokens, r.res.RestoredTokens)
	}
	for k := range plan {
		if !slices.Equal(got[k].toks, want[k]) {
			t.Fatalf("request %d interleaved: %v, solo %v", k, got[k].toks, want[k])
		}
	}
	return got
}

// solo runs every request alone, one after the other, on a one-slot model.
func solo(t *testing.T, m *Model, plan []planned) [][]int {
	t.Helper()
	var out [][]int
	for _, p := range plan {
		toks, _ := generate(t, m, p.req)
		out = append(out, toks)
	}
	return out
}

// textPlan is 4 requests of different lengths (one past the largest
// prefill group, so its prompt also takes the decode-group path), greedy
// and seeded sampling, starting at different steps; with system, every
// prompt starts with the same 150 tokens, marked cacheable.
func textPlan(system bool) []planned {
	r := rand.New(rand.NewPCG(15, 1))
	var sys []int
	if system {
		sys = randomPrompt(r, 150)
	}
	seeded := func(seed uint64) Sampling {
		return Sampling{Temperature: 0.9, TopK: 40, TopP: 0.95, Seed: seed}
	}
	req := func(n, max int, s Sampling) Request {
		return Request{Prompt: slices.Concat(sys, randomPrompt(r, n)), MaxTokens: max, StopIDs: []int{}, Sampling: s, CachePrefix: len(sys)}
	}
	return []planned{
		{req(9, 14, Sampling{}), 0},
		{req(200, 6, seeded(7)), 3},
		{req(40, 9, Sampling{}), 5},
		{req(3+400-len(sys), 5, seeded(9)), 8},
	}
}

func loadSlots(t *testing.T, n int) (*Model, *cardsim.Reference) {
	m, ref, _ := loadTest(t, &Options{Slots: n})
	return m, ref
}

// TestInterleavedRequestsGiveTheirSoloTokens is the heart of issue 15:
// four requests of different lengths, greedy and seeded, starting at
// different steps, each interleaved with the others on a 4-slot model,
// give exactly the tokens each gives alone on a one-slot model — with and
// without a shared system prompt (copied on the card from another slot's
// rows, or restored from the host prefix cache). The greedy solo tokens of
// the shortest are the cacheless reference's.
func TestInterleavedRequestsGiveTheirSoloTokens(t *testing.T) {
	m, ref := loadSlots(t, 4)
	one, _, _ := loadTest(t, &Options{PrefixCacheBytes: -1})
	if used, total := m.Slots(); used != 0 || total != 4 {
		t.Fatalf("slots %d/%d", used, total)
	}
	for _, system := range []bool{false, true} {
		t.Run(fmt.Sprintf("system=%v", system), func(t *testing.T) {
			plan := textPlan(system)
			want := solo(t, one, plan)
			if !system {
				refToks, err := ref.Greedy(plan[0].req.Prompt, 14)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(want[0], refToks) {
					t.Fatalf("solo %v, reference %v", want[0], refToks)
				}
			}
			got := interleavedAsSolo(t, m, plan, want)
			copied := 0
			for k := range plan {
				copied += got[k].res.CopiedTokens + got[k].res.RestoredTokens
			}
			if system && copied < 3*150 {
				t.Fatalf("shared system prompt: %d rows copied or restored, want the 150 rows for each of the later 3", copied)
			}
			if !system && copied != 0 {
				t.Fatalf("no shared prefix, yet %d rows copied", copied)
			}
			if used, _ := m.Slots(); used != 0 {
				t.Fatalf("%d slots held after the requests", used)
			}
		})
	}
}

// TestBrokenSlotsFailTheExactnessTest: with the K/V inputs left bound to
// whichever slot ran last, or with the mask buffer keeping another slot's
// mask, the interleaved requests no longer give their solo tokens: the
// test above can fail.
func TestBrokenSlotsFailTheExactnessTest(t *testing.T) {
	one, _, _ := loadTest(t, &Options{PrefixCacheBytes: -1})
	plan := textPlan(false)
	want := solo(t, one, plan)
	for _, fault := range []string{"noRebind", "stickyMask"} {
		t.Run(fault, func(t *testing.T) {
			m, _ := loadSlots(t, 4)
			m.test.noRebind, m.test.stickyMask = fault == "noRebind", fault == "stickyMask"
			got := interleave(t, m, plan)
			same := true
			for k := range plan {
				if !slices.Equal(got[k].toks, want[k]) {
					same = false
					t.Logf("%s: request %d interleaved %v, solo %v", fault, k, got[k].toks, want[k])
				}
			}
			if same {
				t.Fatalf("%s: every interleaved request still gives its solo tokens", fault)
			}
		})
	}
}

// TestSlotsBeyondTheBudgetAreRefused: more slots than the CMM budget holds
// fail Load naming the model, the slot size and the budget; a bad count
// names the field.
func TestSlotsBeyondTheBudgetAreRefused(t *testing.T) {
	dir, _ := testPackage(t)
	dev := openDevice(t)
	one, err := Load(bg, dev, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	per, cmm := one.SlotBytes(), one.CMMBytes()
	if want := uint64(2*2*639*32*2 + 640*2); per != want {
		t.Fatalf("slot bytes %d, want %d", per, want)
	}
	if err := one.Close(bg); err != nil {
		t.Fatal(err)
	}
	// A budget with room for the model and 2.5 slots.
	cfgDev := openDeviceBudget(t, cmm+per*3/2)
	if _, err := Load(bg, cfgDev, dir, &Options{Slots: 2}); err != nil {
		t.Fatalf("2 slots in a budget for 2.5: %v", err)
	}
	cfgDev = openDeviceBudget(t, cmm+per*3/2)
	_, err = Load(bg, cfgDev, dir, &Options{Slots: 4})
	var be *SlotBudgetError
	if !errors.As(err, &be) || !errors.Is(err, ErrSlotBudget) || be.Slots != 4 || be.Fit != 2 || be.PerSlot != per || be.Model != "qwen3-test" {
		t.Fatalf("4 slots in a budget for 2.5: %v (%+v)", err, be)
	}
	if !contains(err.Error(), "room for 2 slots") || !contains(err.Error(), "qwen3-test") {
		t.Fatalf("message %q", err)
	}
	for _, n := range []int{-1, MaxSlots + 1} {
		if _, err := Load(bg, dev, dir, &Options{Slots: n}); !errors.Is(err, ErrSlots) || !contains(err.Error(), "slots is") {
			t.Fatalf("slots %d: %v", n, err)
		}
	}
}

// TestGenerateWaitsForAFreeSlot: a call beyond the slots waits for one
// (or its context's end) and then runs.
func TestGenerateWaitsForAFreeSlot(t *testing.T) {
	m, _ := loadSlots(t, 1)
	hold := make(chan struct{})
	got := make(chan struct{})
	go func() {
		m.Generate(bg, Request{Prompt: []int{1, 2}, MaxTokens: 2, StopIDs: []int{}}, func(Token) error {
			<-hold
			return nil
		})
		close(got)
	}()
	for used, _ := m.Slots(); used == 0; used, _ = m.Slots() {
		runtime.Gosched()
	}
	ctx, cancel := context.WithCancel(bg)
	cancel()
	if _, err := m.Generate(ctx, Request{Prompt: []int{3}}, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("no free slot, cancelled: %v", err)
	}
	close(hold)
	<-got
	if _, err := m.Generate(bg, Request{Prompt: []int{3}, MaxTokens: 1}, nil); err != nil {
		t.Fatal(err)
	}
}

// openDeviceBudget opens the simulated card with a CMM budget of budget
// bytes; it is closed at cleanup.
func openDeviceBudget(t *testing.T, budget uint64) *npu.Device {
	t.Helper()
	dev, err := npu.Open(bg, npu.Config{Library: cardsim.Library(t), SampleInterval: -1, CMMBudget: budget})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close(bg) })
	return dev
}

var smolPkg oncePackage

// loadSmolVLM loads the simulator's SmolVLM package (2 llama layers, a
// 320-token prefill chunk, 64 image rows from a 512×512 encoder).
func loadSmolVLM(t *testing.T, opts *Options) (*Model, *cardsim.Reference) {
	t.Helper()
	dir, ref := smolPkg.get(t, "smolvlm-tiny", cardsim.TinySmolVLM)
	m, err := Load(bg, openDevice(t), dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(bg) })
	return m, ref
}

// TestInterleavedImageRequestsGiveTheirSoloTokens: on the SmolVLM package,
// text and image requests sharing a system prompt, interleaved on 4 slots,
// give their solo tokens; the system prompt's rows are copied between
// slots, but never a row at or past an image (two requests with the same
// placeholders and different images differ, and the greedy one is the
// reference's).
func TestInterleavedImageRequestsGiveTheirSoloTokens(t *testing.T) {
	m, ref := loadSmolVLM(t, &Options{Slots: 4})
	one, _ := loadSmolVLM(t, &Options{PrefixCacheBytes: -1})
	v, _ := m.Vision()
	r := rand.New(rand.NewPCG(15, 2))
	words := func(n int) []int {
		p := make([]int, n)
		for i := range p {
			p[i] = r.IntN(49000) // below the special tokens and the image placeholder
		}
		return p
	}
	sys := words(100)
	pad := slices.Repeat([]int{v.ImageTokenID}, v.Tokens)
	imgPrompt := slices.Concat(sys, words(5), pad, words(10))
	imgA, imgB := randomImage(r, 512*512*3), randomImage(r, 512*512*3)
	plan := []planned{
		{Request{Prompt: slices.Concat(sys, words(20)), MaxTokens: 12, StopIDs: []int{}, CachePrefix: len(sys)}, 0},
		{Request{Prompt: imgPrompt, MaxTokens: 6, StopIDs: []int{}, Images: [][]byte{imgA}, Sampling: Sampling{Temperature: 0.8, TopK: 20, Seed: 3}}, 2},
		{Request{Prompt: slices.Concat(sys, words(30)), MaxTokens: 8, StopIDs: []int{}, Sampling: Sampling{Temperature: 1, Seed: 4}}, 4},
		{Request{Prompt: slices.Clone(imgPrompt), MaxTokens: 4, StopIDs: []int{}, Images: [][]byte{imgB}}, 6},
	}
	want := solo(t, one, plan)
	refToks, err := ref.GreedyImages(imgPrompt, v.ImageTokenID, [][]byte{imgB}, 4)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(want[3], refToks) {
		t.Fatalf("solo image request %v, reference %v", want[3], refToks)
	}
	got := interleavedAsSolo(t, m, plan, want)
	for k := range plan {
		res := got[k].res
		if res.CachedTokens > 105 {
			t.Fatalf("request %d took over %d rows, past the system prompt and the image's start", k, res.CachedTokens)
		}
		if k > 0 && res.CachedTokens < 100 {
			t.Fatalf("request %d took over %d rows, not the system prompt's 100", k, res.CachedTokens)
		}
	}
}

// TestScheduleRoundRobin: the schedule itself. Three chats arriving
// together each take their prefill step in arrival order (each one's first
// token after the previous one's), then advance one token per round;
// a newcomer with a two-chunk prompt arriving while they decode gets its
// first token after its own two prefill steps with one decode step of each
// running chat in between (its prefill plus one round), and meanwhile every
// running chat still advances one token per round.
func TestScheduleRoundRobin(t *testing.T) {
	m, _ := loadSlots(t, 4)
	r := rand.New(rand.NewPCG(15, 3))
	chat := func(n, max int) Request { return Request{Prompt: randomPrompt(r, n), MaxTokens: max, StopIDs: []int{}} }
	plan := []planned{{chat(20, 30), 0}, {chat(20, 30), 0}, {chat(20, 30), 0}, {chat(200, 3), 12}}
	got := interleave(t, m, plan)
	for k := 1; k < 3; k++ {
		if got[k].steps[0] <= got[k-1].steps[0] {
			t.Fatalf("chat %d had its first token (step %d) before chat %d, which arrived first (step %d)", k, got[k].steps[0], k-1, got[k-1].steps[0])
		}
	}
	for k, r := range got {
		t.Logf("request %d: steps %v", k, r.steps)
	}
	late := got[3].steps
	if late[1]-late[0] != 4 {
		t.Fatalf("newcomer's two prefill steps at %v: want one decode step of each of the 3 running chats between them", late[:2])
	}
	for k := range 3 {
		s := got[k].steps
		for i := 1; i < len(s); i++ {
			if s[i] > late[0] && s[i-1] < late[len(late)-1] && s[i]-s[i-1] > 4 {
				t.Fatalf("chat %d waited %d steps for its next token while the newcomer ran (steps %v)", k, s[i]-s[i-1], s)
			}
		}
	}
}

// TestCancelOneOfSeveral: a request cancelled mid-reply ends with its
// context's error, and the requests running beside it still give their
// solo tokens.
func TestCancelOneOfSeveral(t *testing.T) {
	m, _ := loadSlots(t, 3)
	one, _, _ := loadTest(t, &Options{PrefixCacheBytes: -1})
	plan := textPlan(false)[:3]
	want := solo(t, one, plan)
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	var wg sync.WaitGroup
	var cancelled error
	wg.Go(func() {
		n := 0
		_, cancelled = m.Generate(ctx, Request{Prompt: []int{5, 6, 7}, StopIDs: []int{}}, func(Token) error {
			if n++; n == 3 {
				cancel()
			}
			return nil
		})
	})
	got := make([][]int, len(plan))
	for k := range plan {
		wg.Go(func() {
			toks, _ := generate(t, m, plan[k].req)
			got[k] = toks
		})
	}
	wg.Wait()
	if !errors.Is(cancelled, context.Canceled) {
		t.Fatalf("cancelled request: %v", cancelled)
	}
	for k := range plan {
		if !slices.Equal(got[k], want[k]) {
			t.Fatalf("request %d beside a cancelled one: %v, solo %v", k, got[k], want[k])
		}
	}
}

// TestInterleavedDecodeAllocatesNothingPerToken: with two requests
// interleaved on two slots, longer replies cost no more allocations than
// short ones.
func TestInterleavedDecodeAllocatesNothingPerToken(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under the race detector")
	}
	m, _ := loadSlots(t, 2)
	run := func(n int) func() {
		return func() {
			var wg sync.WaitGroup
			for k := range 2 {
				wg.Go(func() {
					if _, err := m.Generate(bg, Request{Prompt: []int{1, 2, 3 + k}, MaxTokens: n, StopIDs: []int{}}, nil); err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
		}
	}
	short, long := testing.AllocsPerRun(5, run(4)), testing.AllocsPerRun(5, run(64))
	if long > short {
		t.Fatalf("2 slots: %v allocations for 2 × 4 tokens, %v for 2 × 64", short, long)
	}
}

// TestExecuteFaultWithSeveralRunning: an execute failing while three
// requests run ends the one whose step it was with the device error; every
// request ends, each with its solo tokens or an error after a prefix of
// them; the same three then run again, interleaved, to their solo tokens.
func TestExecuteFaultWithSeveralRunning(t *testing.T) {
	m, _ := loadSlots(t, 3)
	one, _, _ := loadTest(t, &Options{PrefixCacheBytes: -1})
	plan := textPlan(false)[:3]
	want := solo(t, one, plan)
	run := func() ([][]int, []error) {
		toks, errs := make([][]int, len(plan)), make([]error, len(plan))
		var wg sync.WaitGroup
		for k := range plan {
			wg.Go(func() {
				_, errs[k] = m.Generate(bg, plan[k].req, func(tk Token) error {
					toks[k] = append(toks[k], tk.ID)
					return nil
				})
			})
		}
		wg.Wait()
		return toks, errs
	}
	ctl := cardsim.Controls(t)
	ctl.SetFaults(t, "fail_execute=25")
	toks, errs := run()
	failed := 0
	for k := range plan {
		switch {
		case errs[k] != nil:
			failed++
			if !slices.Equal(toks[k], want[k][:min(len(toks[k]), len(want[k]))]) {
				t.Fatalf("request %d failed (%v) after %v, not a prefix of its solo %v", k, errs[k], toks[k], want[k])
			}
		case !slices.Equal(toks[k], want[k]):
			t.Fatalf("request %d beside a fault: %v, solo %v", k, toks[k], want[k])
		}
	}
	if failed != 1 {
		t.Fatalf("%d requests failed, want the one whose step hit the fault (%v)", failed, errs)
	}
	ctl.SetFaults(t, "")
	toks, errs = run()
	for k := range plan {
		if errs[k] != nil || !slices.Equal(toks[k], want[k]) {
			t.Fatalf("request %d after the fault: %v %v, solo %v", k, errs[k], toks[k], want[k])
		}
	}
}

// TestInterleavedQwen3VLGiveTheirSoloTokens: on the Qwen3-VL package
// (mRoPE: each image request decodes with its own position shift, and
// deepstack additions in its prefill), an image request, a text request and
// a two-image request interleaved on 3 slots give their solo tokens; the
// greedy one-image request is the cacheless reference's.
func TestInterleavedQwen3VLGiveTheirSoloTokens(t *testing.T) {
	m, ref := loadQwen3VLWith(t, &Options{Slots: 3})
	one, _ := loadQwen3VLWith(t, &Options{PrefixCacheBytes: -1})
	text := []int{72, 101, 108, 108, 111, 32, 119, 104, 97, 116}
	imgA, imgB := qwenImage(1), qwenImage(2)
	onePrompt := qwenPrompt(text, 1, []int{68, 101, 115, 99})
	plan := []planned{
		{Request{Prompt: onePrompt, MaxTokens: 6, StopIDs: []int{}, Images: [][]byte{imgA}}, 0},
		{Request{Prompt: slices.Concat(text, []int{40, 41, 42, 43, 44, 45}), MaxTokens: 10, StopIDs: []int{}, Sampling: Sampling{Temperature: 0.7, Seed: 5}}, 2},
		{Request{Prompt: qwenPrompt(text, 2, []int{97, 98}), MaxTokens: 5, StopIDs: []int{}, Images: [][]byte{imgB, imgA}, Sampling: Sampling{Temperature: 0.9, TopK: 30, Seed: 6}}, 3},
	}
	want := solo(t, one, plan)
	refToks, err := ref.GreedyQwen3VL(onePrompt, [][]byte{imgA}, 6, cardsim.Qwen3VLOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(want[0], refToks) {
		t.Fatalf("solo image request %v, reference %v", want[0], refToks)
	}
	interleavedAsSolo(t, m, plan, want)
}
