package thermal

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var nan = math.NaN()

// TestGovernorTable walks sequences of readings through the default
// thresholds (card 80/72/95, SoC 80/72/85) and checks the state after each.
func TestGovernorTable(t *testing.T) {
	type step struct {
		card, soc float64
		want      State
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"cool stays ok", []step{{40, 50, OK}, {79.9, 79.9, OK}, {60, nan, OK}}},
		{"pause at exactly the threshold", []step{{80, 50, Hot}}},
		{"hysteresis: hot until at or below resume", []step{{81, 50, Hot}, {79, 50, Hot}, {72.1, 50, Hot}, {72, 50, OK}, {79, 50, OK}}},
		{"soc pauses alone", []step{{50, 80.5, Hot}, {50, 75, Hot}, {50, 71, OK}}},
		{"resume needs both inputs cool", []step{{85, 85.0 - 4, Hot}, {70, 75, Hot}, {70, 72, OK}}},
		{"card critical, then back through hot", []step{{60, 50, OK}, {95, 50, Critical}, {94, 50, Hot}, {73, 50, Hot}, {71, 50, OK}}},
		{"critical straight from ok and straight to ok", []step{{99, 50, Critical}, {60, 50, OK}}},
		{"soc critical", []step{{50, 85, Critical}, {50, 84, Hot}}},
		{"worst input wins", []step{{96, 81, Critical}, {81, 86, Critical}, {81, 70, Hot}}},
		{"unreadable inputs are left out", []step{{nan, nan, OK}, {nan, 90, Critical}, {nan, nan, OK}}},
		{"an input that stops reading does not hold hot", []step{{85, 50, Hot}, {nan, 50, OK}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, err := NewGovernor(DefaultConfig())
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tc.steps {
				before := g.State()
				tr, changed := g.Update(Reading{CardC: s.card, SoCC: s.soc})
				if g.State() != s.want {
					t.Fatalf("step %d (card %v, soc %v): state %s, want %s", i, s.card, s.soc, g.State(), s.want)
				}
				if changed != (before != s.want) {
					t.Fatalf("step %d: changed=%v going %s -> %s", i, changed, before, s.want)
				}
				if changed && (tr.From != before || tr.To != s.want || tr.Reason == "") {
					t.Fatalf("step %d: transition %+v, want %s -> %s with a reason", i, tr, before, s.want)
				}
			}
		})
	}
}

func TestGovernorReason(t *testing.T) {
	g, _ := NewGovernor(DefaultConfig())
	tr, _ := g.Update(Reading{CardC: 81.25, SoCC: 50})
	if !strings.Contains(tr.Reason, "card 81.2") || !strings.Contains(tr.Reason, "pause 80") {
		t.Fatalf("reason %q does not name the input and threshold", tr.Reason)
	}
}

func TestConfigValidate(t *testing.T) {
	bad := []Config{
		{Card: Limits{PauseC: 80, ResumeC: 80}, SoC: DefaultConfig().SoC},
		{Card: Limits{PauseC: 80, ResumeC: 85}, SoC: DefaultConfig().SoC},
		{Card: Limits{PauseC: 80, ResumeC: 72, CriticalC: 80}, SoC: DefaultConfig().SoC},
		{Card: DefaultConfig().Card},
	}
	for _, c := range bad {
		if _, err := NewGovernor(c); err == nil {
			t.Errorf("NewGovernor(%+v) accepted bad thresholds", c)
		}
	}
	c := DefaultConfig()
	c.Card.CriticalC = 0 // disabled
	g, err := NewGovernor(c)
	if err != nil {
		t.Fatal(err)
	}
	if g.Update(Reading{CardC: 130, SoCC: nan}); g.State() != Hot {
		t.Fatalf("without a critical threshold 130 °C is %s, want hot", g.State())
	}
}

