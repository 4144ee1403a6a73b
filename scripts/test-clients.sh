#!/usr/bin/env bash
# Calls `dear serve` (the default model) with real clients: the official Cohere Python
# SDK (pinned in tests/clients/requirements.txt, installed into its own venv under
# target/) and a TEI-shaped call over plain HTTP. Run by scripts/test.sh after the
# Rust tests (which build target/debug/dear).
#   bash scripts/test-clients.sh [path/to/dear]
set -euo pipefail
cd "$(dirname "$0")/.."
dear=${1:-target/debug/dear}
[ -x "$dear" ] || cargo build --locked --bin dear
venv=target/clients-venv
if ! "$venv/bin/python" -c "import cohere" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/clients/requirements.txt
fi
out=$(mktemp)
"$dear" serve --addr 127.0.0.1:0 >"$out" 2>target/test-clients-serve.log &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 1 600); do
  grep -q '^listening on ' "$out" && break
  kill -0 $pid 2>/dev/null || { cat target/test-clients-serve.log >&2; exit 1; }
  sleep 0.1
done
url=$(sed -n 's/^listening on //p' "$out")
[ -n "$url" ] || { echo "dear serve did not start" >&2; exit 1; }
"$venv/bin/python" tests/clients/check_clients.py "$url"
# SIGTERM: the server stops cleanly with exit 0.
kill -TERM $pid
wait $pid
echo "dear serve stopped with exit 0 on SIGTERM"
