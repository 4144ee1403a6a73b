#!/usr/bin/env bash
# Builds dear with the `cuda` feature on a machine WITHOUT a GPU or a CUDA toolkit, for
# running later on an x86-64 NVIDIA box (H100/H200, sm_90; driver >= 580 = CUDA 13.0).
#
# Usage:
#   bash scripts/build-cuda.sh               # full build (steps 1-4)
#   bash scripts/build-cuda.sh --bin-only    # full build of the `dear` binary only
#   bash scripts/build-cuda.sh --check-env   # steps 1-3 + nvcc and link smoke tests, no cargo build
#   eval "$(bash scripts/build-cuda.sh --print-env)"   # steps 1-3 (log on stderr), then print `export ...`
#                                                      # lines so `cargo ...` in this shell builds
#                                                      # the CUDA flavour into target/cuda
# Knobs (environment): CUDA_COMPUTE_CAP (default 90), NICE (default 19: cargo and nvcc run
# under `nice -n $NICE`), PYTHON (default python3), CC (default cc).
#
# What it does (idempotent; everything is cached under target/cuda-sdk/, git-ignored):
#   1. pip-installs (--target target/cuda-sdk/py, --no-deps, exact pins below) the CUDA 13.0
#      toolkit pieces published as PyPI wheels: nvcc (+ptxas, cicc/nvvm, libdevice), cudart,
#      the crt + cccl headers, and for linking nvrtc, curand, cublas/cublasLt. They unpack into
#      one tree, target/cuda-sdk/py/nvidia/cu13/{bin,include,lib,nvvm}, laid out the way
#      nvcc's bin/nvcc.profile expects (nvvm/bin/cicc, nvvm/libdevice). A marker file
#      (py/.dear-pinned-wheels) records the pinned set; a changed pin list reinstalls.
#      CUDA 13.0 (not newer) on purpose: driver 580 is CUDA 13.0, so PTX built here (ISA 9.0)
#      and the cudarc `cuda-13000` bindings only use what that driver has.
#   2. Environment: CUDA_ROOT/CUDA_PATH/CUDA_HOME/CUDA_TOOLKIT_ROOT_DIR = that tree, NVCC,
#      PATH=$CUDA_ROOT/bin:$PATH, CUDA_COMPUTE_CAP=90 (no nvidia-smi here, so candle-kernels'
#      build script, via the cudaforge crate, needs it), CUDARC_CUDA_VERSION=13000 (cudarc
#      would otherwise parse `nvcc --version`; same answer, made explicit).
#   3. Link directory target/cuda-sdk/lib: unversioned symlinks libcudart.so, libcublas.so,
#      libcublasLt.so, libcurand.so, libnvrtc.so (the wheels ship only .so.13/.so.10), and
#      target/cuda-sdk/lib/stubs/libcuda.so (+ .so.1): a STUB of the GPU driver library, built
#      here with soname libcuda.so.1, exporting every cu* function of cudarc's driver bindings
#      (each returns 34 = CUDA_ERROR_STUB_LIBRARY). candle 0.11.1 enables cudarc with
#      `dynamic-linking` + `cuda-version-from-build-system`, so the final link needs
#      -lcuda -lnvrtc -lcurand -lcublas -lcublasLt (cudarc) and -lcudart (candle-kernels).
#      The binaries record only sonames (libcuda.so.1, libcudart.so.13, ...), no rpath.
#      The link search path is passed as RUSTFLAGS="-L native=<lib> -L native=<lib>/stubs", and
#      the build goes to its own CARGO_TARGET_DIR=target/cuda, so the normal CPU build cache in
#      target/ is not invalidated. Nothing outside target/ is touched.
#   4. cargo build --release --features cuda --bin dear, then
#      cargo test --release --workspace --all-targets --features cuda --no-run (test and bench
#      executables), prints their paths and `ldd` of dear.
#
# How long: pip ~1 GB of wheels (cublasLt alone is 540 MB unpacked), a minute or so. The
# first cargo build is long: candle-kernels' build script compiles ~30 .cu files with nvcc
# (measured here, one core each: mmq_instance_*.cu ~27 s x 10, quantized.cu 18 s, small
# ones ~1 s), on top of the release (thin-LTO) Rust build of candle/tantivy/dear with CUDA:
# count on 20+ minutes on 2 busy cores. Everything is then cached in target/cuda (cudaforge
# also keeps per-kernel objects in its OUT_DIR), so later builds only redo what changed.
#
# What to carry to the GPU machine:
#   - target/gpu-carry/ (made at the end of a full build): `dear` and dear-core's integration
#     tests, xz-compressed (each executable is ~65 MB with its sm_90 kernels inside, over the
#     device tool's 64 MiB carry limit; ~10 MB compressed). scripts/gpu-run.sh unpacks and runs
#     them there (golden checks on CUDA, then dear and the PyTorch reference side by side);
#   - the CUDA 13 runtime libraries, unless the machine already has them:
#       libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13
#       (+ libnvrtc-builtins.so.13.0, which nvrtc loads itself)
#     all from target/cuda-sdk/py/nvidia/cu13/lib/ (about 800 MB, cublasLt is most of it).
#     Do NOT carry target/cuda-sdk/lib/stubs/libcuda.so*: the real libcuda.so.1 comes with the
#     NVIDIA driver and must be the one loaded there.
#     A GPU image with a CUDA-13 PyTorch has the same libraries (same sonames) in its
#     site-packages: <site-packages>/nvidia/cu13/lib (PyPI nvidia-* 13.x wheels). A torch
#     built for CUDA 12 has *.so.12 libraries, which do NOT satisfy these binaries.
# How to run there:
#     LIBS=/path/to/cu13/lib   # e.g. $(python3 -c 'import nvidia,os;print(os.path.join(list(nvidia.__path__)[0],"cu13","lib"))')
#     LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ./dear ...
#     ldd ./dear   # every line must resolve; libcuda.so.1 must be the driver's
#   (If the stub is loaded by mistake, CUDA calls fail with CUDA_ERROR_STUB_LIBRARY (34).)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SDK="$ROOT/target/cuda-sdk"
PYDIR="$SDK/py"
CUDA_TREE="$PYDIR/nvidia/cu13"
LIBDIR="$SDK/lib"
STUBDIR="$SDK/lib/stubs"
CUDA_TARGET="$ROOT/target/cuda"
COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
NICE="${NICE:-19}"
PYTHON="${PYTHON:-python3}"
CC="${CC:-cc}"

