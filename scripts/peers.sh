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

mkdir -p "$out"
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
