#!/usr/bin/env python3
"""Generate the listwise (DeAR stage 2) prompt goldens under tests/golden/listwise/.

Run from anywhere with the pinned reference environment (requirements.txt):

    /opt/refenv/bin/python dear-core/tests/golden/make_listwise_golden.py

It needs the default model (`bash scripts/fetch-model.sh`; `DEAR_HOME` moves it) and the
Llama-3.1 chat template committed at tests/golden/tokenizer/llama31_chat_template.jinja.
The output is deterministic (greedy decoding in float32 on the CPU, JSON with sorted keys):
a rerun rewrites byte-identical files.

The prompt builders below re-implement, line for line, the reference code:

* `rankllm` -- DataScienceUIBK/DeAR-Reranking, commit 7d81b3504dff7900d5eedd15c3f69bb836910b46:
  - listwise_rerank/prompts.py: SYSTEM_PROMPT, prefix_messages(), post_prompt(),
    build_messages() (passage = hit["content"].replace("Title: Content: ", "").strip(), then
    the first 300 whitespace-separated words joined by single spaces; 1-based ids; no other
    cleaning: unlike castorini/rank_llm, "[N]" inside passages is NOT rewritten to "(N)" and
    ftfy's fix_text is not applied);
  - convert_trec_to_json.py: hit["content"] = "Title: {title} Content: {text}" when the
    document has a title field (even an empty one), else its "contents"; then
    " ".join(content.split());
  - listwise_rerank/pipeline.py + main.py: build_messages(query, hits, 300), the query as is;
  - listwise_rerank/clients.py HFClient._render: apply_chat_template(messages,
    add_generation_prompt=True, tokenize=False).
* `plain` -- the same repository's README.md ("Reranking with Listwise Model"),
  create_listwise_prompt(query, documents, max_length=300): 0-based ids, each document cut to
  its first 300 characters (Python code points), one prompt string. The README tokenizes it
  directly; here it is sent as a single user message through the chat template, as the Rust
  side does.

Note: HFClient.chat then runs `tokenizer(prompt)` (add_special_tokens=True); for Llama-3 that
adds a second <|begin_of_text|>. The goldens tokenize the rendered text WITHOUT special tokens,
as apply_chat_template(tokenize=True) does; `client_ids_equal` records whether the client's
call gives the same ids for SmolLM2 (its GGUF tokenizer adds no BOS).

listwise/smollm2.json (sorted keys):
    reference        {torch, transformers, tokenizers, jinja2}
    model_file       "SmolLM2-135M-Instruct.Q4_1.gguf"
    max_words        300 (rankllm), max_chars 300 (plain)
    cases            [{name, query, passages [{title (str|null), text}], contents [str]
                       (hit["content"] as convert_trec_to_json builds it),
                       rankllm {messages [{role, content}], rendered, ids, client_ids_equal},
                       plain {same}}]
    greedy           {case "five", prompt "rankllm", max_new_tokens 48, tokens [int],
                      text (decode, skip_special_tokens), text_with_special, finished_by_eos,
                      min_margin (min top1-top2 logit over the steps), margins [float]}
    llama31          {case "three", prompt "rankllm", bos_token, eos_token, date_string,
                      rendered (tokenize=False, add_generation_prompt=True)}
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jinja2  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.utils.chat_template_utils import render_jinja_template  # noqa: E402

PINNED = {"transformers": "5.23.0", "tokenizers": "0.23.3", "jinja2": "3.1.6", "torch": "2.15.0"}
FOUND = {
    "transformers": transformers.__version__,
    "tokenizers": tokenizers.__version__,
    "jinja2": jinja2.__version__,
    "torch": torch.__version__.split("+")[0],
}
if FOUND != PINNED:
    sys.exit(f"reference versions differ: expected {PINNED}, found {FOUND}")

HERE = Path(__file__).resolve().parent
OUT = HERE / "listwise"
SMOL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_WORDS = 300
MAX_CHARS = 300
MAX_NEW_TOKENS = 48

# --- DeAR-Reranking listwise_rerank/prompts.py (verbatim strings) ----------------------------

SYSTEM_PROMPT = "You are RankLLM, an assistant that ranks passages by relevance to the query."


def prefix_messages(query, num):
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"I will provide you with {num} passages, each indicated by number identifier [].\nRank the passages based on their relevance to query: {query}."},
        {"role": "assistant", "content": "Okay, please provide the passages."},
    ]


def post_prompt(query, num):
    return (
        f"Search Query: {query}.\n"
        f"Rank the {num} passages above based on their relevance to the search query. "
        "The passages should be listed in descending order using identifiers.\n"
        "Please follow the steps below:\n"
        "Step 1. List the information requirements to answer the query.\n"
        "Step 2. For each requirement, find the passages containing that information.\n"
        "Step 3. Rank passages that best cover clear and diverse information. Include all passages.\n"
        "Output format strictly: [2] > [1] > [3] ... Only output the ranking using identifiers; no explanations."
    )


def build_messages(query, hits, max_tokens_per_passage=MAX_WORDS):
    msgs = prefix_messages(query, len(hits))
    for i, hit in enumerate(hits, start=1):
        text = hit["content"].replace("Title: Content: ", "").strip()
        snippet = " ".join(text.split()[:max_tokens_per_passage])
        msgs.append({"role": "user", "content": f"[{i}] {snippet}"})
        msgs.append({"role": "assistant", "content": f"Received passage [{i}]."})
    msgs.append({"role": "user", "content": post_prompt(query, len(hits))})
    return msgs


# --- DeAR-Reranking convert_trec_to_json.py (hit["content"]) ---------------------------------

def hit_content(title, text):
    if title is not None:  # `"title" in content_json`
        content = f"Title: {title} Content: {text}"
    else:
        content = text
    return " ".join(content.split())


def passage_text(title, text):
    """What the Rust side builds from a Passage (`listwise_passage_text`): the title prefix only
    for a title with some non-whitespace (as castorini/rank_llm's convert_doc_to_prompt_content
    tests `doc["title"]`), then whitespace runs collapsed. For the rankllm prompt this gives the
    same messages as hit_content (asserted in main): DeAR's build_messages deletes the
    "Title: Content: " that an empty title leaves. The plain prompt then does not show it."""
    if title is not None and title.split():
        content = f"Title: {title} Content: {text}"
    else:
        content = text
    return " ".join(content.split())


# --- DeAR-Reranking README.md, "Reranking with Listwise Model" --------------------------------

def create_listwise_prompt(query, documents, max_length=MAX_CHARS):
    """Create prompt for listwise reranking."""
    doc_list = "\n".join([f"[{i}] {doc[:max_length]}" for i, doc in enumerate(documents)])
    prompt = f"""I will provide you with {len(documents)} passages, each indicated by a number identifier [].
