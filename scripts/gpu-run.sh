#!/usr/bin/env bash
# Runs on an NVIDIA GPU machine (H100/H200, driver >= 580), from a copy of this repository
# with target/gpu-carry/ from `bash scripts/build-cuda.sh` carried along. Needs python3 with
# torch + transformers (the reference) and the CUDA 13 runtime libraries of PyTorch's
# `nvidia` wheels (libcudart.so.13, libcublas*.so.13, libcurand.so.10, libnvrtc.so.13).
#
#   bash scripts/gpu-run.sh                       # everything below
#   STEPS=golden bash scripts/gpu-run.sh          # only the golden checks
#   SHAPES=llama-3.1-8b STEPS=bench bash scripts/gpu-run.sh
#
# Steps (STEPS, comma-separated; default golden,bench):
#   golden  dear-core's device checks on CUDA (DEAR_TEST_DEVICE=cuda: packed-batch logits
#           f32/bf16, greedy generation with the KV cache, unmerged LoRA scores; tolerances
#           in dear-core/tests/device.rs), after the whole CPU suite of that binary is known
#           to pass in CI;
#   bench   for each shape in SHAPES (default llama-3.2-3b,llama-3.1-8b): `dear bench` with
#           random bf16 weights on the GPU (W1: 100 × 228 tokens in one packed batch; W2: the
#           2,052-token prompt + 64 greedy tokens), then scripts/gpu-reference.py (PyTorch +
#           transformers, LlamaForSequenceClassification in bf16, batches of 64 padded to 228;
#           `generate` for W2) on the same shape, one after the other in this invocation.
# Results go to $OUT (the device tool's output folder) or target/gpu-results/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/target/gpu-results}
STEPS=${STEPS:-golden,bench}
SHAPES=${SHAPES:-llama-3.2-3b,llama-3.1-8b}
RUNS=${RUNS:-3}
mkdir -p "$OUT"
log() { echo "gpu-run: $*" >&2; }

carry=$ROOT/target/gpu-carry
[ -f "$carry/dear.xz" ] || { log "no $carry/dear.xz: run scripts/build-cuda.sh and carry target/gpu-carry"; exit 2; }
bin=$(mktemp -d)
for f in "$carry"/*.xz; do
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$f" "$bin/$(basename "$f" .xz)"
  chmod +x "$bin/$(basename "$f" .xz)"
done
log "built from commit $(cat "$carry/commit" 2>/dev/null || echo '?'); this tree: $(git rev-parse HEAD 2>/dev/null || echo '?')"

# The executables were compiled with this checkout at /work/main (fixtures and bench data are
# found through the compile-time manifest path).
if [ ! -e /work/main/dear-core ] && [ "$ROOT" != /work/main ]; then
  mkdir -p /work && ln -sfn "$ROOT" /work/main
fi

libs=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
ldd "$bin/dear" | tee "$OUT/ldd.txt"
if grep -q 'not found' "$OUT/ldd.txt"; then
  log "unresolved libraries (see above)"; exit 2
fi

if [[ ,$STEPS, == *,golden,* ]]; then
  log "golden checks on CUDA"
  DEAR_TEST_DEVICE=cuda "$bin/integration" device:: 2>&1 | tee "$OUT/golden-cuda.txt"
fi

if [[ ,$STEPS, == *,bench,* ]]; then
  IFS=, read -r -a shapes <<<"$SHAPES"
  for shape in "${shapes[@]}"; do
    log "dear bench, $shape, bf16 on CUDA"
    "$bin/dear" bench --device cuda --dtype bf16 --synthetic "$shape" --synthetic-quant dense \
      --batch-tokens 22800 --runs "$RUNS" --json >"$OUT/dear-$shape.json"
    cat "$OUT/dear-$shape.json"
    log "PyTorch reference, $shape, bf16 on CUDA"
    python3 scripts/gpu-reference.py --shape "$shape" --runs "$RUNS" --json >"$OUT/torch-$shape.json"
    cat "$OUT/torch-$shape.json"
  done
fi
