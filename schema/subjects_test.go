package schema

import "testing"

func TestSubjectBuilders(t *testing.T) {
	kiln, art := Subjects{}, Subjects{Prefix: "art"}
	for _, tc := range []struct{ got, want string }{
		{kiln.Job(KindChat, "qwen3-4b", LaneHigh), "kiln.jobs.chat.qwen3-4b.high"},
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
		{kiln.Cancels(), "kiln.cancel.*"},
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
		{art.Cancels(), "art.cancel.*"},
		{art.Status("w"), "art.status.w"},
		{art.Heartbeat("w"), "art.events.heartbeat.w"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %s, want %s", tc.got, tc.want)
		}
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