# Exact pins (CUDA 13.0 Update 1 toolkit components; curand's own numbering is 10.4).
WHEELS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-nvrtc==13.0.88
  nvidia-curand==10.4.0.35
  nvidia-cublas==13.0.2.14
)
# Libraries the final link asks for with -l<name> (besides -lcuda, which is the stub).
LINK_LIBS=(cudart cublas cublasLt curand nvrtc)

mode=build
bin_only=0
for arg in "$@"; do
  case "$arg" in
    --check-env) mode=check ;;
    --print-env) mode=print ;;
    --bin-only) bin_only=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-cuda: unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

# In --print-env mode stdout carries only the export lines.
if [ "$mode" = print ]; then exec 3>&1 1>&2; fi
log() { echo "build-cuda: $*"; }
die() { echo "build-cuda: error: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------
# 1. CUDA toolkit wheels
# ---------------------------------------------------------------------------------------
install_wheels() {
  local marker="$PYDIR/.dear-pinned-wheels" want
  want=$(printf '%s\n' "${WHEELS[@]}")
  if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ] && [ -x "$CUDA_TREE/bin/nvcc" ]; then
    log "CUDA wheels already installed in ${PYDIR#$ROOT/} (marker matches)"
    return
  fi
  log "installing CUDA 13.0 wheels into ${PYDIR#$ROOT/} (about 1 GB) ..."
  mkdir -p "$SDK"
  rm -rf "$PYDIR.partial"
  PIP_ROOT_USER_ACTION=ignore nice -n "$NICE" "$PYTHON" -m pip install --quiet \
    --disable-pip-version-check --no-warn-script-location --no-deps --only-binary=:all: \
    --target "$PYDIR.partial" "${WHEELS[@]}"
  [ -x "$PYDIR.partial/nvidia/cu13/bin/nvcc" ] ||
    die "wheels installed but nvidia/cu13/bin/nvcc is missing; the wheel layout changed"
  rm -rf "$PYDIR"
  mv "$PYDIR.partial" "$PYDIR"
  printf '%s\n' "$want" >"$marker"
}

