#!/usr/bin/env bash
# Long documents: DeAR's truncation (the first 193 passage tokens) against MaxP
# chunking (overlapping windows of the pointwise budget, the best window's score) on
# SciFact's test split, whose abstracts often run past the budget. Same first stage
# (tantivy BM25), same candidates, same model; only `--max-p` differs.
#
#   bash scripts/maxp-scifact.sh            # QUERIES=40 CANDIDATES=20 by default
#   QUERIES=300 CANDIDATES=100 bash scripts/maxp-scifact.sh   # every judged query
#
# MODEL=path-or-hub-id picks another model; further arguments go to `dear eval` (e.g.
# --pointwise-adapter ORG/ADAPTER --head classifier). Needs ../shared/data/scifact (or
# DEAR_SHARED_DIR). Prints one JSON line per setting
# and writes the runs under target/maxp-scifact/. DEAR_BIN=path skips the build.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${DEAR_SHARED_DIR:-../shared}
dataset=$shared/data/scifact
queries=${QUERIES:-40}
candidates=${CANDIDATES:-20}
model=${MODEL:-$(bash scripts/fetch-model.sh)}
if [ -z "${DEAR_BIN:-}" ]; then cargo build --release --locked --bin dear >&2; fi
dear=${DEAR_BIN:-./target/release/dear}
out=target/maxp-scifact
mkdir -p "$out"
common=(eval --dataset "$dataset" --index "$out/index" --model "$model"
  --stages bm25,pointwise --candidates "$candidates" --queries "$queries" --json "$@")
echo "truncated: $("$dear" "${common[@]}" --runs-dir "$out/truncated")"
echo "maxp:      $("$dear" "${common[@]}" --max-p --runs-dir "$out/maxp")"
