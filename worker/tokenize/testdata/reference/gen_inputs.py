#!/usr/bin/env python3
"""Writes the inputs of ../qwen3/extra_cases.json.gz and ../clip/extra_cases.json.gz
as JSON lines {"text": ...} on stdout: 350 long or pathological strings (seed 7)
followed by random mixes of scripts, whitespace, contractions, combining marks,
emoji and special tokens (seed 2). The ids come from the Hugging Face tokenizers
library (Rust, npm tokenizers@0.23.2) through encode.js; see README.md.
"""
import json, random

random.seed(7)
out = []
words = ["supercalifragilistic", "aaaa", "ab", "the", "ünïcödé", "中文", "😀", " ", "\n", "\t", "'s", "ß", "İ", "x", "0", "  \n  ", "é", "e\u0301"]
for i in range(300):
    n = random.randint(50, 400)
    out.append("".join(random.choice(words) if random.random() < 0.3 else random.choice("abcdefghij") for _ in range(n)))
for c in "a", "ab", "abc", "aé", "中", "😀", " ", "\n", "0", "'":
    for n in (95, 96, 97, 200, 1000):
        out.append(c * n)

random.seed(2)
pools = [
  "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
  "0123456789", " ", "  ", "\t", "\n", "\r\n", "\r", "\x0b\x0c", "\u00a0", "\u0085", "\u2028\u2029", "\u3000", "\u1680\u2000\u200a\u202f\u205f",
  "'", "'s", "'S", "'re", "'RE", "'Ve", "'ll", "'LL", "'d", "'m", "'t", "ſ", "İ", "ı", "K", "ß", "Σ",
  ".,;:!?()[]{}<>-_=+*&^%$#@~`|\\/\"", "…—–“”‘’«»", "€£¥₹₿", "½²³¼⅓", "٣٤٥", "०१२", "ⅠⅡⅢ", "①②",
  "你好世界中文测试", "こんにちはカタカナ", "한국어", "\u1100\u1161\u11a8", "Русский", "العربية", "עברית", "हिन्दी", "ελληνικά", "ไทย", "Tiếng Việt",
  "e\u0301", "a\u0308", "\u0301", "\u0323\u0307", "q\u0301", "A\u030a", "\u1e9b\u0323",
  "😀", "👍🏽", "👨\u200d👩\u200d👧", "🇯🇵", "🏳️\u200d🌈", "\u200b", "\u200c\u200d", "\ufeff", "\x00", "\x07", "\x1b", "\x7f", "\x1c\x1d\x1e\x1f",
  "𝔘𝔫𝔦", "𝕄𝕒", "𓀀", "𠜀", "\U000e0001", "\ufffd", "\uffff",
  "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>", "<|im_start", "<|startoftext|>", "<|ENDOFTEXT|>", "<", "|>",
  "http://x.y/z?a=1", "don't", "I'M", "it's", "0x1F", "3.14", "1,000",
  "ǅ", "ﬀ", "Ⅻ", "ꞵ", "ǈ",
]
for i in range(1000):
    k = random.randint(1, 12)
    out.append("".join(random.choice(pools) if random.random() < 0.5 else random.choice(random.choice(pools)) for _ in range(k)))
for s in out:
    print(json.dumps({"text": s}, ensure_ascii=False))
