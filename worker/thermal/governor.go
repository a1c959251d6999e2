package thermal

import (
	"errors"
	"fmt"
	"math"
)

// State is the governor's verdict.
type State string

// Governor states.
const (
	// OK: take work.
	OK State = "ok"
	// Hot: finish the running job, take no new one until every input is at
	// or below its resume threshold.
	Hot State = "hot"
	// Critical: stop the running job at the next token or step and hand it
	// to a cooler card.
	Critical State = "critical"
)

// severity orders the states.
func (s State) severity() int {
	switch s {
	case Hot:
		return 1
	case Critical:
		return 2
	}
	return 0
}

// Limits are the thresholds of one input, in °C.
type Limits struct {
	// PauseC: at or above it the governor is hot.
	PauseC float64
	// ResumeC: once hot, the governor stays hot until the input is at or
	// below it (hysteresis). Must be below PauseC.
	ResumeC float64
	// CriticalC: at or above it the governor is critical. 0 disables.
	CriticalC float64
}

func (l Limits) validate(name string) error {
	if l.PauseC <= 0 || l.ResumeC <= 0 {
		return fmt.Errorf("thermal: %s: pause and resume thresholds must be positive (got pause %g, resume %g)", name, l.PauseC, l.ResumeC)
	}
	if l.ResumeC >= l.PauseC {
		return fmt.Errorf("thermal: %s: resume %g °C must be below pause %g °C", name, l.ResumeC, l.PauseC)
	}
	if l.CriticalC != 0 && l.CriticalC <= l.PauseC {
		return fmt.Errorf("thermal: %s: critical %g °C must be above pause %g °C", name, l.CriticalC, l.PauseC)
	}
	return nil
}

// Config holds the thresholds of both inputs.
type Config struct {
	// Card limits the card's Tj (the AX650N resets itself at 120 °C).
	Card Limits
	// SoC limits the host's SoC (a Pi 5 throttles at 80–85 °C).
	SoC Limits
}

// DefaultConfig is DESIGN §8: card pause 80, resume 72, critical 95; SoC
// pause 80, resume 72, critical 85 (where the Pi 5 firmware throttles hard).
func DefaultConfig() Config {
	return Config{
		Card: Limits{PauseC: 80, ResumeC: 72, CriticalC: 95},
		SoC:  Limits{PauseC: 80, ResumeC: 72, CriticalC: 85},
	}
}

// Validate checks the thresholds.
func (c Config) Validate() error {
	return errors.Join(c.Card.validate("card"), c.SoC.validate("soc"))
}

// Reading is one sample of both inputs. A NaN field means the input could
// not be read; it is left out of the decision.
type Reading struct {
	CardC float64
	SoCC  float64
}

// Unknown is the value of an input that could not be read.
var Unknown = math.NaN()

// Transition is one change of state and the reading that caused it.
type Transition struct {
	From, To State
	Reading  Reading
	// Reason names the input and threshold, e.g. "card 81.0 °C ≥ pause 80".
	Reason string
}

// Governor is the state machine. It is not safe for concurrent use.
type Governor struct {
	cfg   Config
	state State
}

// NewGovernor returns a governor in state OK.
func NewGovernor(cfg Config) (*Governor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Governor{cfg: cfg, state: OK}, nil
}

// State is the current state.
func (g *Governor) State() State { return g.state }

// Config returns the thresholds.
func (g *Governor) Config() Config { return g.cfg }

// Update feeds a reading and reports the transition it caused, if any.
//
// Each input asks for a level: critical at or above its critical
// threshold, hot at or above its pause threshold, hot while the governor
// is not ok and the input is above its resume threshold, else ok. The
// governor takes the most severe level asked for, so it leaves hot only
// when every readable input is at or below its resume threshold.
func (g *Governor) Update(r Reading) (Transition, bool) {
	card, cardWhy := g.level(r.CardC, g.cfg.Card, "card")
	soc, socWhy := g.level(r.SoCC, g.cfg.SoC, "soc")
	next, why := card, cardWhy
	if soc.severity() > card.severity() {
		next, why = soc, socWhy
	}
	if next == g.state {
		return Transition{}, false
	}
	if next == OK {
		why = "every input at or below its resume threshold"
	}
	t := Transition{From: g.state, To: next, Reading: r, Reason: why}
	g.state = next
	return t, true
}

func (g *Governor) level(c float64, l Limits, name string) (State, string) {
	switch {
	case math.IsNaN(c):
		return OK, ""
	case l.CriticalC > 0 && c >= l.CriticalC:
		return Critical, fmt.Sprintf("%s %.1f °C ≥ critical %g", name, c, l.CriticalC)
	case c >= l.PauseC:
		return Hot, fmt.Sprintf("%s %.1f °C ≥ pause %g", name, c, l.PauseC)
	case g.state != OK && c > l.ResumeC:
		return Hot, fmt.Sprintf("%s %.1f °C above resume %g", name, c, l.ResumeC)
	}
	return OK, ""
}