# nvcc.profile: CICC_PATH = $(TOP)/nvvm/bin, NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice with
# TOP = bin/.. . The nvidia-nvvm wheel already unpacks into cu13/nvvm; should a future wheel
# put it elsewhere, link it into place.
ensure_nvvm() {
  if [ -x "$CUDA_TREE/nvvm/bin/cicc" ] && [ -d "$CUDA_TREE/nvvm/libdevice" ]; then return; fi
  local cicc
  cicc=$(find "$PYDIR" -path '*/nvvm/bin/cicc' -type f 2>/dev/null | head -n1)
  [ -n "$cicc" ] || die "cicc (nvvm) not found under $PYDIR"
  local nvvm; nvvm=$(dirname "$(dirname "$cicc")")
  [ -d "$nvvm/libdevice" ] || die "libdevice not found next to $cicc"
  [ -e "$CUDA_TREE/nvvm" ] && [ ! -L "$CUDA_TREE/nvvm" ] && die "$CUDA_TREE/nvvm exists but is incomplete"
  ln -sfn "$nvvm" "$CUDA_TREE/nvvm"
  log "linked $CUDA_TREE/nvvm -> $nvvm"
}

# ---------------------------------------------------------------------------------------
# 2. Environment
# ---------------------------------------------------------------------------------------
setup_env() {
  local release
  release=$("$CUDA_TREE/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\),.*/\1 \2/p')
  [ -n "$release" ] || die "cannot read the CUDA release from nvcc --version"
  set -- $release
  export CUDA_ROOT="$CUDA_TREE" CUDA_PATH="$CUDA_TREE" CUDA_HOME="$CUDA_TREE"
  export CUDA_TOOLKIT_ROOT_DIR="$CUDA_TREE" NVCC="$CUDA_TREE/bin/nvcc"
  export CUDA_COMPUTE_CAP="$COMPUTE_CAP"
  export CUDARC_CUDA_VERSION="${1}0${2}0"
  case ":$PATH:" in *":$CUDA_TREE/bin:"*) ;; *) export PATH="$CUDA_TREE/bin:$PATH" ;; esac
  CUDA_RUSTFLAGS="-L native=$LIBDIR -L native=$STUBDIR"
  case " ${RUSTFLAGS:-} " in
    *" -L native=$LIBDIR "*) ;;
    *) export RUSTFLAGS="$CUDA_RUSTFLAGS${RUSTFLAGS:+ $RUSTFLAGS}" ;;
  esac
  export CARGO_TARGET_DIR="$CUDA_TARGET"
}

# ---------------------------------------------------------------------------------------
# 3. Link directory: unversioned symlinks + libcuda stub
# ---------------------------------------------------------------------------------------
link_libs() {
  mkdir -p "$LIBDIR" "$STUBDIR"
  local name real
  for name in "${LINK_LIBS[@]}"; do
    real=$(cd "$CUDA_TREE/lib" && ls 2>/dev/null | grep -E "^lib${name}\.so(\.[0-9]+)?\$" | sort -V | tail -n1 || true)
    [ -n "$real" ] || die "lib${name}.so* not found in $CUDA_TREE/lib"
    ln -sfn "../py/nvidia/cu13/lib/$real" "$LIBDIR/lib${name}.so"
  done
}

cudarc_src() {
  # The cudarc crate(s) in this workspace's lock file; cargo metadata downloads the sources
  # if needed (cheap, no compilation).
  cargo metadata --format-version 1 --features cuda 2>/dev/null | "$PYTHON" -c '
import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc":
        print(os.path.dirname(p["manifest_path"]))'
}

build_stub() {
  local srcs syms c tmp
  srcs=$(cudarc_src)
  [ -n "$srcs" ] || die "cudarc not found in cargo metadata (is candle's cuda feature wired?)"
  syms=$(for s in $srcs; do
           grep -rhoE 'pub unsafe fn cu[A-Za-z0-9_]+ *\(' "$s/src/driver/sys"
         done | sed -E 's/pub unsafe fn (cu[A-Za-z0-9_]+).*/\1/' | sort -u)
  [ "$(echo "$syms" | wc -l)" -gt 100 ] || die "too few cu* functions parsed from cudarc ($srcs)"
  c="$STUBDIR/libcuda-stub.c"
  tmp="$c.tmp"
  {
    echo "/* Generated by scripts/build-cuda.sh: LINK-TIME STUB of the NVIDIA driver library."
    echo " * soname libcuda.so.1; exports the driver API functions of cudarc's bindings in:"
    for s in $srcs; do echo " *   $s/src/driver/sys"; done
    echo " * Every function returns 34 (CUDA_ERROR_STUB_LIBRARY). Never ship or load this. */"
    echo "#define STUB(f) int f(void) { return 34; }"
    echo "$syms" | sed 's/.*/STUB(&)/'
  } >"$tmp"
  if [ -f "$STUBDIR/libcuda.so" ] && cmp -s "$tmp" "$c"; then
    rm -f "$tmp"
  else
    mv "$tmp" "$c"
    "$CC" -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$STUBDIR/libcuda.so" "$c"
    log "built libcuda stub ($(echo "$syms" | wc -l) cu* symbols) in ${STUBDIR#$ROOT/}"
  fi
  ln -sfn libcuda.so "$STUBDIR/libcuda.so.1"
}

