package tokenize

import (
	"fmt"
	"strings"
)

// Message is one chat turn.
type Message struct {
	// Role is "system", "user", "assistant" or "tool".
	Role string
	// Content is the text of the turn. An assistant turn may hold its
	// thinking as "<think>...</think>answer", as the model wrote it.
	Content string
	// Reasoning is an assistant turn's thinking given apart from Content
	// (the template's reasoning_content); "" means none was given, and
	// Content is searched for a </think> instead.
	Reasoning string
	// Images is the number of images attached to the turn. They are placed
	// before the text (SmolVLM2); RenderQwen3 ignores it.
	Images int
}

// TemplateOptions controls how a chat is rendered.
type TemplateOptions struct {
	// AddGenerationPrompt ends the prompt with the opening of an assistant
	// turn, so the model writes the reply.
	AddGenerationPrompt bool
	// Think lets Qwen3 think before answering. False renders the template's
	// enable_thinking=false: an empty <think>\n\n</think>\n\n block after
	// the generation prompt. Only used with AddGenerationPrompt.
	Think bool
	// ImageTokens is the number of <image> placeholders per image (per
	// tile when split) in RenderSmolVLM2; 0 means SmolVLM2ImageTokens.
	ImageTokens int
	// ImageRows and ImageCols, when both are above 0, render every image as
	// the processor does for an image split into rows×cols tiles: one
	// <row_r_col_c> block per tile, a newline after each row, then the
	// global image.
	ImageRows, ImageCols int
}

// Qwen3 chat tokens.
const (
	Qwen3IMStart    = "<|im_start|>"
	Qwen3IMEnd      = "<|im_end|>"
	Qwen3EndText    = "<|endoftext|>"
	Qwen3ThinkStart = "<think>"
	Qwen3ThinkEnd   = "</think>"
)

// RenderQwen3 renders msgs with the chat template of the Qwen3 tokenizer
// (tokenizer_config.json, the version without tools), exactly as
// transformers' apply_chat_template(messages, tokenize=False,
// add_generation_prompt=..., enable_thinking=...) does:
//
//   - a first system message opens the prompt; later system messages are
//     ordinary turns;
//   - every turn is <|im_start|>role\n...<|im_end|>\n;
//   - assistant turns before the last user query lose their thinking (the
//     text up to </think>); those after it keep it in a <think> block;
//   - consecutive tool results are grouped in one user turn, each inside
//     <tool_response> tags.
func RenderQwen3(msgs []Message, opts TemplateOptions) string {
	var sb strings.Builder
	n := 0
	for _, m := range msgs {
		n += len(m.Content) + len(m.Reasoning) + 32
	}
	sb.Grow(n + 64)
	if len(msgs) > 0 && msgs[0].Role == "system" {
		sb.WriteString(Qwen3IMStart + "system\n" + msgs[0].Content + Qwen3IMEnd + "\n")
	}
	// The last user message that is not a tool response wrapped as user
	// text (the template's ns.last_query_index).
	lastQuery := len(msgs) - 1
	for i := len(msgs) - 1; i >= 0; i-- {
		m := msgs[i]
		if m.Role == "user" && !(strings.HasPrefix(m.Content, "<tool_response>") && strings.HasSuffix(m.Content, "</tool_response>")) {
			lastQuery = i
			break
		}
	}
	for i, m := range msgs {
		switch {
		case m.Role == "user" || (m.Role == "system" && i != 0):
			sb.WriteString(Qwen3IMStart + m.Role + "\n" + m.Content + Qwen3IMEnd + "\n")
		case m.Role == "assistant":
			content, reasoning := m.Content, m.Reasoning
			if reasoning == "" {
				if before, _, found := strings.Cut(content, Qwen3ThinkEnd); found {
					after := content[strings.LastIndex(content, Qwen3ThinkEnd)+len(Qwen3ThinkEnd):]
					content = strings.TrimLeft(after, "\n")
					before = strings.TrimRight(before, "\n")
					if k := strings.LastIndex(before, Qwen3ThinkStart); k >= 0 {
						before = before[k+len(Qwen3ThinkStart):]
					}
					reasoning = strings.TrimLeft(before, "\n")
				}
			}
			sb.WriteString(Qwen3IMStart + m.Role + "\n")
			if i > lastQuery && (i == len(msgs)-1 || reasoning != "") {
				sb.WriteString(Qwen3ThinkStart + "\n" + strings.Trim(reasoning, "\n") + "\n" + Qwen3ThinkEnd + "\n\n" + strings.TrimLeft(content, "\n"))
			} else {
				sb.WriteString(content)
			}
			sb.WriteString(Qwen3IMEnd + "\n")
		case m.Role == "tool":
			if i == 0 || msgs[i-1].Role != "tool" {
				sb.WriteString(Qwen3IMStart + "user")
			}
			sb.WriteString("\n<tool_response>\n" + m.Content + "\n</tool_response>")
			if i == len(msgs)-1 || msgs[i+1].Role != "tool" {
				sb.WriteString(Qwen3IMEnd + "\n")
			}
		}
	}
	if opts.AddGenerationPrompt {
		sb.WriteString(Qwen3IMStart + "assistant\n")
		if !opts.Think {
			sb.WriteString(Qwen3ThinkStart + "\n\n" + Qwen3ThinkEnd + "\n\n")
		}
	}
	return sb.String()
}

