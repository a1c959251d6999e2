package tokenize

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
)

type templateCase struct {
	Name     string `json:"name"`
	Messages []struct {
		Role    string `json:"role"`
		Content string `json:"content"`
		Images  int    `json:"images"`
	} `json:"messages"`
	AddGenerationPrompt bool    `json:"add_generation_prompt"`
	Think               bool    `json:"think"`
	ImageRows           int     `json:"image_rows"`
	ImageCols           int     `json:"image_cols"`
	Qwen3               *string `json:"qwen3"`
	SmolVLM2            string  `json:"smolvlm2"`
}

// TestTemplatesMatchJinja compares the renderers with the real Jinja
// templates rendered by jinja2 (testdata/templates/gen.py).
func TestTemplatesMatchJinja(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("testdata/templates/cases.json")
	if err != nil {
		t.Fatal(err)
	}
	var cases []templateCase
	if err := json.Unmarshal(data, &cases); err != nil {
		t.Fatal(err)
	}
	if len(cases) < 20 {
		t.Fatalf("only %d template cases", len(cases))
	}
	for _, c := range cases {
		msgs := make([]Message, len(c.Messages))
		for i, m := range c.Messages {
			msgs[i] = Message{Role: m.Role, Content: m.Content, Images: m.Images}
		}
		opts := TemplateOptions{AddGenerationPrompt: c.AddGenerationPrompt, Think: c.Think, ImageRows: c.ImageRows, ImageCols: c.ImageCols}
		if c.Qwen3 != nil {
			if got := RenderQwen3(msgs, opts); got != *c.Qwen3 {
				t.Errorf("%s (gen %v think %v) qwen3:\n got %q\nwant %q", c.Name, c.AddGenerationPrompt, c.Think, got, *c.Qwen3)
			}
		}
		if got := RenderSmolVLM2(msgs, opts); got != c.SmolVLM2 {
			t.Errorf("%s (gen %v) smolvlm2:\n got %q\nwant %q", c.Name, c.AddGenerationPrompt, got, c.SmolVLM2)
		}
	}
}

// TestQwen3ChatPromptCase renders the conversation of the chat-prompt case in
// qwen3/cases.json and checks both the text and its ids.
func TestQwen3ChatPromptCase(t *testing.T) {
	t.Parallel()
	msgs := []Message{
		{Role: "system", Content: "You are Qwen, a helpful assistant. Answer concisely."},
		{Role: "user", Content: "What is the capital of France?"},
		{Role: "assistant", Content: "The capital of France is Paris."},
		{Role: "user", Content: "那么德国的首都呢？ Answer in Chinese and English."},
	}
	text := RenderQwen3(msgs, TemplateOptions{AddGenerationPrompt: true, Think: true})
	var want *testCase
	for _, c := range readCases(t, "testdata/qwen3/cases.json") {
		if c.Text == text {
			want = &c
			break
		}
	}
	if want == nil {
		t.Fatalf("rendered prompt is not the chat-prompt case:\n%q", text)
	}
	tok := qwen3(t)
	ids := tok.Encode(text)
	if !slices.Equal(ids, want.IDs) {
		t.Fatalf("ids:\n got %v\nwant %v", ids, want.IDs)
	}
	imStart, _ := tok.TokenID(Qwen3IMStart)
	if n := strings.Count(text, Qwen3IMStart); n != 5 || slices.Index(ids, imStart) != 0 {
		t.Fatalf("want 5 <|im_start|> and one first, got %d, first at %d", n, slices.Index(ids, imStart))
	}
	// Thinking off adds exactly the empty think block.
	off := RenderQwen3(msgs, TemplateOptions{AddGenerationPrompt: true})
	if off != text+"<think>\n\n</think>\n\n" {
		t.Fatalf("thinking off: %q", off[len(text)-20:])
	}
}

func TestQwen3ReasoningField(t *testing.T) {
	t.Parallel()
	msgs := []Message{
		{Role: "user", Content: "q"},
		{Role: "assistant", Content: "answer", Reasoning: "\nsteps\n"},
	}
	got := RenderQwen3(msgs, TemplateOptions{})
	want := "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\nsteps\n</think>\n\nanswer<|im_end|>\n"
	if got != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	// Before the last query the thinking is dropped.
	msgs = append(msgs, Message{Role: "user", Content: "next"})
	got = RenderQwen3(msgs, TemplateOptions{})
	if strings.Contains(got, "steps") {
		t.Fatalf("old reasoning kept: %q", got)
	}
}

func TestSmolVLM2ImageRuns(t *testing.T) {
	t.Parallel()
	text := RenderSmolVLM2([]Message{{Role: "user", Content: "What is this?", Images: 2}}, TemplateOptions{AddGenerationPrompt: true, ImageTokens: 3})
	want := "<|im_start|>User:" +
		"<fake_token_around_image><global-img><image><image><image><fake_token_around_image>" +
		"<fake_token_around_image><global-img><image><image><image><fake_token_around_image>" +
		"What is this?<end_of_utterance>\nAssistant:"
	if text != want {
		t.Fatalf("got %q\nwant %q", text, want)
	}
	ids := []int{1, 7, 7, 7, 2, 7, 3, 7, 7}
	got := ImageRuns(ids, 7)
	if !slices.Equal(got, [][2]int{{1, 4}, {5, 6}, {7, 9}}) {
		t.Fatalf("runs %v", got)
	}
	if ImageRuns([]int{1, 2}, 7) != nil {
		t.Fatal("runs without image ids")
	}
}