func TestParseZone(t *testing.T) {
	for in, want := range map[string]float64{"48312\n": 48.312, " 80000 ": 80, "-5000\n": -5, "0": 0} {
		got, err := ParseZone([]byte(in))
		if err != nil || got != want {
			t.Errorf("ParseZone(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "\n", "48.3", "hot", "99999999999999", "2000000", "0x10"} {
		if _, err := ParseZone([]byte(in)); !errors.Is(err, ErrBadZone) {
			t.Errorf("ParseZone(%q) = %v, want ErrBadZone", in, err)
		}
	}
}

func FuzzParseZone(f *testing.F) {
	for _, s := range []string{"48312\n", "-1", "", "1e3", " 80000 ", "+7"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseZone(b)
		if err != nil {
			if !errors.Is(err, ErrBadZone) {
				t.Fatalf("error %v does not match ErrBadZone", err)
			}
			return
		}
		if math.IsNaN(c) || c < -273.15 || c > 1000 {
			t.Fatalf("ParseZone(%q) = %v, not a temperature", b, c)
		}
	})
}

func TestZoneSource(t *testing.T) {
	path := filepath.Join(t.TempDir(), "temp")
	src := ZoneSource(path)
	if _, err := src(context.Background()); err == nil {
		t.Fatal("missing zone file read without error")
	}
	if err := os.WriteFile(path, []byte("71500\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if c, err := src(context.Background()); err != nil || c != 71.5 {
		t.Fatalf("zone = %v, %v; want 71.5", c, err)
	}
}

// TestMonitor drives the monitor's sources by hand: transitions come out
// in order, one per change, and an unreadable input is left out.
func TestMonitor(t *testing.T) {
	var mu sync.Mutex
	card, soc := 50.0, 40.0
	socErr := error(nil)
	readCard := func(context.Context) (float64, error) { mu.Lock(); defer mu.Unlock(); return card, nil }
	readSoC := func(context.Context) (float64, error) { mu.Lock(); defer mu.Unlock(); return soc, socErr }
	set := func(c, s float64, err error) { mu.Lock(); card, soc, socErr = c, s, err; mu.Unlock() }

	var got []Transition
	m, err := NewMonitor(MonitorConfig{Card: readCard, SoC: readSoC, Interval: time.Hour}, func(tr Transition) { got = append(got, tr) })
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m.Start(ctx)
	defer m.Stop()
	seq := []struct {
		card, soc float64
		err       error
		want      State
	}{
		{82, 40, nil, Hot}, {82, 40, nil, Hot}, {76, 40, nil, Hot}, {70, 81, nil, Hot},
		{70, 99, errors.New("gone"), OK}, {96, 40, nil, Critical}, {60, 40, nil, OK},
	}
	for i, s := range seq {
		set(s.card, s.soc, s.err)
		if st := m.Check(ctx); st != s.want {
			t.Fatalf("step %d: %s, want %s", i, st, s.want)
		}
	}
	want := []State{Hot, OK, Critical, OK}
	if len(got) != len(want) {
		t.Fatalf("transitions %v, want to %v", got, want)
	}
	for i, tr := range got {
		if tr.To != want[i] || (i > 0 && tr.From != got[i-1].To) {
			t.Fatalf("transition %d: %s -> %s, want -> %s, chained", i, tr.From, tr.To, want[i])
		}
	}
	st, r := m.Snapshot()
	if st != OK || r.CardC != 60 || r.SoCC != 40 {
		t.Fatalf("snapshot %s %+v", st, r)
	}
}

// Near the pause threshold Admit and Check read the card afresh (CardNow)
// instead of the cached sample, which ages during a long reply (the device
// does not sample mid-reply); far from it, the cached one.
func TestMonitorAdmitReadsFreshNearPause(t *testing.T) {
	cached, fresh := 60.0, 81.0
	freshReads := 0
	m, err := NewMonitor(MonitorConfig{
		Card:    func(context.Context) (float64, error) { return cached, nil },
		CardNow: func(context.Context) (float64, error) { freshReads++; return fresh, nil },
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if st := m.Admit(ctx); st != OK || freshReads != 0 {
		t.Fatalf("far from pause: %s after %d fresh reads, want ok after none", st, freshReads)
	}
	if st := m.Check(ctx); st != OK || freshReads != 0 {
		t.Fatalf("far from pause: Check %s after %d fresh reads, want ok after none", st, freshReads)
	}
	cached = 78 // within 3 °C of pause: the cached sample may be old
	if st := m.Check(ctx); st != OK || freshReads != 0 {
		t.Fatalf("Check: %s after %d fresh reads", st, freshReads)
	}
	if st := m.Admit(ctx); st != Hot || freshReads != 1 {
		t.Fatalf("near pause: Admit %s after %d fresh reads, want hot after one", st, freshReads)
	}
	if st := m.Check(ctx); st != Hot || freshReads != 2 {
		t.Fatalf("near pause: Check %s after %d fresh reads, want hot after two", st, freshReads)
	}
}
