package npu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kiln-project/kiln/worker/axcl"
)

// Sentinels.
var (
	// ErrStopped is returned by calls made after Close.
	ErrStopped = errors.New("npu: device closed")
	// ErrLost is returned once the device is lost (a hung execute or a
	// card that stopped answering). Only Close is useful afterwards.
	ErrLost = errors.New("npu: device lost")
	// ErrHung is the error of an execute that exceeded
	// Config.ExecuteTimeout. It also matches ErrLost.
	ErrHung = errors.New("npu: execute hung")
	// ErrBudget is matched by a *BudgetError.
	ErrBudget = errors.New("npu: CMM budget exceeded")
	// ErrOutOfRange: an offset or length outside a device buffer.
	ErrOutOfRange = errors.New("npu: out of range")
	// ErrNoProperties: the runtime does not export axclrtGetDeviceProperties
	// (older SDKs, the V2.25 API): the card's health (temperature, load,
	// CMM, firmware) is unknown. It also matches axcl.ErrUnsupported.
	ErrNoProperties = fmt.Errorf("npu: card health unknown: %w", axcl.ErrUnsupported)
)

// Config configures Open. The zero value opens the first card of the
// runtime at axcl.LibraryPath().
type Config struct {
	// Library is the path of libaxcl_rt.so; "" means axcl.LibraryPath()
	// (KILN_AXCL_LIB, else /usr/lib/axcl/libaxcl_rt.so).
	Library string
	// Index picks the card from the runtime's device list (0 = first).
	// It is an index; the runtime's device ids are PCIe bus numbers.
	Index int
	// AXCLConfig is the axcl.json passed to axclInit; "" for the defaults.
	AXCLConfig string
	// ExecuteTimeout bounds one engine execute, and one wait for the
	// device's stream (Thread.Sync); past it the device is marked lost.
	// Default 60s.
	ExecuteTimeout time.Duration
	// CMMBudget is the device memory kiln may use, in bytes. 0 means the
	// card's CMM total as reported by the device properties.
	CMMBudget uint64
	// SampleInterval is how often the idle device thread refreshes the
	// device properties. Default 5s; negative disables the sampler
	// (Properties then returns the sample taken at Open or by Refresh).
	SampleInterval time.Duration
	// SpinWait is how long the device thread keeps polling for the next
	// request after serving one, and how long a caller polls for its
	// result, before either parks. Handing work to a parked, locked OS
	// thread costs two futex wake-ups (tens of µs); back-to-back requests
	// of an inference loop skip them while both sides spin. Default 50µs;
	// negative disables spinning. Never used with GOMAXPROCS=1.
	SpinWait time.Duration
	// Logger receives lifecycle and fault messages. Default slog.Default().
	Logger *slog.Logger
	// EnumerateTimeout bounds how long Open waits for a card that has not
	// enumerated yet (an empty device list, or "not connected": a Pi that
	// just booted, a card that is rebooting). Default 60s, the time the
	// vendor allows a card to come back (card-field-notes.md §1.5).
	EnumerateTimeout time.Duration
}

