#!/usr/bin/env python3
"""The PyTorch + transformers reference for dear's GPU benchmarks.

Runs the fixed workloads of benches/data/ on random-weight Llama models in the shapes of
`dear bench --synthetic` (the shapes are hard-coded from the published config.json files,
so nothing is downloaded and no network is needed):

W1 (pointwise, as DeAR's reference code runs it): LlamaForSequenceClassification (one
    label) over the 100 W1 sequences of 228 token ids, right-padded batches with an
    attention mask; the score is the head's logit at each sequence's last real token.
    Reported as tokens/s (real tokens) and seconds per 100-sequence query.
W2 (listwise): LlamaForCausalLM on the 2,052-token W2 prompt, then `generate` with exactly
    --decode-tokens greedy new tokens (no EOS stopping). The prefill (one forward of the
    prompt with the KV cache on) is timed on its own; decode = generate - prefill, over the
    generate call's decode steps (one fewer than its new tokens, the first comes from the
    prefill). Reported as prefill tokens/s, decode tokens/s and generate seconds.

Each workload has one untimed warm-up, then --runs timed passes; the best is reported (as
`dear bench` does) and every run's seconds are kept in the JSON. Token ids come from the
files (nothing is re-tokenized; all ids are < 49152, valid for every shape's vocabulary).

  python3 scripts/gpu-reference.py --shape llama-3.1-8b --json
  python3 scripts/gpu-reference.py --shape llama-3.2-3b --attn eager --workload w1
  python3 scripts/gpu-reference.py --shape tiny --device cpu --dtype float32 \\
      --w1-sequences 8 --w2-prompt-tokens 64 --decode-tokens 4 --runs 1   # a smoke test
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, GenerationConfig,
                          LlamaConfig)

# The workloads as scripts/peers.py reads them (a stdlib-only module beside this one).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import W1_QUERY_TOKENS, load_w1, load_w2  # noqa: E402

PAD = 0  # no W1 or W2 token is 0, so the last non-pad token is the last real one


def llama3(hidden: int, intermediate: int, layers: int, heads: int, head_dim: int, tied: bool, factor: float) -> dict:
    rope = {"rope_type": "llama3", "rope_theta": 500_000.0, "factor": factor, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    return dict(vocab_size=128_256, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=8, head_dim=head_dim, rms_norm_eps=1e-5,
                max_position_embeddings=131_072, tie_word_embeddings=tied, rope_parameters=rope)


SHAPES = {
    "llama-3.2-1b": llama3(2048, 8192, 16, 32, 64, True, 32.0),
    "llama-3.2-3b": llama3(3072, 8192, 28, 24, 128, True, 32.0),
    "llama-3.1-8b": llama3(4096, 14336, 32, 32, 128, False, 8.0),
    "tiny": dict(vocab_size=49_152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, max_position_embeddings=8192,
                 tie_word_embeddings=True),
}


def log(msg: str) -> None:
    print(f"[gpu-reference] {msg}", file=sys.stderr, flush=True)


def build(auto_cls, args, device: torch.device):
    config = LlamaConfig(**SHAPES[args.shape], num_labels=1, pad_token_id=PAD, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.device(device):  # weights are created (and randomly initialised) on the device
        model = auto_cls.from_config(config, dtype=getattr(torch, args.dtype), attn_implementation=args.attn)
    sync(device)
    return model.eval(), time.perf_counter() - t


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn) -> tuple[float, object]:
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def peak_gpu_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def run_w1(args, device: torch.device) -> dict:
    seqs = load_w1(args.w1_sequences)
    batches = []
    for b in range(0, len(seqs), args.batch_size):
        group = seqs[b : b + args.batch_size]
        ids = torch.full((len(group), max(map(len, group))), PAD, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(group):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        batches.append((ids.to(device), mask.to(device)))
    model, load_s = build(AutoModelForSequenceClassification, args, device)

    def one_pass() -> torch.Tensor:
        return torch.cat([model(input_ids=i, attention_mask=m, use_cache=False).logits for i, m in batches])

    scores = one_pass()  # warm-up
    assert scores.shape == (len(seqs), 1) and torch.isfinite(scores).all(), "W1 scores are not finite"
    secs = []
    for r in range(args.runs):
        secs.append(timed(device, one_pass)[0])
        log(f"W1 run {r + 1}: {secs[-1]:.3f} s")
    tokens = sum(map(len, seqs))
    rate = tokens / min(secs)
    row = {"sequences": len(seqs), "tokens": tokens, "padded_tokens": sum(i.numel() for i, _ in batches),
           "batch_size": args.batch_size, "load_seconds": load_s, "seconds": secs, "best_seconds": min(secs),
           "tokens_per_s": rate, "seconds_per_query_100": W1_QUERY_TOKENS / rate, "peak_gpu_mib": peak_gpu_mib(device)}
    del model, scores, batches
    return row


def run_w2(args, device: torch.device) -> dict:
    prompt = torch.tensor([load_w2(args.w2_prompt_tokens)], device=device)
    mask = torch.ones_like(prompt)
    n = args.decode_tokens
    gen = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                           bos_token_id=None, pad_token_id=PAD, use_cache=True)
    model, load_s = build(AutoModelForCausalLM, args, device)

    def prefill() -> None:
        model(input_ids=prompt, attention_mask=mask, use_cache=True, logits_to_keep=1)

    def generate() -> torch.Tensor:
        out = model.generate(input_ids=prompt, attention_mask=mask, generation_config=gen)
        assert out.shape[1] - prompt.shape[1] == n, f"generate made {out.shape[1] - prompt.shape[1]} tokens, not {n}"
        return out

    prefill()  # warm-up
    generate()
    pre, total = [], []
    for r in range(args.runs):
        pre.append(timed(device, prefill)[0])
        total.append(timed(device, generate)[0])
        log(f"W2 run {r + 1}: prefill {pre[-1]:.3f} s, generate {total[-1]:.3f} s")
    decode = [t - p for p, t in zip(pre, total)]
    steps = n - 1  # generate's first new token comes out of its own prefill
    del model
    return {"prompt_tokens": prompt.shape[1], "decode_tokens": n, "decode_steps": steps, "load_seconds": load_s,
            "prefill_seconds": pre, "generate_seconds": total, "decode_seconds": decode,
            "prefill_tokens_per_s": prompt.shape[1] / min(pre),
            "decode_tokens_per_s": steps / min(decode) if steps else None,
            "end_to_end_seconds": min(total), "peak_gpu_mib": peak_gpu_mib(device)}


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=list(SHAPES), default="llama-3.2-3b")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    p.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="attn_implementation (default: sdpa)")
    p.add_argument("--workload", choices=["w1", "w2", "all"], default="all")
    p.add_argument("--batch-size", type=int, default=64, help="W1 sequences per padded batch (default: 64)")
    p.add_argument("--w1-sequences", type=int, default=100, help="W1 sequences to run, of 100 (default: 100)")
    p.add_argument("--w2-prompt-tokens", type=int, help="keep the first N W2 prompt tokens (default: all 2,052)")
    p.add_argument("--decode-tokens", type=int, default=64, help="W2 greedy new tokens (default: 64)")
    p.add_argument("--runs", type=int, default=3, help="timed runs of each workload (default: 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    if min(args.batch_size, args.decode_tokens, args.runs) < 1:
        p.error("--batch-size, --decode-tokens and --runs must be at least 1")

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print(f"error: --device {args.device} but CUDA is not available to torch {torch.__version__} "
                  "(use --device cpu for a smoke test)", file=sys.stderr)
            return 2
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU ({torch.get_num_threads()} threads)"
    report = {"engine": f"transformers {transformers.__version__} + torch {torch.__version__}, {args.dtype}, "
                        f"{device_name}, {args.attn}",
              "shape": args.shape, "dtype": args.dtype, "device": device_name, "attn": args.attn, "runs": args.runs}
    log(f"{report['engine']}, shape {args.shape}")
    with torch.inference_mode():
        for name, run in (("w1", run_w1), ("w2", run_w2)):
            if args.workload in (name, "all"):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                report[name] = run(args, device)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    if device.type == "cuda":
        report["peak_memory_mib"] = max(report[w]["peak_gpu_mib"] for w in ("w1", "w2") if w in report)
        report["peak_memory_kind"] = "torch.cuda.max_memory_allocated"
    else:
        report["peak_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        report["peak_memory_kind"] = "process peak RSS"

    if args.json:
        print(json.dumps(report))
        return 0
    w1, w2 = report.get("w1", {}), report.get("w2", {})
    columns = [("W1 tok/s", w1.get("tokens_per_s"), ".1f"), ("W1 s/query", w1.get("seconds_per_query_100"), ".3f"),
               ("W2 prefill tok/s", w2.get("prefill_tokens_per_s"), ".1f"),
               ("W2 decode tok/s", w2.get("decode_tokens_per_s"), ".1f"),
               ("W2 total s", w2.get("end_to_end_seconds"), ".3f"), ("peak MiB", report["peak_memory_mib"], ".0f")]
    print(f"engine: {report['engine']}\nshape:  {args.shape} (random weights)")
    print("  ".join(h for h, _, _ in columns))
    print("  ".join(fmt(v, s).rjust(len(h)) for h, v, s in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
