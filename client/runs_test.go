package client

import (
	"fmt"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/schema"
)

// Events of a job as workers send them: run, seq, and text or result.
func started(run string, attempt int) schema.Event {
	return schema.Event{JobID: "j", Run: run, Attempt: attempt, Seq: 1, Type: schema.EventStarted, Worker: "w-" + run}
}

func token(run string, seq int, text string) schema.Event {
	return schema.Event{JobID: "j", Run: run, Attempt: 1, Seq: seq, Type: schema.EventToken, Text: text}
}

func result(run string, seq int, resRun, text string) schema.Event {
	return schema.Event{JobID: "j", Run: run, Attempt: 1, Seq: seq, Type: schema.EventResult,
		Result: &schema.Result{JobID: "j", Run: resRun, Status: schema.StatusOK, Text: text, Attempt: 1}}
}

// show renders what a caller sees: type, run and seq, and a token's text.
func show(evs []schema.Event) string {
	var out []string
	for _, ev := range evs {
		s := fmt.Sprintf("%s:%s/%d", ev.Type, ev.Run, ev.Seq)
		if ev.Text != "" {
			s += "=" + ev.Text
		}
		out = append(out, s)
	}
	return strings.Join(out, " ")
}

// assemble follows the documented rule: on every started, discard.
func assemble(evs []schema.Event) string {
	var b strings.Builder
	for _, ev := range evs {
		if ev.Type == schema.EventStarted {
			b.Reset()
		}
		b.WriteString(ev.Text)
	}
	return b.String()
}

func TestRunsPassOneRunAtATime(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []schema.Event
		want string
	}{
		{"one run", []schema.Event{started("A", 1), token("A", 2, "a"), token("A", 3, "b"), result("A", 4, "A", "ab")},
			"started:A/1 token:A/2=a token:A/3=b result:A/4"},
		{"a restart with the same attempt (broker crash) drops the old run's late tokens",
			[]schema.Event{started("A", 1), token("A", 2, "x"), started("B", 1), token("A", 3, "LATE"), token("B", 2, "ab"), result("B", 3, "B", "ab")},
			"started:A/1 token:A/2=x started:B/1 token:B/2=ab result:B/3"},
		{"a lost token holds the run back and the result starts it over",
			[]schema.Event{started("A", 1), token("A", 2, "a"), token("A", 4, "c"), token("A", 5, "d"), result("A", 6, "A", "abcd")},
			"started:A/1 token:A/2=a started:A/0 token:A/0=abcd result:A/0"},
		{"the result of a superseded run is authoritative",
			[]schema.Event{started("A", 1), token("A", 2, "a"), started("B", 2), token("B", 2, "b"), result("A", 3, "A", "a!")},
			"started:A/1 token:A/2=a started:B/1 token:B/2=b started:A/0 token:A/0=a! result:A/0"},
		{"a stored result re-sent by a later delivery",
			[]schema.Event{started("A", 1), token("A", 2, "ab"), result("C", 1, "A", "ab")},
			"started:A/1 token:A/2=ab started:A/0 token:A/0=ab result:A/0"},
		{"a run that finished with another run's stored result",
			[]schema.Event{started("B", 1), token("B", 2, "other"), result("B", 3, "A", "first")},
			"started:B/1 token:B/2=other started:A/0 token:A/0=first result:A/0"},
		{"a run whose start was missed is held back",
			[]schema.Event{token("A", 3, "b"), token("A", 4, "c"), result("A", 5, "A", "abc")},
			"started:A/0 token:A/0=abc result:A/0"},
		{"a refused job is its result alone", []schema.Event{result("A", 1, "A", "")}, "result:A/1"},
		{"a superseded run's start is not taken back",
			[]schema.Event{started("A", 1), started("B", 1), started("A", 1), token("B", 2, "b"), result("B", 3, "B", "b")},
			"started:A/1 started:B/1 token:B/2=b result:B/3"},
		{"a repeated token is dropped", []schema.Event{started("A", 1), token("A", 2, "a"), token("A", 2, "a"), result("A", 3, "A", "a")},
			"started:A/1 token:A/2=a result:A/3"},
		{"senders without run ids are told apart by attempt",
			[]schema.Event{started("", 1), token("", 2, "a"), {Run: "", Attempt: 2, Seq: 1, Type: schema.EventStarted},
				token("", 3, "LATE"), {Attempt: 2, Seq: 2, Type: schema.EventToken, Text: "b"},
				{Attempt: 2, Seq: 3, Type: schema.EventResult, Result: &schema.Result{Text: "b", Attempt: 2}}},
			"started:/1 token:/2=a started:/1 token:/2=b result:/3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r runs
			var got []schema.Event
			for _, ev := range tc.in {
				got = append(got, r.pass(ev)...)
				if len(got) > 0 && got[len(got)-1].Type == schema.EventResult {
					break
				}
			}
			if show(got) != tc.want {
				t.Fatalf("passed\n%s\nwant\n%s", show(got), tc.want)
			}
			last := got[len(got)-1]
			if last.Type != schema.EventResult {
				t.Fatalf("the last event passed is %s, not the result", last.Type)
			}
			if text := assemble(got); text != last.Result.Text {
				t.Fatalf("a caller assembles %q; the result says %q", text, last.Result.Text)
			}
		})
	}
}

func TestRunsEndWithAStoredResult(t *testing.T) {
	res := &schema.Result{JobID: "j", Run: "A", Status: schema.StatusOK, Text: "abc"}
	var fresh runs
	if got := show(fresh.end("j", res)); got != "started:A/0 token:A/0=abc result:A/0" {
		t.Fatalf("a stored result with nothing streamed: %s", got)
	}
	var streaming runs
	streaming.pass(started("A", 1))
	streaming.pass(token("A", 2, "abc"))
	if got := streaming.end("j", res); assemble(got) != "abc" {
		t.Fatalf("a stored result after a stream: %s", show(got))
	}
	refused := &schema.Result{JobID: "j", Run: "A", Status: schema.StatusError}
	if got := show(fresh.end("j", refused)); got != "result:A/0" {
		t.Fatalf("a stored refusal: %s", got)
	}
}
