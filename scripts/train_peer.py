#!/usr/bin/env python3
"""Replays the batches of a `dear train --save-batches FILE` run with the DeAR reference stack
(PyTorch + transformers + peft, CPU, f32) and reports its training speed as JSON.

The batches file (JSON Lines, written by dear):
  line 1   {"config": {loss, lora_r, lora_alpha, lora_dropout, targets, learning_rate,
            max_grad_norm, grad_accum, batch_groups, negatives, q_max_len, p_max_len,
            warmup_ratio, schedule, adamw {beta1, beta2, eps, weight_decay}, base_model, ...}}
  then     {"step": s, "micro": m, "groups": [[ids of seq 0, ids of seq 1, ...], ...]}
           one line per forward/backward pass; each group is the positive then its negatives,
           already DeAR-formatted ([bos] + query ids + [bos] + passage ids) and unpadded. The
           lines of one `step` (grad_accum passes) make one optimizer step.

What runs, as DeAR's pointwise_reranker (modeling.py / rank_loss.py) does:
  - AutoModelForSequenceClassification(num_labels=1) on the base model (a GGUF, which
    transformers dequantizes to f32 at load), pad_token_id = eos when the config has none;
  - peft get_peft_model(LoraConfig(task_type=SEQ_CLS, r, lora_alpha, lora_dropout,
    target_modules)): the LoRA matrices plus the `score` head (modules_to_save) train;
  - each pass: every sequence of its groups in one right-padded batch (--pad longest: to the
    pass's longest sequence, as a HF DataCollatorWithPadding; --pad max_length: to
    q_max_len + p_max_len, as DeAR's own preprocessing), scores -> [groups, 1 + negatives],
    the DeAR loss (softmax_ce: cross-entropy with target 0; the other binary losses too),
    divided by grad_accum, backward;
  - each step: clip_grad_norm_(max_grad_norm), torch.optim.AdamW, then the LR scheduler
    (transformers' linear / cosine / constant schedule with warmup);
  - --gradient-checkpointing: DeAR's optional --gradient_checkpointing (off in its
    train_pointwise.sh); without it PyTorch keeps every layer's activations for the
    backward (about 2.9 MB per padded token for SmolLM2-135M: 13-17 GB for a pass of 16
    sequences of up to 228 tokens), with it about half of that.
The teacher losses (ranknet/listnet/lambda_loss_teacher) and the KL term need teacher scores,
which the batches file does not carry: they are refused / left out.

Timing: the wall time of the optimizer steps after the first one (warm-up: allocator and
oneDNN priming), with the real (unpadded) and the padded tokens those steps processed;
tokens_per_second = real tokens / seconds. `all_steps` repeats the figures with the first
step included (dear's own tokens_per_second covers all of its steps).

  python scripts/train_peer.py --batches target/peers/train-batches.jsonl --threads 2
  python scripts/train_peer.py --write-synthetic /tmp/b.jsonl     # a random batches file
  python scripts/train_peer.py --batches /tmp/b.jsonl --pad max_length --max-steps 3

scripts/peers.sh runs this (TRAIN=1) next to `dear train`; CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import sys
import time
from pathlib import Path

MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENGINE = "pytorch+peft"
BINARY_LOSSES = (
    "softmax_ce",
    "ranknet_binary",
    "ranknet_binary_softmax_ce",
    "listnet_binary",
    "lambda_loss_binary",
)
TEACHER_LOSSES = ("ranknet_teacher", "listnet_teacher", "lambda_loss_teacher")
LAMBDA_K = 5


def default_model() -> Path:
    home = os.environ.get("DEAR_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "dear")
    return Path(home) / "models" / MODEL_NAME


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def log(msg: str) -> None:
    print(f"[train-peer] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# The batches file
# ---------------------------------------------------------------------------------------


def read_batches(path: str) -> tuple[dict, list[tuple[int, list[dict]]]]:
    """The config and the passes grouped by optimizer step, in file order."""
    config, steps = None, []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            obj = json.loads(line)
            if "config" in obj:
                if config is not None:
                    raise SystemExit(f"{path}:{n}: a second config line")
                config = obj["config"]
                continue
            if config is None:
                raise SystemExit(f"{path}:{n}: the first line must be the {{\"config\": ...}} line")
            if not steps or steps[-1][0] != obj["step"]:
                if any(s == obj["step"] for s, _ in steps):
                    raise SystemExit(f"{path}:{n}: step {obj['step']} is not contiguous")
                steps.append((obj["step"], []))
            steps[-1][1].append(obj)
    if config is None:
        raise SystemExit(f"{path}: no config line")
    if not steps:
        raise SystemExit(f"{path}: no batches")
    width = None
    for _, passes in steps:
        for p in passes:
            for g in p["groups"]:
                if width is None:
                    width = len(g)
                if len(g) != width or any(len(ids) == 0 for ids in g):
                    raise SystemExit(f"{path}: step {p['step']} micro {p['micro']}: groups of "
                                     f"{len(g)} sequences (expected {width}) or an empty sequence")
    neg = config.get("negatives")
    if neg is not None and width != neg + 1:
        raise SystemExit(f"{path}: groups of {width} sequences but negatives = {neg} in the config")
    return config, steps


def write_synthetic(path: str, args) -> None:
    """A random batches file shaped like dear's (for checking this script without dear)."""
    rng = random.Random(args.seed)
    bos, vocab = 1, 49152
    q_max, p_max, negs = 32, 196, 7
    config = {
        "loss": "softmax_ce", "lora_r": 8, "lora_alpha": 64.0, "lora_dropout": 0.1,
        "targets": ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "learning_rate": 1e-4, "max_grad_norm": 1.0, "grad_accum": 2, "batch_groups": 2,
        "negatives": negs, "q_max_len": q_max, "p_max_len": p_max, "warmup_ratio": 0.1,
        "schedule": "linear",
        "adamw": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
        "base_model": str(default_model()), "seed": args.seed, "synthetic": True,
    }

    def seq() -> list[int]:
        total = rng.randint(60, q_max + p_max)
        q = rng.randint(4, min(q_max - 2, total - 8))
        p = total - 2 - q
        # ids >= 3: no special token (0, 1, 2) inside the text, as a tokenizer gives
        return [bos] + [rng.randrange(3, vocab) for _ in range(q)] + [bos] + [rng.randrange(3, vocab) for _ in range(p)]

    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"config": config}) + "\n")
        for s in range(args.synthetic_steps):
            for m in range(config["grad_accum"]):
                groups = [[seq() for _ in range(negs + 1)] for _ in range(config["batch_groups"])]
                f.write(json.dumps({"step": s, "micro": m, "groups": groups}) + "\n")
    log(f"wrote {args.synthetic_steps} steps x {config['grad_accum']} passes x "
        f"{config['batch_groups']} groups x {negs + 1} sequences to {path}")


