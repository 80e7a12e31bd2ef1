#!/usr/bin/env bash
# bench/gpu-prepare.sh - make bench/gpu/, everything a GPU check needs, HERE
# (on the development machine: no GPU needed, MLIR and nvcc needed).
#
# The GPU machine has no MLIR, no oneDNN/OpenBLAS, no internet and receives at
# most 64 MiB (the working tree plus carried folders). So this script builds
# on this machine what runs there, and packs it into ONE git-ignored folder:
#
#   bench/gpu/MANIFEST.txt          what is here, how it was made, sizes
#   bench/gpu/models/*.onnx         resnet9 (committed) and resnet9-bot (fcc-models)
#   bench/gpu/bin/*.xz              trainers, batch 512, recipe bot10, model
#                                   resnet9-bot: r9bot-cuda-fp32, r9bot-cuda-fp16
#                                   (when `fcc compile --target cuda` works here),
#                                   r9bot-cuda-fp16-nhwc (--layout nhwc),
#                                   r9bot-cpu-fp32, r9bot-cpu-fp16 (the references
#                                   of the one-step comparison); all initialise
#                                   from --seed at run time (graph-only model), so
#                                   the same --seed gives the same weights
#                                   r9bot-{cuda,cpu}-{qsgd,topk}: compressed
#                                   gradients (fp32), for the comm part;
#                                   cuda_kernels_test, fcc-kernel-bench (and
#                                   with --with-compress-bench
#                                   fcc-compress-bench): the GPU unit tests
#                                   and benchmarks
#   bench/gpu/lib/*.xz              shared libraries the trainers need that a GPU
#                                   machine lacks (oneDNN, OpenBLAS, Open MPI and
#                                   theirs);
#                                   NOT cuDNN/cuBLAS/NCCL/CUDA: gpu-check.sh finds
#                                   those in the GPU machine's Python packages
#   bench/gpu/data/*.bin.xz         a CIFAR-10 subset (see data/NOTE.txt)
#   bench/gpu/scripts/              gpu-check.sh, torch_reference.py,
#                                   compare_step.py, flops.py, ncu_summary.py,
#                                   same_epochs.py, README.md
#
# Large files are xz-compressed (gpu-check.sh unpacks them with Python's lzma).
# The folder must stay under --budget-mib (60 MiB) and, with the rest of the
# working tree that travels, under 64 MiB; the script checks both and prints
# the sizes.
#
# Then, on a GPU machine lent to the session (the device tool), from the
# repository root, carrying the folder:
#     run(command="PYTHONUNBUFFERED=1 bash bench/gpu-check.sh", carry=["bench/gpu"])
#
# Usage: bench/gpu-prepare.sh [--build-dir DIR] [--no-build] [--no-cuda]
#          [--data DIR] [--train-records N] [--test-records N (3000)]
#          [--batch N] [--gpu-arch LIST] [--budget-mib N] [--out DIR]
#          [--with-compress-bench (fcc-compress-bench, 0.7 MiB; its table is
#          in bench/RESULTS.md, so it is left out unless asked for)]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT_DIR=$ROOT/bench/gpu
BUILD=$ROOT/build
DATA_SRC=${FCC_CIFAR_DIR:-}
TRAIN_RECORDS=10000
# 4000 (5000 until the NHWC trainer joined the bundle, 2026-11-30): what
# fits the 64 MiB a device call carries.
TEST_RECORDS=3000
BATCH=512
GPU_ARCH=
BUDGET_MIB=60
TREE_LIMIT_MIB=64
NO_BUILD=0
NO_CUDA=0
WITH_COMPRESS_BENCH=0
RECORD=3073

