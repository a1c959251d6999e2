#!/usr/bin/env python3
"""Renders the chat-template golden cases in cases.json.

Qwen3: the chat_template of ../qwen3/tokenizer_config.json, rendered with
jinja2 the way transformers' apply_chat_template does (sandboxed
environment, trim_blocks, lstrip_blocks, tojson). SmolVLM2: the default
SmolVLM chat template of transformers (processing_smolvlm.py), then every
<image> expanded as the processor does for an image that is not split
(_prompt_single_image with image_seq_len 64), or split into 2x3 tiles
(_prompt_split_image) in the cases that say so.

Run from this folder: python3 gen.py > cases.json
"""
import json
from jinja2.sandbox import ImmutableSandboxedEnvironment

env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False)
qwen = env.from_string(json.load(open("../qwen3/tokenizer_config.json"))["chat_template"])

SMOL = ("<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
        "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
        "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
        "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}"
        "{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
smol = env.from_string(SMOL)
IMAGE = "<fake_token_around_image><global-img>" + "<image>" * 64 + "<fake_token_around_image>"

cases = [
    ("single user", [("user", "Hello!")]),
    ("system and user", [("system", "You are a helpful assistant."), ("user", "Hi!")]),
    ("multi-turn", [
        ("system", "You are Qwen, a helpful assistant. Answer concisely."),
        ("user", "What is the capital of France?"),
        ("assistant", "The capital of France is Paris."),
        ("user", "那么德国的首都呢？ Answer in Chinese and English."),
    ]),
    ("history with thinking", [
        ("user", "2+2?"),
        ("assistant", "<think>\nSimple sum.\n</think>\n\n4"),
        ("user", "and 3+3?"),
        ("assistant", "<think>\n\n</think>\n\n6"),
        ("user", "thanks"),
    ]),
    ("last assistant keeps thinking", [
        ("user", "Why is the sky blue?"),
        ("assistant", "<think>\nRayleigh scattering.\n</think>\n\nBecause of Rayleigh scattering."),
    ]),
    ("assistant after last query without thinking", [
        ("user", "hi"),
        ("assistant", "hello"),
    ]),
    ("second system message", [
        ("system", "first"), ("user", "a"), ("system", "second"), ("user", "b"),
    ]),
    ("tool results", [
        ("user", "Weather in Paris?"),
        ("assistant", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"),
        ("tool", "{\"temp\": 21}"),
        ("tool", "{\"sky\": \"clear\"}"),
    ]),
    ("images", [("user", "Describe this image.", 1)]),
    ("two images and history", [
        ("system", "You are a vision assistant."),
        ("user", "Compare them.", 2),
        ("assistant", "The first is darker."),
        ("user", "And the colours?"),
    ]),
]

def split_image(rows, cols, seq=64):
    # transformers processing_smolvlm.py _prompt_split_image
    text = ""
    for n_h in range(rows):
        for n_w in range(cols):
            text += "<fake_token_around_image>" + f"<row_{n_h + 1}_col_{n_w + 1}>" + "<image>" * seq
        text += "\n"
    return text + "\n<fake_token_around_image><global-img>" + "<image>" * seq + "<fake_token_around_image>"

out = []
for name, msgs in cases:
    ms = []
    for m in msgs:
        ms.append({"role": m[0], "content": m[1], "images": m[2] if len(m) > 2 else 0})
    for gen in (False, True):
        for think in (None, False):
            qm = [{"role": m["role"], "content": m["content"]} for m in ms]
            kw = {"messages": qm, "add_generation_prompt": gen, "tools": None}
            if think is not None:
                kw["enable_thinking"] = think
            q = qwen.render(**kw)
            sm = [{"role": m["role"], "content": [{"type": "image"}] * m["images"] + [{"type": "text", "text": m["content"]}]} for m in ms]
            s = smol.render(messages=sm, add_generation_prompt=gen).replace("<image>", IMAGE)
            out.append({"name": name, "messages": ms, "add_generation_prompt": gen,
                        "think": think is None, "qwen3": q, "smolvlm2": s})
# SmolVLM2 with images split into tiles (2x3), generation prompt on.
for name, msgs in cases:
    ms = [{"role": m[0], "content": m[1], "images": m[2] if len(m) > 2 else 0} for m in msgs]
    if not any(m["images"] for m in ms):
        continue
    sm = [{"role": m["role"], "content": [{"type": "image"}] * m["images"] + [{"type": "text", "text": m["content"]}]} for m in ms]
    s = smol.render(messages=sm, add_generation_prompt=True).replace("<image>", "\0").replace("\0", split_image(2, 3))
    out.append({"name": name + " (split 2x3)", "messages": ms, "add_generation_prompt": True,
                "image_rows": 2, "image_cols": 3, "smolvlm2": s})

print(json.dumps(out, ensure_ascii=False, indent=1))
