package gateway

import (
	"bytes"
	"encoding/base64"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"

	"github.com/kiln-project/kiln/schema"
)

// The chat decoder takes what OpenAI clients send and gives kiln's job:
// content as a string or as parts, developer as system, stop as a string
// or a list, user and metadata as the job's metadata.
func TestDecodeChatAccepts(t *testing.T) {
	png := []byte("\x89PNG\r\n\x1a\nfake")
	uri := "data:image/png;base64," + base64.StdEncoding.EncodeToString(png)
	req, err := decodeChat([]byte(`{"model":"qwen3-tiny","stream":true,"stream_options":{"include_usage":true},
		"messages":[{"role":"developer","content":"be brief"},
			{"role":"user","name":"ada","content":[{"type":"text","text":"what is"},{"type":"text","text":"in it?"},
				{"type":"image_url","image_url":{"url":"` + uri + `","detail":"low"}}]},
			{"role":"assistant","content":"a fox","tool_calls":[]}],
		"max_completion_tokens":16,"max_tokens":16,"temperature":0.5,"top_p":0.9,"seed":42,"stop":"\n\n","n":1,
		"user":"u-1","metadata":{"room":"2"},"frequency_penalty":0,"presence_penalty":0,"logprobs":false,
		"response_format":{"type":"text"},"tools":[],"tool_choice":"none","parallel_tool_calls":true,"store":false,
		"top_k":20,"repetition_penalty":1.1,"think":false}`))
	if err != nil {
		t.Fatal(err)
	}
	j := req.job
	want := []schema.Message{{Role: "system", Content: "be brief"}, {Role: "user", Content: "what is\nin it?", Images: [][]byte{png}},
		{Role: "assistant", Content: "a fox"}}
	if !reflect.DeepEqual(j.Messages, want) {
		t.Fatalf("messages %+v", j.Messages)
	}
	if !req.stream || !req.includeUsage || j.Model != "qwen3-tiny" || j.MaxTokens != 16 || *j.Temperature != 0.5 || *j.TopP != 0.9 ||
		*j.Seed != 42 || !reflect.DeepEqual(j.Stop, []string{"\n\n"}) || j.TopK != 20 || *j.RepetitionPenalty != 1.1 ||
		!reflect.DeepEqual(j.Metadata, map[string]string{"room": "2", "user": "u-1"}) {
		t.Fatalf("job %+v", j)
	}
	req, err = decodeChat([]byte(`{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":["a","b"]}`))
	if err != nil || !reflect.DeepEqual(req.job.Stop, []string{"a", "b"}) || req.stream {
		t.Fatalf("%+v %v", req, err)
	}
}