print_env() {
  local v
  for v in CUDA_ROOT CUDA_PATH CUDA_HOME CUDA_TOOLKIT_ROOT_DIR NVCC CUDA_COMPUTE_CAP \
           CUDARC_CUDA_VERSION RUSTFLAGS CARGO_TARGET_DIR; do
    printf 'export %s=%q\n' "$v" "${!v}"
  done
  printf 'export PATH=%q:"$PATH"\n' "$CUDA_TREE/bin"
}

# ---------------------------------------------------------------------------------------
# Smoke tests (--check-env)
# ---------------------------------------------------------------------------------------
smoke_tests() {
  local d="$SDK/smoke"
  rm -rf "$d"; mkdir -p "$d"
  cat >"$d/axpy.cu" <<'EOF'
#include <cuda_bf16.h>
extern "C" __global__ void axpy(float a, const float *x, float *y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}
EOF
  log "nvcc smoke test (sm_$COMPUTE_CAP): .cu -> .o and .ptx"
  local gencode="-gencode=arch=compute_${COMPUTE_CAP},code=sm_${COMPUTE_CAP}"
  nice -n "$NICE" nvcc "$gencode" -std=c++17 -O3 -Xcompiler -fPIC -c -o "$d/axpy.o" "$d/axpy.cu"
  nice -n "$NICE" nvcc "$gencode" -std=c++17 -O3 --ptx -o "$d/axpy.ptx" "$d/axpy.cu"
  if [ -x "$CUDA_TREE/bin/cuobjdump" ]; then "$CUDA_TREE/bin/cuobjdump" --list-elf "$d/axpy.o"; fi
  echo "  $(ls -l "$d/axpy.o" | awk '{print $5" bytes"}')  ${d#$ROOT/}/axpy.o"
  echo "  ptx: $(grep -E '^\.(version|target)' "$d/axpy.ptx" | tr '\n' ' ') entry: $(grep -c '\.entry axpy' "$d/axpy.ptx")"

  # Link test: a Rust program linked exactly like the real build (rustc -L native=... from
  # RUSTFLAGS, -l dylib=...), referencing one symbol of each library.
  cat >"$d/link.rs" <<'EOF'
use std::ffi::{c_char, c_int, c_void};
#[link(name = "cuda")] extern "C" { fn cuInit(flags: u32) -> c_int; fn cuDriverGetVersion(v: *mut c_int) -> c_int; }
#[link(name = "cudart")] extern "C" { fn cudaRuntimeGetVersion(v: *mut c_int) -> c_int; }
#[link(name = "nvrtc")] extern "C" { fn nvrtcVersion(major: *mut c_int, minor: *mut c_int) -> c_int; }
#[link(name = "curand")] extern "C" { fn curandGetVersion(v: *mut c_int) -> c_int; }
#[link(name = "cublas")] extern "C" { fn cublasGetProperty(t: c_int, v: *mut c_int) -> c_int; }
#[link(name = "cublasLt")] extern "C" { fn cublasLtGetVersion() -> usize; fn cublasLtGetStatusName(s: c_int) -> *const c_char; }
fn main() {
    let _keep: *const c_void = cublasLtGetStatusName as *const c_void;
    unsafe {
        let (mut a, mut b) = (0, 0);
        println!("nvrtcVersion -> rc {} = {a}.{b}", nvrtcVersion(&mut a, &mut b));
        println!("cudaRuntimeGetVersion -> rc {} = {}", cudaRuntimeGetVersion(&mut a), a);
        println!("curandGetVersion -> rc {} = {}", curandGetVersion(&mut a), a);
        println!("cublasGetProperty(MAJOR) -> rc {} = {}", cublasGetProperty(0, &mut a), a);
        println!("cublasLtGetVersion -> {}", cublasLtGetVersion());
        println!("cuInit -> rc {} (34 = CUDA_ERROR_STUB_LIBRARY: the stub answered)", cuInit(0));
        println!("cuDriverGetVersion -> rc {}", cuDriverGetVersion(&mut a));
    }
}
EOF
  log "link smoke test: rustc $RUSTFLAGS link.rs"
  # shellcheck disable=SC2086
  rustc --edition 2021 -O $RUSTFLAGS -o "$d/link-test" "$d/link.rs"
  log "ldd of the link test (libcuda.so.1 => the STUB here; on the GPU machine it is the driver's):"
  LD_LIBRARY_PATH="$CUDA_TREE/lib:$STUBDIR" ldd "$d/link-test" | grep -E 'cuda|cublas|curand|nvrtc|not found' | sed 's/^/  /'
  log "running it (libraries here: wheels + stub):"
  LD_LIBRARY_PATH="$CUDA_TREE/lib:$STUBDIR" "$d/link-test" | sed 's/^/  /'
}

