#!/usr/bin/env bash
# `dear serve` under load on this machine: throughput and latency at 1, 4, 8 and 16
# concurrent clients (REQUESTS rerank requests of DOCS SciFact passages each, every run
# its own passages), then the same requests through the library in process (the
# server's overhead). One JSON line per run, also written to $OUT/serve.jsonl.
#
#   bash scripts/bench-serve.sh
#   REQUESTS=16 DOCS=25 LEVELS="1 8" PROFILE=fast bash scripts/bench-serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${REQUESTS:-16}
docs=${DOCS:-25}
levels=${LEVELS:-1 4 8 16}
profile=${PROFILE:-release}
out=${OUT:-eval-runs/serve-bench}
port=${PORT:-18280}
mkdir -p "$out"
: > "$out/serve.jsonl"
bash scripts/fetch-model.sh >/dev/null
cargo build --profile "$profile" --locked --bin dear --example serve_load
dear=./target/$profile/dear
load=./target/$profile/examples/serve_load
log=$(mktemp)
"$dear" serve --addr "127.0.0.1:$port" --workers 16 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
trap 'exit 130' INT TERM
for _ in $(seq 1 600); do grep -q '^listening on ' "$log" && break; sleep 0.1; done
grep -q '^listening on ' "$log" || { echo "dear serve did not start:" >&2; cat "$log" >&2; exit 1; }
skip=0
for c in $levels; do
  "$load" --url "http://127.0.0.1:$port" --concurrency "$c" --requests "$requests" \
    --docs "$docs" --skip "$skip" | tee -a "$out/serve.jsonl"
  skip=$((skip + requests))
done
kill -TERM $pid; wait $pid || true
skip=0
for c in $levels; do
  "$load" --in-process --concurrency "$c" --requests "$requests" --docs "$docs" \
    --skip "$skip" | tee -a "$out/serve.jsonl"
  skip=$((skip + requests))
done
