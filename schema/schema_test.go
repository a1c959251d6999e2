package schema

import (
	"encoding/json"
	"errors"
	"math"
	"sort"
	"strings"
	"testing"
	"time"
)

func chat() *ChatJob {
	return &ChatJob{JobHeader: JobHeader{ID: "job-1", Model: "qwen3-4b"}, Messages: []Message{{Role: "user", Content: "hi"}}}
}

func TestCodecsRoundTripEveryWireType(t *testing.T) {
	deadline := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	temp, seed := 0.7, uint64(7)
	job := &ChatJob{
		JobHeader: JobHeader{ID: "01J", Model: "qwen3-4b", Lane: LaneHigh, Deadline: &deadline, ReplyTo: "kiln.reply.c.01J", Metadata: map[string]string{"room": "2"}},
		Messages:  []Message{{Role: "user", Content: "héllo", Images: [][]byte{{1, 2, 3}}}},
		MaxTokens: 64, Temperature: &temp, TopK: 20, Seed: &seed, Stop: []string{"\n\n"}, Think: true,
	}
	for _, c := range []Codec{Msgpack, JSON} {
		data, err := c.Marshal(job)
		if err != nil {
			t.Fatal(err)
		}
		var got ChatJob
		if err := c.Unmarshal(data, &got); err != nil {
			t.Fatal(err)
		}
		if got.ID != job.ID || got.Lane != LaneHigh || !got.Deadline.Equal(deadline) || *got.Temperature != temp || *got.Seed != seed ||
			got.Messages[0].Content != "héllo" || string(got.Messages[0].Images[0]) != "\x01\x02\x03" || got.Metadata["room"] != "2" || !got.Think {
			t.Fatalf("%s round trip: %+v", c, got)
		}
		ev := Event{JobID: "01J", Run: "R2", Attempt: 2, Seq: 3, Type: EventResult, Result: &Result{JobID: "01J", Run: "R1", Status: StatusError,
			Error: Errorf(CodeOverLimit, "messages", "too many"), Usage: Usage{QueueMS: 5}}}
		data, _ = c.Marshal(&ev)
		var gotEv Event
		if err := c.Unmarshal(data, &gotEv); err != nil || gotEv.Result.Error.Code != CodeOverLimit || gotEv.Attempt != 2 ||
			gotEv.Run != "R2" || gotEv.Result.Run != "R1" {
			t.Fatalf("%s event round trip: %+v %v", c, gotEv, err)
		}
	}
}

func TestWireFieldNamesAreSnakeCase(t *testing.T) {
	data, _ := JSON.Marshal(&ImageJob{JobHeader: JobHeader{ID: "a", Model: "sd15-lcm", ReplyTo: "x"}, Prompt: "p", InitImage: []byte{1}, Strength: 0.5})
	var m map[string]any
	_ = json.Unmarshal(data, &m)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if strings.Join(keys, ",") != "id,init_image,model,prompt,reply_to,strength" {
		t.Fatalf("JSON keys %v", keys)
	}
	var mp map[string]any
	raw, _ := Msgpack.Marshal(&ImageJob{JobHeader: JobHeader{ID: "a", Model: "m"}, Prompt: "p"})
	if err := Msgpack.Unmarshal(raw, &mp); err != nil || mp["id"] != "a" || mp["prompt"] != "p" {
		t.Fatalf("msgpack keys %v %v", mp, err)
	}
}

func TestCodecFor(t *testing.T) {
	for ct, want := range map[string]Codec{"": Msgpack, "application/msgpack": Msgpack, "application/json; charset=utf-8": JSON, "Application/JSON": JSON} {
		if got, err := CodecFor(ct); err != nil || got != want {
			t.Errorf("CodecFor(%q) = %v, %v", ct, got, err)
		}
	}
	_, err := CodecFor("text/plain")
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeBadContentType || !strings.Contains(e.Message, "text/plain") {
		t.Fatalf("unknown content type: %v", err)
	}
}

