#!/usr/bin/env python3
"""Generate tiny Hugging Face Llama reference checkpoints + expected outputs.

Run from the repository root with the pinned reference environment:

    /opt/refenv/bin/python dear-core/tests/golden/make_golden.py

(see requirements.txt / README.md for creating that venv). Output goes to
dear-core/tests/golden/models/<fixture>/. The script is fully deterministic:
rerunning it rewrites byte-identical files (weights come from numpy
PCG64 generators with fixed seeds, the BPE tokenizer is trained on a fixed
corpus, JSON is written with sorted keys).

Every fixture directory contains
    config.json, generation_config.json, model.safetensors (or shards +
    model.safetensors.index.json), tokenizer.json, tokenizer_config.json,
    optionally chat_template.jinja, and expected.json.

expected.json (top level keys, all lists are parallel to "inputs"):
    fixture            str   fixture / directory name
    config_name        str   same as fixture (kept for the Rust tests)
    config_summary     obj   hidden_size, num_attention_heads, num_key_value_heads,
                             head_dim, num_hidden_layers, intermediate_size,
                             vocab_size, tie_word_embeddings, rope (dict),
                             attention_bias, mlp_bias, rms_norm_eps, weights_dtype
    seed               int   weight seed actually used (first that passed the margin checks)
    dtype_note         str
    hidden_note        str   what last_hidden is
    greedy_note        str   how greedy was produced
    reference          obj   {torch, transformers, tokenizers, safetensors}
    inputs             [[int]]      3 token-id sequences (len 3, 9, 17), first id = bos (1)
    last_logits        [[float]]    model(input_ids).logits[0, -1], len = vocab_size
    last_hidden        [[float]]    hidden_states[-1][0, -1] (after final RMSNorm), len = hidden_size
    greedy             [[int]]      8 greedily generated ids per input
    greedy_min_margin  [float]      min over the 8 steps of (top1 - top2) raw logit
    bos_token_id, eos_token_id, pad_token_id   int   1, 2, 0
    text_cases         (tiny-gqa only) list; first 3 entries
                       {text, ids (tok(text), bos prepended), ids_no_special
                        (add_special_tokens=False), decoded_skip_special}, last entry
                       {chat_messages, add_generation_prompt: true, rendered
                        (apply_chat_template tokenize=False), ids (tokenize=True), note}
Floats are float32 values written with the shortest repr that round-trips
to the same f32 (so parsing as f32 is exact).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

EXPECTED_VERSIONS = {
    "torch": "2.15.0",
    "transformers": "5.23.0",
    "tokenizers": "0.23.3",
    "safetensors": "0.8.0",
    "numpy": "2.4.6",
}

ROOT = Path(__file__).resolve().parent
MODELS = ROOT / "models"

TOKENIZER_VOCAB = 384
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
INPUT_LENGTHS = [3, 9, 17]
NEW_TOKENS = 8
MIN_DISTINCT = 4  # each greedy continuation must contain >= 4 distinct ids
MIN_MARGIN = 5e-3  # required (brief asks > 1e-3; stricter for safety) top1-top2 gap (raw logits) at every greedy step

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A reranker scores each candidate document against the query.",
    "Dense retrieval finds passages that are semantically similar to the question.",
    "Large language models can be distilled into smaller rerankers.",
    "The teacher model produces soft labels for every query and passage pair.",
    "Listwise reranking looks at many documents at the same time.",
    "Pointwise scoring reads one document and outputs a single relevance score.",
    "Search engines use an inverted index to find matching terms quickly.",
    "BM25 is a strong lexical baseline for first stage retrieval.",
    "The attention mechanism lets every token look at the previous tokens.",
    "Rotary position embeddings rotate query and key vectors by position.",
    "Grouped query attention shares key and value heads between query heads.",
    "Low rank adapters add small trainable matrices to frozen weights.",
    "Tokenizers split text into subword units before the model sees it.",
    "Byte level encoding means that every string can be represented.",
    "Hello there, how are you doing today?",
    "What is the capital of France? Paris is the capital of France.",
    "Rust programs are fast, safe and fun to write.",
    "Candle is a minimalist machine learning framework written in Rust.",
    "The model predicts the next token given all the previous ones.",
    "Greedy decoding always chooses the most likely next token.",
    "Relevance judgments tell us which documents answer the query.",
    "Normalized discounted cumulative gain rewards relevant results at the top.",
    "A query is a short piece of text that describes an information need.",
    "Documents can be long, so they are often truncated to a fixed length.",
    "Please rank the following passages by how well they answer the question.",
    "The weather today is sunny with a light breeze from the west.",
    "Numbers like 1, 2, 3, 42 and 2024 also appear in text.",
    "Chat templates wrap user and assistant messages with special markers.",
    "The system prompt tells the assistant how it should behave.",
    "Caches store keys and values so that generation does not recompute them.",
    "Floating point numbers in bfloat16 have eight exponent bits.",
    "Safetensors files store tensors with a small JSON header.",
    "Sharded checkpoints split the weights across several files.",
    "An index file maps every tensor name to the shard that holds it.",
    "Unit tests compare the Rust outputs with the Python reference outputs.",
]

TEXT_CASES = [
    "hello there",
    "Query: what is DeAR? naïve café ☕ 2024",
    "<|im_start|>user\nrank these passages<|im_end|>\n",
]


# --------------------------------------------------------------------------- utils


def check_versions() -> None:
    got = {
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }
    bad = {k: (got[k], v) for k, v in EXPECTED_VERSIONS.items() if got[k] != v}
    if bad:
        sys.exit(f"reference library versions differ from requirements.txt: {bad}")


def f32_list(t: torch.Tensor) -> list[float]:
    """float32 values as Python floats whose repr round-trips to the same f32."""
    arr = t.detach().to(torch.float32).cpu().numpy().astype(np.float32).ravel()
    out = []
    for v in arr:
        fv = float(str(v))  # numpy str(float32) = shortest f32 round-trip repr
        assert np.float32(fv) == v
        out.append(fv)
    return out


def dump_json(obj, path: Path) -> None:
    """JSON with sorted keys, indent 1, but lists of scalars on a single line."""

    def enc(o, ind):
        pad = " " * ind
        if isinstance(o, dict):
            if not o:
                return "{}"
            items = [f'{pad} {json.dumps(k)}: {enc(o[k], ind + 1)}' for k in sorted(o)]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(o, list):
            if all(not isinstance(x, (dict, list)) for x in o):
                return "[" + ", ".join(json.dumps(x) for x in o) + "]"
            items = [f"{pad} {enc(x, ind + 1)}" for x in o]
            return "[\n" + ",\n".join(items) + "\n" + pad + "]"
        if isinstance(o, float):
            assert math.isfinite(o)
        return json.dumps(o, ensure_ascii=False)

    path.write_text(enc(obj, 0) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    assert tok.get_vocab_size() == TOKENIZER_VOCAB, tok.get_vocab_size()
    return tok


def make_hf_tokenizer(raw: Tokenizer, chat_template: str | None) -> PreTrainedTokenizerFast:
    # add_bos_token=True: transformers installs a TemplateProcessing post-processor
    # "<|im_start|> $A" that ends up in tokenizer.json, so tok(text) prepends bos
    # (id 1) and tok(text, add_special_tokens=False) does not (Llama-3 style).
    hf = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(raw.to_str()),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        add_bos_token=True,
        add_eos_token=False,
        chat_template=chat_template,
        model_max_length=128,
        clean_up_tokenization_spaces=False,
    )
    assert hf.bos_token_id == BOS_ID and hf.eos_token_id == EOS_ID and hf.pad_token_id == PAD_ID
    return hf


# --------------------------------------------------------------------------- model


def init_weights(model: LlamaForCausalLM, seed: int, std: float) -> None:
    """Deterministic, larger-than-default init so logits are well separated."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied lm_head appears once
            shape = tuple(p.shape)
            if name.endswith("norm.weight"):
                v = 1.0 + 0.1 * rng.standard_normal(shape)
            elif name.endswith(".bias"):
                v = 0.05 * rng.standard_normal(shape)
            else:
                v = std * rng.standard_normal(shape)
            p.copy_(torch.from_numpy(v.astype(np.float32)))


