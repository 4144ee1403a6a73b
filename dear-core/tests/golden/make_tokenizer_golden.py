# Generates the tokenizer and chat-template golden fixtures under tests/golden/tokenizer/.
#
# Reference versions (pinned; the fixtures were generated with exactly these):
#   transformers 5.23.0, tokenizers 0.23.3, gguf 0.19.0, jinja2 3.1.6, numpy 2.4.6
#
# Run from anywhere with the reference environment:
#   /opt/refenv/bin/python dear-core/tests/golden/make_tokenizer_golden.py
#
# Inputs: the SmolLM2 GGUF fetched by `bash scripts/fetch-model.sh`
# (${DEAR_HOME:-$HOME/.cache/dear}/models/SmolLM2-135M-Instruct.Q4_1.gguf), and the Llama 3.x chat
# templates committed next to the fixtures (llama31_chat_template.jinja, llama32_chat_template.jinja).
# Everything else is synthesised here. The output is deterministic: running it twice gives the
# same bytes.
#
# Outputs (all small; the SmolLM2 tokenizer itself is not copied, the tests read it from the GGUF):
#   smollm2.json            ids/decodes of many strings with SmolLM2's GGUF tokenizer, and a chat render
#   tiny_llama_merges.gguf  synthetic sentencepiece-style (tokenizer.ggml.model = "llama") GGUF, with merges
#   tiny_llama_scores.gguf  the same vocabulary without merges (merges derived from scores)
#   tiny_gpt2.gguf          synthetic byte-level (tokenizer.ggml.model = "gpt2") GGUF, pre = "llama-bpe"
#   tiny_gguf.json          transformers' ids/decodes/special tokens for the three synthetic GGUFs
#   tiny_hf/                a Hugging Face tokenizer directory (save_pretrained of tiny_llama_scores)
#                           plus a generation_config.json with a list of EOS ids
#   tiny_hf.json            transformers' ids/decodes for tiny_hf/ loaded with AutoTokenizer
#   tiny_hf_llama2/         a Llama-2-style directory: sentencepiece tokenizer.json with the legacy
#                           normalizer, tokenizer_class LlamaTokenizerFast (transformers rebuilds it)
#   tiny_hf_llama2.json     transformers' ids/decodes for it, and for variants of its tokenizer_config
#   chat_templates.json     chat-template renders (jinja2 through transformers) of many cases

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import gguf
import jinja2
import tokenizers
import transformers
from gguf import GGUFWriter, TokenType
from transformers import AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.utils.chat_template_utils import render_jinja_template

PINNED = {"transformers": "5.23.0", "tokenizers": "0.23.3", "jinja2": "3.1.6"}
FOUND = {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__, "jinja2": jinja2.__version__}
if FOUND != PINNED:
    sys.exit(f"reference versions differ: expected {PINNED}, found {FOUND}")

OUT = Path(__file__).resolve().parent / "tokenizer"
OUT.mkdir(parents=True, exist_ok=True)
SMOL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def dump(name, data):
    with open(OUT / name, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
        f.write("\n")


# Strings covering the tokenizer's corner cases.
TEXTS = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "café",
    "naïve",
    "Ångström",
    "Crème brûlée à la française",
    "e\u0301 (decomposed) vs \u00e9",
    "日本語のテキスト",
    "中文",
    "한국어",
    "🙂",
    "👍🏽",
    "👨\u200d👩\u200d👧\u200d👦 family",
    "🇫🇷🇯🇵 flags",
    "❤️ heart",
    'fn main() { println!("hi"); }',
    "def f(x):\n\treturn x  # tab\n    if x:\n        pass\n",
    "a  b   c    d",
    "\t\ttabs\tinside",
    "line1\nline2\n\nline4\n",
    "windows\r\nnewlines\r\n",
    "  leading spaces",
    "trailing spaces  ",
    " ",
    "\n",
    "1234567",
    "3.14159",
    "-42 + 1e10 = 10000000000 - 42",
    "don't, I'll, we've, she's, they're, I'd, I'm",
    "DON'T SHOUT",
    "<|im_start|>user\nhi<|im_end|>",
    "<|endoftext|>",
    "a<|im_end|>b",
    "<|im_start|> spaced <|im_end|>",
    "zero\u200bwidth and\u00a0nbsp",
    "Mixed: Hello世界🌍 123 café\ttab\n",
]


