package main

import (
	"flag"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-project/kiln/worker/card"
	"github.com/kiln-project/kiln/worker/thermal"
)

// Environment of the thermal governor (each has a flag of the same meaning).
const (
	envGovernor = "KILN_GOVERNOR"  // "off" disables the thermal governor
	envSoCZone  = "KILN_SOC_ZONE"  // thermal zone file of the host SoC
	envCardTemp = "KILN_CARD_TEMP" // card thresholds pause,resume,critical °C
	envSoCTemp  = "KILN_SOC_TEMP"  // SoC thresholds pause,resume,critical °C
)

// thermalFlags configure the thermal governor (DESIGN §8, docs/thermal.md).
type thermalFlags struct {
	governor bool
	zone     string
	card     string
	soc      string
	interval time.Duration
}

func (t *thermalFlags) register(fs *flag.FlagSet) {
	def := thermal.DefaultConfig()
	lim := func(l thermal.Limits) string { return fmt.Sprintf("%g,%g,%g", l.PauseC, l.ResumeC, l.CriticalC) }
	fs.BoolVar(&t.governor, "governor", getenv(envGovernor, "on") != "off", "pause taking jobs when the card or the SoC is hot ($"+envGovernor+"=off disables)")
	fs.StringVar(&t.zone, "soc-zone", getenv(envSoCZone, thermal.DefaultZone), "thermal zone file of the host SoC, millidegrees ($"+envSoCZone+"; \"\" leaves the SoC out)")
	fs.StringVar(&t.card, "card-temp", getenv(envCardTemp, lim(def.Card)), "card pause,resume,critical °C (critical 0 = none) ($"+envCardTemp+")")
	fs.StringVar(&t.soc, "soc-temp", getenv(envSoCTemp, lim(def.SoC)), "SoC pause,resume,critical °C ($"+envSoCTemp+")")
	fs.DurationVar(&t.interval, "thermal-interval", thermal.DefaultInterval, "how often the governor looks at the temperatures")
}

// config returns the governor's configuration for card c, nil when off.
func (t *thermalFlags) config(c *card.Card, log *slog.Logger) (*thermal.MonitorConfig, error) {
	if !t.governor {
		return nil, nil
	}
	var lim thermal.Config
	var err error
	if lim.Card, err = parseLimits(t.card); err != nil {
		return nil, fmt.Errorf("-card-temp: %w", err)
	}
	if lim.SoC, err = parseLimits(t.soc); err != nil {
		return nil, fmt.Errorf("-soc-temp: %w", err)
	}
	if err := lim.Validate(); err != nil {
		return nil, err
	}
	mc := &thermal.MonitorConfig{Limits: &lim, Interval: t.interval, Logger: log}
	if c.Present() {
		mc.Card, mc.CardNow = c.Temp, c.TempNow
	}
	if t.zone != "" {
		mc.SoC = thermal.ZoneSource(t.zone)
	}
	return mc, nil
}

// parseLimits parses "pause,resume[,critical]".
func parseLimits(s string) (thermal.Limits, error) {
	parts := strings.Split(s, ",")
	if len(parts) < 2 || len(parts) > 3 {
		return thermal.Limits{}, fmt.Errorf("%q: want pause,resume[,critical] in °C", s)
	}
	var v [3]float64
	for i, p := range parts {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil {
			return thermal.Limits{}, fmt.Errorf("%q: %w", s, err)
		}
		v[i] = f
	}
	return thermal.Limits{PauseC: v[0], ResumeC: v[1], CriticalC: v[2]}, nil
}
