// Package llm runs the Axera LLM packages (Qwen3 0.6B/1.7B/4B, and the same
// layout of Qwen2.5, Llama-style models and the text part of the VLMs) on an
// AX650N card: the package loader, the device-resident KV cache, prefill in
// 128-token chunks in the smallest shape group that fits, decode, sampling
// and a host-memory cache of recently seen prompt prefixes.
//
// # On the card
//
// Every decoder layer is one model with a decode shape group (one token,
// the whole context visible) and prefill shape groups (128 tokens, each
// with its own history capacity). [Load] binds the tensors of every layer
// and every group to buffers of its own: one K and one V cache per layer
// (context × kv_dim bf16, rows at absolute positions), one indices and one
// mask buffer shared by all layers, two hidden-state buffers the layers
// ping-pong through, and one K_cache_out/V_cache_out pair whose rows are
// copied device-to-device into the layer's cache at position × kv_dim
// right after the layer ran. The hidden state stays on the card from the
// embedding row to the post model; only the logits come back per token.
// One token or one prompt chunk is one trip to the device thread
// ([npu.Device.Do]); the decode loop allocates nothing.
//
// # Slots and the scheduler
//
// A model keeps [Options.Slots] K/V caches ("slots") and serves as many
// requests at once: each [Model.Generate] call owns a slot from its first
// prefill chunk to its last token, and one scheduler goroutine per model
// interleaves the running requests on the device thread round-robin —
// every decoding request one token per round, the oldest newcomer one
// prefill chunk (slots.go, sched.go; docs/llm.md "Slots").
//
// # Jobs
//
// [Model.Generate] runs one request from its token ids and streams the
// sampled tokens to a callback. Every request starts from a clean state:
// a mask that hides every cache row it did not compute or take over, no
// sampler history. Taken over are the rows of the longest common prefix
// with the tokens still on the card from the slot's previous request (or,
// copied on the card, another slot's) (the same
// tokens at the same positions give the same rows), or, when longer, rows
// from the prefix cache: the K/V rows of a prompt prefix the caller marks
// as cacheable (an installation's system prompt) are copied to host memory
// after the request and copied back when a later prompt starts with the
// same tokens, so only the new tokens are prefilled. It is a bounded LRU
// keyed by token ids.
//
// # Images
//
// A package whose vision encoder takes NHWC uint8 images ([Vision]) gets
// each request image encoded on the card; the encoder's rows replace the
// prompt rows of the placeholder tokens before the prefill.
//
// # Engine package
//
// llm imports no NATS and no wire schema; the chat adapter in package
// worker maps chat jobs to [Request] and back.
package llm