def smollm2_home():
    home = os.environ.get("DEAR_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "dear")
    path = Path(home) / "models" / SMOL_NAME
    if not path.is_file():
        sys.exit(f"{path} not found: run `bash scripts/fetch-model.sh` first")
    return path


def encode_cases(tok, texts):
    cases = []
    for text in texts:
        with_special = tok(text)["input_ids"]
        plain = tok(text, add_special_tokens=False)["input_ids"]
        cases.append(
            {
                "text": text,
                "ids": with_special,
                "ids_no_special": plain,
                "decoded": tok.decode(with_special),
                "decoded_skip_special": tok.decode(with_special, skip_special_tokens=True),
            }
        )
    return cases


def special_facts(tok):
    return {
        "vocab_size": len(tok),
        "bos_token": tok.bos_token,
        "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token,
        "eos_token_id": tok.eos_token_id,
        "unk_token": tok.unk_token,
        "pad_token": tok.pad_token,
        "pad_token_id": tok.pad_token_id,
        "added_tokens": [
            {"id": index, "content": token.content, "special": token.special}
            for index, token in sorted(tok.added_tokens_decoder.items())
        ],
    }


def make_smollm2():
    path = smollm2_home()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    rendered = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert ids == tok(rendered, add_special_tokens=False)["input_ids"]
    data = {
        "model_file": SMOL_NAME,
        **special_facts(tok),
        "chat_template": tok.chat_template,
        "chat": {
            "messages": chat,
            "add_generation_prompt": True,
            "rendered": rendered,
            "ids": ids,
        },
        "cases": encode_cases(tok, TEXTS),
    }
    dump("smollm2.json", data)
    return tok.chat_template


# --- synthetic GGUFs ---------------------------------------------------------------------------

TINY_WORDS = ["hello", "world", "the", "cat", "sat", "on", "mat", "café", "naïve", "token", "izer", "is", "a", "test"]
TINY_TEMPLATE = "{% for m in messages %}{{ bos_token }}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n{% endfor %}"


def write_gguf(path, model, tokens, types, *, scores=None, merges=None, bos=None, eos=None, unk=None, pad=None,
               pre=None, add_bos=None, add_eos=None, chat_template=None):
    writer = GGUFWriter(str(path), "llama")
    # The few llama.* keys transformers reads to build a config for AutoTokenizer; no tensors needed.
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model(model)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if scores is not None:
        writer.add_token_scores(scores)
    if merges is not None:
        writer.add_token_merges(merges)
    for value, add in ((bos, writer.add_bos_token_id), (eos, writer.add_eos_token_id),
                       (unk, writer.add_unk_token_id), (pad, writer.add_pad_token_id)):
        if value is not None:
            add(value)
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    if add_eos is not None:
        writer.add_add_eos_token(add_eos)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def tiny_llama_vocab():
    chars = sorted(set("".join(TINY_WORDS)) | set("abcdefghijklmnopqrstuvwxyz") | set("HT123,.!'"))
    pieces = []
    for word in TINY_WORDS:
        spelled = "\u2581" + word
        for end in range(2, len(spelled) + 1):
            if spelled[:end] not in pieces:
                pieces.append(spelled[:end])
    for piece in ["ll", "llo", "or", "ld", "er", "iz", "izer", "en", "ke"]:
        if piece not in pieces:
            pieces.append(piece)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    scores = [0.0] * len(tokens)
    for rank, piece in enumerate(pieces):
        tokens.append(piece)
        types.append(TokenType.NORMAL)
        scores.append(-float(rank))
    for offset, char in enumerate(["\u2581"] + chars):
        tokens.append(char)
        types.append(TokenType.NORMAL)
        scores.append(-1000.0 - offset)
    tokens += ["<|eot|>", "<tool>", "<pad>"]
    types += [TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.CONTROL]
    scores += [0.0, 0.0, 0.0]
    vocab = set(tokens)
    # Merges in build order: each piece from its prefix and last character.
    merges = [f"{p[:-1]} {p[-1]}" for p in pieces if p[:-1] in vocab and p[-1] in vocab]
    return tokens, types, scores, merges


def tiny_gpt2_vocab():
    alphabet = bytes_to_unicode()
    tokens = [alphabet[b] for b in range(256)]
    types = [TokenType.NORMAL] * 256
    merges = []

    def add_word(word):
        spelled = "".join(alphabet[b] for b in word.encode("utf-8"))
        current = spelled[0]
        for char in spelled[1:]:
            merged = current + char
            if merged not in tokens:
                merges.append(f"{current} {char}")
                tokens.append(merged)
                types.append(TokenType.NORMAL)
            current = merged

    for word in [" hello", " world", "hello", " the", " cat", " café", "123", " is", " a", " test", "\n\n", "  "]:
        add_word(word)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<think>", "<｜odd｜>"]
    tokens += specials
    types += [TokenType.CONTROL, TokenType.CONTROL, TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.CONTROL]
    return tokens, types, merges


TINY_TEXTS = [
    "",
    "hello world",
    "Hello world",
    "the cat sat on the mat",
    "café naïve",
    "a test is a test!",
    "日本 🙂",
    "zzz QQQ",
    "  two leading spaces",
    "trailing  ",
    "line\n\nbreaks",
    "<s>hello</s>",
    "hi<|eot|>there",
    "<tool>x<pad>",
    "<unk>",
    "hello 123 world 4567",
    "<|begin_of_text|>hello<|eot_id|>",
    "<think>the</think>",
    "don't I'LL",
]


def make_tiny_ggufs():
    tokens, types, scores, merges = tiny_llama_vocab()
    write_gguf(OUT / "tiny_llama_merges.gguf", "llama", tokens, types, scores=scores, merges=merges,
               bos=1, eos=2, unk=0, add_bos=True, add_eos=True, chat_template=TINY_TEMPLATE)
    write_gguf(OUT / "tiny_llama_scores.gguf", "llama", tokens, types, scores=scores,
               bos=1, eos=2, unk=0, pad=tokens.index("<pad>"), chat_template=TINY_TEMPLATE)
    g_tokens, g_types, g_merges = tiny_gpt2_vocab()
    write_gguf(OUT / "tiny_gpt2.gguf", "gpt2", g_tokens, g_types, merges=g_merges, pre="llama-bpe",
               bos=g_tokens.index("<|begin_of_text|>"), eos=g_tokens.index("<|eot_id|>"), add_bos=True)

    result = {}
    for name in ["tiny_llama_merges.gguf", "tiny_llama_scores.gguf", "tiny_gpt2.gguf"]:
        tok = AutoTokenizer.from_pretrained(str(OUT), gguf_file=name)
        result[name] = {**special_facts(tok), "chat_template": tok.chat_template, "cases": encode_cases(tok, TINY_TEXTS)}
    dump("tiny_gguf.json", result)


def make_tiny_hf():
    hf_dir = OUT / "tiny_hf"
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    tok = AutoTokenizer.from_pretrained(str(OUT), gguf_file="tiny_llama_scores.gguf")
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        hf_dir.mkdir()
        for name in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
            shutil.copy(Path(tmp) / name, hf_dir / name)
    # Canonical formatting, so that the fixture does not depend on how save_pretrained pretty-prints.
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        data = json.loads((hf_dir / name).read_text(encoding="utf-8"))
        (hf_dir / name).write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    eot = tok.convert_tokens_to_ids("<|eot|>")
    (hf_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, eot]}, indent=1) + "\n")
    reloaded = AutoTokenizer.from_pretrained(str(hf_dir))
    data = {**special_facts(reloaded), "chat_template": reloaded.chat_template,
            "end_token_ids_extra": [2, eot], "cases": encode_cases(reloaded, TINY_TEXTS)}
    dump("tiny_hf.json", data)