say() { printf 'gpu-prepare: %s\n' "$*"; }
die() { printf 'gpu-prepare: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case $1 in
    --build-dir) BUILD=$2; shift 2 ;;
    --no-build) NO_BUILD=1; shift ;;
    --rebuild) shift ;;  # the default now (kept for old command lines)
    --no-cuda) NO_CUDA=1; shift ;;
    --with-compress-bench) WITH_COMPRESS_BENCH=1; shift ;;
    --data) DATA_SRC=$2; shift 2 ;;
    --train-records) TRAIN_RECORDS=$2; shift 2 ;;
    --test-records) TEST_RECORDS=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --gpu-arch) GPU_ARCH=$2; shift 2 ;;
    --budget-mib) BUDGET_MIB=$2; shift 2 ;;
    --out) OUT_DIR=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
for v in TRAIN_RECORDS TEST_RECORDS BATCH BUDGET_MIB; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "--$(echo "$v" | tr "A-Z_" "a-z-"): '${!v}' is not a positive integer"
done
[ "$TRAIN_RECORDS" -ge "$BATCH" ] ||
  die "--train-records $TRAIN_RECORDS does not fill one batch of $BATCH"
command -v xz >/dev/null || die "xz is needed (apt-get install xz-utils)"
command -v python3 >/dev/null || die "python3 is needed"

# --- 1. fcc and the runtime, built up to date ----------------------------
# Always an incremental build (a no-op when nothing changed): a bundle made
# from a stale build (say, an old libfcc_runtime_cuda.a) would spend the
# device time measuring code that is not the commit's. --no-build skips it.
FCC=$BUILD/bin/fcc
MODELS=$BUILD/bin/fcc-models
if [ "$NO_BUILD" = 0 ]; then
  if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    say "configuring $BUILD"
    cmake -G Ninja -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release
  fi
  say "building fcc (cmake --build $BUILD)"
  cmake --build "$BUILD" || die "the build failed: fix it before bundling"
else
  say "using $FCC as built (--no-build)"
fi
for f in "$FCC" "$MODELS"; do [ -x "$f" ] || die "no $f (build without --no-build)"; done
for f in libfcc_trainer.a libfcc_trainer_main.a libfcc_runtime_cpu.a; do
  [ -f "$BUILD/lib/$f" ] || die "no $BUILD/lib/$f (build without --no-build)"
done

# --- 2. the output folder ----------------------------------------------------
MARKER=.fcc-gpu-bundle
if [ -e "$OUT_DIR" ]; then
  if [ -f "$OUT_DIR/$MARKER" ] || [ -z "$(ls -A "$OUT_DIR")" ]; then
    rm -rf "$OUT_DIR"
  else
    die "$OUT_DIR exists and was not made by this script; remove it first"
  fi
fi
mkdir -p "$OUT_DIR"/{models,bin,lib,data,scripts}
touch "$OUT_DIR/$MARKER"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# --- 3. models -----------------------------------------------------------------
cp "$ROOT/models/resnet9.onnx" "$OUT_DIR/models/"
"$MODELS" resnet9-bot -o "$OUT_DIR/models/resnet9-bot.onnx" >/dev/null 2>&1 ||
  die "fcc-models resnet9-bot failed"
say "models: resnet9.onnx (committed), resnet9-bot.onnx (fcc-models)"

# --- 4. trainers -----------------------------------------------------------------
ARCH_FLAG=()
[ -n "$GPU_ARCH" ] && ARCH_FLAG=(--gpu-arch "$GPU_ARCH")
BOT=$OUT_DIR/models/resnet9-bot.onnx
COMPILED=()
compile() { # NAME TARGET PRECISION [extra flags]
  local name=$1 target=$2 precision=$3
  shift 3
  "$FCC" compile "$BOT" --target "$target" --batch "$BATCH" --recipe bot10 \
    --precision "$precision" -q -o "$TMP/$name" "$@"
}
for p in fp32 fp16; do
  compile "r9bot-cpu-$p" cpu "$p" || die "compiling the CPU trainer ($p) failed"
  COMPILED+=("r9bot-cpu-$p")
done
CUDA_NOTE="built"
if [ "$NO_CUDA" = 1 ]; then
  CUDA_NOTE="skipped (--no-cuda)"