def make_inputs(seed: int) -> list[list[int]]:
    rng = np.random.default_rng(10_000 + seed)
    out = []
    for n in INPUT_LENGTHS:
        ids = rng.integers(len(SPECIAL_TOKENS), TOKENIZER_VOCAB, size=n - 1)
        out.append([BOS_ID] + [int(x) for x in ids])
    return out


def load_f32(path: Path) -> LlamaForCausalLM:
    m = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def reference_outputs(model: LlamaForCausalLM, inputs: list[list[int]]) -> dict:
    """Forward + greedy. Returns dict of lists, plus min greedy margins."""
    cfg = model.config
    captured = {}
    hook = model.model.norm.register_forward_hook(lambda mod, a, out: captured.__setitem__("norm", out))
    res = {"last_logits": [], "last_hidden": [], "greedy": [], "greedy_min_margin": []}
    with torch.no_grad():
        for ids in inputs:
            x = torch.tensor([ids], dtype=torch.long)
            out = model(x, output_hidden_states=True, use_cache=False)
            logits = out.logits[0, -1]
            hs = out.hidden_states
            # transformers 5.23: hidden_states has num_layers + 1 entries and the
            # capture_outputs decorator (tie_last_hidden_states=True) REPLACES the
            # last entry with last_hidden_state, i.e. the output of the final
            # RMSNorm (model.model.norm) - not the raw output of the last decoder
            # layer as in some older versions. Verify both claims.
            assert len(hs) == cfg.num_hidden_layers + 1, len(hs)
            assert torch.equal(hs[-1], captured["norm"]), "hidden_states[-1] is not the final-norm output"
            assert torch.allclose(model.lm_head(hs[-1])[0, -1], logits, atol=1e-6, rtol=0)
            res["last_logits"].append(logits)
            res["last_hidden"].append(hs[-1][0, -1])

            # Pure greedy: argmax of the raw logits with a full recompute per step
            # (no cache, no logits processors), recording the top1-top2 margin.
            seq = list(ids)
            margins = []
            for _ in range(NEW_TOKENS):
                lg = model(torch.tensor([seq]), use_cache=False).logits[0, -1]
                top2 = torch.topk(lg, 2)
                margins.append(float(top2.values[0] - top2.values[1]))
                seq.append(int(top2.indices[0]))
            greedy = seq[len(ids):]

            # HF generate (with KV cache) must agree.
            gen = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                num_beams=1,
                pad_token_id=PAD_ID,
            )
            gen_ids = gen[0, len(ids):].tolist()
            res["greedy"].append(greedy)
            res["greedy_min_margin"].append(min(margins))
            res.setdefault("_gen", []).append(gen_ids)
    hook.remove()
    return res