LLAMA2_VARIANTS = {
    "as_committed": {},
    "legacy_false": {"legacy": False},
    "no_prefix_space": {"add_prefix_space": False},
}


def make_tiny_hf_llama2():
    hf_dir = OUT / "tiny_hf_llama2"
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    hf_dir.mkdir()
    tokenizer = json.loads((OUT / "tiny_hf" / "tokenizer.json").read_text(encoding="utf-8"))
    # The shape of Llama-2's tokenizer.json: the prefix space and the spaces come from a normalizer.
    tokenizer["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
    ]}
    tokenizer["pre_tokenizer"] = None
    tokenizer["model"]["unk_token"] = "<unk>"
    (hf_dir / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    added = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in tokenizer["added_tokens"]}
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": "<s>",
        "chat_template": "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'].strip() + ' [/INST]' }}{% else %}{{ ' ' + m['content'].strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
        "eos_token": "</s>",
        "legacy": True,
        "pad_token": None,
        "tokenizer_class": "LlamaTokenizerFast",
        "unk_token": "<unk>",
    }
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "llama", "eos_token_id": 2}, indent=1) + "\n")
    result = {"variants": {}}
    for name, change in LLAMA2_VARIANTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            for file in ["tokenizer.json", "config.json"]:
                shutil.copy(hf_dir / file, Path(tmp) / file)
            (Path(tmp) / "tokenizer_config.json").write_text(json.dumps({**config, **change}), encoding="utf-8")
            tok = AutoTokenizer.from_pretrained(tmp)
            assert type(tok).__name__ == "LlamaTokenizer", type(tok)
            result["variants"][name] = {"config_changes": change, **special_facts(tok), "chat_template": tok.chat_template,
                                        "cases": encode_cases(tok, TINY_TEXTS)}
    dump("tiny_hf_llama2.json", result)