func TestDecodeErrorsHaveTheirOwnCodes(t *testing.T) {
	var j ChatJob
	var e *Error
	if err := Msgpack.Unmarshal([]byte{0xc1}, &j); !errors.As(err, &e) || e.Code != CodeBadMsgpack {
		t.Fatalf("msgpack: %v", err)
	}
	if err := JSON.Unmarshal([]byte(`{"id":`), &j); !errors.As(err, &e) || e.Code != CodeBadJSON {
		t.Fatalf("json: %v", err)
	}
	if err := JSON.Unmarshal([]byte(`{"id":"a"} {"id":"b"}`), &j); !errors.As(err, &e) || e.Code != CodeBadJSON {
		t.Fatalf("json with trailing data: %v", err)
	}
	if err := JSON.Unmarshal([]byte(`{"messages":"not a list"}`), &j); !errors.As(err, &e) || e.Code != CodeBadJSON {
		t.Fatalf("json of the wrong shape: %v", err)
	}
}

func TestValidateChat(t *testing.T) {
	sub := &JobSubject{Kind: KindChat, Model: "qwen3-4b", Lane: LaneNormal}
	f := func(v float64) *float64 { return &v }
	cases := []struct {
		name  string
		mod   func(*ChatJob)
		code  ErrorCode
		field string
	}{
		{"ok", func(*ChatJob) {}, "", ""},
		{"no id", func(j *ChatJob) { j.ID = "" }, CodeMissingField, "id"},
		{"id with dot", func(j *ChatJob) { j.ID = "a.b" }, CodeBadValue, "id"},
		{"no model", func(j *ChatJob) { j.Model = "" }, CodeMissingField, "model"},
		{"other model", func(j *ChatJob) { j.Model = "qwen3-1b" }, CodeModelMismatch, "model"},
		{"other lane", func(j *ChatJob) { j.Lane = LaneHigh }, CodeBadValue, "lane"},
		{"bad lane", func(j *ChatJob) { j.Lane = "fast" }, CodeBadValue, "lane"},
		{"no messages", func(j *ChatJob) { j.Messages = nil }, CodeMissingField, "messages"},
		{"too many messages", func(j *ChatJob) { j.Messages = make([]Message, 300) }, CodeOverLimit, "messages"},
		{"no role", func(j *ChatJob) { j.Messages[0].Role = "" }, CodeMissingField, "messages[0].role"},
		{"bad role", func(j *ChatJob) { j.Messages[0].Role = "robot" }, CodeBadValue, "messages[0].role"},
		{"long content", func(j *ChatJob) { j.Messages[0].Content = strings.Repeat("a", 65<<10) }, CodeOverLimit, "messages[0].content"},
		{"bad utf8", func(j *ChatJob) { j.Messages[0].Content = "\xff" }, CodeBadValue, "messages[0].content"},
		{"prompt too long", func(j *ChatJob) {
			for range 5 {
				j.Messages = append(j.Messages, Message{Role: "user", Content: strings.Repeat("a", 60<<10)})
			}
		}, CodeOverLimit, "messages"},
		{"max tokens", func(j *ChatJob) { j.MaxTokens = -1 }, CodeOutOfRange, "max_tokens"},
		{"temperature", func(j *ChatJob) { j.Temperature = f(2.5) }, CodeOutOfRange, "temperature"},
		{"temperature NaN", func(j *ChatJob) { j.Temperature = f(math.NaN()) }, CodeOutOfRange, "temperature"},
		{"top p zero", func(j *ChatJob) { j.TopP = f(0) }, CodeOutOfRange, "top_p"},
		{"top k", func(j *ChatJob) { j.TopK = 5000 }, CodeOutOfRange, "top_k"},
		{"penalty", func(j *ChatJob) { j.RepetitionPenalty = f(0.1) }, CodeOutOfRange, "repetition_penalty"},
		{"empty stop", func(j *ChatJob) { j.Stop = []string{""} }, CodeBadValue, "stop[0]"},
		{"many stops", func(j *ChatJob) { j.Stop = make([]string, 9) }, CodeOverLimit, "stop"},
		{"reply wildcard", func(j *ChatJob) { j.ReplyTo = "kiln.reply.*" }, CodeBadValue, "reply_to"},
		{"metadata", func(j *ChatJob) { j.Metadata = map[string]string{"k": strings.Repeat("v", 300)} }, CodeOverLimit, "metadata"},
		{"empty image", func(j *ChatJob) { j.Messages[0].Images = [][]byte{{}} }, CodeMissingField, "messages[0].images[0]"},
		{"40 MB image", func(j *ChatJob) { j.Messages[0].Images = [][]byte{make([]byte, 40<<20)} }, CodeOverLimit, "messages[0].images[0]"},
		{"five images", func(j *ChatJob) {
			j.Messages[0].Images = [][]byte{{1}, {2}, {3}, {4}, {5}}
		}, CodeOverLimit, "messages"},
	}
	for _, tc := range cases {
		j := chat()
		tc.mod(j)
		err := ValidateChat(j, sub, Limits{})
		if tc.code == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil || err.Code != tc.code || err.Field != tc.field || err.Message == "" {
			t.Errorf("%s: got %v, want code %s field %s", tc.name, err, tc.code, tc.field)
		}
		if err != nil && !err.Code.Invalid() {
			t.Errorf("%s: code %s should be an invalid-request code", tc.name, err.Code)
		}
	}
}