# ---------------------------------------------------------------------------------------
# DeAR's losses (pointwise_reranker/rank_loss.py and modeling.py's dispatch), as in
# dear-core/tests/golden/make_train_golden.py
# ---------------------------------------------------------------------------------------


def make_losses(torch, F):
    def pair_diff(x):
        return x[:, :, None] - x[:, None, :]

    def upper_mask(b, n):
        return torch.triu(torch.ones(b, n, n), diagonal=1).bool()

    def rank_net(pred, true):
        m = upper_mask(*pred.shape)
        target = torch.sigmoid(pair_diff(true.detach()))
        return F.binary_cross_entropy_with_logits(pair_diff(pred)[m], target[m])

    def list_net(pred, true):
        return F.kl_div(F.log_softmax(pred, dim=1), F.softmax(true.detach(), dim=1), reduction="batchmean")

    def lambda_loss(pred, true, k=LAMBDA_K):
        b, n = pred.shape
        true = true.detach()
        top = torch.sort(true, dim=1, descending=True).values[:, :k]
        idx = torch.arange(1, top.shape[1] + 1, dtype=torch.float32)
        idcg = ((2.0**top - 1.0) / torch.log2(idx + 1.0)).sum(-1)
        gains = 2.0**true - 1.0
        with torch.no_grad():
            order = torch.argsort(pred, dim=1, descending=True)
            pos = torch.empty(b, n)
            pos.scatter_(1, order, torch.arange(1, n + 1, dtype=torch.float32).expand(b, n).contiguous())
            disc = 1.0 / torch.log2(pos + 2.0)
        delta = (pair_diff(gains) * pair_diff(disc)).abs() / (idcg[:, None, None] + 1e-8)
        m = upper_mask(b, n)
        # rank_loss.py writes torch.logsigmoid (absent from torch); F.logsigmoid is the intent.
        return (-F.logsigmoid(pair_diff(pred)[m]) * delta[m]).mean()

    def softmax_ce(pred):
        return F.cross_entropy(pred, torch.zeros(pred.shape[0], dtype=torch.long))

    def binary(pred):
        rel = torch.zeros_like(pred)
        rel[:, 0] = 1.0
        return rel

    def main_loss(kind, s):
        if kind == "softmax_ce":
            return softmax_ce(s)
        if kind == "ranknet_binary":
            return rank_net(s, binary(s))
        if kind == "ranknet_binary_softmax_ce":
            return 0.5 * rank_net(s, binary(s)) + 0.5 * softmax_ce(s)
        if kind == "listnet_binary":
            return list_net(s, binary(s))
        if kind == "lambda_loss_binary":
            return lambda_loss(s, binary(s))
        raise ValueError(kind)

    return main_loss


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