else
  for p in fp32 fp16; do
    if ! compile "r9bot-cuda-$p" cuda "$p" "${ARCH_FLAG[@]}" 2>"$TMP/cuda.err"; then
      CUDA_NOTE="NOT built: $(head -c 400 "$TMP/cuda.err" | tr '\n' ' ')"
      say "CUDA trainers skipped: \`fcc compile --target cuda\` is not available"
      say "  here yet: $(head -n 3 "$TMP/cuda.err")"
      say "  (gpu-check.sh then runs only the PyTorch reference; rerun this"
      say "  script once the CUDA target builds)"
      rm -f "$TMP"/r9bot-cuda-*
      break
    fi
    COMPILED+=("r9bot-cuda-$p")
  done
fi
# fp16 with channels-last activations (--layout nhwc), for the side-by-side
# NCHW / NHWC rows of gpu-check.sh's step, train and profile parts.
if [ "$CUDA_NOTE" = built ]; then
  if compile "r9bot-cuda-fp16-nhwc" cuda fp16 "${ARCH_FLAG[@]}" --layout nhwc; then
    COMPILED+=("r9bot-cuda-fp16-nhwc")
  else
    say "WARNING: the NHWC fp16 trainer did not build"
  fi
fi
# Compressed data-parallel trainers (one rank there: gpu-check.sh's comm part
# forces NCCL with FCC_COMM_NCCL=1) and their CPU references.
if [ "$CUDA_NOTE" = built ]; then
  for spec in "qsgd|--compress qsgd:255 --error-feedback" \
              "topk|--compress topk:0.01 --compress-scope entire-model"; do
    name=${spec%%|*}
    read -r -a flags <<<"${spec#*|}"
    if compile "r9bot-cuda-$name" cuda fp32 "${ARCH_FLAG[@]}" "${flags[@]}" &&
       compile "r9bot-cpu-$name" cpu fp32 "${flags[@]}"; then
      COMPILED+=("r9bot-cuda-$name" "r9bot-cpu-$name")
    else
      say "WARNING: the compressed ($name) trainers did not build"
    fi
  done
  # The GPU unit tests and the benchmarks (gpu-check.sh's units and kernels
  # parts), when this build has them.
  benches=(cuda_kernels_test fcc-kernel-bench)
  [ "$WITH_COMPRESS_BENCH" = 1 ] && benches+=(fcc-compress-bench)
  for t in "${benches[@]}"; do
    if [ -x "$BUILD/bin/$t" ]; then
      cp "$BUILD/bin/$t" "$TMP/$t"
      COMPILED+=("$t")
    fi
  done
fi
for n in "${COMPILED[@]}"; do
  if "$TMP/$n" --help 2>/dev/null | grep -- '--dump-step' >/dev/null; then
    dump="has --dump-step"
  else
    dump="no --dump-step yet"
  fi
  say "trainer $n ($(stat -c %s "$TMP/$n") bytes, $dump)"
done

# --- 5. shared libraries ----------------------------------------------------
# Every library ldd resolves for the trainers, except the C/C++ runtime that
# any Linux has and the CUDA libraries the GPU machine's Python packages hold.
is_base_or_cuda() {
  case $1 in
    linux-vdso*|ld-linux*|libc.so*|libm.so*|libdl.so*|librt.so*|\
    libpthread.so*|libstdc++.so*|libgcc_s.so*|libz.so*|libresolv.so*|\
    libutil.so*|libcuda.so*|libcudnn*|libcublas*|libcudart*|libnccl*|\
    libnvrtc*|libnvJitLink*|libcufft*|libcurand*|libcusparse*|libcusolver*)
      return 0 ;;
  esac
  return 1
}
: >"$TMP/libs"
for n in "${COMPILED[@]}"; do
  ldd "$TMP/$n" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' >>"$TMP/libs"
  if ldd "$TMP/$n" | grep -q 'not found'; then
    say "WARNING: $n has unresolved libraries here:"
    ldd "$TMP/$n" | grep 'not found' || true
  fi
