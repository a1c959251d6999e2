package tokenize_test

import (
	"fmt"
	"log"

	"github.com/kiln-project/kiln/worker/tokenize"
)

func Example() {
	tok, err := tokenize.LoadDir("testdata/qwen3") // tokenizer.json.gz + tokenizer_config.json
	if err != nil {
		log.Fatal(err)
	}
	prompt := tokenize.RenderQwen3([]tokenize.Message{
		{Role: "system", Content: "You are a helpful assistant."},
		{Role: "user", Content: "Hi!"},
	}, tokenize.TemplateOptions{AddGenerationPrompt: true}) // Think false: empty think block
	ids := tok.Encode(prompt)
	fmt.Printf("%q\n", prompt)
	fmt.Println(len(ids), ids[:3], tok.StopIDs())

	// Stream generated ids back to text; split characters are held back.
	d := tok.NewDetokenizer()
	for _, id := range tok.Encode("Grüße 🫠!") {
		fmt.Printf("%q ", d.Add(id))
	}
	fmt.Printf("%q\n", d.Flush())
	// Output:
	// "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
	// 25 [151644 8948 198] [151643 151645]
	// "Gr" "ü" "ße" " " "" "🫠" "!" ""
}

func ExampleCLIP_Encode77() {
	clip, err := tokenize.LoadCLIP("testdata/clip") // vocab.json.gz + merges.txt.gz
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(clip.Encode("A photo of a cat"))
	ids := clip.Encode77("A photo of a cat")
	fmt.Println(len(ids), ids[:8])
	// Output:
	// [49406 320 1125 539 320 2368 49407]
	// 77 [49406 320 1125 539 320 2368 49407 49407]
}