# --- chat templates ----------------------------------------------------------------------------

def render(template, messages, add_generation_prompt, bos_token, eos_token, extra):
    extra = dict(extra)
    tools = extra.pop("tools", None)
    documents = extra.pop("documents", None)
    kwargs = {}
    if bos_token is not None:
        kwargs["bos_token"] = bos_token
    if eos_token is not None:
        kwargs["eos_token"] = eos_token
    kwargs.update(extra)
    rendered, _ = render_jinja_template(
        conversations=[messages], tools=tools, documents=documents, chat_template=template,
        add_generation_prompt=add_generation_prompt, **kwargs,
    )
    return rendered[0]


SYSTEM_CHAT = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Name a prime."},
    {"role": "assistant", "content": "7"},
    {"role": "user", "content": "Another one?"},
]
UNICODE_CHAT = [
    {"role": "user", "content": "  Ünïcödé — 日本語 🙂\n\nSecond paragraph.\n\tindented line  \n"},
]
SINGLE = [{"role": "user", "content": "What is the capital of France?"}]
# Keys in sorted order: the Rust side gets extra variables through serde_json, whose maps are
# sorted unless its `preserve_order` feature is on (see the README).
WEATHER_TOOL = {
    "function": {
        "description": "Get the current weather in a city.",
        "name": "get_weather",
        "parameters": {
            "properties": {"city": {"description": "The city, e.g. Paris", "type": "string"}},
            "required": ["city"],
            "type": "object",
        },
    },
    "type": "function",
}