done
LIBS=()
while read -r soname path; do
  is_base_or_cuda "$soname" && continue
  [ -e "$OUT_DIR/lib/$soname.xz" ] && continue
  xz -6 -T0 -c "$(readlink -f "$path")" >"$OUT_DIR/lib/$soname.xz"
  LIBS+=("$soname")
done < <(sort -u "$TMP/libs")
say "libraries carried: ${LIBS[*]:-none}"

for n in "${COMPILED[@]}"; do
  xz -6 -T0 -c "$TMP/$n" >"$OUT_DIR/bin/$n.xz"
done

# --- 6. data ---------------------------------------------------------------
if [ -z "$DATA_SRC" ]; then
  for d in "$ROOT/../shared/data/cifar10-approx" "$ROOT/shared/data/cifar10-approx" \
           "$HOME/cifar-10-batches-bin"; do
    if [ -f "$d/data_batch_1.bin" ] && [ -f "$d/test_batch.bin" ]; then
      DATA_SRC=$d
      break
    fi
  done
fi
if [ -z "$DATA_SRC" ] || [ ! -f "$DATA_SRC/test_batch.bin" ]; then
  die "no CIFAR-10 binary directory found; pass --data DIR (or FCC_CIFAR_DIR)"
fi
DATA_SRC=$(cd "$DATA_SRC" && pwd)
# Training records: data_batch_1.bin, then _2 ... until TRAIN_RECORDS.
left=$TRAIN_RECORDS
TRAIN_FILES=()
for i in 1 2 3 4 5; do
  [ "$left" -gt 0 ] || break
  f=$DATA_SRC/data_batch_$i.bin
  [ -f "$f" ] || continue
  have=$(( $(stat -c %s "$f") / RECORD ))
  take=$(( left < have ? left : have ))
  head -c $(( take * RECORD )) "$f" | xz -6 -T0 >"$OUT_DIR/data/data_batch_$i.bin.xz"
  TRAIN_FILES+=("data_batch_$i.bin: records 0-$(( take - 1 ))")
  left=$(( left - take ))