Rank the passages based on their relevance to the search query: {query}.

{doc_list}

Search Query: {query}.
Rank the passages above based on their relevance to the search query. Output the ranking as a list of numbers."""
    return prompt


def plain_messages(query, documents):
    return [{"role": "user", "content": create_listwise_prompt(query, documents)}]


# --- cases -----------------------------------------------------------------------------------

# The README's example (query and the five documents, no titles).
FIVE_QUERY = "When did Thomas Edison invent the light bulb?"
FIVE = [
    (None, "Lightning strike at Seoul National University"),
    (None, "Thomas Edison tried to invent a device for car but failed"),
    (None, "Coffee is good for diet"),
    (None, "KEPCO fixes light problems"),
    (None, "Thomas Edison invented the light bulb in 1879"),
]


def long_text():
    # 330 words with irregular whitespace, bracketed numbers (kept as is by DeAR), and non-ASCII
    # letters before the 300th character (plain cuts code points, not bytes).
    words = []
    for i in range(330):
        word = ["Édison", "filament", "carbon", "[2]", "bamboo", "vacuum", "Menlo", "Park", "lamp", "patent", "1880"][i % 11]
        words.append(f"{word}{i}" if i % 7 == 3 else word)
    seps = [" ", "  ", "\n", "\t", " \u00a0", " "]
    out = "  "
    for i, word in enumerate(words):
        out += word + (seps[i % len(seps)] if i + 1 < len(words) else "\n")
    return out


THREE_QUERY = "  how does a   vacuum light bulb work  "
THREE = [
    ("Incandescent light bulb", "An incandescent bulb heats a filament [1] until it glows; the glass keeps a vacuum."),
    ("", "Empty title: the reference drops the whole \"Title: Content: \" prefix."),
    ("Menlo Park", long_text()),
]


def render_llama31(messages):
    template = (HERE / "tokenizer" / "llama31_chat_template.jinja").read_text(encoding="utf-8")
    rendered, _ = render_jinja_template(
        conversations=[messages], tools=None, documents=None, chat_template=template,
        add_generation_prompt=True, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        date_string="26 Jul 2024",
    )
    return rendered[0]


def smollm2_path():
    home = os.environ.get("DEAR_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "dear")
    path = Path(home) / "models" / SMOL_NAME
    if not path.is_file():
        sys.exit(f"{path} not found: run `bash scripts/fetch-model.sh` first")
    return path


def prompt_entry(tok, messages):
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert ids == tok(rendered, add_special_tokens=False)["input_ids"]
    client_ids = tok(rendered)["input_ids"]  # what DeAR's HFClient.chat feeds the model
    return {"messages": messages, "rendered": rendered, "ids": ids, "client_ids_equal": client_ids == ids}


def greedy(model, tok, ids):
    input_ids = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False, output_logits=True, return_dict_in_generate=True,
        )
    tokens = out.sequences[0, len(ids):].tolist()
    margins = []
    for step, logits in enumerate(out.logits):
        top2 = torch.topk(logits[0].float(), 2)
        assert int(top2.indices[0]) == tokens[step], "generate() did not pick the argmax"
        margins.append(float(top2.values[0] - top2.values[1]))
    # One cache-free forward over prompt + continuation must pick the same argmax everywhere.
    with torch.no_grad():
        full = model(torch.tensor([list(ids) + tokens[:-1]])).logits[0, len(ids) - 1:]
    assert full.argmax(-1).tolist() == tokens, "cache-free forward disagrees with generate()"
    eos = tok.eos_token_id
    return {
        "tokens": tokens,
        "text": tok.decode(tokens, skip_special_tokens=True),
        "text_with_special": tok.decode(tokens),
        "finished_by_eos": bool(tokens and tokens[-1] == eos),
        "margins": [round(m, 4) for m in margins],
        "min_margin": round(min(margins), 4),
    }


def main():
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    path = smollm2_path()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.eval()

    cases = []
    for name, query, passages in (("five", FIVE_QUERY, FIVE), ("three", THREE_QUERY, THREE)):
        contents = [passage_text(title, text) for title, text in passages]
        rankllm = build_messages(query, [{"content": c} for c in contents])
        reference_hits = [{"content": hit_content(title, text)} for title, text in passages]
        assert rankllm == build_messages(query, reference_hits), "passage_text != convert_trec_to_json"
        plain = plain_messages(query, contents)
        cases.append({
            "name": name,
            "query": query,
            "passages": [{"title": title, "text": text} for title, text in passages],
            "contents": contents,
            "rankllm": prompt_entry(tok, rankllm),
            "plain": prompt_entry(tok, plain),
        })
    # The long passage is cut: 300 words (rankllm) and 300 characters (plain).
    long_content = cases[1]["contents"][2]
    assert len(long_content.split()) > MAX_WORDS and len(long_content) > MAX_CHARS
    assert len(cases[1]["rankllm"]["messages"][7]["content"].split()) == MAX_WORDS + 1

    five = cases[0]
    data = {
        "reference": FOUND,
        "model_file": SMOL_NAME,
        "max_words": MAX_WORDS,
        "max_chars": MAX_CHARS,
        "cases": cases,
        "greedy": {"case": "five", "prompt": "rankllm", "max_new_tokens": MAX_NEW_TOKENS,
                   **greedy(model, tok, five["rankllm"]["ids"])},
        "llama31": {"case": "three", "prompt": "rankllm", "bos_token": "<|begin_of_text|>",
                    "eos_token": "<|eot_id|>", "date_string": "26 Jul 2024",
                    "rendered": render_llama31(cases[1]["rankllm"]["messages"])},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    target = OUT / "smollm2.json"
    with open(target, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1, sort_keys=True)
        f.write("\n")
    g = data["greedy"]
    print(f"wrote {target} ({target.stat().st_size} bytes); greedy {len(g['tokens'])} tokens, "
          f"min margin {g['min_margin']}, eos {g['finished_by_eos']}: {g['text']!r}")


if __name__ == "__main__":
    main()