MICRO_TEMPLATES = {
    "trim_lstrip_blocks": "{% for m in messages %}\n  {{ m.role }}: {{ m.content }}\n  {% if loop.last %}\n    (last)\n  {% endif %}\n{% endfor %}\nend\n",
    "whitespace_control": "A\n  {%- if true -%}\n  x  \n  {%- endif %}\nB {{- ' c ' -}} D\n{%+ if true %}kept{% endif %}\n",
    "comments": "{# a comment #}\n  {# indented comment #}\nA{# inline #}B\n{#- stripped -#}\n C\n",
    "string_escapes": "{{ 'a\\nb\\tc\\\\d\\'e\"f' }}|{{ \"q\\\"uote\" }}|{{ '\\u00e9\\x41' }}|{{ 'not\\q an escape' }}",
    "python_values": "{{ none }}|{{ true }}|{{ false }}|{{ 1.0 }}|{{ 2.5e-7 }}|{{ 1e20 }}|{{ 7 / 2 }}|{{ 7 // 2 }}|{{ 2 ** 10 }}|{{ 7 % 3 }}|{{ [1, 'a', none, true, 1.5] }}|{{ {'k': 'v', 'n': none} }}|{{ 'it\\'s' }}|{{ ['it\\'s'] }}",
    "tojson_default": "{{ data | tojson }}",
    "tojson_indent": "{{ data | tojson(indent=2) }}",
    "tojson_separators": "{{ data | tojson(separators=(',', ':')) }}",
    "tojson_sort_keys": "{{ {'b': 1, 'a': [true, none]} | tojson(sort_keys=true) }}",
    "tojson_ensure_ascii": "{{ data | tojson(ensure_ascii=true) }}",
    "tojson_scalars": "{{ 1 | tojson }}|{{ 1.0 | tojson }}|{{ 'x' | tojson }}|{{ none | tojson }}|{{ [] | tojson(indent=4) }}|{{ {} | tojson(indent=4) }}|{{ '</script>&' | tojson }}",
    "python_methods": "{{ messages[0].content.strip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'hello world'.title() }}|{{ 'abc'.startswith('a') }}|{{ 'abc'.endswith('bc') }}|{{ '  x '.lstrip() }}|{{ '  x '.rstrip() }}|{{ 'AbC'.lower() }}|{{ 'AbC'.upper() }}|{{ 'a-b-c'.replace('-', '+') }}|{{ 'hello'.capitalize() }}|{{ 'xyx'.strip('x') }}",
    "loop_controls": "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}",
    "namespace": "{% set ns = namespace(n=0, roles='') %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% set ns.roles = ns.roles + m.role[0] %}{% endfor %}{{ ns.n }} {{ ns.roles }}",
    "loop_variables": "{% for m in messages %}[{{ loop.index0 }} {{ loop.index }} {{ loop.first }} {{ loop.last }} {{ loop.length }} {{ loop.revindex0 }}]{% endfor %}",
    "slicing_and_ops": "{{ 'ab' * 2 }}|{{ 'a' ~ 'b' }}|{{ 'abc'[1:] }}|{{ 'abc'[-1] }}|{{ messages | length }}|{{ messages[1:] | length }}|{{ messages[-1].role }}|{{ 'yes' if messages else 'no' }}|{{ 3 in [1, 2, 3] }}|{{ 'b' in 'abc' }}",
    "undefined_and_none": "[{{ missing }}]|[{{ messages[0].missing }}]|{% if missing is defined %}d{% else %}u{% endif %}|{{ tools is none }}|{{ documents is none }}|{{ tools is defined }}|{{ add_generation_prompt }}",
    "dict_access": "{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}|{{ {'x': 1}.get('x') }}|{{ {'x': 1}.get('y', 'dflt') }}|{% for k, v in {'c': 3} | items %}{{ k }}{{ v }}{% endfor %}|{{ 'role' in messages[0] }}|{{ messages[0]['role'] }}",
    "filters": "{{ '  padded  ' | trim }}|{{ ['b', 'a'] | join(', ') }}|{{ ['x', 'code_interpreter', 'y'] | reject('equalto', 'code_interpreter') | join(',') }}|{{ 'abc' | upper }}|{{ [3, 1, 2] | sort | list }}|{{ messages | map(attribute='role') | join(' ') }}|{{ [1, 2, 3] | first }}{{ [1, 2, 3] | last }}|{{ 'x' | default('d') }}{{ missing | default('d') }}",
    "tests": "{{ 'x' is string }}{{ 1 is number }}{{ [1] is iterable }}{{ {'a': 1} is mapping }}{{ 'x' is mapping }}{{ none is none }}{{ 3 is odd }}{{ [] is sequence }}",
    "special_tokens": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}",
    "generation_block": "{% for m in messages %}{% if m.role == 'assistant' %}{%- generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}",
    "trailing_newline_single": "x\n",
    "trailing_newline_double": "x\n\n",
    "date_string": "{%- if not date_string is defined %}{%- set date_string = 'unset' %}{%- endif %}Today: {{ date_string }}",
    "raise_exception": "{% if messages[0].role != 'system' %}{{ raise_exception('Conversation must start with a system message!') }}{% endif %}ok",
    "set_block": "{% set x %}inner {{ messages[0].role }}{% endset %}[{{ x }}]",
    "macro": "{% macro greet(name) %}Hi {{ name }}!{% endmacro %}{{ greet(messages[0].role) }}",
}
MICRO_DATA = {"data": {"a": {"y": {}, "z": []}, "b": [1, 2.5, "é\"\\\n\t\u0001", None, True, -0.5], "c": "日本 🙂"}}