func (c Config) withDefaults() Config {
	if c.ExecuteTimeout <= 0 {
		c.ExecuteTimeout = 60 * time.Second
	}
	if c.SampleInterval == 0 {
		c.SampleInterval = 5 * time.Second
	}
	if c.SpinWait == 0 {
		c.SpinWait = 50 * time.Microsecond
	}
	if runtime.GOMAXPROCS(0) < 2 {
		c.SpinWait = -1
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.EnumerateTimeout <= 0 {
		c.EnumerateTimeout = 60 * time.Second
	}
	return c
}

// Properties is one sample of the card's health.
type Properties struct {
	axcl.DeviceProperties
	SampledAt time.Time
}

// Device is one open card. All its methods are safe for concurrent use;
// the work itself is serialised on the device thread.
type Device struct {
	cfg Config
	rt  *axcl.Runtime
	log *slog.Logger

	reqs     chan *request
	slot     atomic.Pointer[request] // fast handoff while the thread spins; closedSlot when it does not
	stop     chan struct{}           // closed by Close
	stopOnce sync.Once
	done     chan struct{} // closed when the thread has torn down
	lostCh   chan struct{} // closed when the device is marked lost
	lostOnce sync.Once
	lostErr  error        // set before lostCh closes
	hung     atomic.Bool  // the thread is stuck in a runtime call
	execFrom atomic.Int64 // monotonicNow() when the running execute started, 0 if none
	busy     atomic.Int32 // replies running (Busy): the sampler keeps off the card meanwhile

	propsMu sync.Mutex
	props   Properties

	// Set by the thread during open, read-only afterwards.
	id     axcl.DeviceID
	budget uint64

	// Owned by the device thread.
	th          Thread
	rtCtx       axcl.Context
	engineOwned bool
	models      []*Model
	buffers     map[*Buffer]struct{}
	cmmUsed     uint64
	teardownErr error
	panicked    bool // a function run on the thread panicked: release the runtime
}

// Open starts the device thread and opens the card. When ctx ends before
// the card is open, the partial setup is torn down and ctx's error
// returned.
func Open(ctx context.Context, cfg Config) (*Device, error) {
	cfg = cfg.withDefaults()
	rt, err := loadRuntime(cfg.Library)
	if err != nil {
		return nil, err
	}
	d := &Device{
		cfg:     cfg,
		rt:      rt,
		log:     cfg.Logger,
		reqs:    make(chan *request),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		lostCh:  make(chan struct{}),
		buffers: make(map[*Buffer]struct{}),
	}
	d.th.d = d
	d.slot.Store(closedSlot)
	ready := make(chan error, 1)
	go d.run(ready)
	select {
	case err := <-ready:
		if err != nil {
			<-d.done
			return nil, err
		}
	case <-ctx.Done():
		d.stopOnce.Do(func() { close(d.stop) })
		return nil, ctx.Err()
	}
	go d.watchdog()
	return d, nil
}

// ID is the runtime device id (the card's PCIe bus number).
func (d *Device) ID() axcl.DeviceID { return d.id }

// Runtime is the loaded runtime. Call it only from functions run by Do.
func (d *Device) Runtime() *axcl.Runtime { return d.rt }

// Budget is the CMM budget in bytes.
func (d *Device) Budget() uint64 { return d.budget }

// Done is closed once the device thread has torn everything down.
func (d *Device) Done() <-chan struct{} { return d.done }

// Err is nil while the device is usable, the lost error once it is lost,
// ErrStopped after Close.
func (d *Device) Err() error {
	select {
	case <-d.lostCh:
		return d.lostErr
	default:
	}
	select {
	case <-d.stop:
		return ErrStopped
	default:
	}
	return nil
}

// LostError is the error of every call after the device was lost.
type LostError struct {
	Device axcl.DeviceID
	Cause  error
}

func (e *LostError) Error() string {
	return fmt.Sprintf("npu: device %d lost: %v", e.Device, e.Cause)
}

// Is matches ErrLost.
func (e *LostError) Is(target error) bool { return target == ErrLost }

func (e *LostError) Unwrap() error { return e.Cause }

// markLost records cause and wakes every waiting caller.
func (d *Device) markLost(cause error, hung bool) {
	d.lostOnce.Do(func() {
		if hung {
			d.hung.Store(true)
		}
		d.lostErr = &LostError{Device: d.id, Cause: cause}
		d.log.Error("npu: device lost", "device", int(d.id), "err", cause)
		close(d.lostCh)
	})
}

// noteError marks the device lost when err says the card stopped
// answering.
func (d *Device) noteError(err error) {
	if IsCardGone(err) {
		d.markLost(err, false)
	}
}

// IsCardGone reports whether a runtime error says the card stopped
// answering (axcl.ErrDeviceLost) or dropped off the bus
// (axcl.ErrDeviceNotConnected, "device … is not connected", once the card
// was open). Nothing more may be submitted to such a card: it needs a
// reboot (card-field-notes.md §1.6).
func IsCardGone(err error) bool {
	return err != nil && (errors.Is(err, axcl.ErrDeviceLost) || errors.Is(err, axcl.ErrDeviceNotConnected))
}

// watchdog marks the device lost when an execute runs past the timeout.
func (d *Device) watchdog() {
	tick := min(d.cfg.ExecuteTimeout/4, time.Second)
	t := time.NewTicker(max(tick, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-d.done:
			return
		case <-d.lostCh:
			return
		case <-t.C:
			from := d.execFrom.Load()
			if from != 0 && monotonicNow()-from > int64(d.cfg.ExecuteTimeout) {
				d.markLost(fmt.Errorf("%w: no return after %v", ErrHung, d.cfg.ExecuteTimeout), true)
				return
			}
		}
	}
}

// epoch anchors monotonicNow.
var epoch = time.Now()

// monotonicNow is nanoseconds on the monotonic clock (immune to wall-clock
// steps), never 0.
func monotonicNow() int64 { return int64(time.Since(epoch)) + 1 }

// PanicError carries a panic of a function run on the device thread; Do
// re-panics with it in the caller.
type PanicError struct {
	Value any
	Stack []byte // the device thread's stack at the panic
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("npu: panic on device thread: %v\n%s", e.Value, e.Stack)
}

// request is one unit of work for the device thread. Requests are pooled
// so that Execute allocates nothing.
type request struct {
	fn    func(*Thread) error // nil: execute model/group
	model *Model
	group int

	err    error
	panicV any
	stack  []byte
	fin    atomic.Bool   // set after done has its token
	done   chan struct{} // capacity 1, reused
}

// closedSlot in Device.slot means the thread is not polling it.
var closedSlot = new(request)

var requestPool = sync.Pool{New: func() any { return &request{done: make(chan struct{}, 1)} }}

func getRequest() *request { return requestPool.Get().(*request) }

func putRequest(r *request) {
	r.fn, r.model, r.group, r.err, r.panicV, r.stack = nil, nil, 0, nil, nil, nil
	r.fin.Store(false)
	requestPool.Put(r)
}

// Do runs fn on the device thread and returns its error. ctx matters only
// while the work is queued: once the thread has taken it, Do waits for it
// (or for the device to be declared lost). A panic in fn is re-raised in
// the caller as a *PanicError carrying the device thread's stack. After
// Close Do returns ErrStopped; after a loss, the LostError.
func (d *Device) Do(ctx context.Context, fn func(t *Thread) error) error {
	r := getRequest()
	r.fn = fn
	return d.submit(ctx, r)
}

// Execute runs shape group group of m on the card. It allocates nothing.
func (d *Device) Execute(ctx context.Context, m *Model, group int) error {
	r := getRequest()
	r.model, r.group = m, group
	return d.submit(ctx, r)
}

func (d *Device) submit(ctx context.Context, r *request) error {
	if err := d.Err(); err != nil {
		putRequest(r)
		return err
	}
	if err := ctx.Err(); err != nil {
		putRequest(r)
		return err
	}
	if d.slot.CompareAndSwap(nil, r) {
		// The thread is polling and takes r at once: wait for the result
		// by polling too, then park.
		if d.cfg.SpinWait > 0 {
			deadline := time.Now().Add(d.cfg.SpinWait)
			for i := 0; !r.fin.Load(); i++ {
				if i&63 == 63 && time.Now().After(deadline) {
					break
				}
			}
		}
	} else {
		select {
		case d.reqs <- r:
		case <-ctx.Done():
			putRequest(r)
			return ctx.Err()
		case <-d.stop:
			putRequest(r)
			return ErrStopped
		case <-d.lostCh:
			putRequest(r)
			return d.lostErr
		}
	}
	select {
	case <-r.done:
	case <-d.lostCh:
		select {
		case <-r.done:
		default:
			if !d.finishAfterLoss(r) {
				// The thread still holds r (stuck in the runtime): abandon it.
				return d.lostErr
			}
		}
	}
	err, pv, stack := r.err, r.panicV, r.stack
	putRequest(r)
	if pv != nil {
		panic(&PanicError{Value: pv, Stack: stack})
	}
	return err
}

// finishAfterLoss waits for a request that was running when the device was
// marked lost, unless the thread is stuck in a hung call: a call that failed
// and so marked the device lost returns at once, and its caller must not
// read its results while the thread still writes them. The wait is bounded
// by ExecuteTimeout (the watchdog stops once the device is lost).
func (d *Device) finishAfterLoss(r *request) bool {
	if d.hung.Load() {
		return false
	}
	t := time.NewTimer(d.cfg.ExecuteTimeout)
	defer t.Stop()
	select {
	case <-r.done:
		return true
	case <-t.C:
		return false
	}
}

// poll serves requests handed over through the slot for as long as they
// keep coming within SpinWait, then closes the slot (device thread only).
func (d *Device) poll(nextSample time.Time) {
	if d.cfg.SpinWait <= 0 {
		return
	}
	d.slot.Store(nil) // open
	deadline := time.Now().Add(d.cfg.SpinWait)
	for i := 0; ; i++ {
		if r := d.slot.Load(); r != nil {
			// Closed while serving, so that later callers queue on the
			// channel, where their context counts. Only this thread changes
			// a non-nil slot.
			d.slot.Store(closedSlot)
			d.serve(r)
			if d.panicked {
				break
			}
			d.slot.Store(nil)
			deadline = time.Now().Add(d.cfg.SpinWait)
			continue
		}
		if i&63 != 63 {
			continue
		}
		now := time.Now()
		if now.After(deadline) || !nextSample.IsZero() && now.After(nextSample) || d.stopping() {
			break
		}
	}
	// Close the slot; a request that landed meanwhile is served first.
	for {
		switch r := d.slot.Load(); r {
		case closedSlot:
			return
		case nil:
			d.slot.CompareAndSwap(nil, closedSlot)
		default:
			d.slot.Store(closedSlot)
			if d.panicked {
				d.refuse(r)
			} else {
				d.serve(r)
			}
		}
	}
}

func (d *Device) stopping() bool {
	select {
	case <-d.stop:
		return true
	default:
		return false
	}
}

// serve runs one request on the device thread.
func (d *Device) serve(r *request) {
	defer func() {
		if v := recover(); v != nil {
			r.panicV, r.stack = v, debug.Stack()
			d.panicked = true
		}
		// done gets its token first, so a caller that saw fin never
		// parks on it. fin may land after the caller recycled r; it only
		// ends a spin early, done stays the synchronisation.
		r.done <- struct{}{}
		r.fin.Store(true)
	}()
	if r.fn == nil {
		r.err = d.th.Execute(r.model, r.group)
		return
	}
	r.err = r.fn(&d.th)
}

// run is the device thread.
func (d *Device) run(ready chan<- error) {
	runtime.LockOSThread()
	// Never unlocked: the OS thread holds the runtime's per-thread state
	// and exits with this goroutine.
	defer close(d.done)
	if err := d.open(); err != nil {
		d.teardown()
		ready <- err
		return
	}
	ready <- nil

	var tick <-chan time.Time
	var nextSample time.Time
	if d.cfg.SampleInterval > 0 && d.rt.HasDeviceProperties() {
		t := time.NewTicker(d.cfg.SampleInterval)
		defer t.Stop()
		tick = t.C
		nextSample = time.Now().Add(d.cfg.SampleInterval)
	}
	for {
		select {
		case r := <-d.reqs:
			d.serve(r)
			if !d.panicked {
				d.poll(nextSample)
			}
			if d.panicked {
				d.releaseAfterPanic()
				return
			}
		case <-tick:
			// Never mid-reply: the properties call runs commands on the
			// card (tens to hundreds of ms). Samples land between jobs;
			// the thermal governor refreshes on its own near a threshold.
			if d.Err() == nil && d.busy.Load() == 0 {
				d.sample()
			}
			nextSample = time.Now().Add(d.cfg.SampleInterval)
		case <-d.stop:
			d.teardown()
			return
		}
	}
}

// setup steps, in order; teardown undoes the ones that happened.
func (d *Device) open() error {
	rt := d.rt
	if err := acquireInit(rt, d.cfg.AXCLConfig); err != nil {
		return fmt.Errorf("npu: init runtime %s: %w", rt.Path(), err)
	}
	d.th.inited = true
	if err := d.enumerate(); err != nil {
		return err
	}
	d.th.deviceSet = true
	d.watchStatus()
	var err error
	if d.rtCtx, err = rt.CreateContext(d.id); err != nil {
		return fmt.Errorf("npu: create context on device %d: %w", d.id, err)
	}
	if err := rt.EngineInit(axcl.VNPUDisable); err != nil {
		// The NPU may already be initialised (by another user of the card
		// in this or another process); then its mode can be read.
		kind, kerr := rt.EngineVNPUKind()
		if kerr != nil {
			return fmt.Errorf("npu: engine init on device %d: %w", d.id, err)
		}
		d.log.Info("npu: engine already initialised", "device", int(d.id), "vnpu", kind.String())
	} else {
		d.engineOwned = true
	}
	d.budget = d.cfg.CMMBudget
	if !rt.HasDeviceProperties() {
		// Older runtimes: no health, and no CMM total to budget against
		// unless Config sets one; the runtime refuses what does not fit.
		if d.budget == 0 {
			d.budget = math.MaxUint64
		}
		d.log.Warn("npu: the runtime has no axclrtGetDeviceProperties: card health (temperature, load, CMM) unknown",
			"device", int(d.id), "index", d.cfg.Index, "lib", rt.Path())
		return nil
	}
	if err := d.sample(); err != nil {
		return fmt.Errorf("npu: read properties of device %d: %w", d.id, err)
	}
	if d.budget == 0 {
		d.budget = d.props.CMMTotalBytes()
	}
	d.log.Info("npu: device open", "device", int(d.id), "index", d.cfg.Index,
		"firmware", d.props.Firmware(), "cmm_budget_mib", d.budget>>20)
	return nil
}

// sample refreshes the properties (device thread only).
func (d *Device) sample() error {
	var p axcl.DeviceProperties
	if err := d.rt.DeviceProperties(d.id, &p); err != nil {
		d.noteError(err)
		d.log.Warn("npu: properties sample failed", "device", int(d.id), "err", err)
		return err
	}
	d.propsMu.Lock()
	d.props = Properties{DeviceProperties: p, SampledAt: time.Now()}
	d.propsMu.Unlock()
	return nil
}

// Properties returns the latest sample of the card's health. It never
// calls the runtime. ErrNoProperties when the runtime cannot report it.
func (d *Device) Properties(ctx context.Context) (Properties, error) {
	if err := ctx.Err(); err != nil {
		return Properties{}, err
	}
	if err := d.Err(); err != nil {
		return Properties{}, err
	}
	if !d.rt.HasDeviceProperties() {
		return Properties{}, ErrNoProperties
	}
	d.propsMu.Lock()
	defer d.propsMu.Unlock()
	return d.props, nil
}

// Refresh samples the properties now, on the device thread, and returns
// the new sample.
func (d *Device) Refresh(ctx context.Context) (Properties, error) {
	if !d.rt.HasDeviceProperties() {
		return Properties{}, ErrNoProperties
	}
	if err := d.Do(ctx, func(*Thread) error { return d.sample() }); err != nil {
		return Properties{}, err
	}
	return d.Properties(ctx)
}

// Close tears the device down: it stops accepting work and the device
// thread frees every buffer, destroys IO and IO info, unloads models,
// finalises the engine, destroys the context, resets the device and
// finalises the runtime. ctx bounds only the wait; the teardown runs to
// the end on the device thread regardless. When the thread is stuck in a
// hung runtime call Close returns at once with an error matching ErrHung;
// the teardown then runs if the call ever returns. Close may be called
// more than once.
func (d *Device) Close(ctx context.Context) error {
	d.stopOnce.Do(func() { close(d.stop) })
	if d.hung.Load() {
		select {
		case <-d.done:
			return d.teardownErr
		default:
			return fmt.Errorf("npu: device %d: teardown deferred until the runtime returns: %w", d.id, d.lostErr)
		}
	}
	select {
	case <-d.done:
		return d.teardownErr
	case <-d.lostCh:
		if d.hung.Load() {
			return fmt.Errorf("npu: device %d: teardown deferred until the runtime returns: %w", d.id, d.lostErr)
		}
		select {
		case <-d.done:
			return d.teardownErr
		case <-ctx.Done():
			return ctx.Err()
		}
	case <-ctx.Done():
		return fmt.Errorf("npu: device %d: close: %w (teardown continues)", d.id, ctx.Err())
	}
}

// teardown undoes open and everything loaded since (device thread only).
func (d *Device) teardown() {
	d.unwatch()
	rt := d.rt
	var errs []error
	keep := func(what string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
	}
	for i := len(d.models) - 1; i >= 0; i-- {
		keep("unload "+d.models[i].name, d.th.release(d.models[i]))
	}
	d.models = nil
	for b := range d.buffers {
		keep("free buffer", d.th.Free(b))
	}
	keep("streams and pinned buffers", d.th.releaseStreams())
	if d.engineOwned {
		keep("engine finalize", rt.EngineFinalize())
		d.engineOwned = false
	}
	if d.rtCtx != 0 {
		keep("destroy context", rt.DestroyContext(d.rtCtx))
		d.rtCtx = 0
	}
	if d.th.deviceSet {
		keep("reset device", rt.ResetDevice(d.id))
		d.th.deviceSet = false
	}
	if d.th.inited {
		keep("finalize runtime", releaseInit(rt))
		d.th.inited = false
	}
	if len(errs) > 0 {
		d.teardownErr = fmt.Errorf("npu: teardown of device %d: %w", d.id, errors.Join(errs...))
		if d.Err() != nil && errors.Is(d.Err(), ErrLost) {
			// Expected on a lost card; keep Close quiet about it.
			d.log.Warn("npu: teardown of a lost device", "device", int(d.id), "err", d.teardownErr)
			d.teardownErr = nil
		}
	}
	d.log.Info("npu: device closed", "device", int(d.id))
}
