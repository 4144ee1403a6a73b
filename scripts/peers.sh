#!/usr/bin/env bash
# Measures dear against its peers on the fixed workloads (benches/data/: W1 pointwise, W2
# listwise) in one invocation, with the same thread count and the same token ids, and prints
# a table with the ratios dear/peer:
#   - dear (`dear bench --json`: W1 with and without --share-prefix, W2);
#   - llama.cpp through llama-cpp-python, built here from its PyPI sdist (which vendors
#     llama.cpp) with -DGGML_NATIVE=ON: W1 one sequence at a time and batched over many
#     sequences per llama_decode, W2 prefill + greedy decode, on the same Q4_1 GGUF;
#   - transformers + PyTorch on CPU in f32 with padded batches, as the DeAR reference code
#     runs (the GGUF dequantized to f32 at load).
# The peers' versions are pinned in scripts/peers-requirements.txt and installed from PyPI
# into a virtual environment at target/peers-venv (kept for later runs). CI does not run
# this script.
#
#   bash scripts/peers.sh                       # 2 threads, best of 3 runs
#   THREADS=4 RUNS=5 bash scripts/peers.sh
#   SEQUENCES=10 PROMPT_TOKENS=512 DECODE_TOKENS=16 RUNS=1 bash scripts/peers.sh   # shortened
#   TRAIN=1 bash scripts/peers.sh               # + the training comparison below
#   TRAIN=only TRAIN_STEPS=4 bash scripts/peers.sh   # the training comparison alone
#
# Training (TRAIN=1, or TRAIN=only to skip the inference workloads): `dear train` on SciFact's
# train split (../shared/data/scifact: 40 queries, TRAIN_STEPS optimizer steps, default 6;
# LoRA r 8, dear's other defaults: 2 groups of 1 positive + 7 negatives per pass, 2 passes
# per step) with --save-batches, then scripts/train_peer.py replays exactly those batches with
# PyTorch + peft (CPU, f32, the GGUF dequantized), once padding each pass to its longest
# sequence (a HF DataCollatorWithPadding) and once to q_max_len + p_max_len = 228 (DeAR's own
# preprocessing). Reported: real (unpadded) tokens per second of training and peak RSS, with
# the ratio dear/peer. The peer's tokens/s leave out its first (warm-up) step; dear's cover
# all of its steps. On 2 idle cores PyTorch trained random batches of this shape at about
# 110-130 real tokens/s (35-55 s per step) and peaked at 13 GB (pad longest) to 17 GB
# (pad max_length) of RSS: it keeps every layer's activations for the backward. Extra
# arguments for both peer runs go in TRAIN_PEER_ARGS, e.g. TRAIN_PEER_ARGS=--gradient-checkpointing
# (recomputes each layer in the backward: about half the memory).
#
# Time on 2 cores: the first run builds llama.cpp from source (about 5-15 minutes; pip keeps
# the built wheel in its cache) and downloads PyTorch (the PyPI wheel with its CUDA
# dependencies, a few GB); the measurements then take about 15-20 minutes with RUNS=3
# (every engine runs each workload RUNS times, llama.cpp's W1 twice: one sequence at a time
# and batched). Results are kept in target/peers/.
set -euo pipefail
cd "$(dirname "$0")/.."

threads=${THREADS:-2}
runs=${RUNS:-3}
venv=target/peers-venv
out=target/peers
model=$(bash scripts/fetch-model.sh)

# The peers' environment, rebuilt when the pinned requirements change.
if [ ! -x "$venv/bin/python" ] || ! cmp -s scripts/peers-requirements.txt "$venv/.requirements"; then
  echo "peers: installing scripts/peers-requirements.txt into $venv (builds llama.cpp; ~10+ minutes on 2 cores)" >&2
  python3 -m venv "$venv"
  # llama-cpp-python from its sdist; skip the multimodal (mtmd) library, which the
  # workloads do not use.
  CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$venv/bin/python" -m pip install --disable-pip-version-check \
    --no-binary llama-cpp-python -r scripts/peers-requirements.txt
  cp scripts/peers-requirements.txt "$venv/.requirements"
fi

cargo build --release --locked --bin dear
dear=./target/release/dear

# dear (candle and its rayon pool) takes its thread count from RAYON_NUM_THREADS.
export RAYON_NUM_THREADS=$threads
common=(--model "$model" --runs "$runs" --json)
peer_args=(--model "$model" --threads "$threads" --runs "$runs" --stat best)
if [ -n "${SEQUENCES:-}" ]; then
  common+=(--sequences "$SEQUENCES")
  peer_args+=(--w1-sequences "$SEQUENCES")
fi
decode=${DECODE_TOKENS:-64}
w2_args=(--decode-tokens "$decode")
peer_args+=(--decode-tokens "$decode")
if [ -n "${PROMPT_TOKENS:-}" ]; then
  w2_args+=(--prompt-tokens "$PROMPT_TOKENS")
  peer_args+=(--w2-prompt-tokens "$PROMPT_TOKENS")
