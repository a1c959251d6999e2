package schema

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// FuzzDecodeJob feeds arbitrary bytes to both codecs and the validators, as
// a worker does with whatever arrives on a job subject: no input may panic,
// and whatever decodes and validates must encode and decode again.
func FuzzDecodeJob(f *testing.F) {
	good, _ := Msgpack.Marshal(chat())
	goodJSON, _ := JSON.Marshal(chat())
	img, _ := Msgpack.Marshal(&ImageJob{JobHeader: JobHeader{ID: "i", Model: "sd"}, Prompt: "fox", InitImage: []byte{1, 2}})
	f.Add(good, false)
	f.Add(goodJSON, true)
	f.Add(img, false)
	f.Add([]byte(`{"id":"x","model":"m","messages":[{"role":"user","content":"hi"}],"temperature":1e400}`), true)
	f.Add([]byte{0xde, 0xff, 0xff, 0xff, 0xff}, false)
	f.Add([]byte{0xc1}, false)
	for _, h := range hostileBodies() { // huge declared lengths, deep nesting
		if len(h.data) <= 1<<16 {
			f.Add(h.data, h.asJSON)
		}
	}
	f.Add(append([]byte{0x81, 0xa8, 'm', 'e', 's', 's', 'a', 'g', 'e', 's', 0xdd, 0xff, 0xff, 0xff, 0xff}, make([]byte, 88)...), false)
	f.Add([]byte(strings.Repeat("[", 1<<12)), true)
	f.Add(bytes.Repeat([]byte{0x91}, 1<<12), false)
	sub := &JobSubject{Kind: KindChat, Model: "qwen3-4b", Lane: LaneNormal}
	f.Fuzz(func(t *testing.T, data []byte, asJSON bool) {
		c := Msgpack
		if asJSON {
			c = JSON
		}
		var strict ChatJob
		if err := c.DecodeJob(data, &strict); err != nil {
			var se *Error
			if !errors.As(err, &se) || !se.Code.Invalid() {
				t.Fatalf("strict decode error %v (%T), want an invalid_request *Error", err, err)
			}
		}
		var j ChatJob
		if err := c.Unmarshal(data, &j); err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("decode error is %T, want *Error", err)
			}
			return
		}
		if ValidateChat(&j, sub, Limits{}) != nil {
			return
		}
		again, err := c.Marshal(&j)
		if err != nil {
			t.Fatalf("valid job does not encode: %v", err)
		}
		var k ChatJob
		if err := c.Unmarshal(again, &k); err != nil || k.ID != j.ID || len(k.Messages) != len(j.Messages) {
			t.Fatalf("re-decode: %v", err)
		}
		var im ImageJob
		if c.Unmarshal(data, &im) == nil {
			_ = ValidateImage(&im, nil, Limits{})
		}
	})
}

// FuzzDecodeEvent is what a client does with whatever arrives on its reply subject.
func FuzzDecodeEvent(f *testing.F) {
	ev, _ := Msgpack.Marshal(&Event{JobID: "a", Attempt: 1, Seq: 1, Type: EventResult, Result: &Result{Status: StatusOK, Text: "t"}})
	f.Add(ev)
	f.Add([]byte{0x81, 0xa4, 't', 'y', 'p', 'e'})
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, c := range []Codec{Msgpack, JSON} {
			var e Event
			_ = c.Unmarshal(data, &e)
			var r Result
			_ = c.Unmarshal(data, &r)
			var h Heartbeat
			_ = c.Unmarshal(data, &h)
		}
	})
}

// FuzzSubjects checks the subject parser and token rules on arbitrary text.
func FuzzSubjects(f *testing.F) {
	f.Add("kiln.jobs.chat.qwen3-4b.normal", "x")
	f.Add("kiln.jobs.chat.qwen3-4b.normal.room-1", "kiln.reply.room-1.j")
	f.Add("kiln.jobs..", "a.b")
	f.Add("kiln.jobs.chat.m.high.x", "$KV.kiln_workers.x")
	f.Fuzz(func(t *testing.T, subject, token string) {
		s := Subjects{}
		js, err := s.ParseJob(subject)
		if err == nil && s.ClientJob(js.Kind, js.Model, js.Lane, js.Client) != subject {
			t.Fatalf("ParseJob(%q) = %+v does not rebuild", subject, js)
		}
		if ValidToken(token) {
			if js, err := s.ParseJob(s.ClientJob(KindChat, token, LaneHigh, token)); err != nil || js.Model != token || js.Client != token {
				t.Fatalf("token %q does not survive a subject", token)
			}
		}
		// The reply rule: a client's job replies under its own subjects
		// only, nobody's into NATS's.
		if err == nil {
			if to, rerr := s.ReplyTo(js.Client, "j", token); rerr == nil && to != "" {
				own := js.Client == "" || strings.HasPrefix(to, "kiln.reply."+js.Client+".") || strings.HasPrefix(to, InboxPrefix+js.Client+".")
				if !own || strings.HasPrefix(to, "$") || to != token && token != "" {
					t.Fatalf("ReplyTo(%q, j, %q) allowed %q", js.Client, token, to)
				}
			}
		}
		_, _ = CodecFor(token)
	})
}
