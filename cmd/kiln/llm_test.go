package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/cardsim"
)

// kiln up on the simulated card serves the chat package under --models (an
// SD-less folder beside a broken package that no runtime claims), and kiln
// chat streams its reply: greedy by default, so the same prompt gives the
// same text, streamed and as JSON.
func TestUpServesChat(t *testing.T) {
	lib := cardsim.Library(t)
	models := t.TempDir()
	spec := cardsim.TinyQwen3()
	spec.Layers = 2
	spec.TokenizerDir = "../../worker/tokenize/testdata/qwen3"
	if err := cardsim.WriteLLMPackage(filepath.Join(models, "qwen3-tiny"), spec); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(models, "notes"), 0o755); err != nil {
		t.Fatal(err)
	}
	url := startUp(t, "--models", models, "--lib", lib, "--name", "shelf-card0").url
	st := waitStatus(t, url, oneReadyWorker(1))
	if m := st.Workers[0].Models[0]; m.Name != "qwen3-tiny" || m.Kind != "chat" {
		t.Fatalf("served model %+v", m)
	}

	code, streamed, stderr := kiln(t, t.Context(), "chat", "--nats", url, "--max-tokens", "10", "hi")
	if code != 0 || strings.TrimSpace(streamed) == "" {
		t.Fatalf("kiln chat: %d %q %q", code, streamed, stderr)
	}
	code, out, stderr := kiln(t, t.Context(), "chat", "--nats", url, "--json", "--max-tokens", "10", "hi")
	var res schema.Result
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil {
		t.Fatalf("kiln chat --json: %d %q %q", code, out, stderr)
	}
	if res.Status != schema.StatusOK || res.Text+"\n" != streamed || res.Usage.PromptTokens == 0 || res.Usage.CompletionTokens == 0 {
		t.Fatalf("result %+v, streamed %q", res, streamed)
	}
	if res.FinishReason != schema.FinishLength && res.FinishReason != schema.FinishStop {
		t.Fatalf("finish reason %q", res.FinishReason)
	}
}

// A chat package with a missing layer file stops kiln up with the file named.
func TestUpRefusesBrokenChatPackage(t *testing.T) {
	lib := cardsim.Library(t)
	models := t.TempDir()
	spec := cardsim.TinyQwen3()
	spec.Layers, spec.TokenizerDir = 2, "../../worker/tokenize/testdata/qwen3"
	dir := filepath.Join(models, "qwen3-tiny")
	if err := cardsim.WriteLLMPackage(dir, spec); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, spec.ModelDir, spec.LayerFile(1))); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	code, _, stderr := kiln(t, ctx, "up", "--listen", freeAddr(t), "--data", t.TempDir(), "--models", models, "--lib", lib, "--grace", "1s")
	if code == 0 || !strings.Contains(stderr, "qwen3_p128_l1_together.axmodel is missing") {
		t.Fatalf("kiln up: %d %q", code, stderr)
	}
}