func TestValidateImage(t *testing.T) {
	sub := &JobSubject{Kind: KindImage, Model: "sd", Lane: LaneNormal}
	base := func() *ImageJob { return &ImageJob{JobHeader: JobHeader{ID: "i", Model: "sd"}, Prompt: "a fox"} }
	if err := ValidateImage(base(), sub, Limits{}); err != nil {
		t.Fatal(err)
	}
	j := base()
	j.Strength = 0.5
	if err := ValidateImage(j, sub, Limits{}); err == nil || err.Field != "init_image" {
		t.Fatalf("strength without init image: %v", err)
	}
	j = base()
	j.Steps = 99
	if err := ValidateImage(j, sub, Limits{}); err == nil || err.Code != CodeOutOfRange || !strings.Contains(err.Message, "0..50") {
		t.Fatalf("steps: %v", err)
	}
	j = base()
	j.Width, j.Height = 768, 1024
	if err := ValidateImage(j, sub, Limits{}); err != nil {
		t.Fatalf("768x1024: %v", err)
	}
	j.Height = -1
	if err := ValidateImage(j, sub, Limits{}); err == nil || err.Code != CodeOutOfRange || err.Field != "height" {
		t.Fatalf("height -1: %v", err)
	}
	j = base()
	j.Prompt = strings.Repeat("x", 2001)
	if err := ValidateImage(j, sub, Limits{}); err == nil || err.Code != CodeOverLimit {
		t.Fatalf("long prompt: %v", err)
	}
	if err := ValidateImage(base(), &JobSubject{Kind: KindChat, Model: "sd", Lane: LaneNormal}, Limits{}); err == nil || err.Code != CodeBadSubject {
		t.Fatalf("image on chat subject: %v", err)
	}
}

func TestSubjects(t *testing.T) {
	s := Subjects{}
	if got := s.Job(KindChat, "qwen3-4b", LaneHigh); got != "kiln.jobs.chat.qwen3-4b.high" {
		t.Fatal(got)
	}
	if got := (Subjects{Prefix: "art"}).Cancel("j"); got != "art.cancel.j" {
		t.Fatal(got)
	}
}

func TestNewIDIsSortableAndUnique(t *testing.T) {
	seen := map[string]bool{}
	prev := ""
	for range 10000 {
		id := NewID()
		if len(id) != 26 || !ValidToken(id) || seen[id] || id <= prev {
			t.Fatalf("id %q after %q (seen %v)", id, prev, seen[id])
		}
		seen[id] = true
		prev = id
	}
	early, late := newIDAt(time.Unix(1000, 0)), newIDAt(time.Unix(2000, 0))
	if early >= late {
		t.Fatalf("ids do not sort by time: %s >= %s", early, late)
	}
}
