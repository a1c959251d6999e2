package schema

import (
	"slices"
	"testing"
)

func TestSubjectBuilders(t *testing.T) {
	kiln, art := Subjects{}, Subjects{Prefix: "art"}
	for _, tc := range []struct{ got, want string }{
		{kiln.Job(KindChat, "qwen3-4b", LaneHigh), "kiln.jobs.chat.qwen3-4b.high"},
		{kiln.ClientJob(KindChat, "qwen3-4b", LaneHigh, "room-1"), "kiln.jobs.chat.qwen3-4b.high.room-1"},
		{kiln.ClientJob(KindChat, "qwen3-4b", LaneHigh, ""), "kiln.jobs.chat.qwen3-4b.high"},
		{kiln.ClientJobs("room-1"), "kiln.jobs.*.*.*.room-1"},
		{kiln.Jobs(), "kiln.jobs.>"},
		{kiln.Wake(KindImage, "sd15-lcm", LaneNormal), "kiln.wake.image.sd15-lcm.normal"},
		{kiln.Wakes(), "kiln.wake.>"},
		{kiln.Reply("room-1", "j1"), "kiln.reply.room-1.j1"},
		{kiln.Replies(), "kiln.reply.>"},
		{kiln.ClientReplies("room-1"), "kiln.reply.room-1.>"},
		{kiln.Result("j1"), "kiln.results.j1"},
		{kiln.ClientResult("j1", "room-1"), "kiln.results.j1.room-1"},
		{kiln.ClientResult("j1", ""), "kiln.results.j1"},
		{kiln.ClientResults("room-1"), "kiln.results.*.room-1"},
		{kiln.Results(), "kiln.results.>"},
		{kiln.Cancel("j1"), "kiln.cancel.j1"},
		{kiln.ClientCancel("room-1", "j1"), "kiln.cancel.room-1.j1"},
		{kiln.ClientCancel("", "j1"), "kiln.cancel.j1"},
		{kiln.ClientCancels("room-1"), "kiln.cancel.room-1.*"},
		{kiln.Cancels(), "kiln.cancel.>"},
		{JobKey("room-1", "j1"), "room-1.j1"},
		{JobKey("", "j1"), "j1"},
		{kiln.Status("pi1-card0"), "kiln.status.pi1-card0"},
		{kiln.Statuses(), "kiln.status.*"},
		{kiln.Heartbeat("pi1-card0"), "kiln.events.heartbeat.pi1-card0"},
		{kiln.Thermal("pi1-card0"), "kiln.events.thermal.pi1-card0"},
		{kiln.Device("pi1-card0"), "kiln.events.device.pi1-card0"},
		{kiln.Events(), "kiln.events.>"},
		{art.Job(KindChat, "m", LaneNormal), "art.jobs.chat.m.normal"},
		{art.Wakes(), "art.wake.>"},
		{art.ClientReplies("c"), "art.reply.c.>"},
		{art.ClientResults("c"), "art.results.*.c"},
		{art.Cancels(), "art.cancel.>"},
		{art.ClientJobs("c"), "art.jobs.*.*.*.c"},
		{art.Status("w"), "art.status.w"},
		{art.Heartbeat("w"), "art.events.heartbeat.w"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %s, want %s", tc.got, tc.want)
		}
	}
	for _, tc := range []struct{ got, want []string }{
		{kiln.JobFilters(KindChat, "m", LaneHigh), []string{"kiln.jobs.chat.m.high", "kiln.jobs.chat.m.high.*"}},
		{art.WakeFilters(KindImage, "m", LaneNormal), []string{"art.wake.image.m.normal", "art.wake.image.m.normal.*"}},
	} {
		if !slices.Equal(tc.got, tc.want) {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestParseJob(t *testing.T) {
	s := Subjects{}
	for _, tc := range []struct {
		subject string
		want    JobSubject
	}{
		{"kiln.jobs.image.sd15-lcm.normal", JobSubject{Kind: KindImage, Model: "sd15-lcm", Lane: LaneNormal}},
		{"kiln.jobs.chat.m.high.room-1", JobSubject{Kind: KindChat, Model: "m", Lane: LaneHigh, Client: "room-1"}},
	} {
		if got, err := s.ParseJob(tc.subject); err != nil || got != tc.want {
			t.Errorf("ParseJob(%q) = %+v, %v; want %+v", tc.subject, got, err, tc.want)
		}
	}
	for _, bad := range []string{
		"kiln.jobs.chat", "kiln.jobs.chat.a", "kiln.jobs.chat.a.b.c.d", "other.jobs.chat.a.normal",
		"kiln.jobs.chat.a.normal.*", "kiln.jobs.chat.a.normal.>", "kiln.jobs.chat.a.normal.a@b", "kiln.jobs.chat..normal",
	} {
		if js, err := s.ParseJob(bad); err == nil {
			t.Errorf("ParseJob(%q) = %+v, want an error", bad, js)
		}
	}
}

// TestReplyTo checks the reply rule: a client's job replies under its own
// reply subjects and inboxes only, an anonymous job anywhere but kiln's and
// NATS's own subjects.
func TestReplyTo(t *testing.T) {
	s := Subjects{}
	for _, tc := range []struct {
		client, job, requested string
		want                   string // "" with ok false: refused
		ok                     bool
	}{
		{"room-1", "j1", "", "kiln.reply.room-1.j1", true},
		{"room-1", "", "", "", true},
		{"room-1", "j1", "kiln.reply.room-1.j1", "kiln.reply.room-1.j1", true},
		{"room-1", "j1", "kiln.reply.room-1.any.where", "kiln.reply.room-1.any.where", true},
		{"room-1", "j1", "_INBOX.room-1.abc", "_INBOX.room-1.abc", true},
		{"room-1", "j1", "kiln.reply.room-2.j1", "", false},
		{"room-1", "j1", "kiln.reply.room-1", "", false},
		{"room-1", "j1", "kiln.reply.room-10.j1", "", false},
		{"room-1", "j1", "_INBOX.room-2.abc", "", false},
		{"room-1", "j1", "_INBOX.room-1", "", false},
		{"room-1", "j1", "kiln.results.j0.room-2", "", false},
		{"room-1", "j1", "kiln.events.heartbeat.x", "", false},
		{"room-1", "j1", "$KV.kiln_workers.x", "", false},
		{"room-1", "j1", "my.inbox", "", false},
		{"room-1", "j1", "kiln.reply.room-1.a b", "", false},
		{"room-1", "j1", "kiln.reply.room-1.*", "", false},
		{"", "j1", "", "", true},
		{"", "j1", "my.inbox", "my.inbox", true},
		{"", "j1", "_INBOX.anyone.x", "_INBOX.anyone.x", true},
		{"", "j1", "kiln.reply.room-1.j1", "kiln.reply.room-1.j1", true},
		{"", "j1", "kiln.results.j0.room-2", "", false},
		{"", "j1", "kiln.results.j0", "", false},
		{"", "j1", "kiln.events.heartbeat.x", "", false},
		{"", "j1", "kiln.jobs.chat.m.normal", "", false},
		{"", "j1", "kiln.cancel.j0", "", false},
		{"", "j1", "kiln.status.w1", "", false},
		{"", "j1", "kiln.wake.chat.m.normal", "", false},
		{"", "j1", "$KV.kiln_workers.x", "", false},
		{"", "j1", "$JS.API.STREAM.DELETE.KILN_JOBS", "", false},
		{"", "j1", "my inbox", "", false},
		{"", "j1", "my.>", "", false},
	} {
		got, err := s.ReplyTo(tc.client, tc.job, tc.requested)
		if got != tc.want || (err == nil) != tc.ok {
			t.Errorf("ReplyTo(%q, %q, %q) = %q, %v; want %q (allowed: %v)", tc.client, tc.job, tc.requested, got, err, tc.want, tc.ok)
		}
		if err != nil && (err.Code != CodeBadValue || err.Field != "reply_to") {
			t.Errorf("ReplyTo(%q, %q, %q): %v, want bad_value on reply_to", tc.client, tc.job, tc.requested, err)
		}
	}
	if _, err := (Subjects{Prefix: "art"}).ReplyTo("", "j1", "art.results.j0"); err == nil {
		t.Error("the rule ignores the prefix")
	}
}

func TestJobIDOf(t *testing.T) {
	for _, tc := range []struct{ client, key, want string }{
		{"room-1", JobKey("room-1", "j1"), "j1"},
		{"", JobKey("", "j1"), "j1"},
		{"room-1", "j1", "j1"},
		{"room-1", "room-2.j1", ""},
		{"", "room-1.j1", ""},
		{"room-1", "room-1.", ""},
		{"", "", ""},
	} {
		if got := JobIDOf(tc.client, tc.key); got != tc.want {
			t.Errorf("JobIDOf(%q, %q) = %q, want %q", tc.client, tc.key, got, tc.want)
		}
	}
}

func TestParseCancel(t *testing.T) {
	s := Subjects{}
	for subject, want := range map[string]string{s.Cancel("j1"): "j1", s.ClientCancel("room-1", "j1"): "room-1.j1"} {
		if key, ok := s.ParseCancel(subject); !ok || key != want {
			t.Errorf("ParseCancel(%q) = %q, %v; want %q", subject, key, ok, want)
		}
	}
	if key, ok := s.ParseCancel("kiln.cancel."); ok {
		t.Errorf("ParseCancel of an empty key: %q", key)
	}
}

func TestParseEvent(t *testing.T) {
	s := Subjects{}
	for _, tc := range []struct{ subject, topic, worker string }{
		{s.Heartbeat("pi1-card0"), TopicHeartbeat, "pi1-card0"},
		{s.Thermal("w"), TopicThermal, "w"},
		{s.Device("w"), TopicDevice, "w"},
		{"kiln.events.future.w", "future", "w"},
	} {
		topic, worker, err := s.ParseEvent(tc.subject)
		if err != nil || topic != tc.topic || worker != tc.worker {
			t.Errorf("ParseEvent(%q) = %q, %q, %v; want %q, %q", tc.subject, topic, worker, err, tc.topic, tc.worker)
		}
	}
	for _, bad := range []string{"kiln.events.heartbeat", "kiln.events.heartbeat.", "kiln.events..w", "art.events.heartbeat.w", "kiln.jobs.chat.m.high"} {
		if topic, worker, err := s.ParseEvent(bad); err == nil {
			t.Errorf("ParseEvent(%q) = %q, %q, want an error", bad, topic, worker)
		}
	}
}
