#!/usr/bin/env bash
# Runs `dear bench` over the fixed workloads (benches/data/) on the default model and on
# random-weight models in the shapes of Llama-3.2-1B, Llama-3.2-3B and Llama-3.1-8B,
# one process per model so that each peak memory is that model's own. Prints one JSON
# line per run (and keeps them in target/bench/*.json). Not run by CI.
#
#   bash scripts/bench.sh            # everything (about 20 minutes on 2 cores)
#   RUNS=3 bash scripts/bench.sh     # best of 3
#
# The big shapes run shortened workloads (fewer W1 sequences, a shorter W2 prompt):
# their rates are per token, so they give the cost curve without hours of CPU time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-model.sh >/dev/null
cargo build --release --locked --bin dear
dear=./target/release/dear
runs=${RUNS:-1}
mkdir -p target/bench
one() {
  local name=$1
  shift
  "$dear" bench --runs "$runs" --json "$@" | tee "target/bench/$name.json"
}
one smollm2-q4_1 
one smollm2-q4_1-shared-prefix --share-prefix --workload w1
one smollm2-q4_1-int8 --kernel int8
# The same weights re-quantized at load (q8_0, q4_0, q4_k) and expanded to f32 (dense).
for q in q8_0 q4_0 q4_k dense; do
  one "smollm2-$q" --quant "$q"
done
one llama-3.2-1b-q4_0 --synthetic llama-3.2-1b --sequences 10 --prompt-tokens 512 --decode-tokens 16
one llama-3.2-3b-q4_0 --synthetic llama-3.2-3b --sequences 4 --prompt-tokens 256 --decode-tokens 8
one llama-3.1-8b-q4_0 --synthetic llama-3.1-8b --sequences 2 --prompt-tokens 256 --decode-tokens 8