// Anything kiln cannot honour is refused with 400 naming the field by
// its path in the request.
func TestDecodeChatRefusesNamingTheField(t *testing.T) {
	msg := `"messages":[{"role":"user","content":"hi"}]`
	for _, c := range []struct{ body, param, code string }{
		{`{` + msg + `}`, "model", "missing_field"},
		{`{"model":"m"}`, "messages", "missing_field"},
		{`{"model":"m","messages":[]}`, "messages", "missing_field"},
		{`{"model":"m",` + msg + `,"n":2}`, "n", "unsupported"},
		{`{"model":"m",` + msg + `,"frequency_penalty":0.5}`, "frequency_penalty", "unsupported"},
		{`{"model":"m",` + msg + `,"logit_bias":{"50256":-100}}`, "logit_bias", "unsupported"},
		{`{"model":"m",` + msg + `,"tools":[{"type":"function"}]}`, "tools", "unsupported"},
		{`{"model":"m",` + msg + `,"response_format":{"type":"json_object"}}`, "response_format", "unsupported"},
		{`{"model":"m",` + msg + `,"reasoning_effort":"low"}`, "reasoning_effort", "unsupported"},
		{`{"model":"m",` + msg + `,"temprature":1}`, "temprature", "unknown_field"},
		{`{"model":"m",` + msg + `,"stream_options":{"include_usage":true,"x":1}}`, "stream_options.x", "unknown_field"},
		{`{"model":"m",` + msg + `,"max_tokens":0}`, "max_tokens", "out_of_range"},
		{`{"model":"m",` + msg + `,"max_tokens":8,"max_completion_tokens":9}`, "max_tokens", "bad_value"},
		{`{"model":"m",` + msg + `,"seed":-1}`, "seed", "out_of_range"},
		{`{"model":"m",` + msg + `,"temperature":"hot"}`, "temperature", "bad_json"},
		{`{"model":"m",` + msg + `,"stop":[1]}`, "stop", "bad_json"},
		{`{"model":"m","messages":[{"role":"tool","content":"x","tool_call_id":"1"}]}`, "messages[0].role", "unsupported"},
		{`{"model":"m","messages":[{"content":"x"}]}`, "messages[0].role", "missing_field"},
		{`{"model":"m","messages":[{"role":"user"}]}`, "messages[0].content", "missing_field"},
		{`{"model":"m","messages":[{"role":"user","content":"x","colour":"red"}]}`, "messages[0].colour", "unknown_field"},
		{`{"model":"m","messages":[{"role":"user","content":[{"type":"input_audio"}]}]}`, "messages[0].content[0].type", "unsupported"},
		{`{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}]}]}`,
			"messages[0].content[0].image_url.url", "unsupported"},
		{`{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/gif;base64,R0lG"}}]}]}`,
			"messages[0].content[0].image_url.url", "unsupported"},
		{`{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,!!"}}]}]}`,
			"messages[0].content[0].image_url.url", "bad_value"},
		{`{"model":"m","messages":[{"role":"assistant","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}`,
			"messages[0].content[0].type", "unsupported"},
		{`[1,2]`, "", "bad_json"},
		{`{"model":"m",` + msg + `} {}`, "", "bad_json"},
	} {
		_, err := decodeChat([]byte(c.body))
		if err == nil {
			t.Errorf("%s: accepted", c.body)
			continue
		}
		param, _ := err.Param.(string)
		if err.Status != http.StatusBadRequest || param != c.param || err.Code != c.code || err.Message == "" {
			t.Errorf("%s: %d %q %v %q, want 400 %q %q", c.body, err.Status, param, err.Code, err.Message, c.param, c.code)
		}
	}
}

// An image larger than the schema's limit is refused: from its base64
// length before it is decoded, and by one byte after.
func TestDecodeChatBoundsImages(t *testing.T) {
	for _, n := range []int{schema.DefaultLimits.MaxImageBytes + 1, schema.DefaultLimits.MaxImageBytes + 4096} {
		big := base64.StdEncoding.EncodeToString(make([]byte, n))
		_, err := decodeChat([]byte(`{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,` + big + `"}}]}]}`))
		if err == nil || err.Code != string(schema.CodeOverLimit) || err.Param != "messages[0].content[0].image_url.url" {
			t.Fatalf("%d bytes: %v", n, err)
		}
	}
}

