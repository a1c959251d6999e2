package worker

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker/thermal"
)

// Config configures a Worker. The zero value of a field means its default.
type Config struct {
	// Name identifies the worker in subjects, the registry and results
	// (default "<host>-card<Card>").
	Name string
	// Card is the card's index on this host (default 0).
	Card int
	// Version is reported in heartbeats.
	Version string
	// Topology must match the broker's (prefix, max age...). The consumers'
	// AckWait and MaxDeliver are the fallback only: the worker creates a
	// missing consumer with them, and otherwise reads them from the
	// consumer it binds to.
	Topology topology.Config
	// Chat maps model names to their chat handlers.
	Chat map[string]Handler[schema.ChatJob]
	// Image maps model names to their image handlers.
	Image map[string]Handler[schema.ImageJob]
	// MaxJobs is the most jobs the worker runs at once, across its models
	// (default 1: one at a time). Each model also runs at most its
	// handler's Capacity at once (1 without one): a chat model with N K/V
	// slots takes N, an image model one. card.Card.MaxJobs is the card's
	// sum. A worker that is full fetches nothing: the queue's jobs go to
	// other cards.
	MaxJobs int
	// Limits are checked before any work (default schema.DefaultLimits).
	Limits schema.Limits
	// ShutdownGrace is how long Run lets the running jobs finish after its
	// context ends before handing those still running back to the queue
	// (default 30 s).
	ShutdownGrace time.Duration
	// PollInterval is the longest an idle worker waits before looking at
	// the queue again without a wake-up (redeliveries do not wake; default 1 s).
	PollInterval time.Duration
	// RetryDelays are the delays before redelivery after a transient
	// failure, by attempt (default 1 s, 2 s, 5 s, 10 s).
	RetryDelays []time.Duration
	// StatusFunc, when set, adds card status (temperatures, CMM, governor)
	// to each heartbeat.
	StatusFunc func(*schema.Heartbeat)
	// Thermal, when set, runs the thermal governor (DESIGN §8) on these
	// sources and thresholds: hot stops fetching (the running jobs
	// finish), critical hands every running job back to the queue. nil:
	// governor off.
	Thermal *thermal.MonitorConfig
	// Device, when set, is reset (models reloaded) after a handler's error
	// that it reports as a device fault; a lost card is rebooted (Rebooter)
	// and stops the worker.
	Device Device
	// MaxFaults device faults in a row, without a job done in between,
	// make the worker unhealthy: it takes no more jobs, reboots the card
	// (Rebooter) and stops with ErrUnhealthy (default 3).
	MaxFaults int
	// ResetDelays is the back-off before each reset of a run of faults
	// (default 1 s, 5 s, 15 s).
	ResetDelays []time.Duration
	// ResetTimeout bounds one card reset with its model loads (default 10 min).
	ResetTimeout time.Duration
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// Defaults of Config: withDefaults puts them in the fields left zero. The
// topology's (AckWait, MaxDeliver, HeartbeatInterval...) are in package
// topology.
const (
	DefaultShutdownGrace = 30 * time.Second
	DefaultPollInterval  = time.Second
	DefaultMaxFaults     = 3
	DefaultResetTimeout  = 10 * time.Minute
)

// DefaultRetryDelays and DefaultResetDelays are the back-offs used when
// Config leaves RetryDelays or ResetDelays empty.
var (
	DefaultRetryDelays = []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second}
	DefaultResetDelays = []time.Duration{time.Second, 5 * time.Second, 15 * time.Second}
)

func (c Config) withDefaults() Config {
	c.Topology = c.Topology.WithDefaults()
	if c.Name == "" {
		host, _ := os.Hostname()
		c.Name = fmt.Sprintf("%s-card%d", tokenize(host), c.Card)
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = DefaultShutdownGrace
	}
	if c.MaxJobs <= 0 {
		c.MaxJobs = 1
	}
	if c.PollInterval <= 0 {
		c.PollInterval = DefaultPollInterval
	}
	if len(c.RetryDelays) == 0 {
		c.RetryDelays = slices.Clone(DefaultRetryDelays)
	}
	if c.MaxFaults <= 0 {
		c.MaxFaults = DefaultMaxFaults
	}
	if len(c.ResetDelays) == 0 {
		c.ResetDelays = slices.Clone(DefaultResetDelays)
	}
	if c.ResetTimeout <= 0 {
		c.ResetTimeout = DefaultResetTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	if !schema.ValidToken(c.Name) {
		return fmt.Errorf("worker: name %q is not a subject token (letters, digits, '-', '_')", c.Name)
	}
	for model := range c.Chat {
		if !schema.ValidToken(model) {
			return fmt.Errorf("worker: chat model name %q is not a subject token", model)
		}
	}
	for model := range c.Image {
		if !schema.ValidToken(model) {
			return fmt.Errorf("worker: image model name %q is not a subject token", model)
		}
	}
	if c.Topology.MaxDeliver < 1 {
		return errors.New("worker: Topology.MaxDeliver must be at least 1")
	}
	return nil
}

// tokenize turns a host name into a subject token.
func tokenize(s string) string {
	if s == "" {
		return "host"
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	return b.String()
}
