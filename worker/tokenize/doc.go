// Package tokenize owns text ⇄ token-id conversion for kiln's models: the
// byte-level BPE of the Qwen3 family (read from a Hugging Face
// tokenizer.json), the CLIP BPE of Stable Diffusion 1.5 (vocab.json and
// merges.txt), the chat templates that turn messages into a prompt, and a
// streaming detokenizer that emits only whole UTF-8 characters.
//
// # Parity
//
// The ids are exactly those of the Hugging Face tokenizers library (Rust):
// testdata/ holds reference cases produced with it and every test run checks
// them. Nothing here is a port of that library; the pieces are small and
// written for speed:
//
//   - Qwen3: added tokens (<|im_start|>, <think>, ...) are cut out of the raw
//     text first, longest match first; the rest is NFC-normalized, split by a
//     hand-written matcher of the Qwen pre-tokenizer regex (with its \s+(?!\S)
//     lookahead), mapped to the GPT-2 byte alphabet and merged by rank.
//   - CLIP: NFC, lower case, split into letter runs, single digits and symbol
//     runs (white space dropped), BPE with the "</w>" end-of-word suffix,
//     <|startoftext|> and <|endoftext|> around, and the 77-token truncated and
//     padded form the text encoder takes.
//
// Pre-tokenizer regexes without a hand-written matcher run on regexp2, so
// other byte-level BPE files load too (Llama 3, DeepSeek-V3 and GPT-4o were
// checked against the reference). Files with components this package does
// not implement are refused with an error that names them.
//
// # Engine package
//
// tokenize imports no NATS and no wire schema; it is used by the LLM and
// Stable Diffusion engines and by the "kiln tokenize" command.
package tokenize
