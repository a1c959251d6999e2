package schema

import (
	"errors"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func TestDecodeJobNamesTheField(t *testing.T) {
	mp := func(v any) []byte {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	msgs := []map[string]any{{"role": "user", "content": "hi"}}
	cases := []struct {
		name      string
		codec     Codec
		body      []byte
		image     bool
		wantCode  ErrorCode
		wantField string
	}{
		{"json typo", JSON, []byte(`{"id":"a","model":"m","messages":[{"role":"user","content":"hi"}],"temprature":0.5}`), false, CodeUnknownField, "temprature"},
		{"json camel case", JSON, []byte(`{"id":"a","model":"m","messages":[],"maxTokens":5}`), false, CodeUnknownField, "maxTokens"},
		{"json nested unknown", JSON, []byte(`{"id":"a","model":"m","messages":[{"role":"user","content":"hi"},{"role":"user","text":"x"}]}`), false, CodeUnknownField, "messages[1].text"},
		{"json image negative prompt", JSON, []byte(`{"id":"a","model":"sd","prompt":"fox","negative_prompt":"blur"}`), true, CodeUnknownField, "negative_prompt"},
		{"json image width", JSON, []byte(`{"id":"a","model":"sd","prompt":"fox","width":"wide"}`), true, CodeBadJSON, "width"},
		{"json wrong type", JSON, []byte(`{"id":"a","model":"m","messages":[{"role":"user","content":5}]}`), false, CodeBadJSON, "messages[0].content"},
		{"json float for int", JSON, []byte(`{"id":"a","model":"m","messages":[],"max_tokens":1.5}`), false, CodeBadJSON, "max_tokens"},
		{"json string for number", JSON, []byte(`{"id":"a","model":"m","messages":[],"temperature":"hot"}`), false, CodeBadJSON, "temperature"},
		{"json list for object", JSON, []byte(`{"id":"a","model":"m","messages":[],"metadata":[1]}`), false, CodeBadJSON, "metadata"},
		{"msgpack typo", Msgpack, mp(map[string]any{"id": "a", "model": "m", "messages": msgs, "temprature": 0.5}), false, CodeUnknownField, "temprature"},
		{"msgpack image negative prompt", Msgpack, mp(map[string]any{"id": "a", "model": "sd", "prompt": "fox", "negative_prompt": "blur"}), true, CodeUnknownField, "negative_prompt"},
		{"msgpack wrong type", Msgpack, mp(map[string]any{"id": "a", "model": "m", "messages": []map[string]any{{"role": "user", "content": 5}}}), false, CodeBadMsgpack, "messages[0].content"},
		{"msgpack string for int", Msgpack, mp(map[string]any{"id": "a", "model": "m", "messages": msgs, "max_tokens": "5"}), false, CodeBadMsgpack, "max_tokens"},
		{"msgpack metadata value", Msgpack, mp(map[string]any{"id": "a", "model": "m", "messages": msgs, "metadata": map[string]any{"k": 1}}), false, CodeBadMsgpack, "metadata.k"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var v any = &ChatJob{}
			if tc.image {
				v = &ImageJob{}
			}
			err := tc.codec.DecodeJob(tc.body, v)
			var se *Error
			if !errors.As(err, &se) {
				t.Fatalf("DecodeJob = %v, want a *schema.Error", err)
			}
			if se.Code != tc.wantCode || se.Field != tc.wantField {
				t.Fatalf("got %s on %q (%s), want %s on %q", se.Code, se.Field, se.Message, tc.wantCode, tc.wantField)
			}
			if !se.Code.Invalid() {
				t.Fatalf("%s is not in the invalid_request class", se.Code)
			}
		})
	}
}

func TestDecodeJobAcceptsEveryField(t *testing.T) {
	for _, c := range []Codec{Msgpack, JSON} {
		j := chat()
		temp, seed := 0.7, uint64(9)
		j.Temperature, j.Seed, j.Stop, j.Think, j.Metadata = &temp, &seed, []string{"x"}, true, map[string]string{"a": "b"}
		j.Messages[0].Images = [][]byte{{1, 2, 3}}
		data, _ := c.Marshal(j)
		var k ChatJob
		if err := c.DecodeJob(data, &k); err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		if *k.Temperature != temp || *k.Seed != seed || len(k.Messages[0].Images[0]) != 3 || k.Metadata["a"] != "b" {
			t.Fatalf("%s: decoded %+v", c, k)
		}
		im := &ImageJob{JobHeader: JobHeader{ID: "i", Model: "sd"}, Prompt: "fox", Seed: &seed, Steps: 4, InitImage: []byte{1}, Strength: 0.5, Format: "png", Progress: true}
		data, _ = c.Marshal(im)
		var got ImageJob
		if err := c.DecodeJob(data, &got); err != nil {
			t.Fatalf("%s image: %v", c, err)
		}
	}
}

func TestCodecForBody(t *testing.T) {
	cases := []struct {
		ct   string
		body string
		want Codec
		err  bool
	}{
		{"", `{"id":"a"}`, JSON, false},
		{"application/msgpack", ` {"id":"a"}`, JSON, false},
		{"text/plain", `{"id":"a"}`, JSON, false},
		{"", "\x81\xa2id\xa1a", Msgpack, false},
		{"application/json", "\x81", JSON, false},
		{"text/plain", "\x81", Msgpack, true},
	}
	for _, tc := range cases {
		got, err := CodecForBody(tc.ct, []byte(tc.body))
		if (err != nil) != tc.err || (err == nil && got != tc.want) {
			t.Errorf("CodecForBody(%q, %q) = %v, %v", tc.ct, tc.body, got, err)
		}
	}
}
