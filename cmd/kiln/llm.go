package main

// NOTE to the engineer taking issue 5 (LLM runtime): your brief's last line
// "$(RULES)" stands for the shared rules in /tmp/rules2.md — read them now
// (git: commit only your own paths; deadline 21:35 UTC report; 2 shared cores;
// no go mod tidy). Remove this note when you replace the stub.

// llmRuntime serves chat model packages (Qwen3 family) on the card. The LLM
// runtime is not in this build yet, so it recognises no package.
func llmRuntime() modelRuntime {
	return modelRuntime{name: "llm", detect: func(string) bool { return false }}
}