done
[ ${#TRAIN_FILES[@]} -gt 0 ] || die "$DATA_SRC has no data_batch_N.bin"
have=$(( $(stat -c %s "$DATA_SRC/test_batch.bin") / RECORD ))
TEST_TAKE=$(( TEST_RECORDS < have ? TEST_RECORDS : have ))
head -c $(( TEST_TAKE * RECORD )) "$DATA_SRC/test_batch.bin" |
  xz -6 -T0 >"$OUT_DIR/data/test_batch.bin.xz"
[ -f "$DATA_SRC/batches.meta.txt" ] && cp "$DATA_SRC/batches.meta.txt" "$OUT_DIR/data/"
TRAIN_TAKE=$(( TRAIN_RECORDS - left ))
{
  echo "CIFAR-10 subset for bench/gpu-check.sh, from $DATA_SRC"
  echo "(CIFAR-10 binary format: 3073-byte records, label byte + 3072 pixels)."
  for t in "${TRAIN_FILES[@]}"; do echo "  train  $t"; done
  echo "  test   test_batch.bin: records 0-$(( TEST_TAKE - 1 ))"
  echo "$TRAIN_TAKE training and $TEST_TAKE test images, in file order."
  if [ -f "$DATA_SRC/README.md" ] && grep -qi approx "$DATA_SRC/README.md"; then
    echo "This is cifar10-approx: records 0-1016 of each file are pixel-exact,"
    echo "the rest JPEG-q75 re-encodings (labels exact). Accuracies on it are"
    echo "for relative comparisons (fcc vs PyTorch on the same data) only."
  fi
  echo "A 10-epoch bot10 run on 10000 training images reaches a lower accuracy"
  echo "than on the full 50000; gpu-check.sh --train-copies K repeats the"
  echo "training file K times (for throughput with 50000-image epochs only)."
} >"$OUT_DIR/data/NOTE.txt"
say "data: $TRAIN_TAKE train + $TEST_TAKE test images from $DATA_SRC"

# --- 7. scripts --------------------------------------------------------------
for s in gpu-check.sh torch_reference.py compare_step.py flops.py ncu_summary.py same_epochs.py README.md; do
  [ -f "$HERE/$s" ] && cp "$HERE/$s" "$OUT_DIR/scripts/"
done
chmod +x "$OUT_DIR/scripts/"*.sh "$OUT_DIR/scripts/"*.py 2>/dev/null || true

# --- 8. manifest and sizes ---------------------------------------------------
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | wc -l)
{
  echo "fcc GPU check bundle, made by bench/gpu-prepare.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "on $(uname -srm), commit $COMMIT ($DIRTY modified tracked files)."
  echo
  echo "trainers (bin/, xz): model resnet9-bot (fcc-models), recipe bot10, batch $BATCH;"
  echo "  fcc compile models/resnet9-bot.onnx --target T --batch $BATCH --recipe bot10 --precision P${GPU_ARCH:+ --gpu-arch $GPU_ARCH}"
  for n in "${COMPILED[@]}"; do echo "  $n"; done
  echo "  CUDA trainers: $CUDA_NOTE"
  echo "  Parameters are initialised at run time from --seed (same seed = same"
  echo "  initial weights on every target)."
  echo "libraries (lib/, xz): ${LIBS[*]:-none}"
  echo "data (data/): see data/NOTE.txt"
  echo "scripts (scripts/): gpu-check.sh torch_reference.py compare_step.py flops.py ncu_summary.py same_epochs.py README.md"
  echo
  echo "Run on the GPU machine, from the repository root:"
  echo "  PYTHONUNBUFFERED=1 bash bench/gpu-check.sh     (or bash bench/gpu/scripts/gpu-check.sh)"
} >"$OUT_DIR/MANIFEST.txt"

REL=$(realpath -m --relative-to="$ROOT" "$OUT_DIR")
bytes=$(du -sb "$OUT_DIR" | cut -f1)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
say "contents:"
(cd "$OUT_DIR" && find . -type f -printf '%s %p\n' | sort -k2 |
  awk '{ printf "  %8.2f MiB  %s\n", $1 / 1048576, $2 }')
say "$REL: $(mib "$bytes") MiB (budget $BUDGET_MIB MiB)"
# What else travels: tracked and untracked-not-ignored files of the checkout.
tree=0
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
  tree=$(cd "$ROOT" && git ls-files -z -co --exclude-standard |
    xargs -0 stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
fi
total=$(( bytes + tree ))
say "working tree that travels: $(mib "$tree") MiB; with $REL carried: $(mib "$total") MiB (limit $TREE_LIMIT_MIB MiB)"
if [ "$bytes" -gt $(( BUDGET_MIB * 1048576 )) ]; then
  die "$REL is $(mib "$bytes") MiB, over the $BUDGET_MIB MiB budget: lower --test-records / --train-records"
fi
if [ "$total" -gt $(( TREE_LIMIT_MIB * 1048576 )) ]; then
  die "the working tree plus $REL is $(mib "$total") MiB, over the $TREE_LIMIT_MIB MiB transfer limit: lower --test-records / --train-records"
fi
if ! git -C "$ROOT" check-ignore -q "$OUT_DIR/MANIFEST.txt" 2>/dev/null; then
  say "WARNING: $REL is not git-ignored: it would travel (and be committed) as part of the tree"
fi
say "ready. On the GPU machine (device tool), from the repository root:"
if [ "$REL" = bench/gpu ]; then
  say "  run(command=\"PYTHONUNBUFFERED=1 bash bench/gpu-check.sh\", carry=[\"bench/gpu\"], timeout_s=600)"
else
  say "  run(command=\"PYTHONUNBUFFERED=1 bash bench/gpu-check.sh --gpu-dir $REL\", carry=[\"$REL\"], timeout_s=600)"
fi
