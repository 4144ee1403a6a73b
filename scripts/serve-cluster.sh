#!/usr/bin/env bash
# Scale-out on loopback: N `dear serve` replicas (the default model) behind HAProxy from
# Debian's packages (health checks on GET /health, least-connections balancing), and a
# bounded load test (examples/serve_load.rs: fixed concurrency, fixed request count; it
# stops by itself) through the balancer:
#   1. one replica;  2. two replicas;  3. two replicas, one killed (kill -9) mid-run.
# Prints one JSON line per run and writes them to $OUT/cluster.jsonl.
#
#   bash scripts/serve-cluster.sh
#   CONCURRENCY=8 REQUESTS=48 DOCS=25 PROFILE=fast bash scripts/serve-cluster.sh
#
# Loopback only; every process it starts is stopped on exit. Needs haproxy (installed
# with apt-get when missing and run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
concurrency=${CONCURRENCY:-8}
requests=${REQUESTS:-48}
docs=${DOCS:-25}
workers=${WORKERS:-8}
profile=${PROFILE:-release}
out=${OUT:-eval-runs/serve-cluster}
base_port=${BASE_PORT:-18080}
lb_port=$((base_port + 100))
mkdir -p "$out"
: > "$out/cluster.jsonl"

if ! command -v haproxy >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q haproxy >/dev/null
  else
    echo "haproxy is missing: sudo apt-get install haproxy" >&2
    exit 1
  fi
fi
bash scripts/fetch-model.sh >/dev/null
cargo build --profile "$profile" --locked --bin dear --example serve_load
dear=./target/$profile/dear
load=./target/$profile/examples/serve_load

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/haproxy.pid" ] && kill "$(cat "$work/haproxy.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap "exit 130" INT TERM

start_replica() { # $1: index
  local port=$((base_port + $1))
  "$dear" serve --addr "127.0.0.1:$port" --workers "$workers" >"$work/r$1.out" 2>"$work/r$1.err" &
  pids+=($!)
  echo $! > "$work/r$1.pid"
  for _ in $(seq 1 600); do
    grep -q '^listening on ' "$work/r$1.out" && return 0
    sleep 0.1
  done
  echo "replica $1 did not start" >&2; cat "$work/r$1.err" >&2; exit 1
}

balance() { # $@: replica indexes behind the balancer
  [ -f "$work/haproxy.pid" ] && kill "$(cat "$work/haproxy.pid")" 2>/dev/null && sleep 0.5
  {
    echo "global"
    echo "  maxconn 256"
    # Large enough to buffer a request of 25+ passages, so that HAProxy can replay it.
    echo "  tune.bufsize 262144"
    echo "defaults"
    echo "  mode http"
    echo "  timeout connect 1s"
    echo "  timeout client 300s"
    echo "  timeout server 300s"
    echo "  retries 3"
    echo "  option redispatch"
    echo "frontend fe"
    echo "  bind 127.0.0.1:$lb_port"
    echo "  default_backend dear"
    echo "backend dear"
    echo "  balance leastconn"
    # Reranking is idempotent: a request whose replica died before answering is
    # replayed on another one.
    echo "  option http-buffer-request"
    echo "  retry-on conn-failure empty-response"
    echo "  option httpchk GET /health"
    echo "  http-check expect status 200"
    echo "  default-server inter 500ms fall 2 rise 1"
    for i in "$@"; do echo "  server r$i 127.0.0.1:$((base_port + i)) check"; done
  } > "$work/haproxy.cfg"
  haproxy -f "$work/haproxy.cfg" -D -p "$work/haproxy.pid"
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$lb_port/health" >/dev/null && return 0
    sleep 0.1
  done
  echo "haproxy did not come up" >&2; exit 1
}

run() { # $1: label, $2: skip (fresh passages per run)
  "$load" --url "http://127.0.0.1:$lb_port" --concurrency "$concurrency" \
    --requests "$requests" --docs "$docs" --skip "$2" \
    | sed "s/^{/{\"run\":\"$1\",/" | tee -a "$out/cluster.jsonl"
}

start_replica 1
start_replica 2
balance 1
run "1 replica" 0
balance 1 2
run "2 replicas" "$requests"
# Kill replica 2 once about a third of the run's requests have been answered.
(
  sleep 2
  target=$((requests / 3))
  for _ in $(seq 1 3000); do
    done_count=$(curl -s "http://127.0.0.1:$((base_port + 1))/metrics" "http://127.0.0.1:$((base_port + 2))/metrics" \
      | awk '/^dear_http_requests_total\{endpoint="\/v2\/rerank",status="200"\}/ {s += $2} END {print s + 0}')
    [ "$done_count" -ge $((2 * requests + target)) ] && break
    sleep 0.1
  done
  running=$(curl -s "http://127.0.0.1:$((base_port + 2))/metrics" | awk '/^dear_requests_running/ {print $2}')
  kill -9 "$(cat "$work/r2.pid")"
  echo "killed replica 2 (kill -9) with ${running:-?} requests running on it" >&2
) &
killer=$!
run "2 replicas, one killed mid-run" $((2 * requests))
wait $killer
echo "results: $out/cluster.jsonl" >&2