// SmolVLM2 chat and image tokens.
const (
	SmolVLM2ImageToken     = "<image>"
	SmolVLM2ImageWrap      = "<fake_token_around_image>"
	SmolVLM2GlobalImage    = "<global-img>"
	SmolVLM2EndOfUtterance = "<end_of_utterance>"
	// SmolVLM2ImageTokens is the number of <image> placeholders one 512×512
	// image takes (1024 patches, pixel shuffle 4×4).
	SmolVLM2ImageTokens = 64
)

// RenderSmolVLM2 renders msgs with the SmolVLM2 chat template and expands
// each image the way the Hugging Face processor does for an image that is
// not split into tiles:
//
//	<|im_start|>User:<fake_token_around_image><global-img><image>×64<fake_token_around_image>text<end_of_utterance>
//	Assistant:
//
// A turn's images come before its text; a turn that starts with an image has
// no space after the colon. The vision encoder's output replaces the rows of
// each run of <image> ids (see ImageRuns).
func RenderSmolVLM2(msgs []Message, opts TemplateOptions) string {
	per := opts.ImageTokens
	if per <= 0 {
		per = SmolVLM2ImageTokens
	}
	run := strings.Repeat(SmolVLM2ImageToken, per)
	image := SmolVLM2ImageWrap + SmolVLM2GlobalImage + run + SmolVLM2ImageWrap
	if opts.ImageRows > 0 && opts.ImageCols > 0 {
		var tiles strings.Builder
		for r := 1; r <= opts.ImageRows; r++ {
			for c := 1; c <= opts.ImageCols; c++ {
				fmt.Fprintf(&tiles, "%s<row_%d_col_%d>%s", SmolVLM2ImageWrap, r, c, run)
			}
			tiles.WriteString("\n")
		}
		image = tiles.String() + "\n" + image
	}
	var sb strings.Builder
	sb.WriteString(Qwen3IMStart)
	for _, m := range msgs {
		sb.WriteString(capitalize(m.Role))
		if m.Images > 0 {
			sb.WriteString(":")
		} else {
			sb.WriteString(": ")
		}
		for range m.Images {
			sb.WriteString(image)
		}
		sb.WriteString(m.Content)
		sb.WriteString(SmolVLM2EndOfUtterance + "\n")
	}
	if opts.AddGenerationPrompt {
		sb.WriteString("Assistant:")
	}
	return sb.String()
}

// capitalize is Jinja's capitalize filter: first character upper case, the
// rest lower case.
func capitalize(s string) string {
	if s == "" {
		return s
	}
	r := []rune(strings.ToLower(s))
	r[0] = []rune(strings.ToUpper(string(r[0])))[0]
	return string(r)
}

// ImageRuns returns the [start, end) index ranges of the runs of imageID in
// ids: the rows a vision encoder's output replaces.
func ImageRuns(ids []int, imageID int) [][2]int {
	var runs [][2]int
	for i := 0; i < len(ids); i++ {
		if ids[i] != imageID {
			continue
		}
		j := i
		for j < len(ids) && ids[j] == imageID {
			j++
		}
		runs = append(runs, [2]int{i, j})
		i = j
	}
	return runs
}
