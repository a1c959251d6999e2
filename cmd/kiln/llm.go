package main

// llmRuntime serves chat model packages (Qwen3 family) on the card. The LLM
// runtime is not in this build yet, so it recognises no package.
func llmRuntime() modelRuntime {
	return modelRuntime{name: "llm", detect: func(string) bool { return false }}
}
