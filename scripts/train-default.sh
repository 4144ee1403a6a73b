#!/usr/bin/env bash
# Trains (or, when its checkpoints exist, resumes) dear's default pointwise student: a LoRA
# adapter + score head on the default model (SmolLM2-135M-Instruct, Q4_1 GGUF), distilled with
# DeAR's softmax cross-entropy from
#   - SciFact's training split (../shared/data/scifact, qrels/train.tsv; never its test split),
#   - self-supervised title -> passage pairs from the bundled Rust book (data/rust-book),
# with BM25 hard negatives. Cranfield and CISI are never seen, so the student is evaluated on
# them as unseen collections. The run is deterministic (seeded); a killed run continues from
# its newest checkpoint when this script runs again, and ends with the same adapter.
#
#   bash scripts/train-default.sh                # train-runs/smollm2-student/
#   OUT=/tmp/s MAX_STEPS=20 bash scripts/train-default.sh   # a short run elsewhere
#   MAX_STEPS=300 bash scripts/train-default.sh  # the shipped student's first cycle, then
#   MAX_STEPS=600 bash scripts/train-default.sh  # its second: resumes step 300's checkpoint with the
#                                                # schedule stretched to 600 steps (a warm restart)
#   INIT_ADAPTER=models/smollm2-135m-dear-student OUT=train-runs/cycle2 \
#     bash scripts/train-default.sh              # another cycle from the shipped adapter
# Keep the seed across cycles: it also picks the held-back validation queries.
#
# Time on 2 cores: about 12 s per optimizer step (16 sequences), ~90 minutes per epoch.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-train-runs/smollm2-student}
model=$(bash scripts/fetch-model.sh)
profile=${PROFILE:-release}   # PROFILE=fast: the same code without LTO (quicker to build)
cargo build --profile "$profile" --locked --bin dear
args=(
  --model "$model" --base-model-name HuggingFaceTB/SmolLM2-135M-Instruct
  --dataset ../shared/data/scifact --split train
  --self-supervised data/rust-book/corpus.jsonl
  --loss softmax_ce --lora-r 16 --lora-alpha 32 --lora-dropout 0.1
  --lr 3e-4 --warmup-ratio 0.1 --negatives 3 --negative-depth 30
  --batch-groups 2 --grad-accum 2 --epochs 2 --save-every 10 --dev-queries 50 --seed "${SEED:-20261205}"
  --out "$out"
)
if [ -n "${MAX_STEPS:-}" ]; then args+=(--max-steps "$MAX_STEPS"); fi
if [ -n "${INIT_ADAPTER:-}" ]; then args+=(--init-adapter "$INIT_ADAPTER"); fi
if [ -d "$out/checkpoints" ]; then args+=(--resume); fi
exec "./target/$profile/dear" train "${args[@]}"
