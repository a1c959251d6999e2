package thermal

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// MonitorConfig configures a Monitor.
type MonitorConfig struct {
	// Limits are the governor's thresholds (default DefaultConfig()).
	Limits *Config
	// Card reads the card's Tj; nil leaves the card out.
	Card Source
	// SoC reads the host SoC; nil leaves it out.
	SoC Source
	// CardNow, when set, samples the card afresh (Card may return a cached
	// sample). Check and Admit use it instead of Card once the card is
	// within FreshMarginC of its pause threshold, so that decisions near the
	// threshold do not rest on an old sample: the device samples its
	// properties only between replies, so during a long reply the cached
	// sample ages (worker/npu Device.Busy).
	CardNow Source
	// FreshMarginC is that margin (default 3 °C).
	FreshMarginC float64
	// Interval between samples (default DefaultInterval).
	Interval time.Duration
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// DefaultInterval is how often a Monitor samples when its config leaves
// Interval zero.
const DefaultInterval = 2 * time.Second

// Monitor samples its sources every Interval and feeds a Governor.
// Start, Check, Snapshot and Stop are safe for concurrent use.
type Monitor struct {
	cfg MonitorConfig
	log *slog.Logger

	mu       sync.Mutex // serialises samples, so transitions are reported in order
	gov      *Governor
	last     Reading
	onChange func(Transition)
	warned   map[string]bool

	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
	started  atomic.Bool
}

// NewMonitor returns a monitor whose governor starts in OK. onChange is
// called for every transition, in order, on the goroutine that took the
// sample; it must not call back into the Monitor.
func NewMonitor(cfg MonitorConfig, onChange func(Transition)) (*Monitor, error) {
	if cfg.Limits == nil {
		d := DefaultConfig()
		cfg.Limits = &d
	}
	if cfg.FreshMarginC <= 0 {
		cfg.FreshMarginC = 3
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	gov, err := NewGovernor(*cfg.Limits)
	if err != nil {
		return nil, err
	}
	if onChange == nil {
		onChange = func(Transition) {}
	}
	return &Monitor{cfg: cfg, log: cfg.Logger, gov: gov, onChange: onChange, warned: map[string]bool{},
		last: Reading{CardC: Unknown, SoCC: Unknown},
		stop: make(chan struct{}), done: make(chan struct{})}, nil
}

// Limits returns the thresholds.
func (m *Monitor) Limits() Config { return *m.cfg.Limits }

// Start samples once, then every Interval until Stop.
func (m *Monitor) Start(ctx context.Context) {
	if !m.started.CompareAndSwap(false, true) {
		return
	}
	m.Check(ctx)
	go m.run(context.WithoutCancel(ctx))
}

func (m *Monitor) run(ctx context.Context) {
	defer close(m.done)
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.Check(ctx)
		}
	}
}

// Stop ends sampling and waits for the sampler. Safe to call more than
// once, and without Start.
func (m *Monitor) Stop() {
	m.stopOnce.Do(func() { close(m.stop) })
	if m.started.Load() {
		<-m.done
	}
}

// Check samples the sources now, updates the governor and reports a
// transition, and returns the state. Near the card's pause threshold it
// reads the card through CardNow.
func (m *Monitor) Check(ctx context.Context) State {
	m.mu.Lock()
	defer m.mu.Unlock()
	card := m.cfg.Card
	if m.cfg.CardNow != nil && !math.IsNaN(m.last.CardC) && m.last.CardC >= m.cfg.Limits.Card.PauseC-m.cfg.FreshMarginC {
		card = m.cfg.CardNow
	}
	r := Reading{CardC: m.read(ctx, "card", card), SoCC: m.read(ctx, "soc", m.cfg.SoC)}
	m.last = r
	if t, ok := m.gov.Update(r); ok {
		m.log.Info("thermal governor", "from", t.From, "to", t.To, "card_c", fmt.Sprintf("%.1f", r.CardC),
			"soc_c", fmt.Sprintf("%.1f", r.SoCC), "reason", t.Reason)
		m.onChange(t)
	}
	return m.gov.State()
}

// Admit is Check before starting a job (a job boundary).
func (m *Monitor) Admit(ctx context.Context) State { return m.Check(ctx) }

// read returns the source's temperature, or Unknown (warning once per
// input until it reads again).
func (m *Monitor) read(ctx context.Context, name string, src Source) float64 {
	if src == nil {
		return Unknown
	}
	c, err := src(ctx)
	if err != nil {
		if !m.warned[name] {
			m.log.Warn("thermal: input unreadable, left out of the governor", "input", name, "err", err)
			m.warned[name] = true
		}
		return Unknown
	}
	m.warned[name] = false
	return c
}

// Snapshot returns the governor's state and the last reading.
func (m *Monitor) Snapshot() (State, Reading) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.gov.State(), m.last
}
