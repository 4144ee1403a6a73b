#!/usr/bin/env bash
# Coverage-guided fuzzing of dear-core's parsers with cargo-afl (stable Rust).
#
#   bash scripts/fuzz.sh                 # every target, FUZZ_SECONDS each, one after another
#   bash scripts/fuzz.sh gguf qrels      # only these
#
# Environment:
#   FUZZ_SECONDS  seconds per target (default 600)
#   FUZZ_NICE     nice level of the fuzzer (default 19)
#   FUZZ_TIMEOUT  ms after which one input counts as a hang (default 1000)
#   FUZZ_MEM      memory limit of the target in MiB (default 4096; a bigger allocation
#                 fails, which aborts the target: a crash)
#   FUZZ_RESUME   1: continue the corpus in fuzz/out/<target>/ instead of starting
#                 again from fuzz/seeds/<target>/
#
# Results: fuzz/out/<target>/default/{crashes,hangs,queue,fuzzer_stats}; a summary
# table at the end. See RELIABILITY.md. Not run in CI.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz="$root/fuzz"
seconds="${FUZZ_SECONDS:-600}"
nice_level="${FUZZ_NICE:-19}"
timeout_ms="${FUZZ_TIMEOUT:-1000}"
mem="${FUZZ_MEM:-4096}"
all=(gguf safetensors config_json adapter_config tokenizer_gguf tokenizer_json chat_template permutation corpus qrels run)

if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${all[@]}"); fi
for t in "${targets[@]}"; do
    if [ ! -d "$fuzz/seeds/$t" ]; then
        echo "unknown target '$t' (targets: ${all[*]})" >&2
        exit 2
    fi
done

if ! command -v cargo-afl >/dev/null 2>&1; then
    echo "== installing cargo-afl"
    cargo install cargo-afl --locked
fi
# AFL++ itself is compiled once per toolchain by `cargo afl config --build`.
afl_data="${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs"
if ! compgen -G "$afl_data/rustc-*/afl.rs-*/afl/bin/afl-fuzz" >/dev/null; then
    echo "== building AFL++ (cargo afl config --build)"
    cargo afl config --build
fi

echo "== building the targets (fuzz/target/release)"
(cd "$fuzz" && nice -n 10 cargo afl build --release --locked)

export AFL_SKIP_CPUFREQ=1
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_UI=1
export AFL_NO_AFFINITY=1        # do not pin to a core: the machine is shared
export AFL_FAST_CAL=1
export AFL_IGNORE_SEED_PROBLEMS=1
unset RUST_BACKTRACE           # a panic dear catches prints one line, not a backtrace

for t in "${targets[@]}"; do
    out="$fuzz/out/$t"
    if [ "${FUZZ_RESUME:-0}" = 1 ] && [ -d "$out/default/queue" ]; then
        input=(-i -)
    else
        rm -rf "$out"
        input=(-i "$fuzz/seeds/$t")
    fi
    mkdir -p "$out"
    echo "== $t: ${seconds}s (log: $out/afl.log)"
    nice -n "$nice_level" cargo afl fuzz -V "$seconds" -t "$timeout_ms" -m "$mem" \
        "${input[@]}" -o "$out" -- "$fuzz/target/release/$t" >"$out/afl.log" 2>&1 ||
        echo "   afl-fuzz exited with $? (see $out/afl.log)"
done

stat() { sed -n "s/^$2 *: *//p" "$1" 2>/dev/null | head -1; }
echo
printf '%-16s %8s %12s %9s %8s %8s %6s\n' target run_s execs_done exec/s corpus crashes hangs
for t in "${targets[@]}"; do
    s="$fuzz/out/$t/default/fuzzer_stats"
    if [ ! -f "$s" ]; then
        printf '%-16s %s\n' "$t" "(no fuzzer_stats)"
        continue
    fi
    printf '%-16s %8s %12s %9s %8s %8s %6s\n' "$t" "$(stat "$s" run_time)" "$(stat "$s" execs_done)" \
        "$(stat "$s" execs_per_sec)" "$(stat "$s" corpus_count)" "$(stat "$s" saved_crashes)" \
        "$(stat "$s" saved_hangs)"
done