# ---------------------------------------------------------------------------------------
# 4. Build
# ---------------------------------------------------------------------------------------
executables() { # cargo JSON messages on stdin -> executable paths
  "$PYTHON" -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])' | sort -u
}

full_build() {
  local msgs="$CUDA_TARGET/build-cuda-messages.json" t0=$SECONDS
  mkdir -p "$CUDA_TARGET"
  log "cargo build --release --features cuda --bin dear  (first run: candle-kernels' nvcc step takes 20+ min on 2 cores)"
  nice -n "$NICE" cargo build --release --features cuda --bin dear \
    --message-format=json-render-diagnostics >"$msgs"
  local bins; bins=$(executables <"$msgs")
  local tests=""
  if [ "$bin_only" = 0 ]; then
    log "cargo test --release --workspace --all-targets --features cuda --no-run"
    nice -n "$NICE" cargo test --release --workspace --all-targets --features cuda --no-run \
      --message-format=json-render-diagnostics >"$msgs"
    tests=$(executables <"$msgs")
  fi
  log "done in $((SECONDS - t0)) s. Executables (CARGO_TARGET_DIR=${CUDA_TARGET#$ROOT/}):"
  printf '%s\n' $bins $tests | sort -u | while read -r f; do
    printf '  %8s  %s\n' "$(du -h "$f" | cut -f1)" "${f#$ROOT/}"
  done
  local dear="$CUDA_TARGET/release/dear"
  log "ldd ${dear#$ROOT/} with LD_LIBRARY_PATH=<wheels lib>:<stub dir>."
  log "NOTE: libcuda.so.1 resolves to the STUB here; on the GPU machine it must be the driver's."
  LD_LIBRARY_PATH="$CUDA_TREE/lib:$STUBDIR" ldd "$dear" | sed 's/^/  /'
  log "runpath/rpath of dear (must be empty, so the stub is never picked up): \
$(readelf -d "$dear" | grep -E 'RPATH|RUNPATH' || echo none)"
  log "driver symbols dear imports from libcuda.so.1: $(nm -D --undefined-only "$dear" | grep -cE ' cu[A-Z]')"
  log "carry: the executables above + libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libnvrtc-builtins.so.13.0 from ${CUDA_TREE#$ROOT/}/lib (NOT lib/stubs); run with LD_LIBRARY_PATH=<that lib dir>"
  pack_carry "$dear" $tests
}

# The GPU machine takes at most 64 MiB of carried files; one executable with candle's
# kernels is ~65 MB (half of it the sm_90 fatbin), ~10 MB compressed. Packs `dear` and
# dear-core's integration tests, xz-compressed, into target/gpu-carry/ for
# scripts/gpu-run.sh (which unpacks them with Python's lzma).
pack_carry() {
  local carry="$ROOT/target/gpu-carry" dear="$1"; shift
  rm -rf "$carry"; mkdir -p "$carry"
  xz -T0 -6 -c "$dear" >"$carry/dear.xz"
  local t
  for t in "$@"; do
    case "$(basename "$t")" in
      integration-*) xz -T0 -6 -c "$t" >"$carry/integration.xz" ;;
    esac
  done
  git -C "$ROOT" rev-parse HEAD >"$carry/commit"
  log "packed for the GPU machine: ${carry#$ROOT/}/ ($(du -sh "$carry" | cut -f1)): $(ls "$carry" | tr '\n' ' ')"
}

install_wheels
ensure_nvvm
setup_env
link_libs
build_stub

case "$mode" in
  print)
    print_env >&3 ;;
  check)
    log "environment:"
    print_env | sed 's/^/  /'
    echo "  (gcc used by nvcc: $(gcc -dumpfullversion 2>/dev/null || echo '?'))"
    nvcc --version | sed 's/^/  /'
    log "link dir ${LIBDIR#$ROOT/}:"
    ls -l "$LIBDIR" "$STUBDIR" | sed 's/^/  /'
    smoke_tests
    log "check-env OK" ;;
  build)
    full_build ;;
esac
