#!/usr/bin/env python3
"""Runs dear's fixed workloads (benches/data/) on the peers and prints them side by side.

Peers (the versions are pinned in scripts/peers-requirements.txt):
  - transformers + PyTorch on CPU in f32, padded batches as the DeAR reference code does
    (the model is the same Q4_1 GGUF, which transformers dequantizes to f32 at load);
  - llama.cpp through llama-cpp-python (built from its sdist, which vendors llama.cpp), on
    the Q4_1 GGUF as is: W1 one sequence at a time (Llama.eval) and batched over many
    sequences with the low-level API (llama_batch_init + llama_decode, n_seq_max > 1).

W1: 100 sequences of 228 token ids (benches/data/w1_pointwise.jsonl); only the last
    position's output is needed. Reported as tokens/s and seconds per 100-sequence query.
W2: a 2,052-token prompt (benches/data/w2_listwise.json), then 64 greedy tokens with EOS
    ignored. Reported as prefill tokens/s, decode tokens/s and prefill + decode seconds.

Every engine gets the token ids from the files (nothing is re-tokenized), the same thread
count and its own process (so that one engine's thread pool cannot steal the CPU from the
next one and each peak memory is that engine's own). With --dear-json (the JSON printed by
`dear bench --json`) dear's rows are added with the ratios dear/peer for every column.

scripts/peers.sh builds everything and runs this in one invocation; CI does not run it.

  python scripts/peers.py --threads 2 --dear-json target/peers/dear-*.json
  python scripts/peers.py --engines transformers --w1-sequences 4 \\
      --w2-prompt-tokens 128 --decode-tokens 4 --runs 1     # a quick smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benches" / "data"
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# W1's seconds per query are scaled to the full query (100 x 228 tokens), as dear does.
W1_QUERY_TOKENS = 22_800
ENGINES = ("transformers", "llamacpp")

# (key, header, format) of the table's columns.
COLUMNS = [
    ("w1_tokens_per_s", "W1 tok/s", "{:.1f}"),
    ("w1_seconds_per_query_100", "W1 s/query", "{:.2f}"),
    ("w2_prefill_tokens_per_s", "W2 prefill tok/s", "{:.1f}"),
    ("w2_decode_tokens_per_s", "W2 decode tok/s", "{:.1f}"),
    ("w2_end_to_end_seconds", "W2 total s", "{:.2f}"),
    ("peak_rss_mib", "peak MiB", "{:.0f}"),
]


def default_model() -> Path:
    home = os.environ.get("DEAR_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "dear")
    return Path(home) / "models" / MODEL_NAME


def load_w1(n: int) -> list[list[int]]:
    with open(DATA / "w1_pointwise.jsonl", encoding="utf-8") as f:
        seqs = [json.loads(line)["ids"] for line in f if line.strip()]
    return seqs[: max(1, n)]


def load_w2(n: int | None) -> list[int]:
    with open(DATA / "w2_listwise.json", encoding="utf-8") as f:
        ids = json.load(f)["ids"]
    # The first N, as `dear bench --prompt-tokens N` keeps.
    return ids[: max(1, n)] if n else ids


def pack(seqs: list[list[int]], budget: int) -> list[tuple[int, int]]:
    """[start, end) groups of consecutive sequences of at most `budget` tokens (one at least)."""
    groups, start = [], 0
    while start < len(seqs):
        used, end = 0, start
        while end < len(seqs) and (end == start or used + len(seqs[end]) <= budget):
            used += len(seqs[end])
            end += 1
        groups.append((start, end))
        start = end
    return groups


def pick(values: list[float], stat: str) -> float:
    return min(values) if stat == "best" else statistics.median(values)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def w1_row(tokens: int, seconds: list[float], stat: str) -> dict:
    s = pick(seconds, stat)
    rate = tokens / s
    return {
        "w1_tokens": tokens,
        "w1_seconds": s,
        "w1_tokens_per_s": rate,
        "w1_seconds_per_query_100": W1_QUERY_TOKENS / rate,
    }


def w2_row(prompt: int, decode: int, prefill_s: list[float], decode_s: list[float], stat: str) -> dict:
    p, d = pick(prefill_s, stat), pick(decode_s, stat)
    return {
        "w2_prompt_tokens": prompt,
        "w2_decode_tokens": decode,
        "w2_prefill_seconds": p,
        "w2_prefill_tokens_per_s": prompt / p,
        "w2_decode_seconds": d,
        "w2_decode_tokens_per_s": decode / d if decode else None,
        "w2_end_to_end_seconds": p + d,
    }


def log(msg: str) -> None:
    print(f"[peers] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# transformers + PyTorch, CPU, f32
# ---------------------------------------------------------------------------------------


def run_transformers(args, w1: list[list[int]], w2: list[int]) -> list[dict]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    model_path = Path(args.model)
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        str(model_path.parent), gguf_file=model_path.name, dtype=torch.float32
    )
    model.eval()
    load_s = time.perf_counter() - t
    pad = model.config.pad_token_id
    if pad is None:
        pad = model.config.eos_token_id if model.config.eos_token_id is not None else 0
    bs = args.hf_batch_size
    log(f"transformers {transformers.__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, attention {model.config._attn_implementation}, "
        f"loaded (GGUF dequantized to f32) in {load_s:.1f} s")

    def w1_pass():
        lasts = []
        for b in range(0, len(w1), bs):
            group = w1[b : b + bs]
            width = max(map(len, group))
            # Right-padded batch with an attention mask (every W1 sequence has 228 tokens,
            # so no padding is actually added).
            ids = torch.full((len(group), width), pad, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for i, s in enumerate(group):
                ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
                mask[i, : len(s)] = 1
            hidden = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            lasts.append(hidden[torch.arange(len(group)), mask.sum(1) - 1])  # (batch, hidden)
        return lasts

    def w2_pass(prompt: list[int], n_decode: int):
        ids = torch.tensor([prompt], dtype=torch.long)
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1)
        t1 = time.perf_counter()
        past, toks = out.past_key_values, []
        for _ in range(n_decode):
            toks.append(int(nxt))
            out = model(input_ids=nxt[:, None], past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, toks

    row = {"engine": "transformers", "label": f"transformers f32 (batches of {bs})", "load_seconds": load_s}
    with torch.inference_mode():
        if "w1" in args.workloads:
            if args.warmup:
                model.model(input_ids=torch.tensor([w1[0][:32]]), use_cache=False)
            secs = []
            for r in range(args.runs):
                t = time.perf_counter()
                lasts = w1_pass()
                secs.append(time.perf_counter() - t)
                log(f"transformers W1 run {r + 1}: {secs[-1]:.2f} s")
            row.update(w1_row(sum(map(len, w1)), secs, args.stat))
            # Untimed check: the LM head's argmax at each last position.
            row["w1_top_ids"] = [i for h in lasts for i in model.lm_head(h).argmax(-1).tolist()]
        if "w2" in args.workloads:
            if args.warmup:
                w2_pass(w2[:32], 2)
            pre, dec = [], []
            for r in range(args.runs):
                p, d, toks = w2_pass(w2, args.decode_tokens)
                pre.append(p)
                dec.append(d)
                log(f"transformers W2 run {r + 1}: prefill {p:.2f} s, decode {d:.2f} s")
            row.update(w2_row(len(w2), args.decode_tokens, pre, dec, args.stat))
            row["w2_greedy_ids"] = toks
    row["threads"] = torch.get_num_threads()
    row["peak_rss_mib"] = peak_rss_mib()
    return [row]


# ---------------------------------------------------------------------------------------
# llama.cpp through llama-cpp-python
# ---------------------------------------------------------------------------------------


def pad256(n: int) -> int:
    return (n + 255) // 256 * 256


def run_llamacpp(args, w1: list[list[int]], w2: list[int]) -> list[dict]:
    import numpy as np
    import llama_cpp
    from llama_cpp import Llama

    threads = args.threads
    fa = (
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        if args.flash_attn
        else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    n_ctx = pad256(max(max(map(len, w1)), len(w2) + args.decode_tokens + 1))
    t = time.perf_counter()
    llm = Llama(
        model_path=str(args.model),
        n_ctx=n_ctx,
        n_batch=args.n_batch,
        n_ubatch=args.n_ubatch,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=args.flash_attn,
        logits_all=False,
        verbose=False,
    )
    load_s = time.perf_counter() - t
    n_vocab = llm.n_vocab()
    log(f"llama-cpp-python {llama_cpp.__version__}, {threads} threads, n_ctx {n_ctx}, "
        f"n_batch {args.n_batch}, n_ubatch {args.n_ubatch}, flash attention "
        f"{'on' if args.flash_attn else 'off'}, loaded in {load_s:.1f} s")
    system_info = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
    log(f"llama.cpp system info: {system_info}")

    def logits_at(ctx, i: int):
        ptr = llama_cpp.llama_get_logits_ith(ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

    rows = []
    seq_row = {"engine": "llamacpp", "label": "llama.cpp Q4_1, one sequence at a time", "load_seconds": load_s}
    rows.append(seq_row)

    # W1 (a): one sequence at a time through the high-level API.
    if "w1" in args.workloads:
        if args.warmup:
            llm.reset()
            llm.eval(w1[0][:32])
        secs, tops = [], []
        for r in range(args.runs):
            tops = []
            t = time.perf_counter()
            for ids in w1:
                llm.reset()
                llm.eval(ids)
                # Only the last position's output is used. llama.cpp computes the LM head
                # for the output rows only (one per sequence, ~0.1% of the work) and has no
                # cheaper way to stop at the last hidden state of a decoder.
                tops.append(int(logits_at(llm.ctx, -1).argmax()))
            secs.append(time.perf_counter() - t)
            log(f"llama.cpp W1 (sequential) run {r + 1}: {secs[-1]:.2f} s")
        seq_row.update(w1_row(sum(map(len, w1)), secs, args.stat))
        seq_row["w1_top_ids"] = tops

    # W2: prefill with Llama.eval, then greedy (argmax) decode one token at a time.
    if "w2" in args.workloads:
        if args.warmup:
            llm.reset()
            llm.eval(w2[:32])
            llm.eval([int(logits_at(llm.ctx, -1).argmax())])
        pre, dec, toks = [], [], []
        for r in range(args.runs):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(w2)
            nxt = int(logits_at(llm.ctx, -1).argmax())
            t1 = time.perf_counter()
            toks = []
            for _ in range(args.decode_tokens):  # EOS ignored
                toks.append(nxt)
                llm.eval([nxt])
                nxt = int(logits_at(llm.ctx, -1).argmax())
            t2 = time.perf_counter()
            pre.append(t1 - t0)
            dec.append(t2 - t1)
            log(f"llama.cpp W2 run {r + 1}: prefill {pre[-1]:.2f} s, decode {dec[-1]:.2f} s")
        seq_row.update(w2_row(len(w2), args.decode_tokens, pre, dec, args.stat))
        seq_row["w2_greedy_ids"] = toks
    seq_row["threads"] = threads

    # W1 (b): many sequences in one llama_decode call (low-level API), each sequence in its
    # own KV stream (n_seq_max = sequences per batch, kv_unified off), the KV memory cleared
    # between batches.
    if "w1" in args.workloads and not args.no_batched:
        budget = max(args.llamacpp_batch_tokens, max(map(len, w1)))
        groups = pack(w1, budget)
        per_batch = max(e - s for s, e in groups)
        if per_batch > llama_cpp.llama_max_parallel_sequences():
            raise SystemExit(f"{per_batch} sequences per batch exceed llama.cpp's limit; "
                             "lower --llamacpp-batch-tokens")
        params = llama_cpp.llama_context_default_params()
        params.n_seq_max = per_batch
        params.n_ctx = per_batch * pad256(max(map(len, w1)))
        params.n_batch = budget
        params.n_ubatch = min(args.n_ubatch, budget)
        params.n_threads = threads
        params.n_threads_batch = threads
        params.flash_attn_type = fa
        params.kv_unified = False
        params.embeddings = False
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not ctx:
            raise RuntimeError("llama_init_from_model failed for the batched W1 context")
        batch = llama_cpp.llama_batch_init(budget, 0, 1)
        try:
            mem = llama_cpp.llama_get_memory(ctx)
            token = np.ctypeslib.as_array(batch.token, shape=(budget,))
            pos = np.ctypeslib.as_array(batch.pos, shape=(budget,))
            n_seq_id = np.ctypeslib.as_array(batch.n_seq_id, shape=(budget,))
            out = np.ctypeslib.as_array(batch.logits, shape=(budget,))
            arrays = [np.asarray(s, dtype=np.int32) for s in w1]

            def decode_group(seqs, keep):
                llama_cpp.llama_memory_clear(mem, False)
                n, lasts = 0, []
                for sid, ids in enumerate(seqs):
                    k = len(ids)
                    token[n : n + k] = ids
                    pos[n : n + k] = np.arange(k, dtype=np.int32)
                    n_seq_id[n : n + k] = 1
                    for i in range(n, n + k):
                        batch.seq_id[i][0] = sid
                    out[n : n + k] = 0
                    out[n + k - 1] = 1  # only the last position's output
                    n += k
                    lasts.append(n - 1)
                batch.n_tokens = n
                rc = llama_cpp.llama_decode(ctx, batch)
                if rc != 0:
                    raise RuntimeError(f"llama_decode returned {rc}")
                for i in lasts:
                    keep.append(int(logits_at(ctx, i).argmax()))

            if args.warmup:
                decode_group([arrays[0][:32]], [])
            secs, tops = [], []
            for r in range(args.runs):
                tops = []
                t = time.perf_counter()
                for s, e in groups:
                    decode_group(arrays[s:e], tops)
                llama_cpp.llama_synchronize(ctx)
                secs.append(time.perf_counter() - t)
                log(f"llama.cpp W1 (batched, {per_batch} sequences per llama_decode) run {r + 1}: {secs[-1]:.2f} s")
        finally:
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_free(ctx)
        row = {
            "engine": "llamacpp-batched",
            "label": f"llama.cpp Q4_1, batched ({per_batch} seqs/decode)",
            "load_seconds": load_s,
            "threads": threads,
            "w1_sequences_per_batch": per_batch,
        }
        row.update(w1_row(sum(map(len, w1)), secs, args.stat))
        row["w1_top_ids"] = tops
        rows.append(row)

    llm.close()
    for row in rows:
        row["peak_rss_mib"] = peak_rss_mib()
    return rows


# ---------------------------------------------------------------------------------------
# dear's rows, the table and the ratios
# ---------------------------------------------------------------------------------------


def load_dear(path: str) -> dict:
    """A row from the JSON object printed by `dear bench --json` (the last JSON line)."""
    obj = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    pass
    if obj is None:
        raise SystemExit(f"{path}: no JSON object from `dear bench --json`")
    w1, w2 = obj.get("w1") or {}, obj.get("w2") or {}
    label = f"dear ({Path(path).stem})"
    row = {"engine": "dear", "label": label, "file": path, "load_seconds": obj.get("load_seconds")}
    if w1:
        row.update(
            w1_tokens=w1.get("tokens"),
            w1_tokens_per_s=w1.get("tokens_per_s"),
            w1_seconds_per_query_100=w1.get("seconds_per_query_100"),
            w1_shared_prefix=bool(w1.get("shared_prefix")),
        )
    if w2:
        row.update(
            w2_prompt_tokens=w2.get("prompt_tokens"),
            w2_decode_tokens=w2.get("decode_tokens"),
            w2_prefill_tokens_per_s=w2.get("prefill_tokens_per_s"),
            w2_decode_tokens_per_s=w2.get("decode_tokens_per_s"),
            w2_end_to_end_seconds=w2.get("end_to_end_seconds"),
        )
    row["peak_rss_mib"] = obj.get("peak_rss_mib")
    return row


def fmt(value, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def table(rows: list[dict], label_header: str = "engine", spec: str | None = None) -> str:
    width = max([len(label_header)] + [len(r["label"]) for r in rows])
    heads = [h for _, h, _ in COLUMNS]
    widths = [max(len(h), 9) for h in heads]
    lines = [
        "  ".join([label_header.ljust(width)] + [h.rjust(w) for h, w in zip(heads, widths)])
    ]
    for r in rows:
        cells = [fmt(r.get(k), spec or col_spec) for k, _, col_spec in COLUMNS]
        lines.append("  ".join([r["label"].ljust(width)] + [c.rjust(w) for c, w in zip(cells, widths)]))
    return "\n".join(lines)


def ratios(dear_rows: list[dict], peer_rows: list[dict]) -> list[dict]:
    out = []
    for d in dear_rows:
        for p in peer_rows:
            row = {"label": f"{d['label']} / {p['label']}", "dear": d.get("file"), "peer": p["engine"]}
            for k, _, _ in COLUMNS:
                a, b = d.get(k), p.get(k)
                row[k] = a / b if a is not None and b else None
            if any(row[k] is not None for k, _, _ in COLUMNS if k != "peak_rss_mib"):
                out.append(row)
    return out


def agreement(rows: list[dict], key: str) -> list[str]:
    """How far the engines' argmax ids agree (a sanity check that they ran the same ids)."""
    have = [r for r in rows if r.get(key)]
    notes = []
    for i, a in enumerate(have):
        for b in have[i + 1 :]:
            x, y = a[key], b[key]
            if key == "w2_greedy_ids":
                same = next((j for j, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
                notes.append(f"W2 greedy ids: {a['engine']} and {b['engine']} agree on the first {same} of {min(len(x), len(y))}")
            else:
                same = sum(u == v for u, v in zip(x, y))
                notes.append(f"W1 last-position argmax: {a['engine']} and {b['engine']} agree on {same} of {min(len(x), len(y))} sequences")
    return notes


def check_shapes(dear_rows: list[dict], cfg: dict) -> list[str]:
    warnings = []
    for d in dear_rows:
        if d.get("w2_prompt_tokens") not in (None, cfg["w2_prompt_tokens"]):
            warnings.append(f"{d['file']}: W2 prompt of {d['w2_prompt_tokens']} tokens, the peers ran {cfg['w2_prompt_tokens']}")
        if d.get("w2_decode_tokens") not in (None, cfg["decode_tokens"]):
            warnings.append(f"{d['file']}: {d['w2_decode_tokens']} decode tokens, the peers ran {cfg['decode_tokens']}")
        if d.get("w1_tokens") not in (None, cfg["w1_tokens"]):
            warnings.append(f"{d['file']}: W1 over {d['w1_tokens']} tokens, the peers ran {cfg['w1_tokens']} (rates are per token)")
    return warnings


# ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Run dear's W1/W2 workloads on transformers (f32) and llama.cpp side by side.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=str(default_model()), help="the SmolLM2-135M-Instruct Q4_1 GGUF")
    p.add_argument("--threads", type=int, default=2, help="threads for every engine")
    p.add_argument("--w1-sequences", type=int, default=100, help="W1 sequences (of 100)")
    p.add_argument("--w2-prompt-tokens", type=int, default=None, help="keep the first N W2 prompt tokens [default: all 2,052]")
    p.add_argument("--decode-tokens", type=int, default=64, help="W2 greedy tokens")
    p.add_argument("--runs", type=int, default=3, help="timed runs of each workload")
    p.add_argument("--stat", choices=("median", "best"), default="median",
                   help="which run is reported (`dear bench --runs N` reports the best)")
    p.add_argument("--engines", default="transformers,llamacpp", help="comma-separated: transformers, llamacpp")
    p.add_argument("--workload", choices=("w1", "w2", "all"), default="all")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--dear-json", nargs="*", default=[], metavar="FILE",
                   help="outputs of `dear bench --json`, added as rows with the ratios dear/peer")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip the short untimed warm-up pass before each workload")
    p.add_argument("--in-process", action="store_true",
                   help="run the engines in this process instead of one child process each")
    g = p.add_argument_group("transformers")
    g.add_argument("--hf-batch-size", type=int, default=16, help="W1 sequences per padded batch")
    g = p.add_argument_group("llama.cpp")
    g.add_argument("--n-batch", type=int, default=2048, help="llama.cpp n_batch (logical batch) for W1 sequential and W2")
    g.add_argument("--n-ubatch", type=int, default=512, help="llama.cpp n_ubatch (physical batch)")
    g.add_argument("--llamacpp-batch-tokens", type=int, default=4096,
                   help="most tokens in one batched W1 llama_decode call (dear bench's --batch-tokens default)")
    g.add_argument("--flash-attn", action="store_true", help="llama.cpp flash attention (llama-cpp-python's default is off)")
    g.add_argument("--no-batched", action="store_true", help="skip llama.cpp's batched W1")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for e in args.engines:
        if e not in ENGINES:
            p.error(f"unknown engine {e!r} (known: {', '.join(ENGINES)})")
    args.workloads = ("w1", "w2") if args.workload == "all" else (args.workload,)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


RUNNERS = {"transformers": run_transformers, "llamacpp": run_llamacpp}


def run_child(engine: str, argv: list[str], threads: int) -> list[dict]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", engine]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the {engine} run failed (exit status {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not Path(args.model).is_file():
        raise SystemExit(f"no model at {args.model} (run `bash scripts/fetch-model.sh`)")
    w1 = load_w1(args.w1_sequences)
    w2 = load_w2(args.w2_prompt_tokens)

    if args.child:
        rows = RUNNERS[args.child](args, w1, w2)
        print(json.dumps(rows))
        return 0

    peers = []
    for engine in args.engines:
        log(f"running {engine}")
        if args.in_process:
            peers.extend(RUNNERS[engine](args, w1, w2))
        else:
            peers.extend(run_child(engine, argv, args.threads))
    dear = [load_dear(f) for f in args.dear_json]
    cfg = {
        "model": str(args.model),
        "threads": args.threads,
        "runs": args.runs,
        "stat": args.stat,
        "w1_sequences": len(w1),
        "w1_tokens": sum(map(len, w1)),
        "w2_prompt_tokens": len(w2),
        "decode_tokens": args.decode_tokens,
    }
    notes = agreement(peers, "w1_top_ids") + agreement(peers, "w2_greedy_ids")
    warnings = check_shapes(dear, cfg)
    rat = ratios(dear, peers)
    if args.json:
        print(json.dumps({"config": cfg, "peers": peers, "dear": dear, "ratios": rat,
                          "notes": notes, "warnings": warnings}))
        return 0
    parts = []
    if "w1" in args.workloads:
        parts.append(f"W1: {cfg['w1_sequences']} x 228 tokens")
    if "w2" in args.workloads:
        parts.append(f"W2: {cfg['w2_prompt_tokens']}-token prompt + {cfg['decode_tokens']} greedy tokens")
    parts.append(f"{args.threads} threads; {args.stat} of {args.runs} run(s)")
    print("; ".join(parts))
    print()
    print(table(dear + peers))
    if rat:
        print()
        print("ratios dear/peer (tok/s columns: > 1 means dear is faster; seconds and MiB: < 1 means dear is faster or smaller)")
        print(table(rat, "dear / peer", "{:.2f}"))
    for line in notes + [f"warning: {w}" for w in warnings]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