fi

train=${TRAIN:-0}
mkdir -p "$out"
if [ "$train" != only ]; then
  rm -f "$out"/dear-*.json
  echo "peers: dear W1" >&2
  "$dear" bench "${common[@]}" --workload w1 >"$out/dear-w1.json"
  echo "peers: dear W1, shared prefix" >&2
  "$dear" bench "${common[@]}" --workload w1 --share-prefix >"$out/dear-w1-shared-prefix.json"
  echo "peers: dear W2" >&2
  "$dear" bench "${common[@]}" --workload w2 "${w2_args[@]}" >"$out/dear-w2.json"

  # `dear bench --runs N` reports the best of N runs, so the peers do too (--stat best).
  "$venv/bin/python" scripts/peers.py "${peer_args[@]}" \
    --dear-json "$out/dear-w1.json" "$out/dear-w1-shared-prefix.json" "$out/dear-w2.json" \
    | tee "$out/peers.txt"
fi

# Training: dear, then PyTorch + peft on the very batches dear trained on.
if [ "$train" = 1 ] || [ "$train" = only ]; then
  data=../shared/data/scifact
  if [ ! -f "$data/corpus.jsonl" ]; then
    echo "peers: no SciFact at $data (corpus.jsonl, queries.jsonl, qrels/train.tsv)" >&2
    exit 1
  fi
  rm -f "$out"/train-*.json "$out"/train-*.txt "$out/train-batches.jsonl"
  echo "peers: dear train (${TRAIN_STEPS:-6} steps)" >&2
  # Peak RSS in KiB from GNU time (%M), written to its own file.
  /usr/bin/time -f %M -o "$out/train-dear-rss-kib.txt" \
    "$dear" train --model "$model" --dataset "$data" --split train --max-queries 40 \
    --max-steps "${TRAIN_STEPS:-6}" --dev-queries 0 --lora-r 8 --save-every 0 \
    --out "$out/train-dear" --overwrite --save-batches "$out/train-batches.jsonl" --json \
    >"$out/train-dear.json"
  echo "peers: PyTorch + peft on the same batches, padded to the longest sequence" >&2
  "$venv/bin/python" scripts/train_peer.py --batches "$out/train-batches.jsonl" \
    --model "$model" --threads "$threads" ${TRAIN_PEER_ARGS:-} >"$out/train-torch.json"
  echo "peers: PyTorch + peft on the same batches, padded to q_max_len + p_max_len" >&2
  "$venv/bin/python" scripts/train_peer.py --batches "$out/train-batches.jsonl" \
    --model "$model" --threads "$threads" ${TRAIN_PEER_ARGS:-} --pad max_length >"$out/train-torch-max-length.json"
  "$venv/bin/python" - "$out" "$threads" <<'PY' | tee "$out/train.txt"
import json, sys
from pathlib import Path

out, threads = Path(sys.argv[1]), sys.argv[2]

def last_json(path):
    obj = None
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                pass
    if obj is None:
        raise SystemExit(f"{path}: no JSON object")
    return obj

def find(obj, key):
    """obj[key], or the first nested dict's key."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            hit = find(v, key)
            if hit is not None:
                return hit
    return None

dear = last_json(out / "train-dear.json")
rss_kib = (out / "train-dear-rss-kib.txt").read_text().split()
rows = [("dear", find(dear, "tokens_per_second"), float(rss_kib[-1]) / 1024.0, "all steps")]
peers = []
for name, label in (("train-torch.json", "pytorch+peft, pad longest"),
                    ("train-torch-max-length.json", "pytorch+peft, pad max_length")):
    p = last_json(out / name)
    peers.append(p)
    rows.append((label, p["tokens_per_second"], p["peak_rss_mib"],
                 f"{p['steps_timed']} steps after the first"))
d = rows[0][1]
print(f"training: dear train on SciFact train (40 queries), {threads} threads; real (unpadded) tokens/s")
print(f"{'engine':<30} {'tok/s':>8} {'peak MiB':>9} {'dear/peer':>9}  timed")
for label, tps, rss, timed in rows:
    ratio = "-" if label == "dear" or not d or not tps else f"{d / tps:.2f}"
    print(f"{label:<30} {tps:>8.1f} {rss:>9.0f} {ratio:>9}  {timed}")
for p in peers:
    print(f"{p['engine']} pad {p['pad']}: {p['real_tokens']} real / {p['padded_tokens']} padded tokens, "
          f"{p['seconds']:.1f} s; all steps {p['all_steps']['tokens_per_second']:.1f} tok/s; "
          f"losses {' '.join(f'{l:.4f}' for l in p['losses'])}")
print("dear/peer > 1: dear trains faster (peer tok/s without its warm-up step; dear's over all steps)")
PY
fi