def make_chat_templates(smollm2_template):
    llama31 = (OUT / "llama31_chat_template.jinja").read_text(encoding="utf-8")
    llama32 = (OUT / "llama32_chat_template.jinja").read_text(encoding="utf-8")
    templates = {"smollm2": smollm2_template, "llama31": "@llama31_chat_template.jinja",
                 "llama32": "@llama32_chat_template.jinja", **MICRO_TEMPLATES}
    sources = {"smollm2": smollm2_template, "llama31": llama31, "llama32": llama32, **MICRO_TEMPLATES}
    llama_tokens = ("<|begin_of_text|>", "<|eot_id|>")
    smol_tokens = ("<|im_start|>", "<|im_end|>")
    cases = []

    def case(name, template, messages, agp, tokens, extra=None):
        extra = extra or {}
        entry = {"name": name, "template": template, "bos_token": tokens[0], "eos_token": tokens[1],
                 "messages": messages, "add_generation_prompt": agp, "extra": extra}
        try:
            entry["expected"] = render(sources[template], messages, agp, tokens[0], tokens[1], extra)
        except jinja2.exceptions.TemplateError as err:
            entry["error"] = str(err)
        cases.append(entry)

    for agp in (True, False):
        suffix = "gen" if agp else "nogen"
        case(f"smollm2_single_{suffix}", "smollm2", SINGLE, agp, smol_tokens)
        case(f"smollm2_system_{suffix}", "smollm2", SYSTEM_CHAT, agp, smol_tokens)
        case(f"smollm2_unicode_{suffix}", "smollm2", UNICODE_CHAT, agp, smol_tokens)
        for llama in ("llama31", "llama32"):
            date = {"date_string": "26 Jul 2024"}
            case(f"{llama}_single_{suffix}", llama, SINGLE, agp, llama_tokens, date)
            case(f"{llama}_system_{suffix}", llama, SYSTEM_CHAT, agp, llama_tokens, date)
            case(f"{llama}_unicode_{suffix}", llama, UNICODE_CHAT, agp, llama_tokens, date)
    case("llama31_other_date", "llama31", SINGLE, True, llama_tokens, {"date_string": "01 Jan 2025"})
    case("llama31_default_date", "llama31", SINGLE, True, llama_tokens)
    case("llama31_tools_in_user_message", "llama31", SYSTEM_CHAT, True, llama_tokens,
         {"date_string": "26 Jul 2024", "tools": [WEATHER_TOOL]})
    case("llama31_tools_in_system", "llama31", SINGLE, True, llama_tokens,
         {"date_string": "26 Jul 2024", "tools": [WEATHER_TOOL], "tools_in_user_message": False})
    case("llama31_builtin_tools", "llama31", SINGLE, True, llama_tokens,
         {"date_string": "26 Jul 2024", "builtin_tools": ["brave_search", "code_interpreter", "wolfram_alpha"]})
    case("llama31_tools_without_user_message", "llama31", [SYSTEM_CHAT[0]], True, llama_tokens,
         {"date_string": "26 Jul 2024", "tools": [WEATHER_TOOL]})
    case("llama32_tools_in_user_message", "llama32", SINGLE, True, llama_tokens,
         {"date_string": "03 Feb 2025", "tools": [WEATHER_TOOL]})
    for name in MICRO_TEMPLATES:
        extra = dict(MICRO_DATA) if name.startswith("tojson") else {}
        if name == "date_string":
            case(name + "_given", name, SYSTEM_CHAT, True, ("<s>", "</s>"), {"date_string": "5 May 2025"})
        case(name, name, SYSTEM_CHAT, False, ("<s>", "</s>"), extra)
    case("raise_exception_passes", "raise_exception", SYSTEM_CHAT[:1], False, ("<s>", "</s>"))
    case("raise_exception_user_first", "raise_exception", SINGLE, False, ("<s>", "</s>"))

    dump("chat_templates.json", {"templates": templates, "cases": cases})


def main():
    smollm2_template = make_smollm2()
    make_tiny_ggufs()
    make_tiny_hf()
    make_tiny_hf_llama2()
    make_chat_templates(smollm2_template)


if __name__ == "__main__":
    main()
