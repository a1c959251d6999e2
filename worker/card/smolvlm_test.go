package card_test

import (
	"image/color"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/llm"
	"github.com/kiln-project/kiln/worker/tokenize"
)

// TestSmolVLMPackageAsPublished: a package laid out as
// SmolVLM-256M-Instruct.axera publishes it (vendor file names, Hugging
// Face's config.json and tokenizer, no kiln keys) is found by its own files
// and serves through the real queue: a chat job with an image streams the
// tokens of the cacheless reference with the encoder's rows over the
// <image> run of SmolVLM's template, and a text-only job matches the text
// reference.
func TestSmolVLMPackageAsPublished(t *testing.T) {
	lib := cardsim.Library(t)
	spec := cardsim.TinySmolVLM()
	dir := filepath.Join(t.TempDir(), "SmolVLM-256M-Instruct-AX650")
	ref := writePackage(t, dir, spec)
	m := openModel(t, lib, dir, &llm.Options{Logger: quiet})
	v, ok := m.Vision()
	if want := (llm.Vision{Width: 512, Height: 512, Tokens: 64, ImageTokenID: 49190}); !ok || v != want {
		t.Fatalf("vision %+v (%v), want %+v", v, ok, want)
	}

	name := m.Package().Name
	c := serveChat(t, name, m)

	const n = 8
	greedy := 0.0
	ask := func(msg schema.Message) (string, string) {
		t.Helper()
		job := &schema.ChatJob{JobHeader: schema.JobHeader{Model: name}, Messages: []schema.Message{msg}, MaxTokens: n, Temperature: &greedy}
		res, streamed, err := streamChat(t, c, job)
		if err != nil {
			t.Fatal(err)
		}
		return res.Text, streamed
	}
	want := func(msg tokenize.Message, images [][]byte) string {
		t.Helper()
		prompt := m.Tokenizer().Encode(tokenize.RenderSmolVLM2([]tokenize.Message{msg}, tokenize.TemplateOptions{AddGenerationPrompt: true, ImageTokens: 64}))
		var out []int
		var err error
		if images == nil {
			out, err = ref.Greedy(prompt, n)
		} else {
			out, err = ref.GreedyImages(prompt, 49190, images, n)
		}
		if err != nil {
			t.Fatal(err)
		}
		return m.Tokenizer().Decode(untilStop(m, out))
	}

	fill := func(x, y int) color.RGBA { return color.RGBA{uint8(x / 2), uint8(y / 2), uint8((x + y) / 4), 255} }
	img := pngOf(t, 512, 512, fill)
	px := rgbOf(512, 512, fill)
	got, streamed := ask(schema.Message{Role: "user", Content: "Can you describe this image?", Images: [][]byte{img}})
	if w := want(tokenize.Message{Role: "user", Content: "Can you describe this image?", Images: 1}, [][]byte{px}); got != w || streamed != w {
		t.Fatalf("image job: result %q, streamed %q, reference %q", got, streamed, w)
	}
	// Two images and text past the 320-token prefill chunk: the second run
	// and the tail go beyond the package's one prefill group.
	darkFill := func(x, y int) color.RGBA { return color.RGBA{uint8(y / 8), 0, uint8(x / 8), 255} }
	dark, darkPx := pngOf(t, 512, 512, darkFill), rgbOf(512, 512, darkFill)
	long := "Compare the two pictures. " + strings.Repeat("fire, clay and patience ", 10)
	got, streamed = ask(schema.Message{Role: "user", Content: long, Images: [][]byte{img, dark}})
	if w := want(tokenize.Message{Role: "user", Content: long, Images: 2}, [][]byte{px, darkPx}); got != w || streamed != w {
		t.Fatalf("two-image job: result %q, streamed %q, reference %q", got, streamed, w)
	}
	got, streamed = ask(schema.Message{Role: "user", Content: "Tell me about clay."})
	if w := want(tokenize.Message{Role: "user", Content: "Tell me about clay."}, nil); got != w || streamed != w {
		t.Fatalf("text job: result %q, streamed %q, reference %q", got, streamed, w)
	}
}
