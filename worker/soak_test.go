package worker_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/echo"
	"github.com/kiln-project/kiln/worker"
	"github.com/kiln-project/kiln/worker/npu"
	"github.com/kiln-project/kiln/worker/thermal"
)

// TestThermalSoak is the governor benchmark (docs/thermal.md): chat jobs on
// two workers, each on its own simulated card whose thermal model heats
// while the test model executes, run with the governor and without it.
// It reports jobs/s, the peak card temperature (the simulator's model, read
// every 2 ms, not the governor's samples), the time spent paused and the
// jobs lost. Set KILN_SOAK=1 to run it (about two minutes).
//
// The simulator's thermal model runs 10× faster than the defaults (heat
// 25 °C/s of NPU time, cooling 0.5/s: the same 90 °C equilibrium at full
// load, a 2 s time constant instead of 20 s), and so do the intervals
// (device sampling 0.5 s for 5 s, governor 0.2 s for 2 s); a job is 35
// tokens of 10 ms on the NPU (0.35 s, a 3.5 s chat reply at real speed).
// KILN_SOAK_JOBS, KILN_SOAK_TOKENS, KILN_SOAK_EXEC_US and
// KILN_SOAK_SAMPLE_MS change the load; KILN_SOAK_NO_FRESH=1 turns off the
// fresh card sample near the pause threshold (MonitorConfig.CardNow).
func TestThermalSoak(t *testing.T) {
	if os.Getenv("KILN_SOAK") == "" {
		t.Skip("set KILN_SOAK=1 to run the thermal soak benchmark")
	}
	jobs := envInt("KILN_SOAK_JOBS", 200)
	tokens := envInt("KILN_SOAK_TOKENS", 35)
	sample := time.Duration(envInt("KILN_SOAK_SAMPLE_MS", 500)) * time.Millisecond
	t.Setenv("KILN_SIM_DEVICES", "1,3")
	t.Setenv("KILN_SIM_EXEC_US", strconv.Itoa(envInt("KILN_SOAK_EXEC_US", 10000)))
	t.Setenv("KILN_SIM_HEAT_C_PER_S", "25")
	t.Setenv("KILN_SIM_COOL_PER_S", "0.5")
	t.Setenv("KILN_SIM_AMBIENT_C", "40")
	t.Setenv("KILN_SIM_NOCOMPUTE", "1")
	for _, governor := range []bool{true, false} {
		r := soak(t, governor, jobs, tokens, sample)
		t.Logf("governor %-5v: %d jobs, %d tokens each, 2 workers: %.2f jobs/s, peak %.1f °C (pause 80, resume 72), paused %.1f s (of %.1f s × 2 workers), %d thermal events, lost %d, ran twice %d",
			governor, jobs, tokens, r.jobsPerS, r.peakC, r.paused.Seconds(), r.wall.Seconds(), r.events, r.lost, r.twice)
	}
}

type soakResult struct {
	jobsPerS, peakC float64
	paused, wall    time.Duration
	events          int
	lost, twice     int
}

func soak(t *testing.T, governor bool, jobs, tokens int, sample time.Duration) soakResult {
	s := loadSim(t)
	var cards []*echo.Card
	for i := range 2 {
		c, err := echo.OpenCard(t.Context(), npu.Config{Library: s.Library(), Index: i, SampleInterval: sample, Logger: quiet}, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		cards = append(cards, c)
	}
	defer func() {
		for _, c := range cards {
			_ = c.Close(context.Background())
		}
	}()
	s.SetTempC(40)

	bb := setup(t, topology.Config{MaxDeliver: 5})
	var ws []*worker.Worker
	for i, c := range cards {
		name := fmt.Sprintf("soak%d", i)
		ws = append(ws, bb.Worker(t, name, func(cfg *worker.Config) {
			cfg.Chat = map[string]worker.Handler[schema.ChatJob]{model: c.Chat()}
			cfg.Device = c
			if governor {
				cfg.Thermal = &thermal.MonitorConfig{Card: c.Temp, Interval: 200 * time.Millisecond}
				if os.Getenv("KILN_SOAK_NO_FRESH") == "" {
					cfg.Thermal.CardNow = c.TempNow
				}
			}
		}))
	}
	nc := bb.Client(t)
	evs := collect[schema.ThermalEvent](t, brokertest.Connect(t, bb.Broker), "kiln.events.thermal.>")

	// Peak of the true (model) temperature of both cards.
	var peak float64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(2 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				for _, id := range []int32{1, 3} {
					peak = max(peak, float64(s.TempMC(id))/1000)
				}
			}
		}
	}()

	words := strings.TrimSpace(strings.Repeat("w ", tokens-1))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	var pending []*client.Pending
	for i := range jobs {
		p, err := nc.Submit(ctx, chatJob(fmt.Sprintf("%d %s", i, words), nil))
		if err != nil {
			t.Fatal(err)
		}
		pending = append(pending, p)
	}
	var r soakResult
	for _, p := range pending {
		res, err := p.Wait(ctx, nil)
		if err != nil || res.Status != schema.StatusOK {
			r.lost++
		}
	}
	r.wall = time.Since(start)
	close(stop)
	wg.Wait()
	r.peakC = peak
	r.jobsPerS = float64(jobs) / r.wall.Seconds()
	var done int64
	for _, w := range ws {
		done += w.Status().JobsOK
	}
	r.twice = int(done) - (jobs - r.lost)
	// Time paused: from each worker's hot/critical transition to its next ok.
	hotSince := map[string]time.Time{}
	all := evs.all()
	r.events = len(all)
	for _, e := range all {
		switch {
		case e.To != "ok" && e.From == "ok":
			hotSince[e.Worker] = e.Time
		case e.To == "ok":
			r.paused += e.Time.Sub(hotSince[e.Worker])
			delete(hotSince, e.Worker)
		}
	}
	end := start.Add(r.wall)
	for _, since := range hotSince {
		r.paused += end.Sub(since) // still paused at the end
	}
	if r.lost != 0 || r.twice != 0 {
		t.Errorf("governor %v: %d jobs lost, %d ran twice", governor, r.lost, r.twice)
	}
	return r
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