def outputs_ok(res: dict) -> bool:
    for greedy, gen, m in zip(res["greedy"], res["_gen"], res["greedy_min_margin"]):
        # eos must not appear, so that "argmax until 8 tokens" and HF generate
        # (which would stop at / suppress eos) are the same thing.
        if m <= MIN_MARGIN or EOS_ID in greedy or greedy != gen:
            return False
        # avoid degenerate "same token 8 times" continuations (common with tied
        # embeddings), they would hide KV-cache / position bugs
        if len(set(greedy)) < MIN_DISTINCT:
            return False
    return True


def rope_summary(cfg_json: dict) -> dict:
    if "rope_parameters" in cfg_json:
        return {"form": "rope_parameters", **cfg_json["rope_parameters"]}
    return {"form": "classic", "rope_theta": cfg_json.get("rope_theta"), "rope_scaling": cfg_json.get("rope_scaling")}


# --------------------------------------------------------------------------- fixtures

BASE = dict(
    hidden_size=64,
    intermediate_size=128,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    pad_token_id=PAD_ID,
    initializer_range=0.02,
)

FIXTURES = [
    dict(
        name="tiny-gqa",
        seed=1000,
        std=0.15,
        config=dict(
            vocab_size=384,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        save_dtype=torch.float32,
        chat="tokenizer_config",
        text_cases=True,
    ),
    dict(
        name="tiny-llama3",
        seed=2000,
        std=0.15,
        config=dict(
            vocab_size=416,  # > tokenizer vocab (384): padded-vocab case
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=48,  # != hidden/heads (32)
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
        save_dtype=torch.float32,
        chat="jinja",
        classic_config=True,
    ),
    dict(
        name="tiny-bf16",
        seed=3000,
        std=0.15,
        config=dict(
            vocab_size=384,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        save_dtype=torch.bfloat16,
        chat="jinja",
    ),
    dict(
        name="tiny-sharded",
        seed=4000,
        std=0.15,
        config=dict(
            vocab_size=384,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        save_dtype=torch.float32,
        chat="jinja",
        max_shard_size="250KB",
    ),
    dict(
        name="tiny-bias",
        seed=5000,
        std=0.15,
        config=dict(
            vocab_size=384,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            attention_bias=True,
            mlp_bias=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        save_dtype=torch.float32,
        chat="jinja",
    ),
]


def llama3_inv_freq_reference(rp: dict, head_dim: int) -> torch.Tensor:
    """Independent re-implementation of the Llama 3.1 RoPE frequency scaling."""
    base, factor = rp["rope_theta"], rp["factor"]
    lo, hi, orig = rp["low_freq_factor"], rp["high_freq_factor"], rp["original_max_position_embeddings"]
    out = []
    for i in range(0, head_dim, 2):
        f = 1.0 / (base ** (i / head_dim))
        wavelen = 2 * math.pi / f
        if wavelen < orig / hi:
            out.append(f)
        elif wavelen > orig / lo:
            out.append(f / factor)
        else:
            smooth = (orig / wavelen - lo) / (hi - lo)
            out.append((1 - smooth) * f / factor + smooth * f)
    return torch.tensor(out, dtype=torch.float32)


def numpy_forward(model_dir: Path, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """From-scratch float64 Llama forward that only reads config.json + *.safetensors.

    This mirrors what the Rust implementation has to do (both config forms,
    tied embeddings, explicit head_dim, GQA, biases, llama3 RoPE) and is used to
    cross-check the transformers outputs written to expected.json.
    Returns (last-position logits, last-position final-norm hidden).
    """
    cfg = json.loads((model_dir / "config.json").read_text())
    w = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(f, "pt") as h:
            for k in h.keys():
                w[k] = h.get_tensor(k).to(torch.float64).numpy()
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or H // nh
    eps = cfg["rms_norm_eps"]
    if "rope_parameters" in cfg:
        rp = dict(cfg["rope_parameters"])
    else:
        rp = dict(cfg.get("rope_scaling") or {"rope_type": "default"})
        rp["rope_theta"] = cfg.get("rope_theta", 10000.0)
    rtype = rp.get("rope_type", rp.get("type", "default"))
    if rtype == "llama3":
        inv = llama3_inv_freq_reference(rp, hd).numpy().astype(np.float64)
    else:
        assert rtype == "default", rtype
        inv = 1.0 / (rp["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    T = len(ids)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None, :]  # (T, 1, hd)
    sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None, :]

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    def rope(x):  # rotate_half convention (HF Llama layout)
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    x = w["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = rope(lin(h, p + "self_attn.q_proj").reshape(T, nh, hd))
        k = rope(lin(h, p + "self_attn.k_proj").reshape(T, nkv, hd))
        v = lin(h, p + "self_attn.v_proj").reshape(T, nkv, hd)
        k = np.repeat(k, nh // nkv, axis=1)  # kv head j serves query heads j*g .. j*g+g-1
        v = np.repeat(v, nh // nkv, axis=1)
        sc = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd) + mask
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        sc /= sc.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", sc, v).reshape(T, nh * hd)
        x = x + lin(o, p + "self_attn.o_proj")
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        g = lin(h, p + "mlp.gate_proj")
        x = x + lin(g / (1 + np.exp(-g)) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    hidden = rms(x, w["model.norm.weight"])[-1]
    head = w.get("lm_head.weight")
    if head is None:
        assert cfg.get("tie_word_embeddings", False), "no lm_head.weight but embeddings not tied"
        head = w["model.embed_tokens.weight"]
    return head @ hidden, hidden


def to_classic_config(path: Path) -> None:
    """Rewrite config.json into the pre-5.x form: top-level rope_theta + rope_scaling, torch_dtype."""
    cfg = json.loads(path.read_text())
    rp = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rp.pop("rope_theta")
    cfg["rope_scaling"] = rp  # rope_type, factor, low/high_freq_factor, original_max_position_embeddings
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def save_tokenizer(fx: dict, raw: Tokenizer, out: Path) -> PreTrainedTokenizerFast:
    hf = make_hf_tokenizer(raw, CHATML_TEMPLATE)
    if fx["chat"] == "tokenizer_config":
        hf.save_pretrained(out, save_jinja_files=False)
        tc = json.loads((out / "tokenizer_config.json").read_text())
        assert tc.get("chat_template") == CHATML_TEMPLATE and not (out / "chat_template.jinja").exists()
    else:
        hf.save_pretrained(out)  # transformers 5 default: template -> chat_template.jinja
        tc = json.loads((out / "tokenizer_config.json").read_text())
        assert "chat_template" not in tc
        assert (out / "chat_template.jinja").read_text() == CHATML_TEMPLATE
    loaded = PreTrainedTokenizerFast.from_pretrained(out)
    assert loaded.chat_template == CHATML_TEMPLATE
    return loaded


def make_text_cases(tok, model_dir: Path) -> list[dict]:
    # the bare `tokenizers` library (what the Rust `tokenizers` crate mirrors) must
    # give the same ids as the transformers wrapper
    bare = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    cases = []
    for text in TEXT_CASES:
        assert bare.encode(text).ids == tok(text)["input_ids"]
        assert bare.encode(text, add_special_tokens=False).ids == tok(text, add_special_tokens=False)["input_ids"]
        cases.append(
            {
                "text": text,
                "ids": list(tok(text)["input_ids"]),
                "ids_no_special": list(tok(text, add_special_tokens=False)["input_ids"]),
                "decoded_skip_special": tok.decode(tok(text)["input_ids"], skip_special_tokens=True),
            }
        )
    msgs = [{"role": "user", "content": "hello there"}]
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert isinstance(rendered, str)
    enc = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    # transformers 5.23: return_dict defaults to True, so this is a BatchEncoding;
    # it tokenizes the rendered string with add_special_tokens=False.
    ids = list(enc["input_ids"]) if not isinstance(enc, list) else list(enc)
    assert ids == list(tok(rendered, add_special_tokens=False)["input_ids"])
    cases.append(
        {
            "chat_messages": msgs,
            "add_generation_prompt": True,
            "rendered": rendered,
            "ids": ids,
            "note": "apply_chat_template(tokenize=True) ids == tok(rendered, add_special_tokens=False)",
        }
    )
    return cases


def build_fixture(fx: dict, raw_tok: Tokenizer) -> None:
    out = MODELS / fx["name"]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    cfg = LlamaConfig(**BASE, **fx["config"])
    seed = fx["seed"]
    for attempt in range(200):
        seed = fx["seed"] + attempt
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).eval()
        init_weights(model, seed, fx["std"])
        if fx["save_dtype"] != torch.float32:
            model = model.to(fx["save_dtype"])
        for f in out.glob("model*.safetensors*"):
            f.unlink()
        save_kwargs = {}
        if "max_shard_size" in fx:
            save_kwargs["max_shard_size"] = fx["max_shard_size"]
        model.save_pretrained(out, **save_kwargs)
        ref = load_f32(out)  # expected values always come from the on-disk checkpoint
        inputs = make_inputs(seed)
        res = reference_outputs(ref, inputs)
        if outputs_ok(res):
            break
        print(f"  {fx['name']}: seed {seed} rejected (margins {res['greedy_min_margin']})")
    else:
        raise RuntimeError(f"no seed satisfied the margin checks for {fx['name']}")

    # ---- checkpoint sanity checks
    st_files = sorted(out.glob("*.safetensors"))
    keys, dtypes = set(), set()
    for f in st_files:
        with safe_open(f, "pt") as h:
            for k in h.keys():
                keys.add(k)
                dtypes.add(h.get_slice(k).get_dtype())
    if cfg.tie_word_embeddings:
        assert "lm_head.weight" not in keys, "tied checkpoint must not contain lm_head.weight"
        assert ref.lm_head.weight.data_ptr() == ref.model.embed_tokens.weight.data_ptr()
    else:
        assert "lm_head.weight" in keys
    want_dtype = {torch.float32: "F32", torch.bfloat16: "BF16"}[fx["save_dtype"]]
    assert dtypes == {want_dtype}, dtypes
    if "max_shard_size" in fx:
        assert 2 <= len(st_files) <= 3, [f.name for f in st_files]
        assert (out / "model.safetensors.index.json").exists()
    else:
        assert [f.name for f in st_files] == ["model.safetensors"]

    # ---- tokenizer
    tok = save_tokenizer(fx, raw_tok, out)

    # ---- classic config rewrite (tiny-llama3)
    if fx.get("classic_config"):
        to_classic_config(out / "config.json")
        cj = json.loads((out / "config.json").read_text())
        assert "rope_parameters" not in cj and cj["rope_scaling"]["rope_type"] == "llama3"
        ref2 = load_f32(out)
        assert ref2.config.rope_parameters["rope_type"] == "llama3"
        assert ref2.config.rope_parameters["rope_theta"] == 500000.0
        # llama3 scaling must actually change some frequencies for this head_dim
        hd = ref2.config.head_dim
        plain = 1.0 / (500000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        scaled = ref2.model.rotary_emb.inv_freq
        assert scaled.shape == plain.shape and not torch.allclose(scaled, plain)
        assert torch.allclose(scaled, llama3_inv_freq_reference(ref2.config.rope_parameters, hd), rtol=1e-6, atol=0)
        res2 = reference_outputs(ref2, inputs)
        for a, b in zip(res["last_logits"], res2["last_logits"]):
            assert torch.equal(a, b), "classic config gives different logits"
        assert res2["greedy"] == res["greedy"]

    # ---- independent float64 numpy forward from the files on disk
    max_diff = 0.0
    for ids, lg, hid in zip(inputs, res["last_logits"], res["last_hidden"]):
        np_logits, np_hidden = numpy_forward(out, ids)
        d = max(np.abs(np_logits - lg.double().numpy()).max(), np.abs(np_hidden - hid.double().numpy()).max())
        max_diff = max(max_diff, float(d))
    assert max_diff < 2e-5, f"numpy reference disagrees with transformers: {max_diff}"

    cj = json.loads((out / "config.json").read_text())
    summary = {
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "num_hidden_layers": cfg.num_hidden_layers,
        "vocab_size": cfg.vocab_size,
        "tokenizer_vocab_size": TOKENIZER_VOCAB,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.attention_bias,
        "mlp_bias": cfg.mlp_bias,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope": rope_summary(cj),
        "weights_dtype": want_dtype,
        "safetensors_files": [f.name for f in st_files],
        "chat_template_location": "tokenizer_config.json" if fx["chat"] == "tokenizer_config" else "chat_template.jinja",
    }
    if fx["save_dtype"] == torch.bfloat16:
        dtype_note = (
            "weights stored as bfloat16 (config dtype=bfloat16); expected values computed by loading the "
            "bf16 checkpoint with dtype=torch.float32 (weights upcast exactly to f32, all compute in f32, eager attention, eval)"
        )
    else:
        dtype_note = "weights stored as float32; expected values computed in float32 (eager attention, eval mode)"

    expected = {
        "fixture": fx["name"],
        "config_name": fx["name"],
        "config_summary": summary,
        "seed": seed,
        "dtype_note": dtype_note,
        "hidden_note": (
            "last_hidden = outputs.hidden_states[-1][0, -1] with output_hidden_states=True; in transformers 5.23 "
            "this is the output of the final RMSNorm (model.model.norm), i.e. the lm_head input; "
            "hidden_states has num_hidden_layers + 1 entries"
        ),
        "greedy_note": (
            "greedy = argmax of raw logits for 8 steps (no eos stopping; eos id 2 never occurs); identical to "
            "model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False); "
            f"each continuation has >= {MIN_DISTINCT} distinct ids; "
            f"every step has top1-top2 margin > {MIN_MARGIN}"
        ),
        "reference": {k: v for k, v in EXPECTED_VERSIONS.items()},
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "inputs": inputs,
        "last_logits": [f32_list(t) for t in res["last_logits"]],
        "last_hidden": [f32_list(t) for t in res["last_hidden"]],
        "greedy": res["greedy"],
        "greedy_min_margin": [float(np.float32(m)) for m in res["greedy_min_margin"]],
    }
    if fx.get("text_cases"):
        expected["text_cases"] = make_text_cases(tok, out)
    dump_json(expected, out / "expected.json")
    print(f"  {fx['name']}: seed {seed}, min margin {min(res['greedy_min_margin']):.4f}, numpy max|diff| {max_diff:.2e}, files {sorted(p.name for p in out.iterdir())}")


def main() -> None:
    check_versions()
    transformers.utils.logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    MODELS.mkdir(parents=True, exist_ok=True)
    raw_tok = train_tokenizer()
    for fx in FIXTURES:
        build_fixture(fx, raw_tok)
    # print a digest so reruns can be compared quickly
    h = hashlib.sha256()
    for p in sorted(MODELS.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(MODELS)).encode())
            h.update(p.read_bytes())
    print("models digest:", h.hexdigest())


if __name__ == "__main__":
    main()
