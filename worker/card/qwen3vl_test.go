package card_test

import (
	"errors"
	"image/color"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/llm"
)

// TestQwen3VLPackageAsPublished: a package laid out as Qwen3-VL.AXERA builds Qwen3-VL-2B
// (vendor file and tensor names, [3, 128] prefill indices, an encoder with three deepstack
// outputs, Hugging Face's config.json and tokenizer, no kiln keys) serves through the real
// queue: a chat job with an image streams the tokens of the cacheless reference — Qwen3-VL's
// template (<|vision_start|>, 144 <|image_pad|>, <|vision_end|> before the text, no think
// block), the image's rows, its grid positions and its deepstack features — and a text-only
// job matches the text reference. An image after a long turn reaches past the prefill groups:
// over_limit naming it, and the worker goes on.
func TestQwen3VLPackageAsPublished(t *testing.T) {
	lib := cardsim.Library(t)
	dir := filepath.Join(t.TempDir(), "Qwen3-VL-2B-Instruct")
	ref := writePackage(t, dir, cardsim.TinyQwen3VLVendor())
	m := openModel(t, lib, dir, &llm.Options{Logger: quiet})
	if v, ok := m.Vision(); !ok || v != (llm.Vision{Width: 384, Height: 384, Tokens: 144, ImageTokenID: 151655, Deepstack: 3}) {
		t.Fatalf("vision %+v (%v)", v, ok)
	}

	name := m.Package().Name
	c := serveChat(t, name, m)

	const n = 8
	greedy := 0.0
	ask := func(msgs ...schema.Message) (string, string, error) {
		t.Helper()
		job := &schema.ChatJob{JobHeader: schema.JobHeader{Model: name}, Messages: msgs, MaxTokens: n, Temperature: &greedy}
		res, streamed, err := streamChat(t, c, job)
		if err != nil {
			return "", "", err
		}
		return res.Text, streamed, nil
	}
	// Qwen3-VL-Instruct's chat template with one user turn, images before the text.
	want := func(text string, images [][]byte) string {
		t.Helper()
		prompt := "<|im_start|>user\n" +
			strings.Repeat("<|vision_start|>"+strings.Repeat("<|image_pad|>", 144)+"<|vision_end|>", len(images)) +
			text + "<|im_end|>\n<|im_start|>assistant\n"
		ids := m.Tokenizer().Encode(prompt)
		out, err := ref.GreedyQwen3VL(ids, images, n, cardsim.Qwen3VLOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return m.Tokenizer().Decode(untilStop(m, out))
	}

	fill := func(x, y int) color.RGBA { return color.RGBA{uint8(x * 2 / 3), uint8(y / 2), uint8((x ^ y) / 2), 255} }
	img := pngOf(t, 384, 384, fill)
	px := rgbOf(384, 384, fill)
	got, streamed, err := ask(schema.Message{Role: "user", Content: "Describe the glaze.", Images: [][]byte{img}})
	if err != nil {
		t.Fatal(err)
	}
	if w := want("Describe the glaze.", [][]byte{px}); got != w || streamed != w {
		t.Fatalf("image job: result %q, streamed %q, reference %q", got, streamed, w)
	}
	got, streamed, err = ask(schema.Message{Role: "user", Content: "Tell me about kilns."})
	if err != nil {
		t.Fatal(err)
	}
	if w := want("Tell me about kilns.", nil); got != w || streamed != w {
		t.Fatalf("text job: result %q, streamed %q, reference %q", got, streamed, w)
	}

	// A long first turn (750 tokens) puts the image of the third past row 769.
	_, _, err = ask(schema.Message{Role: "user", Content: strings.Repeat("clay ", 150)}, schema.Message{Role: "assistant", Content: "Yes."},
		schema.Message{Role: "user", Content: "And this?", Images: [][]byte{img}})
	var je *client.JobError
	if !errors.Is(err, client.ErrInvalid) || !errors.As(err, &je) {
		t.Fatalf("an image past the prefill groups: %v, want invalid", err)
	}
	if e := je.Result.Error; e.Code != schema.CodeOverLimit || e.Field != "messages[2].images[0]" || !strings.Contains(e.Message, "within its first 769 prompt tokens") {
		t.Fatalf("an image past the prefill groups: error %+v", e)
	}
	if _, _, err := ask(schema.Message{Role: "user", Content: "And now?", Images: [][]byte{img}}); err != nil {
		t.Fatalf("the job after the refusal: %v", err)
	}
}
