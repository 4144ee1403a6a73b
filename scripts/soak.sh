#!/usr/bin/env bash
# The soak of issue 17: many threads over ONE shared pipeline (a tantivy index, BM25,
# the pointwise stage's batching scheduler, the score cache) give the serial results,
# and a long mixed workload does not grow the process's memory.
#
#   equal-on        16 threads x 1000 searches, cache on, the default model + student
#                   (16 SciFact queries x 2 option sets, 20 BM25 candidates): the
#                   first 32 searches run the model, 16 at a time in shared batches,
#                   the rest come from the cache; all compared with a serial run.
#   equal-off       16 threads x 1000 searches, cache off, the tiny test classifier
#                   (dear-core/tests/golden/lora/tiny-seqcls, passages cut to 48
#                   tokens): every search runs BM25 + the pointwise scheduler.
#   equal-off-real  16 threads x 3 searches, cache off, the default model, 10
#                   candidates: the real model in shared batches with no cache.
#   rss             SOAK_MINUTES (30) of a mixed workload on the default model (4
#                   threads; pointwise searches of 10..100 candidates, zero-shot
#                   listwise, Reranker::rank, cache on and off, tiny deadlines, bad
#                   inputs), VmRSS every 10 s; fails if it grows 5 % or more after
#                   the warm-up (10 % of the run, at least 2 minutes).
#
# Scores are compared bit for bit (tolerance 0). Logs and the RSS CSV go to
# target/soak/ (summary.txt collects every run's result lines); a summary is printed
# at the end. Runs under `nice -n 10`.
#
#   bash scripts/soak.sh
#   SOAK_PARTS="equal-on rss" SOAK_MINUTES=5 bash scripts/soak.sh
#   SOAK_PARTS=rss SOAK_MINUTES=45 SOAK_WARMUP=10 bash scripts/soak.sh   # growth from minute 10
set -euo pipefail
cd "$(dirname "$0")/.."
parts=${SOAK_PARTS:-equal-on equal-off equal-off-real rss}
minutes=${SOAK_MINUTES:-30}
threads=${SOAK_THREADS:-16}
searches=${SOAK_SEARCHES:-1000}
out=${SOAK_OUT:-target/soak}
mkdir -p "$out"
nice -n 10 cargo build --profile fast --example soak --locked
bash scripts/fetch-model.sh >/dev/null
soak=./target/fast/examples/soak
tiny=dear-core/tests/golden/lora/tiny-seqcls
dataset=../shared/data/scifact
[ -f "$dataset/corpus.jsonl" ] || dataset=data/rust-book

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "dataset: $dataset"
status=0
run() {
  local name=$1
  shift
  echo "== $name: soak $*"
  local start=$SECONDS
  if nice -n 10 "$soak" --dataset "$dataset" "$@" >"$out/$name.log" 2>"$out/$name.err"; then
    echo "$name: PASS ($((SECONDS - start)) s)" | tee -a "$out/summary.txt"
  else
    echo "$name: FAIL ($((SECONDS - start)) s); see $out/$name.log and $out/$name.err" | tee -a "$out/summary.txt"
    status=1
  fi
  grep -E '^(equal|serial reference|threaded|rss|malloc arenas):' "$out/$name.log" | sed 's/^/  /' | tee -a "$out/summary.txt" || true
}
echo "== soak $(date -u +%FT%TZ): $parts" >>"$out/summary.txt"
for part in $parts; do
  case $part in
    equal-on)
      run equal-on --mode equal --threads "$threads" --searches "$searches" --cache on \
        --queries 16 --candidates 20 ;;
    equal-off)
      run equal-off --mode equal --threads "$threads" --searches "$searches" --cache off \
        --queries 64 --candidates 20 --model "$tiny" --max-passage-tokens 48 ;;
    equal-off-real)
      run equal-off-real --mode equal --threads "$threads" --searches 3 --cache off \
        --queries 24 --candidates 10 ;;
    rss)
      run rss --mode rss --threads 4 --minutes "$minutes" --queries 64 --csv "$out/rss.csv" \
        ${SOAK_WARMUP:+--warmup-minutes "$SOAK_WARMUP"} ;;
    *) echo "unknown part '$part' (equal-on, equal-off, equal-off-real, rss)" >&2; exit 2 ;;
  esac
done
echo "== summary (all runs so far: $out/summary.txt)"
cat "$out/summary.txt"
exit $status
