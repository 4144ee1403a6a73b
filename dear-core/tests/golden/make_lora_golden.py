#!/usr/bin/env python3
"""Generate PEFT LoRA adapter fixtures + DeAR pointwise scorer goldens.

Run from the repository root with the pinned reference environment (it needs the
`models/tiny-gqa` fixture written by make_golden.py):

    /opt/refenv/bin/python dear-core/tests/golden/make_lora_golden.py

Output goes to dear-core/tests/golden/lora/ (wiped and rewritten on every run).
The script is deterministic: weights come from numpy PCG64 generators with fixed
seeds, JSON is written with sorted keys, and a rerun rewrites byte-identical files.

lora/
    seqcls-a/      PEFT LoRA, task_type SEQ_CLS, r=4, alpha=8 (scaling alpha/r = 2),
                   target_modules = list of the 7 Llama projections (suffix match),
                   modules_to_save = ["classifier", "score"] (added by peft for SEQ_CLS;
                   only `score` exists in Llama, so the file holds score.weight)
    seqcls-b/      PEFT LoRA, SEQ_CLS, use_rslora, r=8, alpha=16 (scaling alpha/sqrt(r)),
                   target_modules = regex string (re.fullmatch against the module name)
    causal-lora/   PEFT LoRA, CAUSAL_LM, r=4, alpha=16 (scaling 4), 7 projections
    tiny-seqcls/   full LlamaForSequenceClassification checkpoint (tiny-gqa weights +
                   random score head, pad_token_id = eos), tokenizer copied from tiny-gqa
    expected.json  DeAR inputs, scores, causal logits/greedy, adapter facts (schema below)

expected.json (top-level keys):
    reference        {torch, transformers, peft, safetensors, tokenizers, numpy}
    base_model       "models/tiny-gqa" (path relative to tests/golden)
    bos_token_id, eos_token_id   1, 2
    dear_inputs      {q_max_len 32, p_max_len 196, max_length 228, query_encode_max_length 32,
                      doc_encode_max_length 193, num_special_tokens_to_add_pair, pad_token_id (= eos),
                      padding_side, queries [str], passages [{title, text}],
                      cases [{query_index, passage_index, query_text, doc_text, query_ids, doc_ids,
                              input_ids (unpadded), length, query_truncated_by_encode,
                              doc_truncated_by_encode, doc_tokens_removed_by_prepare}], note}
    scores           {base_full, seqcls_a_unmerged, seqcls_a_merged, seqcls_b_unmerged,
                      seqcls_b_merged}: 10 floats each, parallel to dear_inputs.cases
    scores_config_pad_token_id_0   same models, but config.pad_token_id = 0 while the batch is
                      padded with eos (what DeAR's modeling.py does for Llama-3 bases, see note)
    scores_note, scores_config_pad_token_id_0_note
    adapters         {seqcls-a, seqcls-b, causal-lora}: task_type, r, lora_alpha, use_rslora, scaling,
                      target_modules (as in adapter_config.json), targeted_module_names (what peft
                      wrapped, names relative to the base model), modules_to_save (config),
                      safetensors_keys (sorted), init {seed, lora_std, score_std}
    causal           {inputs [[int]], unmerged {last_logits, greedy, greedy_min_margin},
                      merged {same}, note}
Floats are float32 values written with the shortest repr that round-trips to the same f32.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import peft  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, TaskType, get_peft_model  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaForSequenceClassification,
)

EXPECTED_VERSIONS = {
    "torch": "2.15.0",
    "transformers": "5.23.0",
    "peft": "0.21.2",
    "tokenizers": "0.23.3",
    "safetensors": "0.8.0",
    "numpy": "2.4.6",
}

ROOT = Path(__file__).resolve().parent
BASE_DIR = ROOT / "models" / "tiny-gqa"
OUT = ROOT / "lora"
BASE_NAME_IN_ADAPTERS = "test-org/tiny-gqa"

BOS_ID, EOS_ID, PAD_ID_TOKENIZER = 1, 2, 0
Q_MAX_LEN, P_MAX_LEN = 32, 196  # DeAR defaults (RerankerInferenceCollator / simple_rerank.py)
MAX_LEN = Q_MAX_LEN + P_MAX_LEN  # 228
DOC_ENCODE_MAX = P_MAX_LEN - 3  # 193
SEPARATOR = " "  # RerankerInferencePreProcessor default separator

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
REGEX_B = r".*\.(q_proj|v_proj|down_proj)$"

NEW_TOKENS = 8
MIN_MARGIN = 5e-3  # brief asks > 1e-3; stricter, as in make_golden.py
MIN_DISTINCT = 4
CAUSAL_LENGTHS = [3, 9, 17]

QUERIES = [
    "what does a reranker do?",
    # > 32 tokens after 'query: ' -> truncated by encode(max_length=32)
    "how do large language model rerankers that are distilled from a teacher model score every candidate "
    "passage for a query, and why are long documents truncated to a fixed length before the scoring step?",
]

LONG_TEXT = (
    "Documents can be long, so they are often truncated to a fixed length. "
    "Dense retrieval finds passages that are semantically similar to the question, and BM25 is a strong "
    "lexical baseline for first stage retrieval. A reranker scores each candidate document against the query. "
    "Large language models can be distilled into smaller rerankers: the teacher model produces soft labels "
    "for every query and passage pair, and the student learns to reproduce them. Pointwise scoring reads one "
    "document and outputs a single relevance score, while listwise reranking looks at many documents at the "
    "same time. Normalized discounted cumulative gain rewards relevant results at the top of the list. "
    "Relevance judgments tell us which documents answer the query. The attention mechanism lets every token "
    "look at the previous tokens, and rotary position embeddings rotate query and key vectors by position. "
    "Grouped query attention shares key and value heads between query heads. Low rank adapters add small "
    "trainable matrices to frozen weights. Everything after this point should be cut off by truncation."
)

PASSAGES = [
    {"title": "Rerankers", "text": "A reranker scores each candidate document against the query."},
    {"title": "", "text": "Pointwise scoring reads one document and outputs a single relevance score."},
    {"title": "Weather", "text": "The weather today is sunny with a light breeze from the west."},
    {"title": "Long document", "text": LONG_TEXT},
    {"title": "Café ☕ naïve", "text": "Numbers like 1, 2, 3, 42 and 2024 also appear in text."},
]

ADAPTERS = {
    "seqcls-a": dict(
        task_type=TaskType.SEQ_CLS,
        r=4,
        lora_alpha=8,
        use_rslora=False,
        target_modules=list(SEVEN),
        seed=7001,
        lora_std=0.2,
        score_std=0.2,
    ),
    "seqcls-b": dict(
        task_type=TaskType.SEQ_CLS,
        r=8,
        lora_alpha=16,
        use_rslora=True,
        target_modules=REGEX_B,
        seed=7002,
        lora_std=0.1,
        score_std=0.25,
    ),
    "causal-lora": dict(
        task_type=TaskType.CAUSAL_LM,
        r=4,
        lora_alpha=16,
        use_rslora=False,
        target_modules=list(SEVEN),
        seed=7003,  # first seed tried; bumped until the greedy margin checks pass
        lora_std=0.12,
        score_std=None,
    ),
}
FULL_SCORE_SEED, FULL_SCORE_STD = 7000, 0.2


# --------------------------------------------------------------------------- utils


def check_versions() -> None:
    got = {
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }
    bad = {k: (got[k], v) for k, v in EXPECTED_VERSIONS.items() if got[k] != v}
    if bad:
        sys.exit(f"reference library versions differ from requirements.txt: {bad}")


def f32_list(t: torch.Tensor) -> list[float]:
    arr = t.detach().to(torch.float32).cpu().numpy().astype(np.float32).ravel()
    out = []
    for v in arr:
        fv = float(str(v))
        assert np.float32(fv) == v
        out.append(fv)
    return out


def dump_json(obj, path: Path) -> None:
    """JSON with sorted keys, indent 1, lists of scalars on a single line (as make_golden.py)."""

    def enc(o, ind):
        pad = " " * ind
        if isinstance(o, dict):
            if not o:
                return "{}"
            items = [f"{pad} {json.dumps(k)}: {enc(o[k], ind + 1)}" for k in sorted(o)]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(o, list):
            if all(not isinstance(x, (dict, list)) for x in o):
                return "[" + ", ".join(json.dumps(x, ensure_ascii=False) for x in o) + "]"
            items = [f"{pad} {enc(x, ind + 1)}" for x in o]
            return "[\n" + ",\n".join(items) + "\n" + pad + "]"
        if isinstance(o, float):
            assert math.isfinite(o)
        return json.dumps(o, ensure_ascii=False)

    path.write_text(enc(obj, 0) + "\n", encoding="utf-8")


def safetensors_keys(path: Path) -> list[str]:
    with safe_open(path, "pt") as h:
        return sorted(h.keys())


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(path, "pt") as h:
        return {k: h.get_tensor(k) for k in h.keys()}


# --------------------------------------------------------------------------- tokenizer / DeAR inputs


def load_tokenizer():
    tok = AutoTokenizer.from_pretrained(BASE_DIR)
    # DeAR (pointwise_reranker/inference.py, simple_rerank.py): pad = eos, right padding.
    # (DeAR only does this when the tokenizer has no pad token, as for Llama-3; tiny-gqa has one,
    # so we force it to reproduce the Llama-3 situation.)
    tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    assert tok.pad_token_id == EOS_ID and tok.bos_token_id == BOS_ID
    assert tok.truncation_side == "right"
    return tok


def prepare_for_model_v4(tok, ids: list[int], pair_ids: list[int], max_length: int):
    """transformers 4.x `PreTrainedTokenizerFast.prepare_for_model(ids, pair_ids,
    truncation='only_second', max_length=..., padding='max_length', return_token_type_ids=False)`.

    transformers 5.x removed `prepare_for_model` from the fast (tokenizers) backend, so DeAR's
    data.py call cannot run as written; this reproduces the 4.x semantics that DeAR (and Llama-3
    tokenizers, class PreTrainedTokenizerFast) used:
      * num_special = backend.num_special_tokens_to_add(pair=True): the post-processor's pair
        template count (2 here and for Llama-3: "<bos> $A <bos> $B"), used ONLY for the
        truncation budget;
      * build_inputs_with_special_tokens is the base-class one (ids + pair_ids, no specials);
      * only_second truncation from the right (if the pair is longer than what must be removed);
      * right padding with pad_token_id up to max_length, attention mask 1/0.
    """
    num_special = tok.backend_tokenizer.num_special_tokens_to_add(True)
    total = len(ids) + len(pair_ids) + num_special
    removed = 0
    if total > max_length:
        n = total - max_length
        assert len(pair_ids) > n
        pair_ids = pair_ids[:-n]
        removed = n
    seq = list(ids) + list(pair_ids)
    assert len(seq) <= max_length
    mask = [1] * len(seq) + [0] * (max_length - len(seq))
    seq = seq + [tok.pad_token_id] * (max_length - len(seq))
    return {"input_ids": seq, "attention_mask": mask}, removed, num_special


def build_dear_inputs(tok) -> dict:
    cases = []
    for qi, query in enumerate(QUERIES):
        query_text = "query: " + query
        q = tok.encode(query_text, add_special_tokens=False, max_length=Q_MAX_LEN, truncation=True)
        q_full = tok.encode(query_text, add_special_tokens=False)
        for pi, p in enumerate(PASSAGES):
            doc_text = "document: " + p["title"] + SEPARATOR + p["text"]
            d = tok.encode(doc_text, add_special_tokens=False, max_length=DOC_ENCODE_MAX, truncation=True)
            d_full = tok.encode(doc_text, add_special_tokens=False)
            assert q == q_full[:Q_MAX_LEN] and d == d_full[:DOC_ENCODE_MAX]
            enc, removed, num_special = prepare_for_model_v4(tok, [BOS_ID] + q, [BOS_ID] + d, MAX_LEN)
            # collator: tokenizer.pad(..., padding='max_length', max_length=228) -> already 228
            n = sum(enc["attention_mask"])
            ids = enc["input_ids"][:n]
            assert enc["attention_mask"] == [1] * n + [0] * (MAX_LEN - n)
            assert all(x == EOS_ID for x in enc["input_ids"][n:])
            assert EOS_ID not in ids and PAD_ID_TOKENIZER not in ids
            cases.append(
                {
                    "query_index": qi,
                    "passage_index": pi,
                    "query_text": query_text,
                    "doc_text": doc_text,
                    "query_ids": q,
                    "doc_ids": d,
                    "input_ids": ids,
                    "length": n,
                    "query_truncated_by_encode": len(q_full) > Q_MAX_LEN,
                    "doc_truncated_by_encode": len(d_full) > DOC_ENCODE_MAX,
                    "doc_tokens_removed_by_prepare": removed,
                    "_padded": enc,
                }
            )
    # coverage checks requested by the brief
    assert any(c["query_truncated_by_encode"] for c in cases) and not all(c["query_truncated_by_encode"] for c in cases)
    assert sum(c["doc_truncated_by_encode"] for c in cases) == 2
    assert any(c["doc_tokens_removed_by_prepare"] > 0 for c in cases)
    assert any(p["title"] == "" for p in PASSAGES)
    assert "document:  Pointwise" in cases[1]["doc_text"]
    return {
        "q_max_len": Q_MAX_LEN,
        "p_max_len": P_MAX_LEN,
        "max_length": MAX_LEN,
        "query_encode_max_length": Q_MAX_LEN,
        "doc_encode_max_length": DOC_ENCODE_MAX,
        "num_special_tokens_to_add_pair": num_special,
        "pad_token_id": EOS_ID,
        "padding_side": "right",
        "queries": QUERIES,
        "passages": PASSAGES,
        "cases": cases,
        "note": (
            "DeAR data.py RerankerInferencePreProcessor + RerankerInferenceDataset: "
            "query_ids = encode('query: ' + query, add_special_tokens=False, max_length=32, truncation=True); "
            "doc_ids = encode('document: ' + title + ' ' + text, add_special_tokens=False, max_length=193, "
            "truncation=True) (an empty title gives two spaces); then transformers-4.x "
            "prepare_for_model([bos] + query_ids, [bos] + doc_ids, truncation='only_second', max_length=228, "
            "padding='max_length', return_token_type_ids=False): NO special tokens are added (base-class "
            "build_inputs_with_special_tokens), but the truncation budget reserves "
            "num_special_tokens_to_add(pair=True) = 2 slots (post-processor pair template), so when "
            "len(query)+1 + len(doc)+1 + 2 > 228 the doc loses the excess tokens from its end "
            "(doc_tokens_removed_by_prepare). input_ids = [bos] + query_ids + [bos] + doc_ids[:len-removed], "
            "unpadded; the model input is that right-padded with eos (2) to 228 with attention_mask 1/0. "
            "transformers 5.23 has no prepare_for_model on fast tokenizers, so the script re-implements "
            "the 4.x logic."
        ),
    }


# --------------------------------------------------------------------------- models


def load_seqcls_base():
    m = AutoModelForSequenceClassification.from_pretrained(
        BASE_DIR, num_labels=1, dtype=torch.float32, attn_implementation="eager"
    )
    m.config.pad_token_id = EOS_ID  # = tokenizer.pad_token_id after pad_token = eos_token
    return m.eval()


def load_causal_base():
    m = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32, attn_implementation="eager")
    return m.eval()


def randomize_adapter(pm, seed: int, lora_std: float, score_std: float | None) -> list[str]:
    """Overwrite every lora_A / lora_B (and the modules_to_save copy of `score`) with N(0, std)."""
    rng = np.random.default_rng(seed)
    touched = []
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters(), key=lambda kv: kv[0]):
            if ".lora_A." in name or ".lora_B." in name:
                std = lora_std
            elif ".modules_to_save.default." in name:
                assert score_std is not None, name
                std = score_std
            else:
                continue
            p.copy_(torch.from_numpy((std * rng.standard_normal(tuple(p.shape))).astype(np.float32)))
            touched.append(name)
    return touched


def score_batch(model, padded: list[dict]) -> torch.Tensor:
    ids = torch.tensor([c["input_ids"] for c in padded], dtype=torch.long)
    mask = torch.tensor([c["attention_mask"] for c in padded], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    assert out.logits.shape == (len(padded), 1), out.logits.shape
    return out.logits[:, 0].float()


def score_single(model, ids: list[int]) -> float:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long))
    return float(out.logits[0, 0])


def check_scores(model, name: str, cases: list[dict]) -> torch.Tensor:
    s = score_batch(model, [c["_padded"] for c in cases])
    alone = torch.tensor([score_single(model, c["input_ids"]) for c in cases])
    d = float((s - alone).abs().max())
    assert d < 1e-5, f"{name}: padded batch vs single unpadded differ by {d}"
    print(f"  {name}: scores {[round(float(x), 4) for x in s]}, batch-vs-single max|diff| {d:.2e}")
    return s


def check_pad0_pools_last_position(seqcls_model, cases: list[dict], s0: torch.Tensor) -> None:
    """With config.pad_token_id = 0 and eos padding, the pooled token must be position 227."""
    ids = torch.tensor([c["_padded"]["input_ids"] for c in cases], dtype=torch.long)
    mask = torch.tensor([c["_padded"]["attention_mask"] for c in cases], dtype=torch.long)
    with torch.no_grad():
        h = seqcls_model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        want = (h[:, MAX_LEN - 1] @ seqcls_model.score.weight.T)[:, 0]
    d = float((want - s0).abs().max())
    assert d < 1e-5, d


def save_adapter(pm, out: Path, spec: dict) -> None:
    if out.exists():
        shutil.rmtree(out)
    pm.save_pretrained(out, save_embedding_layers=False)
    card = out / "README.md"  # peft's model card: not needed by the tests, not deterministic-by-design
    if card.exists():
        card.unlink()
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    # peft stores target_modules given as a list as a *set* and dumps list(set): the order
    # depends on PYTHONHASHSEED. Sort it so reruns are byte-identical.
    if isinstance(cfg["target_modules"], list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg["base_model_name_or_path"] = BASE_NAME_IN_ADAPTERS
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))  # same format peft writes


def reload_adapter(kind: str, out: Path):
    base = load_seqcls_base() if kind == "seqcls" else load_causal_base()
    pm = PeftModel.from_pretrained(base, out)
    return pm.eval()


def merged_from_files(adapter_dir: Path, scaling: float, fresh) -> torch.nn.Module:
    """Independent merge: W' = W + scaling * B @ A (float64) straight from the safetensors files,
    loaded into a fresh transformers model. Validates key names + scaling as the Rust side sees them."""
    base = load_safetensors(BASE_DIR / "model.safetensors")
    ad = load_safetensors(adapter_dir / "adapter_model.safetensors")
    sd = {k: v.clone() for k, v in base.items()}
    prefix = "base_model.model."
    n_pairs = 0
    for k in sorted(ad):
        assert k.startswith(prefix), k
        if k.endswith(".lora_A.weight"):
            mod = k[len(prefix) : -len(".lora_A.weight")]
            a = ad[k].double()
            b = ad[prefix + mod + ".lora_B.weight"].double()
            w = sd[mod + ".weight"].double()
            assert a.shape[1] == w.shape[1] and b.shape[0] == w.shape[0] and a.shape[0] == b.shape[1]
            sd[mod + ".weight"] = (w + scaling * (b @ a)).float()
            n_pairs += 1
        elif k.endswith(".lora_B.weight"):
            continue
        else:  # modules_to_save: stored under the plain module path
            sd[k[len(prefix) :]] = ad[k]
    m = fresh()
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert all(x == "lm_head.weight" for x in missing), missing  # tied: lm_head shares embed_tokens
    assert n_pairs > 0
    return m.eval()


def fresh_seqcls():
    m = load_seqcls_base()
    return m


def build_seqcls_adapter(name: str, spec: dict, dear: dict) -> tuple[dict, dict]:
    out = OUT / name
    torch.manual_seed(spec["seed"])  # base score head init (irrelevant: replaced by modules_to_save)
    base = load_seqcls_base()
    cfg = LoraConfig(
        task_type=spec["task_type"],
        r=spec["r"],
        lora_alpha=spec["lora_alpha"],
        lora_dropout=0.0,
        bias="none",
        use_rslora=spec["use_rslora"],
        target_modules=spec["target_modules"],
    )
    pm = get_peft_model(base, cfg).eval()
    assert type(pm).__name__ == "PeftModelForSequenceClassification"
    pc = pm.peft_config["default"]
    assert pc.modules_to_save == ["classifier", "score"], pc.modules_to_save
    touched = randomize_adapter(pm, spec["seed"], spec["lora_std"], spec["score_std"])
    assert any(".modules_to_save.default." in t for t in touched)
    targeted = sorted(pm.base_model.targeted_module_names)
    save_adapter(pm, out, spec)

    # scaling as peft computes it
    from peft.tuners.lora import LoraLayer

    scal = {m.scaling["default"] for _, m in pm.named_modules() if isinstance(m, LoraLayer)}
    assert len(scal) == 1, scal
    scaling = scal.pop()
    want = spec["lora_alpha"] / (math.sqrt(spec["r"]) if spec["use_rslora"] else spec["r"])
    assert scaling == want, (scaling, want)

    cases = dear["cases"]
    s_mem = score_batch(pm, [c["_padded"] for c in cases])
    # expected values come from the adapter files on disk
    rl = reload_adapter("seqcls", out)
    s_unmerged = check_scores(rl, f"{name} unmerged", cases)
    assert torch.equal(s_mem, s_unmerged), "reloaded adapter differs from the in-memory one"
    merged = rl.merge_and_unload().eval()
    assert type(merged).__name__ == "LlamaForSequenceClassification"
    s_merged = check_scores(merged, f"{name} merged", cases)
    d_um = float((s_unmerged - s_merged).abs().max())
    assert d_um < 1e-4, d_um
    indep = merged_from_files(out, scaling, fresh_seqcls)
    s_indep = score_batch(indep, [c["_padded"] for c in cases])
    d_ind = float((s_indep - s_merged).abs().max())
    assert d_ind < 1e-4, d_ind
    print(f"  {name}: unmerged-vs-merged {d_um:.2e}, independent merge from files {d_ind:.2e}")

    # the "config pad_token_id = 0" variant (see scores_config_pad_token_id_0_note)
    merged.config.pad_token_id = 0
    rl_p0 = reload_adapter("seqcls", out)
    rl_p0.base_model.model.config.pad_token_id = 0
    pad0 = {
        "unmerged": score_batch(rl_p0, [c["_padded"] for c in cases]),
        "merged": score_batch(merged, [c["_padded"] for c in cases]),
    }
    check_pad0_pools_last_position(merged, cases, pad0["merged"])

    keys = safetensors_keys(out / "adapter_model.safetensors")
    saved_cfg = json.loads((out / "adapter_config.json").read_text())
    info = {
        "task_type": saved_cfg["task_type"],
        "r": spec["r"],
        "lora_alpha": spec["lora_alpha"],
        "use_rslora": spec["use_rslora"],
        "scaling": scaling,
        "scaling_formula": "lora_alpha / sqrt(r)" if spec["use_rslora"] else "lora_alpha / r",
        "target_modules": saved_cfg["target_modules"],
        "targeted_module_names": targeted,
        "modules_to_save": saved_cfg["modules_to_save"],
        "safetensors_keys": keys,
        "init": {"seed": spec["seed"], "lora_std": spec["lora_std"], "score_std": spec["score_std"]},
    }
    return info, {"unmerged": s_unmerged, "merged": s_merged, "pad0": pad0}


# --------------------------------------------------------------------------- full seqcls checkpoint


def build_full_seqcls(dear: dict) -> tuple[torch.Tensor, torch.Tensor]:
    out = OUT / "tiny-seqcls"
    if out.exists():
        shutil.rmtree(out)
    torch.manual_seed(FULL_SCORE_SEED)
    m = load_seqcls_base()
    rng = np.random.default_rng(FULL_SCORE_SEED)
    with torch.no_grad():
        w = m.score.weight
        w.copy_(torch.from_numpy((FULL_SCORE_STD * rng.standard_normal(tuple(w.shape))).astype(np.float32)))
    m.save_pretrained(out)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copyfile(BASE_DIR / f, out / f)
    cj = json.loads((out / "config.json").read_text())
    assert cj["architectures"] == ["LlamaForSequenceClassification"], cj["architectures"]
    assert cj["pad_token_id"] == EOS_ID
    keys = safetensors_keys(out / "model.safetensors")
    assert "score.weight" in keys and "lm_head.weight" not in keys
    base_keys = safetensors_keys(BASE_DIR / "model.safetensors")
    assert sorted(keys) == sorted(base_keys + ["score.weight"]), (keys, base_keys)
    ref = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    assert ref.config.num_labels == 1 and ref.config.pad_token_id == EOS_ID
    s = check_scores(ref, "base_full", dear["cases"])
    # independent float64 numpy forward (make_golden.numpy_forward: reads only config.json +
    # safetensors; positions go past max_position_embeddings = 128, RoPE is computed on the fly)
    sys.dont_write_bytecode = True  # no __pycache__ next to the fixtures
    sys.path.insert(0, str(ROOT))
    from make_golden import numpy_forward

    score_w = load_safetensors(out / "model.safetensors")["score.weight"].double().numpy()
    np_scores = np.array([float((score_w @ numpy_forward(out, c["input_ids"])[1])[0]) for c in dear["cases"]])
    d_np = float(np.abs(np_scores - s.double().numpy()).max())
    assert d_np < 2e-5, d_np
    print(f"  base_full: float64 numpy forward max|diff| {d_np:.2e}")
    # max_position_embeddings (128, inherited from tiny-gqa) is smaller than the longest input (226):
    # transformers computes default RoPE on the fly and ignores it; raising it changes nothing.
    assert max(c["length"] for c in dear["cases"]) > cj["max_position_embeddings"]
    big = AutoModelForSequenceClassification.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager", max_position_embeddings=256
    ).eval()
    assert big.config.max_position_embeddings == 256
    assert torch.equal(score_batch(big, [c["_padded"] for c in dear["cases"]]), s)
    ref.config.pad_token_id = 0
    s0 = score_batch(ref, [c["_padded"] for c in dear["cases"]])
    check_pad0_pools_last_position(ref, dear["cases"], s0)
    return s, s0


# --------------------------------------------------------------------------- causal LoRA


def make_causal_inputs(seed: int) -> list[list[int]]:
    rng = np.random.default_rng(20_000 + seed)
    return [[BOS_ID] + [int(x) for x in rng.integers(3, 384, size=n - 1)] for n in CAUSAL_LENGTHS]


def greedy(model, ids: list[int]) -> tuple[torch.Tensor, list[int], float]:
    with torch.no_grad():
        last = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].float()
        seq, margins = list(ids), []
        for _ in range(NEW_TOKENS):
            lg = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
            top2 = torch.topk(lg, 2)
            margins.append(float(top2.values[0] - top2.values[1]))
            seq.append(int(top2.indices[0]))
    return last, seq[len(ids) :], min(margins)


def build_causal(spec: dict) -> tuple[dict, dict]:
    out = OUT / "causal-lora"
    for attempt in range(100):
        seed = spec["seed"] + attempt
        torch.manual_seed(seed)
        base = load_causal_base()
        cfg = LoraConfig(
            task_type=spec["task_type"],
            r=spec["r"],
            lora_alpha=spec["lora_alpha"],
            lora_dropout=0.0,
            bias="none",
            use_rslora=spec["use_rslora"],
            target_modules=spec["target_modules"],
        )
        pm = get_peft_model(base, cfg).eval()
        assert type(pm).__name__ == "PeftModelForCausalLM"
        assert pm.peft_config["default"].modules_to_save is None
        randomize_adapter(pm, seed, spec["lora_std"], None)
        targeted = sorted(pm.base_model.targeted_module_names)
        save_adapter(pm, out, spec)
        rl = reload_adapter("causal", out)
        inputs = make_causal_inputs(seed)
        res = {"unmerged": {"last_logits": [], "greedy": [], "greedy_min_margin": []}}
        for ids in inputs:
            lg, g, mm = greedy(rl, ids)
            res["unmerged"]["last_logits"].append(lg)
            res["unmerged"]["greedy"].append(g)
            res["unmerged"]["greedy_min_margin"].append(mm)
        merged = rl.merge_and_unload().eval()
        res["merged"] = {"last_logits": [], "greedy": [], "greedy_min_margin": []}
        for ids in inputs:
            lg, g, mm = greedy(merged, ids)
            res["merged"]["last_logits"].append(lg)
            res["merged"]["greedy"].append(g)
            res["merged"]["greedy_min_margin"].append(mm)
        ok = True
        for k in ("unmerged", "merged"):
            for g, mm in zip(res[k]["greedy"], res[k]["greedy_min_margin"]):
                if mm <= MIN_MARGIN or EOS_ID in g or len(set(g)) < MIN_DISTINCT:
                    ok = False
        if ok and res["unmerged"]["greedy"] == res["merged"]["greedy"]:
            break
        print(f"  causal-lora: seed {seed} rejected (margins {res['unmerged']['greedy_min_margin']})")
    else:
        raise RuntimeError("no seed satisfied the causal margin checks")

    # the LoRA must actually change the model
    base = load_causal_base()
    with torch.no_grad():
        b_lg = base(input_ids=torch.tensor([inputs[-1]])).logits[0, -1]
    d_base = float((b_lg - res["unmerged"]["last_logits"][-1]).abs().max())
    assert d_base > 0.5, d_base
    d_um = max(float((a - b).abs().max()) for a, b in zip(res["unmerged"]["last_logits"], res["merged"]["last_logits"]))
    assert d_um < 1e-4, d_um
    scaling = spec["lora_alpha"] / spec["r"]
    indep = merged_from_files(out, scaling, load_causal_base)
    with torch.no_grad():
        d_ind = max(
            float((indep(input_ids=torch.tensor([ids])).logits[0, -1] - lg).abs().max())
            for ids, lg in zip(inputs, res["merged"]["last_logits"])
        )
    assert d_ind < 1e-4, d_ind
    print(
        f"  causal-lora: seed {seed}, greedy {res['unmerged']['greedy']}, min margin "
        f"{min(res['unmerged']['greedy_min_margin']):.4f}, |base-lora| {d_base:.2f}, unmerged-vs-merged {d_um:.2e}, "
        f"independent merge {d_ind:.2e}"
    )
    saved_cfg = json.loads((out / "adapter_config.json").read_text())
    info = {
        "task_type": saved_cfg["task_type"],
        "r": spec["r"],
        "lora_alpha": spec["lora_alpha"],
        "use_rslora": spec["use_rslora"],
        "scaling": scaling,
        "scaling_formula": "lora_alpha / r",
        "target_modules": saved_cfg["target_modules"],
        "targeted_module_names": targeted,
        "modules_to_save": saved_cfg["modules_to_save"],
        "safetensors_keys": safetensors_keys(out / "adapter_model.safetensors"),
        "init": {"seed": seed, "lora_std": spec["lora_std"], "score_std": None},
    }
    causal = {
        "inputs": inputs,
        "note": (
            "causal-lora on models/tiny-gqa (AutoModelForCausalLM, tied embeddings, lm_head not adapted). "
            "last_logits = model(ids).logits[0, -1] (384 floats); greedy = 8 argmax steps on raw logits with "
            f"a full recompute per step, eos never produced, every step top1-top2 > {MIN_MARGIN}, >= "
            f"{MIN_DISTINCT} distinct ids; unmerged = PeftModel.from_pretrained(base, causal-lora), merged = "
            "its merge_and_unload(). Expected values computed in float32, eager attention, eval mode."
        ),
    }
    for k in ("unmerged", "merged"):
        causal[k] = {
            "last_logits": [f32_list(t) for t in res[k]["last_logits"]],
            "greedy": res[k]["greedy"],
            "greedy_min_margin": [float(np.float32(m)) for m in res[k]["greedy_min_margin"]],
        }
    return info, causal


# --------------------------------------------------------------------------- main


def main() -> None:
    check_versions()
    transformers.utils.logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    tok = load_tokenizer()
    dear = build_dear_inputs(tok)
    print(f"  dear inputs: lengths {[c['length'] for c in dear['cases']]}")

    s_full, s_full0 = build_full_seqcls(dear)
    infos, scores, scores0 = {}, {"base_full": s_full}, {"base_full": s_full0}
    for name in ("seqcls-a", "seqcls-b"):
        info, s = build_seqcls_adapter(name, ADAPTERS[name], dear)
        infos[name] = info
        key = name.replace("-", "_")
        scores[f"{key}_unmerged"] = s["unmerged"]
        scores[f"{key}_merged"] = s["merged"]
        scores0[f"{key}_unmerged"] = s["pad0"]["unmerged"]
        scores0[f"{key}_merged"] = s["pad0"]["merged"]
    # the adapters must change the scores substantially
    for a, b in [("base_full", "seqcls_a_merged"), ("base_full", "seqcls_b_merged"), ("seqcls_a_merged", "seqcls_b_merged")]:
        d = float((scores[a] - scores[b]).abs().max())
        assert d > 0.5, (a, b, d)
    for k, v in scores.items():
        assert float(v.std()) > 0.1, (k, v)
    # pad0 variant must really differ (pooling at position 227 instead of the last real token)
    assert float((scores0["seqcls_a_merged"] - scores["seqcls_a_merged"]).abs().min()) > 1e-3

    infos["causal-lora"], causal = build_causal(ADAPTERS["causal-lora"])

    for c in dear["cases"]:
        del c["_padded"]
    expected = {
        "reference": dict(EXPECTED_VERSIONS),
        "base_model": "models/tiny-gqa",
        "base_model_name_or_path_in_adapters": BASE_NAME_IN_ADAPTERS,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "dear_inputs": dear,
        "scores": {k: f32_list(v) for k, v in scores.items()},
        "scores_note": (
            "logits[:, 0] (float32, eval, eager attention) of the 10 dear_inputs.cases in ONE batch: input_ids "
            "right-padded with eos (2) to 228, attention_mask 1 on real tokens, config.pad_token_id = 2, so "
            "LlamaForSequenceClassification pools the last non-pad token (index length-1). Scoring each case "
            "alone, unpadded, agrees within 1e-5 (asserted). base_full = lora/tiny-seqcls; seqcls_X_unmerged = "
            "PeftModel.from_pretrained(AutoModelForSequenceClassification(tiny-gqa, num_labels=1), lora/seqcls-X); "
            "seqcls_X_merged = its merge_and_unload(). An independent merge W + scaling * B @ A straight from the "
            "safetensors agrees with merged within 1e-4 (asserted; in practice ~1e-6). NOTE: the longest inputs "
            "(208, 226 tokens) exceed max_position_embeddings = 128 of tiny-gqa / tiny-seqcls; transformers "
            "computes default RoPE for any position and ignores that field (loading with "
            "max_position_embeddings=256 gives bit-identical scores, asserted; a float64 numpy forward agrees "
            "within 2e-5), so a consumer that enforces the limit must raise it to >= 228 for these fixtures."
        ),
        "scores_config_pad_token_id_0": {k: f32_list(v) for k, v in scores0.items()},
        "scores_config_pad_token_id_0_note": (
            "Same batch (padded with eos to 228), but config.pad_token_id = 0. DeAR's pointwise_reranker/"
            "modeling.py sets config.pad_token_id = 0 when the base config has none (Llama-3 configs have none) "
            "while the tokenizer pads with eos; LlamaForSequenceClassification then pools the rightmost token "
            "!= 0, i.e. the LAST PADDING position 227 (an eos token at position 227 whose attention sees only the "
            "real tokens; its own key is masked). These scores depend on the padded length (228) and differ from "
            "`scores`. simple_rerank.py instead sets pad_token_id = eos (=`scores`)."
        ),
        "adapters": infos,
        "causal": causal,
    }
    dump_json(expected, OUT / "expected.json")

    total = 0
    h = hashlib.sha256()
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            b = p.read_bytes()
            total += len(b)
            h.update(str(p.relative_to(OUT)).encode())
            h.update(b)
            print(f"  {p.relative_to(OUT)}: {len(b)} bytes")
    assert total < 1_500_000, total
    print(f"lora total {total} bytes, digest {h.hexdigest()}")


if __name__ == "__main__":
    main()