def load_model(path: str, torch):
    from transformers import AutoModelForSequenceClassification

    p = Path(path)
    kw = dict(num_labels=1, dtype=torch.float32)
    if p.is_file():
        # A GGUF: transformers dequantizes it to f32 (gguf-py + accelerate).
        return AutoModelForSequenceClassification.from_pretrained(str(p.parent), gguf_file=p.name, **kw)
    return AutoModelForSequenceClassification.from_pretrained(path, **kw)


def run(args) -> dict:
    config, steps = read_batches(args.batches)
    loss_kind = config.get("loss", "softmax_ce")
    if loss_kind in TEACHER_LOSSES:
        raise SystemExit(f"loss {loss_kind!r} needs the teacher's scores, which the batches file does "
                         f"not carry; this peer replays the binary losses only ({', '.join(BINARY_LOSSES)})")
    if loss_kind not in BINARY_LOSSES:
        raise SystemExit(f"unknown loss {loss_kind!r} (known: {', '.join(BINARY_LOSSES)})")
    if config.get("teacher") or config.get("teacher_run"):
        log("warning: the run had a teacher; its KL term is not replayed (no teacher scores in the "
            "file), only the main loss")
    file_steps = len(steps)
    if args.max_steps is not None:
        steps = steps[: max(1, args.max_steps)]
    model_path = args.model or config.get("base_model") or str(default_model())

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")
    import peft
    import torch
    import torch.nn.functional as F
    import transformers
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(int(config.get("seed", 42)))  # the fresh score head and the LoRA A init

    t = time.perf_counter()
    base = load_model(model_path, torch)
    load_s = time.perf_counter() - t
    cfg = base.config
    if cfg.pad_token_id is None:
        # DeAR pads with eos. (SmolLM2's GGUF already gives pad = eos = <|im_end|>, id 2.)
        cfg.pad_token_id = cfg.eos_token_id if cfg.eos_token_id is not None else 0
    pad_id = cfg.pad_token_id
    model = get_peft_model(
        base,
        LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=int(config.get("lora_r", 32)),
            lora_alpha=float(config.get("lora_alpha", 64)),
            lora_dropout=float(config.get("lora_dropout", 0.1)),
            target_modules=list(config.get("targets") or
                                ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
            bias="none",
        ),
    )
    if args.gradient_checkpointing:
        # DeAR's --gradient_checkpointing (HF Trainer on the student's base model); off in its
        # train_pointwise.sh. Non-reentrant: no need for inputs that require grad.
        model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    rss_after_load = peak_rss_mib()
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
        f"{torch.get_num_threads()} threads, attention {cfg._attn_implementation}, gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}; {model_path} loaded "
        f"in {load_s:.1f} s; {n_trainable} trainable values; modules_to_save "
        f"{model.peft_config['default'].modules_to_save}; pad id {pad_id}; peak RSS {rss_after_load:.0f} MiB")

    adamw = config.get("adamw") or {}
    opt = torch.optim.AdamW(
        params,
        lr=float(config.get("learning_rate", 1e-4)),
        betas=(float(adamw.get("beta1", 0.9)), float(adamw.get("beta2", 0.999))),
        eps=float(adamw.get("eps", 1e-8)),
        weight_decay=float(adamw.get("weight_decay", 0.0)),
    )
    # The schedule's length: the run's total steps when the config says, else the file's steps.
    total = int(config.get("total_steps") or config.get("max_steps") or file_steps)
    warmup = math.ceil(float(config.get("warmup_ratio", 0.1)) * total)  # as dear and HF TrainingArguments
    schedule = config.get("schedule", "linear")
    makers = {
        "linear": lambda: get_linear_schedule_with_warmup(opt, warmup, total),
        "cosine": lambda: get_cosine_schedule_with_warmup(opt, warmup, total),
        "constant": lambda: get_constant_schedule_with_warmup(opt, warmup),
    }
    if schedule not in makers:
        raise SystemExit(f"unknown schedule {schedule!r} (known: {', '.join(makers)})")
    sched = makers[schedule]()
    main_loss = make_losses(torch, F)
    grad_accum = int(config.get("grad_accum", 1))
    max_grad_norm = float(config.get("max_grad_norm", 1.0))
    max_length = int(config.get("q_max_len", 32)) + int(config.get("p_max_len", 196))

    def batch_of(groups):
        seqs = [ids for g in groups for ids in g]
        longest = max(map(len, seqs))
        if args.pad == "max_length":
            if longest > max_length:
                log(f"warning: a {longest}-token sequence exceeds q_max_len + p_max_len = {max_length}")
            width = max(longest, max_length)
        else:
            width = longest
        # transformers pools the rightmost token that is not pad_token_id; with right padding
        # that is each sequence's real last token unless that token IS the pad id. DeAR pads
        # with eos (id 2 here), which a tokenized passage does not end with; should one do so,
        # this pass pads with (and pools on) another id that ends no sequence. Pad positions
        # are masked out and come after every real token (causal attention), so the pad id
        # changes no real position's output.
        pid = pad_id
        lasts = {ids[-1] for ids in seqs}
        if pid in lasts:
            pid = next(i for i in range(cfg.vocab_size) if i not in lasts)
        ids = torch.full((len(seqs), width), pid, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return ids, mask, pid, sum(map(len, seqs)), len(seqs) * width

    losses, step_secs, real_tok, pad_tok = [], [], [], []
    pad_swaps = 0
    for si, (step, passes) in enumerate(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_sum, real, padded = 0.0, 0, 0
        for p in passes:
            groups = p["groups"]
            ids, mask, pid, r, pt = batch_of(groups)
            if pid != pad_id:
                pad_swaps += 1
            cfg.pad_token_id = pid
            scores = model(input_ids=ids, attention_mask=mask).logits[:, 0].view(len(groups), len(groups[0]))
            cfg.pad_token_id = pad_id
            loss = main_loss(loss_kind, scores)
            (loss / grad_accum).backward()
            loss_sum += float(loss.detach())
            real += r
            padded += pt
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=max_grad_norm)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        step_secs.append(time.perf_counter() - t0)
        real_tok.append(real)
        pad_tok.append(padded)
        losses.append(loss_sum / len(passes))
        log(f"step {step}: {len(passes)} passes, loss {losses[-1]:.4f}, grad norm {float(norm):.3f}, "
            f"lr {lr:.2e}, {real} real / {padded} padded tokens, {step_secs[-1]:.2f} s, "
            f"{real / step_secs[-1]:.0f} tok/s")

    timed = slice(1, None) if len(steps) > 1 else slice(0, None)
    if len(steps) == 1:
        log("warning: one step only; it is timed (no warm-up step excluded)")
    secs = sum(step_secs[timed])
    real = sum(real_tok[timed])
    padded = sum(pad_tok[timed])
    return {
        "engine": ENGINE,
        "threads": torch.get_num_threads(),
        "pad": args.pad,
        "steps_timed": len(step_secs[timed]),
        "real_tokens": real,
        "padded_tokens": padded,
        "seconds": secs,
        "tokens_per_second": real / secs,
        "peak_rss_mib": peak_rss_mib(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "losses": losses,
        # Extras.
        "all_steps": {
            "steps": len(step_secs),
            "real_tokens": sum(real_tok),
            "padded_tokens": sum(pad_tok),
            "seconds": sum(step_secs),
            "tokens_per_second": sum(real_tok) / sum(step_secs),
        },
        "step_seconds": step_secs,
        "loss": loss_kind,
        "model": model_path,
        "load_seconds": load_s,
        "peak_rss_after_load_mib": rss_after_load,
        "trainable_values": n_trainable,
        "attn_implementation": cfg._attn_implementation,
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "pad_token_id": pad_id,
        "passes_with_other_pad_id": pad_swaps,
        "schedule": {"name": schedule, "warmup_steps": warmup, "total_steps": total},
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Replay `dear train --save-batches` batches with PyTorch + peft (CPU, f32) and time them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--batches", help="the JSON Lines file of `dear train --save-batches`")
    p.add_argument("--model", default=None,
                   help="the base model (a GGUF file or HF dir) [default: the config line's base_model]")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--pad", choices=("longest", "max_length"), default="longest",
                   help="pad each pass to its longest sequence, or to q_max_len + p_max_len")
    p.add_argument("--max-steps", type=int, default=None, help="replay the first N optimizer steps only")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each decoder layer in the backward (less memory, ~1/3 more compute)")
    p.add_argument("--write-synthetic", metavar="FILE",
                   help="write a random batches file shaped like dear's to FILE and exit")
    p.add_argument("--synthetic-steps", type=int, default=3, help="optimizer steps of --write-synthetic")
    p.add_argument("--seed", type=int, default=42, help="seed of --write-synthetic")
    args = p.parse_args(argv)
    if not args.write_synthetic and not args.batches:
        p.error("--batches FILE is required (or --write-synthetic FILE)")
    if args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.write_synthetic:
        write_synthetic(args.write_synthetic, args)
        return 0
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