func TestDecodeImage(t *testing.T) {
	o, _ := parseObject([]byte(`{"prompt":"a fox","model":"sd15-lcm","n":3,"size":"512x512","response_format":"b64_json",
		"seed":7,"steps":2,"quality":"standard","user":"u","output_format":"png"}`), "")
	req, err := decodeImage(o, false)
	if err != nil {
		t.Fatal(err)
	}
	if j := req.job; req.n != 3 || req.format != formatB64 || j.Prompt != "a fox" || j.Model != "sd15-lcm" || j.Width != 512 ||
		j.Height != 512 || *j.Seed != 7 || j.Steps != 2 || j.Metadata["user"] != "u" {
		t.Fatalf("%+v", req)
	}
	for _, c := range []struct{ body, param string }{
		{`{}`, "prompt"},
		{`{"prompt":"x","n":11}`, "n"},
		{`{"prompt":"x","size":"big"}`, "size"},
		{`{"prompt":"x","response_format":"jpeg"}`, "response_format"},
		{`{"prompt":"x","quality":"hd"}`, "quality"},
		{`{"prompt":"x","style":"vivid"}`, "style"},
		{`{"prompt":"x","strength":0.5}`, "strength"}, // an edit's field only
		{`{"prompt":"x","steps":0}`, "steps"},
		{`{"prompt":"x","stream":true,"n":2}`, "n"},
		{`{"prompt":"x","partial_images":2}`, "partial_images"},
	} {
		o, _ := parseObject([]byte(c.body), "")
		if _, err := decodeImage(o, false); err == nil || err.Param != c.param {
			t.Errorf("%s: %v, want the error to name %q", c.body, err, c.param)
		}
	}
}

// An edit form: the image part within its bound, numbers as numbers,
// strength as kiln's extension, a mask refused.
func TestReadEditForm(t *testing.T) {
	form := func(fields map[string]string, image []byte) *http.Request {
		var b bytes.Buffer
		mw := multipart.NewWriter(&b)
		for k, v := range fields {
			_ = mw.WriteField(k, v)
		}
		if image != nil {
			fw, _ := mw.CreateFormFile("image", "fox.png")
			_, _ = fw.Write(image)
		}
		_ = mw.Close()
		r := httptest.NewRequest(http.MethodPost, "/v1/images/edits", &b)
		r.Header.Set("Content-Type", mw.FormDataContentType())
		return r
	}
	img, o, err := readEditForm(form(map[string]string{"prompt": "oil", "strength": "0.25", "n": "1", "seed": "9"}, []byte("png")))
	if err != nil {
		t.Fatal(err)
	}
	req, err := decodeImage(o, true)
	if err != nil || string(img) != "png" || req.job.Strength != 0.25 || *req.job.Seed != 9 || req.job.Prompt != "oil" {
		t.Fatalf("%+v %v", req, err)
	}
	if _, _, err := readEditForm(form(map[string]string{"prompt": "oil"}, nil)); err == nil || err.Param != "image" {
		t.Fatalf("no image: %v", err)
	}
	if _, _, err := readEditForm(form(map[string]string{"prompt": "oil", "mask": "x"}, []byte("png"))); err == nil || err.Param != "mask" {
		t.Fatalf("mask: %v", err)
	}
	big := bytes.Repeat([]byte{1}, schema.DefaultLimits.MaxImageBytes+1)
	if _, _, err := readEditForm(form(map[string]string{"prompt": "oil"}, big)); err == nil || err.Code != string(schema.CodeOverLimit) {
		t.Fatalf("an image past the limit: %v", err)
	}
}

func TestParseKeys(t *testing.T) {
	keys, err := ParseKeys("room-1:sk-a, sk-b\n# comment\n\nroom-2 sk-c\n", "gw")
	want := []Key{{Secret: "sk-a", Client: "room-1"}, {Secret: "sk-b", Client: "gw"}, {Secret: "sk-c", Client: "room-2"}}
	if err != nil || !reflect.DeepEqual(keys, want) {
		t.Fatalf("%+v %v", keys, err)
	}
	for _, bad := range []string{"room.1:sk", "room-1:", "a b c"} {
		if _, err := ParseKeys(bad, ""); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestOpenAIField(t *testing.T) {
	for kiln, want := range map[string]string{"width": "size", "height": "size", "init_image": "image",
		"messages[2].images": "messages[2].content", "messages[0].images[1]": "messages[0].content",
		"messages[1].content": "messages[1].content", "temperature": "temperature", "stop[0]": "stop[0]"} {
		if got := openAIField(kiln); got != want {
			t.Errorf("%s: %s, want %s", kiln, got, want)
		}
	}
}
