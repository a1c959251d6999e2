package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
)

func runStatus(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "status", "")
	var cf connFlags
	cf.register(fs)
	asJSON := fs.Bool("json", false, "print one JSON object")
	if err := parse(fs, args); err != nil {
		return err
	}
	nc, c, err := dial(&cf, e)
	if err != nil {
		return err
	}
	defer nc.Close()
	workers, err := c.Workers(ctx)
	if err != nil {
		return err
	}
	workers = liveStatus(ctx, nc, cf.topology().Subjects(), workers)
	queue, err := c.Queue(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"workers": workers, "queue": queue})
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tSTATE\tCARD °C\tSOC °C\tGOVERNOR\tMODELS\tCURRENT JOB\tOK\tFAILED\tREFUSED\tTOK/S\tUP")
	var failed []string
	for _, w := range workers {
		var models []string
		for _, m := range w.Models {
			switch m.State {
			case schema.ModelFailed:
				models = append(models, m.Kind+"/"+m.Name+" (failed)")
				failed = append(failed, fmt.Sprintf("%s\t%s/%s\t%s", w.Worker, m.Kind, m.Name, m.Error))
			case schema.ModelLoading:
				models = append(models, m.Kind+"/"+m.Name+" (loading)")
			default:
				models = append(models, m.Kind+"/"+m.Name+slotsText(m))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%.1f\t%s\n", w.Worker, w.State, temp(w.CardTempC), temp(w.SoCTempC),
			w.Governor.State, orDash(strings.Join(models, ",")), orDash(jobsText(w)), w.JobsOK, w.JobsFailed, w.JobsRefused, w.TokensPerS,
			(time.Duration(w.UptimeS) * time.Second).String())
	}
	if len(workers) == 0 {
		fmt.Fprintln(tw, "(no live workers)")
	}
	if len(failed) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "WORKER\tFAILED MODEL\tWHY (the package did not load; the worker serves its other models)")
		for _, f := range failed {
			fmt.Fprintln(tw, f)
		}
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "QUEUE\tLANE\tWAITING\tRUNNING\tRETRYING\tNOTE")
	for _, q := range queue {
		name, lane, note := q.Kind+"/"+q.Model, q.Lane, "-"
		switch {
		case q.Subject != "":
			name, lane, note = q.Subject, "-", "not a job subject"
		case q.Unserved:
			note = "unserved: no live worker has this model"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\n", name, lane, q.Waiting, q.Running, q.Retries, note)
	}
	if len(queue) == 0 {
		fmt.Fprintln(tw, "(no queues: no worker has registered a model yet)")
	}
	return tw.Flush()
}

// slotsText is " used/total" of a model that runs several jobs at once
// (a chat model's K/V slots), "" otherwise.
func slotsText(m schema.ModelInfo) string {
	if m.SlotsTotal <= 1 {
		return ""
	}
	return fmt.Sprintf(" %d/%d", m.SlotsUsed, m.SlotsTotal)
}

// jobsText is the oldest running job, and how many more run beside it.
func jobsText(h schema.Heartbeat) string {
	if n := len(h.RunningJobs); n > 1 {
		return fmt.Sprintf("%s +%d", h.CurrentJob, n-1)
	}
	return h.CurrentJob
}

func temp(c float64) string {
	if c == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", c)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func runEvents(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "events", "")
	var cf connFlags
	cf.register(fs)
	since := fs.Duration("since", 0, "also show the events of this past period (e.g. 10m)")
	asJSON := fs.Bool("json", false, "one JSON object per line")
	if err := parse(fs, args); err != nil {
		return err
	}
	nc, c, err := dial(&cf, e)
	if err != nil {
		return err
	}
	defer nc.Close()
	err = c.Watch(ctx, *since, func(ev client.FleetEvent) error {
		if *asJSON {
			var v any
			switch {
			case ev.Heartbeat != nil:
				v = map[string]any{"subject": ev.Subject, "heartbeat": ev.Heartbeat}
			case ev.Thermal != nil:
				v = map[string]any{"subject": ev.Subject, "thermal": ev.Thermal}
			default:
				v = map[string]any{"subject": ev.Subject, "device": ev.Device}
			}
			return json.NewEncoder(e.stdout).Encode(v)
		}
		fmt.Fprintln(e.stdout, describe(ev))
		return nil
	})
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// describe renders a fleet event as one readable line.
func describe(ev client.FleetEvent) string {
	switch {
	case ev.Heartbeat != nil:
		h := ev.Heartbeat
		job := ""
		if h.CurrentJob != "" {
			job = " job " + jobsText(*h)
		}
		return fmt.Sprintf("%s heartbeat %-12s %s card %s°C soc %s°C ok %d failed %d refused %d%s", h.Time.Local().Format(time.TimeOnly),
			h.Worker, h.State, temp(h.CardTempC), temp(h.SoCTempC), h.JobsOK, h.JobsFailed, h.JobsRefused, job)
	case ev.Thermal != nil:
		t := ev.Thermal
		return fmt.Sprintf("%s thermal   %-12s %s -> %s at card %.1f°C soc %.1f°C %s", t.Time.Local().Format(time.TimeOnly),
			t.Worker, t.From, t.To, t.CardTempC, t.SoCTempC, t.Reason)
	case ev.Device != nil:
		d := ev.Device
		return fmt.Sprintf("%s device    %-12s %s %s %s", d.Time.Local().Format(time.TimeOnly), d.Worker, d.Type, d.Model, d.Message)
	}
	return ev.Subject
}
