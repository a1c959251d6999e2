package gateway

import (
	"bytes"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// checkRefusal is what every refusal of outside bytes must be: a 400 (or
// 413) in OpenAI's shape with a code and a sentence.
func checkRefusal(t *testing.T, err *apiError) {
	t.Helper()
	if err == nil {
		return
	}
	if (err.Status != http.StatusBadRequest && err.Status != http.StatusRequestEntityTooLarge) || err.Message == "" || err.Type == "" || err.Code == nil {
		t.Fatalf("refusal %+v", err)
	}
}

var chatSeeds = []string{
	`{"model":"qwen3-tiny","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}`,
	`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}}]}]}`,
	`{"model":"m","messages":[{"role":"system","content":"x"}],"stop":["a","b"],"seed":18446744073709551615,"max_tokens":1e3}`,
	`{"model":"m","messages":[{"role":"user","content":null}],"n":null,"tools":[],"logit_bias":{}}`,
	`{"model":"m","messages":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`,
	`{"model":"m","messages":[{"role":"user","content":"\ud800"}],"metadata":{"a":"b","c":1}}`,
	`{"model":1}`, `null`, `{"model":"m","messages":{}}`, `{"a":` + strings.Repeat("[", 5000),
}

// FuzzDecodeChat: no body makes the chat decoder panic, and every refusal
// is a coded 400.
func FuzzDecodeChat(f *testing.F) {
	for _, s := range chatSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeChat(body)
		checkRefusal(t, err)
		if err == nil && (req.job.Model == "" || len(req.job.Messages) == 0) {
			t.Fatalf("accepted a chat without a model or messages: %q", body)
		}
	})
}

// FuzzDecodeImage: the same for image generations.
func FuzzDecodeImage(f *testing.F) {
	for _, s := range []string{
		`{"prompt":"a fox","n":2,"size":"512x512","response_format":"url","seed":1,"steps":4}`,
		`{"prompt":"x","size":"0x-1"}`, `{"prompt":"x","size":"99999999999999999999x1"}`, `{"prompt":"","n":1.5}`,
		`{"prompt":"x","quality":null,"style":"vivid"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		o, err := parseObject(body, "")
		checkRefusal(t, err)
		if err != nil {
			return
		}
		req, err := decodeImage(o, false)
		checkRefusal(t, err)
		if err == nil && (req.n < 1 || req.n > maxImagesPerRequest || req.job.Prompt == "") {
			t.Fatalf("accepted %+v from %q", req, body)
		}
	})
}

// FuzzEditForm: no multipart body makes the edit form reader panic or
// hand back an image past the limit.
func FuzzEditForm(f *testing.F) {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	_ = mw.SetBoundary("kilnboundary")
	_ = mw.WriteField("prompt", "oil")
	_ = mw.WriteField("strength", "0.4")
	fw, _ := mw.CreateFormFile("image", "a.png")
	_, _ = fw.Write([]byte("\x89PNG"))
	_ = mw.Close()
	f.Add(b.Bytes())
	f.Add([]byte("--kilnboundary\r\nContent-Disposition: form-data; name=\"image[]\"\r\n\r\nx\r\n--kilnboundary--\r\n"))
	f.Add([]byte("--kilnboundary\r\nContent-Disposition: form-data\r\n\r\nx\r\n--kilnboundary--\r\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest(http.MethodPost, "/v1/images/edits", bytes.NewReader(body))
		r.Header.Set("Content-Type", "multipart/form-data; boundary=kilnboundary")
		r.Body = http.MaxBytesReader(httptest.NewRecorder(), r.Body, maxEditBody)
		img, o, err := readEditForm(r)
		checkRefusal(t, err)
		if err != nil {
			return
		}
		if len(img) == 0 || len(img) > maxEditBody {
			t.Fatalf("image of %d bytes", len(img))
		}
		_, err = decodeImage(o, true)
		checkRefusal(t, err)
	})
}

// FuzzParseKeys: key lists never panic, and every key has a secret and a
// client id that is empty or a subject token.
func FuzzParseKeys(f *testing.F) {
	for _, s := range []string{"room-1:sk-a,sk-b", "# c\nroom-2 sk\n", ":", "a:b:c", "\x00:\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		keys, err := ParseKeys(text, "")
		if err != nil {
			return
		}
		for _, k := range keys {
			if k.Secret == "" {
				t.Fatalf("an empty key from %q", text)
			}
		}
	})
}
