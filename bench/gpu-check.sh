#!/usr/bin/env bash
# bench/gpu-check.sh - the GPU check of fcc's CUDA trainers, run ON THE GPU
# MACHINE from the repository root, with bench/gpu/ (made by
# bench/gpu-prepare.sh on the development machine) carried there:
#
#   PYTHONUNBUFFERED=1 bash bench/gpu-check.sh [flags]
#
# (a) step:  one training step of the CUDA trainer against the CPU trainer
#            (same model, recipe, seed and images; --dump-step), fp32, fp16
#            and fp16 with NHWC activations (--layout nhwc), compared by
#            compare_step.py: directly (fixed tolerances), and as the verdict
#            against a float64 PyTorch step from the same initial values
#            (torch_reference.py --dump-step --init-from): the CUDA
#            trainer may be at most 2x less accurate than the CPU trainer
#            (fp32: or 5e-3 from float64, what cuDNN's fp32 algorithms give).
#            Each fp16 step runs again with FCC_CUDA_SERIAL=1 (no side
#            stream) and with FCC_CUDA_FINISH_KERNEL=1 (reductions in two
#            launches): the parameters after each must be bit-identical.
#            Every run shares one timing cache ($WORK/timing-cache.tsv).
# (b) train: bot10 for --epochs (10) epochs on the carried data with the CUDA
#            trainer(s) (fp16 and fp32), then the PyTorch reference in eager
#            mode (fp16 and fp32) and with torch.compile (fp16), same data.
#            P-serial's epochs must equal P's bit for bit (same_epochs.py:
#            the captured graph with the side stream against one stream).
# (c) table: system | train time s (excl. start-up) | start-up s | images/s |
#            TFLOP/s | % of dense fp16 peak | test acc, and the ratios
#            fcc time / PyTorch time for each PyTorch mode of the same precision.
# (d) comm:  one step of the compressed CUDA trainers (qsgd:255 with error
#            feedback, layerwise; topk:0.01 over the entire model) on one rank
#            with NCCL forced on (FCC_COMM_NCCL=1: the collectives run through
#            a one-rank NCCL communicator; the dumped step runs outside a
#            graph, the 2-epoch run after it replays the captured one) against
#            their CPU trainers (--dump-step, compare_step.py). Compression
#            amplifies the ~1e-3 rounding differences of cuDNN's gradients
#            (other QSGD levels, other top-k entries), so with the dense CPU
#            step at hand the verdict is how far each compressed update is
#            from the dense one: the GPU's at most 1.25x the CPU's, per
#            tensor (the dense CPU step is made here if the step part did
#            not run in this call).
# (f) exact: (experiment, not in the default --parts) the fp32 step again
#            with FCC_CUDNN_EXACT=1 (no FFT/Winograd cuDNN algorithms),
#            against the same float64 truth.
# (g) profile: one training step (--dump-step) of each trainer in
#            --fcc-precisions (not P-serial) under Nsight Compute: time per kernel, summed
#            by kernel name (profile-*.txt); every cuDNN search candidate
#            (FCC_CUDNN_LOG=1, cudnn-search-*.log) and the timing cache.
# (h) layout: (not in the default --parts) PyTorch eager fp16, 3 epochs,
#            channels-last against NCHW: what the memory layout is worth to
#            cuDNN on this GPU.
# (k) kernels: fcc-kernel-bench (resnet9-bot): the fused BatchNorm + CELU
#            and the max-pool kernels (16-byte vectors against
#            FCC_CUDA_SCALAR=1, NCHW and NHWC) and cuDNN's convolutions with
#            NCHW against NHWC activations (cuDNN's fastest algorithm and
#            fcc's own plans), at the training step's shapes (kernels.log;
#            one to two minutes).
# (e) units: cuda_kernels_test (every GPU kernel, compressor and compression
#            op against the CPU's) and fcc-compress-bench --gpu-only (GB/s of
#            each compressor against the device's bandwidth).
#
# Libraries: cuDNN/cuBLAS/NCCL are found in the machine's Python packages
# (site-packages/nvidia/*/lib) and /usr/local/cuda/lib64; oneDNN/OpenBLAS come
# from bench/gpu/lib. Everything is unpacked into --work (default
# /tmp/fcc-gpu-check). A part that fails does not stop the others.
# Results: the log, summary.md and results.tar.gz (metrics, comparisons, logs;
# not the raw dumps) go to --results (default: $OUT when set, as on the
# device tool's machine, else bench/gpu/results).
#
# Order: step, the fcc training runs, the PyTorch runs, table, then exact,
# profile, kernels, layout, units and comm (the side-by-side timing first). If
# no CUDA trainer ran at all (step and fcc training both failed), the script
# runs the trainer once under compute-sanitizer (when there is one), then the
# unit tests, and stops there, leaving the device time for a rerun after a fix
# (--keep-going runs the PyTorch and comm parts anyway).
#
# Flags: --epochs N (10)  --runs N (1, fcc)  --torch-runs N (as --runs)
#   --seed N (0)  --parts step,train,table,profile,kernels,units,comm (the default;
#   also exact, layout)  --keep-going
#   --fcc-precisions fp16,fp16-nhwc,fp32 (fp16-nhwc: --layout nhwc; P-serial:
#   the trainer of P with FCC_CUDA_SERIAL=1, no side stream)
#   --no-compile  --no-torch-fp32
#   --compile-mode MODE  --train-copies K (5: the carried 10000 training
#   images repeated 5 times, 50000-image epochs as in the goals; accuracy is
#   then that of 10000 distinct images)  --max-seconds S (480: parts that would
#   start later are skipped)  --gpu-dir DIR  --work DIR  --results DIR
#   --strict (skipped parts count as failures)
#   --smoke-cpu (no GPU: the CPU trainers stand in for the CUDA ones and PyTorch
#   runs on the CPU, on a few images, 1 epoch unless --epochs: tests this
#   script's plumbing only)
# Exit status: 0 every part that ran passed, 1 a part failed, 2 no GPU.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPTS=$HERE
if [ -f "$HERE/../.fcc-gpu-bundle" ]; then
  GPU_DIR=$(cd "$HERE/.." && pwd)     # bench/gpu/scripts/gpu-check.sh
else
  GPU_DIR=$HERE/gpu                   # bench/gpu-check.sh
fi
WORK=${TMPDIR:-/tmp}/fcc-gpu-check
RESULTS=
EPOCHS=10
RUNS=1
TORCH_RUNS=
KEEP_GOING=0
SEED=0
PARTS=step,train,table,profile,kernels,units,comm
FCC_PRECISIONS=fp16,fp16-nhwc,fp32
DO_COMPILE=1
DO_TORCH_FP32=1
COMPILE_MODE=default
TRAIN_COPIES=5
MAX_SECONDS=480
STRICT=0
SMOKE=0
PY=${PYTHON:-python3}

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --epochs) EPOCHS=$2; EPOCHS_SET=1; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --torch-runs) TORCH_RUNS=$2; shift 2 ;;
    --keep-going) KEEP_GOING=1; shift ;;
    --seed) SEED=$2; shift 2 ;;
    --parts) PARTS=$2; shift 2 ;;
    --fcc-precisions) FCC_PRECISIONS=$2; shift 2 ;;
    --no-compile) DO_COMPILE=0; shift ;;
    --no-torch-fp32) DO_TORCH_FP32=0; shift ;;
    --compile-mode) COMPILE_MODE=$2; shift 2 ;;
    --train-copies) TRAIN_COPIES=$2; shift 2 ;;
    --max-seconds) MAX_SECONDS=$2; shift 2 ;;
    --gpu-dir) GPU_DIR=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --results) RESULTS=$2; shift 2 ;;
    --strict) STRICT=1; shift ;;
    --smoke-cpu) SMOKE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu-check: error: unknown argument '$1' (see --help)" >&2; exit 1 ;;
  esac
done
TORCH_RUNS=${TORCH_RUNS:-$RUNS}
for v in EPOCHS RUNS TORCH_RUNS TRAIN_COPIES MAX_SECONDS; do
  if ! [[ ${!v} =~ ^[1-9][0-9]*$ ]]; then
    echo "gpu-check: error: $v must be a positive integer (got '${!v}')" >&2
    exit 1
  fi
done
[[ $SEED =~ ^[0-9]+$ ]] || { echo "gpu-check: error: --seed must be >= 0" >&2; exit 1; }
if [ -z "$RESULTS" ]; then
  if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then RESULTS=$OUT; else RESULTS=$GPU_DIR/results; fi
fi
mkdir -p "$RESULTS" "$WORK" || exit 1
LOG=$RESULTS/gpu-check.log
T_START=$(date +%s)

STATUS=()   # "part|state|note", state: ok FAIL skipped info
record() {
  STATUS+=("$1|$2|$3")
  printf '\n=== %s: %s%s\n' "$1" "$2" "${3:+ ($3)}"
}
section() { printf '\n######## %s  [%ss elapsed]\n' "$*" "$(( $(date +%s) - T_START ))"; }
has_part() { [[ ",$PARTS," == *",$1,"* ]]; }
time_left() { echo $(( MAX_SECONDS - ($(date +%s) - T_START) )); }
now() { date +%s.%N; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }

# run_logged NAME LIMIT_S CMD...: runs CMD with a time limit (cut to what is
# left of --max-seconds), output to the console and $WORK/logs/NAME.log, wall
# time to $WORK/logs/NAME.wall. Returns CMD's status (124: timed out, 125:
# not started for lack of time), also left in LAST_RC.
run_logged() {
  local name=$1 limit=$2
  shift 2
  local left
  left=$(( $(time_left) - 10 ))
  if [ "$left" -lt 20 ]; then
    echo "gpu-check: $name not started: the --max-seconds budget ($MAX_SECONDS s) is spent"
    LAST_RC=125
    return 125
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  mkdir -p "$WORK/logs"
  echo "+ $*  (limit ${limit}s)"
  local t0 t1 rc
  t0=$(now)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$WORK/logs/$name.log"
  rc=${PIPESTATUS[0]}
  t1=$(now)
  minus "$t1" "$t0" >"$WORK/logs/$name.wall"
  echo "($name: exit $rc, $(cat "$WORK/logs/$name.wall") s wall)"
  [ "$rc" = 124 ] && echo "gpu-check: $name TIMED OUT after ${limit}s"
  LAST_RC=$rc
  return "$rc"
}

main() {
  section "setup"
  echo "gpu-check: $(date -u +%Y-%m-%dT%H:%M:%SZ), bundle $GPU_DIR, work $WORK, results $RESULTS"
  if [ ! -f "$GPU_DIR/.fcc-gpu-bundle" ]; then
    echo "gpu-check: error: no bundle at $GPU_DIR: run bench/gpu-prepare.sh on the"
    echo "  development machine and carry bench/gpu (carry=[\"bench/gpu\"])"
    return 1
  fi
  cat "$GPU_DIR/MANIFEST.txt"

  # -- the GPU -------------------------------------------------------------
  local gpu_name=
  if [ "$SMOKE" = 1 ]; then
    gpu_name=${FCC_SMOKE_GPU_NAME:-NVIDIA H100 80GB HBM3}
    echo "gpu-check: --smoke-cpu: no GPU used; CPU trainers stand in for the"
    echo "  CUDA ones, PyTorch runs on the CPU, peaks are those of '$gpu_name'"
  else
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
      nvidia-smi
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit \
        --format=csv 2>/dev/null
      gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
    elif "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
      gpu_name=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')
      echo "gpu-check: nvidia-smi unavailable; PyTorch sees $gpu_name"
    else
      echo "gpu-check: error: no NVIDIA GPU found (nvidia-smi is missing or lists no"
      echo "  GPU, and PyTorch sees no CUDA device). This script runs on the GPU"
      echo "  machine; use --smoke-cpu to test its plumbing on a CPU."
      return 2
    fi
  fi
  echo "gpu: $gpu_name"

  # -- unpack the bundle ------------------------------------------------------
  if ! "$PY" - "$GPU_DIR" "$WORK" <<'EOF'
import lzma, os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
n = 0
for sub in ("bin", "lib", "data"):
    sd, dd = os.path.join(src, sub), os.path.join(dst, sub)
    if not os.path.isdir(sd):
        continue
    os.makedirs(dd, exist_ok=True)
    for name in sorted(os.listdir(sd)):
        s = os.path.join(sd, name)
        d = os.path.join(dd, name[:-3] if name.endswith(".xz") else name)
        if not (os.path.exists(d) and os.path.getmtime(d) >= os.path.getmtime(s)):
            if name.endswith(".xz"):
                with lzma.open(s) as fi, open(d + ".part", "wb") as fo:
                    shutil.copyfileobj(fi, fo, 1 << 20)
                os.replace(d + ".part", d)
            else:
                shutil.copyfile(s, d)
            n += 1
        if sub == "bin":
            os.chmod(d, 0o755)
print(f"unpacked {n} file(s) into {dst}")
EOF
  then
    echo "gpu-check: error: cannot unpack $GPU_DIR into $WORK"
    return 1
  fi
  local data=$WORK/data
  # copies of data_batch_1.bin as data_batch_2..K.bin (links; a real file
  # of that name, carried with --train-records > 10000, stays)
  local k
  for k in 2 3 4 5; do
    [ -L "$data/data_batch_$k.bin" ] && rm -f "$data/data_batch_$k.bin"
  done
  if [ "$TRAIN_COPIES" -gt 1 ]; then
    for (( k = 2; k <= TRAIN_COPIES && k <= 5; k++ )); do
      [ -e "$data/data_batch_$k.bin" ] || ln -s data_batch_1.bin "$data/data_batch_$k.bin"
    done
    echo "gpu-check: --train-copies $TRAIN_COPIES: data_batch_1.bin repeated as data_batch_2..$(( TRAIN_COPIES < 5 ? TRAIN_COPIES : 5 )).bin (50000-image epochs of 10000 distinct images)"
  fi
  cat "$GPU_DIR/data/NOTE.txt" 2>/dev/null

  # -- libraries for the trainers -----------------------------------------------
  local nv
  nv=$("$PY" - <<'EOF' 2>/dev/null
import glob, os, site
roots = []
try:
    import nvidia
    roots += list(nvidia.__path__)
except Exception:
    pass
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    roots.append(os.path.join(sp, "nvidia"))
dirs = []
for r in roots:
    for dp, _, files in os.walk(r):
        if any(f.startswith("lib") and ".so" in f for f in files) and dp not in dirs:
            dirs.append(dp)
print(":".join(dirs))
EOF
)
  local cuda_dirs=
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib; do
    [ -d "$d" ] && cuda_dirs=$cuda_dirs:$d
  done
  TRAINER_LD=$WORK/lib${nv:+:$nv}$cuda_dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  echo "trainer LD_LIBRARY_PATH=$TRAINER_LD"
  # where the CUDA libraries the trainers load come from (first match wins)
  local lib d
  for lib in libcudnn.so.9 libcublas.so.13 libcublasLt.so.13 libnccl.so.2 libcudart.so.13; do
    local found=
    for d in ${TRAINER_LD//:/ }; do
      [ -e "$d/$lib" ] && { found=$d/$lib; break; }
    done
    echo "  $lib: ${found:-not found}"
  done
  command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -n 2

  local t
  declare -gA TRAINER=()
  for t in "$WORK"/bin/r9bot-*; do
    [ -x "$t" ] || continue
    TRAINER[$(basename "$t")]=$t
    local missing
    missing=$(LD_LIBRARY_PATH=$TRAINER_LD ldd "$t" 2>&1 | grep 'not found' || true)
    if [ -n "$missing" ]; then
      echo "gpu-check: WARNING: $(basename "$t") lacks libraries:"
      echo "$missing"
    else
      echo "$(basename "$t"): all libraries found"
    fi
  done
  if [ "$SMOKE" = 1 ]; then
    for t in fp32 fp16 qsgd topk; do
      [ -n "${TRAINER[r9bot-cpu-$t]:-}" ] && TRAINER[r9bot-cuda-$t]=${TRAINER[r9bot-cpu-$t]}
    done
    # no CPU stand-in for NHWC (the CPU target takes NCHW only)
    unset 'TRAINER[r9bot-cuda-fp16-nhwc]'
    true
  fi
  HAVE_TORCH=0
  if "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'; then
    HAVE_TORCH=1
  else
    echo "gpu-check: WARNING: PyTorch is not importable with $PY: PyTorch parts skipped"
  fi
  # the smoke test keeps every run tiny
  LIMITS=()
  TORCH_DEV=(--device cuda)
  if [ "$SMOKE" = 1 ]; then
    LIMITS=(--train-limit 1024 --test-limit 256)
    TORCH_DEV=(--device cpu)
    # full-width trainers on a CPU: one epoch unless asked otherwise
    [ -z "${EPOCHS_SET:-}" ] && EPOCHS=1
  fi
  mkdir -p "$WORK/step" "$WORK/train"
  TIMING_CACHE=$WORK/timing-cache.tsv

  FCC_RAN=0  # set when any CUDA trainer run finished
  has_part step && part_step "$data"
  has_part train && part_train_fcc "$data"
  if [ "$FCC_RAN" = 0 ] && [ "$SMOKE" = 0 ] && [ "$KEEP_GOING" = 0 ] &&
     { has_part step || has_part train; }; then
    diagnose_cuda_trainer "$data"
    has_part units && part_units
    record rest skipped "no CUDA trainer ran: PyTorch and comm parts left out to save device time for a rerun (--keep-going runs them)"
    return 0
  fi
  has_part train && part_train_torch "$data"
  has_part table && part_table "$gpu_name"
  has_part exact && part_exact
  has_part profile && part_profile
  has_part kernels && part_kernels
  has_part layout && part_layout "$data"
  has_part units && part_units
  has_part comm && part_comm "$data"
  return 0
}

# -- (f) fp32 step without FFT/Winograd algorithms ------------------------------------
part_exact() {
  section "(f) fp32 step with FCC_CUDNN_EXACT=1 (no FFT/Winograd) against float64"
  local gpu=${TRAINER[r9bot-cuda-fp32]:-}
  if [ -z "$gpu" ] || [ ! -f "$WORK/step/cpu-fp32/manifest.json" ] ||
     [ ! -f "$WORK/step/torch-fp64/manifest.json" ]; then
    record exact skipped "needs the fp32 step part (CPU dump and float64 truth)"
    return
  fi
  rm -rf "$WORK/step/cuda-fp32-exact"
  if ! FCC_CUDNN_EXACT=1 FCC_CUDNN_LOG=1 trainer_run dump-cuda-fp32-exact 120 "$gpu" \
      --data "$WORK/data" --seed "$SEED" --lr-knots 0:1 --momentum 0 --wd 0 \
      --timing-cache '' --dump-step "$WORK/step/cuda-fp32-exact"; then
    record_failure exact "the CUDA trainer's --dump-step failed"
    return
  fi
  if "$PY" "$SCRIPTS/compare_step.py" "$WORK/step/cuda-fp32-exact" "$WORK/step/cpu-fp32" \
      --truth "$WORK/step/torch-fp64" --precision fp32 \
      --labels "cuda-fp32-exact,cpu-fp32,torch-fp64" \
      --json "$WORK/step/compare-fp32-exact-truth.json" | tee "$WORK/step/compare-fp32-exact-truth.txt"; then
    record exact ok "without FFT/Winograd the CUDA fp32 step is as accurate as the CPU's"
  else
    record exact FAIL "see compare-fp32-exact-truth.txt"
  fi
}

# -- (g) per-kernel profile of one training step -------------------------------------
part_profile() {
  section "(g) one training step per kernel (Nsight Compute) and the cuDNN searches"
  local ncu p
  ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1 || true)
  mkdir -p "$WORK/profile"
  for p in ${FCC_PRECISIONS//,/ }; do
    [ "${p%-serial}" = "$p" ] || continue
    local exe=${TRAINER[r9bot-cuda-$p]:-}
    [ -n "$exe" ] || continue
    # every candidate of every search, with a private cache (all measured)
    FCC_CUDNN_LOG=1 trainer_run "cudnn-search-$p" 60 "$exe" --data "$WORK/data" \
      --seed "$SEED" --timing-cache "$WORK/profile/cache-$p.tsv" \
      --dump-step "$WORK/profile/dump-$p" >/dev/null
    if [ -z "$ncu" ]; then
      record "profile-$p" skipped "no ncu on this machine"
      continue
    fi
    rm -f "$WORK/profile/ncu-$p.csv"
    if run_logged "ncu-$p" 120 env LD_LIBRARY_PATH="$TRAINER_LD" "$ncu" \
        --clock-control none --graph-profiling node --print-units base \
        --metrics gpu__time_duration.sum --csv --page raw \
        --log-file "$WORK/profile/ncu-$p.csv" "$exe" --data "$WORK/data" \
        --seed "$SEED" --timing-cache "$WORK/profile/cache-$p.tsv" \
        --dump-step "$WORK/profile/dump-$p-ncu" >/dev/null &&
       "$PY" "$SCRIPTS/ncu_summary.py" "$WORK/profile/ncu-$p.csv" | tee "$WORK/profile/profile-$p.txt"
    then
      record "profile-$p" info "profile-$p.txt"
    else
      record_failure "profile-$p" "ncu or its summary failed; see ncu-$p.log"
    fi
  done
  cp "$WORK"/profile/cache-*.tsv "$WORK/logs/" 2>/dev/null
  cp "$WORK"/profile/profile-*.txt "$WORK/logs/" 2>/dev/null
  true
}

# -- (h) memory layout in PyTorch ------------------------------------------------------
part_layout() {
  local data=$1 cl
  section "(h) PyTorch eager fp16, 3 epochs: channels-last vs NCHW"
  [ "$HAVE_TORCH" = 1 ] || { record layout skipped "no PyTorch"; return; }
  for cl in channels-last no-channels-last; do
    run_logged "layout-$cl" 120 "$PY" "$SCRIPTS/torch_reference.py" "${TORCH_DEV[@]}" \
      --recipe bot10 --precision fp16 --epochs 3 --data "$data" --seed "$SEED" \
      "--$cl" --metrics "$WORK/train/layout-$cl.jsonl" || true
  done
  record layout info "layout-channels-last.log, layout-no-channels-last.log"
}

# When no CUDA trainer ran: the first failing trainer once more on 512 images
# under compute-sanitizer's memcheck, which names the kernel and the address of
# a bad access (the rerun after a fix then knows where to look).
diagnose_cuda_trainer() {
  local data=$1 exe= p
  for p in fp32 fp16; do
    [ -n "${TRAINER[r9bot-cuda-$p]:-}" ] && { exe=${TRAINER[r9bot-cuda-$p]}; break; }
  done
  [ -n "$exe" ] || return 0
  section "diagnosis: no CUDA trainer ran; $(basename "$exe") under compute-sanitizer"
  local cs
  cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
  if [ -z "$cs" ]; then
    record diagnosis skipped "no compute-sanitizer on this machine"
    return 0
  fi
  if run_logged sanitizer 120 env LD_LIBRARY_PATH="$TRAINER_LD" "$cs" --tool memcheck \
      --print-limit 20 "$exe" --data "$data" --seed "$SEED" --epochs 1 \
      --train-limit 512 --test-limit 512; then
    record diagnosis info "the trainer ran under compute-sanitizer; see sanitizer.log"
  else
    record diagnosis info "see sanitizer.log"
  fi
}

# record_failure PART NOTE: FAIL, or skipped when the last run_logged did
# not start its command for lack of time (LAST_RC 125).
record_failure() {
  if [ "${LAST_RC:-}" = 125 ]; then
    record "$1" skipped "not started: the --max-seconds budget ($MAX_SECONDS s) was spent"
  else
    record "$1" FAIL "$2"
  fi
}

trainer_run() { # NAME LIMIT TRAINER ARGS...: a trainer with its libraries
  local name=$1 limit=$2 exe=$3
  shift 3
  run_logged "$name" "$limit" env LD_LIBRARY_PATH="$TRAINER_LD" "$exe" "$@"
}

# -- (a) one-step comparison ----------------------------------------------------
# Two correct implementations differ by float rounding, which at batch 512 is
# about 1e-3 (fp32) and 5e-2 (fp16, PyTorch AMP included) in the relative l2
# error of early layers' gradients. So the verdict compares the CUDA trainer
# with a float64 PyTorch step from the same initial values (the truth): its
# error may be up to max(tolerance, 2 x the CPU trainer's error). The direct
# CUDA-vs-CPU comparison with fixed tolerances is printed as well.
part_step() {
  local data=$1 p
  section "(a) one training step: CUDA trainer vs CPU trainer (--dump-step)"
  # One timing cache for every fcc run (not $HOME's): a run and its
  # bit-identity variants must choose the same cuDNN algorithms.
  # (torch_reference.py takes the common flags only.)
  local common_flags=(--data "$data" --seed "$SEED" --lr-knots 0:1 --momentum 0 --wd 0)
  local step_flags=("${common_flags[@]}" --timing-cache "$TIMING_CACHE")
  local ready=()
  # fp16-nhwc: the channels-last CUDA trainer against the (NCHW) fp16 CPU
  # trainer, whose dump it shares.
  for p in fp32 fp16 fp16-nhwc; do
    local base=${p%-nhwc}
    local gpu=${TRAINER[r9bot-cuda-$p]:-} cpu=${TRAINER[r9bot-cpu-$base]:-}
    if [ -z "$gpu" ] || [ -z "$cpu" ]; then
      record "step-$p" skipped "no CUDA or CPU trainer for $p in the bundle"
      continue
    fi
    # (grep without -q: -q stops reading at the first match, the trainer then
    # dies of SIGPIPE and pipefail turns the match into a failure)
    if ! LD_LIBRARY_PATH=$TRAINER_LD "$gpu" --help 2>/dev/null | grep -- '--dump-step' >/dev/null; then
      record "step-$p" skipped "the trainers have no --dump-step flag yet"
      continue
    fi
    local extra=()
    [ "$base" = fp16 ] && extra=(--loss-scale 65536)
    rm -rf "$WORK/step/cuda-$p"
    if ! trainer_run "dump-cuda-$p" 120 "$gpu" "${step_flags[@]}" "${extra[@]}" \
        --dump-step "$WORK/step/cuda-$p"; then
      record_failure "step-$p" "the CUDA trainer's --dump-step failed"
      continue
    fi
    FCC_RAN=1
    # Switches that must not change a bit (the same kernels in another
    # order or place): FCC_CUDA_SERIAL=1 puts every weight gradient on the
    # main stream (a difference: a race between the streams);
    # FCC_CUDA_FINISH_KERNEL=1 adds the reductions' partial sums in a second
    # launch instead of their last block (a difference: the last-block
    # finish read partial sums before they were visible).
    local check
    for check in "streams|FCC_CUDA_SERIAL|a race between the streams?" \
                 "finish|FCC_CUDA_FINISH_KERNEL|a last-block reduction read stale partial sums?"; do
      [ "$base" = fp16 ] || break
      local label=${check%%|*} rest=${check#*|}
      local var=${rest%%|*} hint=${rest#*|}
      rm -rf "$WORK/step/cuda-$p-$label"
      if ! trainer_run "dump-cuda-$p-$label" 120 env "$var=1" \
          "$gpu" "${step_flags[@]}" "${extra[@]}" --dump-step "$WORK/step/cuda-$p-$label"; then
        record_failure "step-$p-$label" "the $var=1 dump failed: see dump-cuda-$p-$label.log"
        continue
      fi
      local f differ=()
      for f in "$WORK/step/cuda-$p"/*.after.f32; do
        cmp -s "$f" "$WORK/step/cuda-$p-$label/$(basename "$f")" || differ+=("$(basename "$f")")
      done
      if [ ${#differ[@]} -eq 0 ]; then
        record "step-$p-$label" ok "$var=1 gives bit-identical parameters"
      else
        record "step-$p-$label" FAIL "$var=1: ${#differ[@]} parameter(s) differ (${differ[*]:0:4}): $hint"
      fi
    done
    if [ "$p" = "$base" ] || [ ! -f "$WORK/step/cpu-$base/manifest.json" ]; then
      rm -rf "$WORK/step/cpu-$base"
      if ! trainer_run "dump-cpu-$base" 300 "$cpu" "${step_flags[@]}" "${extra[@]}" \
          --dump-step "$WORK/step/cpu-$base"; then
        record_failure "step-$p" "the CPU trainer's --dump-step failed"
        continue
      fi
    fi
    ready+=("$p")
  done
  [ ${#ready[@]} -eq 0 ] && return
  # the truth: float64 PyTorch from the CPU trainer's initial values
  local truth=
  if [ "$HAVE_TORCH" = 1 ]; then
    local from=$WORK/step/cpu-${ready[0]%-nhwc}
    rm -rf "$WORK/step/torch-fp64"
    if run_logged dump-torch-fp64 180 "$PY" "$SCRIPTS/torch_reference.py" \
        "${TORCH_DEV[@]}" --recipe bot10 --dump-step "$WORK/step/torch-fp64" \
        --dump-dtype float64 --init-from "$from" "${common_flags[@]}"; then
      truth=$WORK/step/torch-fp64
    else
      echo "gpu-check: the float64 PyTorch step failed: judging CUDA against CPU directly"
    fi
  fi
  for p in "${ready[@]}"; do
    local base=${p%-nhwc}
    echo
    echo "--- $p: CUDA vs CPU directly (fixed tolerance)"
    local direct=ok
    "$PY" "$SCRIPTS/compare_step.py" "$WORK/step/cuda-$p" "$WORK/step/cpu-$base" \
      --precision "$base" --labels "cuda-$p,cpu-$base" --json "$WORK/step/compare-$p.json" \
      | tee "$WORK/step/compare-$p.txt" || direct=FAIL
    if [ -z "$truth" ]; then
      if [ "$direct" = ok ]; then
        record "step-$p" ok "CUDA and CPU agree within the fixed $p tolerance"
      else
        record "step-$p" FAIL "CUDA vs CPU above the fixed $p tolerance (no float64 truth to tell rounding from bugs); see compare-$p.txt"
      fi
      continue
    fi
    echo
    echo "--- $p: CUDA vs CPU against the float64 truth"
    # fp32: cuDNN's fastest fp32 algorithms (Winograd, FFT) round in the
    # transformed domain; on an H200 (2026-11-30, bench/RESULTS.md) they put
    # the filter gradients 3.7e-3 from float64 (1.4e-3 without them), the
    # CPU's oneDNN 3.5e-4. A wrong kernel is off by 1e-2 or (much) more, so
    # fp32 is judged with a 5e-3 floor; fp16 keeps the 2 x CPU rule.
    local floor=()
    [ "$p" = fp32 ] && floor=(--tol-fp32 5e-3)
    if "$PY" "$SCRIPTS/compare_step.py" "$WORK/step/cuda-$p" "$WORK/step/cpu-$base" \
        --truth "$truth" --precision "$base" --labels "cuda-$p,cpu-$base,torch-fp64" "${floor[@]}" \
        --json "$WORK/step/compare-$p-truth.json" | tee "$WORK/step/compare-$p-truth.txt"; then
      record "step-$p" ok "CUDA as accurate as the CPU trainer against float64 (direct comparison: $direct)"
    else
      record "step-$p" FAIL "CUDA less accurate than the CPU trainer against float64; see compare-$p-truth.txt (direct: $direct)"
    fi
  done
}

# -- (d) compressed gradients -------------------------------------------------------
part_comm() {
  local data=$1 m
  section "(d) compressed gradients: CUDA trainer (NCCL on one rank) vs CPU trainer"
  local step_flags=(--data "$data" --seed "$SEED" --lr-knots 0:1 --momentum 0 --wd 0
                    --timing-cache "$TIMING_CACHE")
  for m in qsgd topk; do
    local gpu=${TRAINER[r9bot-cuda-$m]:-} cpu=${TRAINER[r9bot-cpu-$m]:-}
    if [ -z "$gpu" ] || [ -z "$cpu" ]; then
      record "comm-$m" skipped "no compressed CUDA and CPU trainers ($m) in the bundle"
      continue
    fi
    rm -rf "$WORK/step/cuda-$m" "$WORK/step/cpu-$m"
    if ! FCC_COMM_NCCL=1 trainer_run "dump-cuda-$m" 120 "$gpu" "${step_flags[@]}" \
        --dump-step "$WORK/step/cuda-$m"; then
      record_failure "comm-$m" "the compressed CUDA trainer's --dump-step failed"
      continue
    fi
    if ! trainer_run "dump-cpu-$m" 300 "$cpu" "${step_flags[@]}" \
        --dump-step "$WORK/step/cpu-$m"; then
      record_failure "comm-$m" "the compressed CPU trainer's --dump-step failed"
      continue
    fi
    # The dense CPU step (the verdict's truth) when the step part did not
    # make it in this call (a fresh machine: the part ran in an earlier call).
    local dense=${TRAINER[r9bot-cpu-fp32]:-}
    if [ ! -f "$WORK/step/cpu-fp32/manifest.json" ] && [ -n "$dense" ]; then
      rm -rf "$WORK/step/cpu-fp32"
      if ! trainer_run dump-cpu-fp32 300 "$dense" "${step_flags[@]}" \
          --dump-step "$WORK/step/cpu-fp32" && [ "$LAST_RC" = 125 ]; then
        # without the dense step the direct comparison fails correct code
        record_failure "comm-$m" "not judged"
        continue
      fi
    fi
    # Compression amplifies rounding: a gradient entry that differs by 1e-7
    # may round to the other QSGD level or cross the top-k threshold, and
    # cuDNN's fp32 gradients differ from the CPU's by ~1e-3 (part step), so
    # the compressed updates differ by a few percent (5e-2 to 7e-2 on an
    # H200). What must match is how the compressor behaves: judged against
    # the dense CPU step (the uncompressed update) as truth, the GPU's
    # compressed update may be at most 1.25x as far from it as the CPU's.
    local cmp=(--tol 2e-2 --labels "cuda-$m,cpu-$m")
    local how="matches the CPU's within 2e-2"
    if [ -f "$WORK/step/cpu-fp32/manifest.json" ]; then
      cmp=(--truth "$WORK/step/cpu-fp32" --truth-factor 1.25 --truth-per-tensor --tol 1e-6
           --labels "cuda-$m,cpu-$m,dense-cpu-fp32")
      how="is as close to the dense update as the CPU's (within 1.25x)"
    fi
    if "$PY" "$SCRIPTS/compare_step.py" "$WORK/step/cuda-$m" "$WORK/step/cpu-$m" \
        "${cmp[@]}" --json "$WORK/step/compare-$m.json" \
        | tee "$WORK/step/compare-$m.txt"; then
      record "comm-$m" ok "compressed step on the GPU (NCCL) $how"
    else
      record "comm-$m" FAIL "compressed step differs from the CPU's; see compare-$m.txt"
    fi
  done
  # One epoch through the NCCL path: the trainer runs and learns.
  local gpu=${TRAINER[r9bot-cuda-qsgd]:-}
  if [ -n "$gpu" ]; then
    if FCC_COMM_NCCL=1 trainer_run train-cuda-qsgd 120 "$gpu" --data "$data" \
        --epochs 2 --seed "$SEED" "${LIMITS[@]}" --metrics "$WORK/train/fcc-cuda-qsgd.jsonl"; then
      record "comm-train-qsgd" ok "2 epochs with qsgd:255 through NCCL; see train-cuda-qsgd.log"
    else
      record_failure "comm-train-qsgd" "exit status $LAST_RC"
    fi
  fi
}

# -- (k) kernel benchmark ----------------------------------------------------------
part_kernels() {
  section "(k) fcc-kernel-bench: BatchNorm and pooling kernels, NCHW vs NHWC convolutions"
  local b=$WORK/bin/fcc-kernel-bench
  if [ "$SMOKE" = 1 ]; then
    record kernels skipped "--smoke-cpu: no GPU to measure"
  elif [ ! -x "$b" ]; then
    record kernels skipped "no fcc-kernel-bench in the bundle"
  elif run_logged kernels 240 env LD_LIBRARY_PATH="$TRAINER_LD" "$b"; then
    record kernels info "tables in kernels.log"
  else
    record_failure kernels "exit status $LAST_RC; see kernels.log"
  fi
}

# -- (e) GPU unit tests and the compressor benchmark ---------------------------------
part_units() {
  section "(e) cuda_kernels_test and fcc-compress-bench --gpu-only"
  local t=$WORK/bin/cuda_kernels_test b=$WORK/bin/fcc-compress-bench
  if [ "$SMOKE" = 1 ]; then
    record units skipped "--smoke-cpu: no GPU to test"
    return
  fi
  if [ -x "$t" ]; then
    if run_logged cuda-kernels-test 120 env LD_LIBRARY_PATH="$TRAINER_LD" "$t" \
        --gtest_brief=1; then
      record units ok "cuda_kernels_test passed on the GPU"
    else
      record_failure units "cuda_kernels_test failed; see cuda-kernels-test.log"
    fi
  else
    record units skipped "no cuda_kernels_test in the bundle"
  fi
  if [ -x "$b" ]; then
    if run_logged compress-bench 60 env LD_LIBRARY_PATH="$TRAINER_LD" "$b" --gpu-only; then
      record compress-bench info "GB/s table in compress-bench.log"
    else
      record_failure compress-bench "exit status $LAST_RC"
    fi
  fi
}

# -- (b) training -----------------------------------------------------------------
SYSTEMS=()  # "name|precision|metrics|wall file|summary json or -"
# The name of fcc's training run of precision P (records, metrics, logs).
fcc_run_name() {
  if [ "$SMOKE" = 1 ]; then echo "fcc-cpu-$1-smoke"; else echo "fcc-cuda-$1"; fi
}

part_train_fcc() {
  local data=$1 p
  section "(b) fcc: bot10, $EPOCHS epochs, $RUNS run(s), on $data"
  local common=(--data "$data" --epochs "$EPOCHS" --runs "$RUNS" --seed "$SEED" "${LIMITS[@]}"
                --timing-cache "$TIMING_CACHE")
  declare -gA TRAINED=()  # fcc runs that finished
  for p in ${FCC_PRECISIONS//,/ }; do
    # P-serial: the trainer of P with FCC_CUDA_SERIAL=1 (weight gradients on
    # the main stream: what the side stream is worth)
    local base=${p%-serial} env=()
    [ "$base" != "$p" ] && env=(env FCC_CUDA_SERIAL=1)
    local exe=${TRAINER[r9bot-cuda-$base]:-}
    local name
    name=$(fcc_run_name "$p")
    if [ -z "$exe" ]; then
      record "train-$name" skipped "no CUDA trainer for $base in the bundle"
      continue
    fi
    rm -f "$WORK/train/$name.jsonl"
    if trainer_run "$name" 180 "${env[@]}" "$exe" "${common[@]}" --metrics "$WORK/train/$name.jsonl"; then
      record "train-$name" ok ""
      TRAINED[$name]=1
      FCC_RAN=1
      SYSTEMS+=("$name|${base%-nhwc}|$WORK/train/$name.jsonl|$WORK/logs/$name.wall|-")
    else
      record_failure "train-$name" "exit status $LAST_RC"
    fi
  done
  # P and P-serial train the same seeds with the same kernels (deterministic
  # cuDNN algorithms from one timing cache), P with the side stream in the
  # captured graph that training replays: every epoch's loss and accuracy
  # must be equal (the step part compares one step outside a graph only).
  for p in ${FCC_PRECISIONS//,/ }; do
    [ "${p%-serial}" != "$p" ] || continue
    local na nb
    na=$(fcc_run_name "${p%-serial}") nb=$(fcc_run_name "$p")
    # both runs finished (a failed one is recorded already)
    [ -n "${TRAINED[$na]:-}" ] && [ -n "${TRAINED[$nb]:-}" ] || continue
    local a=$WORK/train/$na.jsonl b=$WORK/train/$nb.jsonl
    local verdict
    if verdict=$("$PY" "$SCRIPTS/same_epochs.py" "$a" "$b"); then
      record "train-${p%-serial}-streams" ok "trained with and without FCC_CUDA_SERIAL=1: $verdict"
    else
      record "train-${p%-serial}-streams" FAIL "with and without FCC_CUDA_SERIAL=1: $verdict (a race between the streams in the captured graph?)"
    fi
  done
}

part_train_torch() {
  local data=$1
  section "(b) PyTorch: bot10, $EPOCHS epochs, $TORCH_RUNS run(s), on $data"
  local common=(--data "$data" --epochs "$EPOCHS" --runs "$TORCH_RUNS" --seed "$SEED" "${LIMITS[@]}")
  if [ "$HAVE_TORCH" = 0 ]; then
    record "train-pytorch" skipped "PyTorch is not importable"
    return
  fi
  local modes=("eager fp16")
  [ "$DO_COMPILE" = 1 ] && modes+=("compile fp16")
  [ "$DO_TORCH_FP32" = 1 ] && modes+=("eager fp32")
  # fp16 autocast on a CPU is no reference: the smoke test runs fp32 only
  [ "$SMOKE" = 1 ] && modes=("eager fp32") && [ "$DO_COMPILE" = 1 ] && modes+=("compile fp32")
  local m
  for m in "${modes[@]}"; do
    local mode=${m% *} prec=${m#* } flags=()
    [ "$mode" = compile ] && flags=(--compile --compile-mode "$COMPILE_MODE")
    local name=pytorch-$mode-$prec
    rm -f "$WORK/train/$name.jsonl" "$WORK/train/$name.summary.json"
    local limit=150
    [ "$mode" = compile ] && limit=300
    if run_logged "$name" "$limit" "$PY" "$SCRIPTS/torch_reference.py" "${TORCH_DEV[@]}" \
        --recipe bot10 --precision "$prec" "${flags[@]}" "${common[@]}" \
        --metrics "$WORK/train/$name.jsonl" --summary "$WORK/train/$name.summary.json"; then
      record "train-$name" ok ""
      SYSTEMS+=("$name|$prec|$WORK/train/$name.jsonl|$WORK/logs/$name.wall|$WORK/train/$name.summary.json")
    else
      record_failure "train-$name" "exit status $LAST_RC"
    fi
  done
}

# -- (c) the table ------------------------------------------------------------------
part_table() {
  local gpu_name=$1
  section "(c) summary"
  if [ ${#SYSTEMS[@]} -eq 0 ]; then
    record table skipped "no training run finished"
    return
  fi
  if "$PY" - "$SCRIPTS" "$gpu_name" "$RESULTS/summary.md" "${SYSTEMS[@]}" <<'EOF'
import json, os, sys
scripts, gpu, out = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, scripts)
import flops
flop_img = flops.train_flops_per_image()
pattern, peak = flops.peak_tflops(gpu)
rows = []
def usable(rec):
    # a diverged run records NaN accuracy or loss as null
    return all(isinstance(rec.get(k), (int, float)) for k in
               ("epoch_time_s", "eval_time_s", "train_images", "test_acc"))
for spec in sys.argv[4:]:
    name, prec, metrics, wall_file, summary = spec.split("|")
    try:
        recs = [json.loads(l) for l in open(metrics) if l.strip()]
        bad = [r for r in recs if not usable(r)]
        if bad:
            print(f"table: {name}: {len(bad)} epoch record(s) without numbers "
                  f"(diverged?), e.g. {bad[0]}: row left out", file=sys.stderr)
            continue
        wall = float(open(wall_file).read())
    except (OSError, ValueError) as e:
        print(f"table: {name}: {e}: row left out", file=sys.stderr)
        continue
    if not recs:
        continue
    train = sum(r["epoch_time_s"] for r in recs)
    evals = sum(r["eval_time_s"] for r in recs)
    images = sum(r["train_images"] for r in recs)
    runs = sorted({r["run"] for r in recs})
    last = {}
    for r in recs:
        last[r["run"]] = r
    acc = sum(last[k]["test_acc"] for k in runs) / len(runs)
    ips = images / train if train > 0 else 0.0
    tflops = ips * flop_img / 1e12
    warm = None
    if summary != "-" and os.path.exists(summary):
        warm = json.load(open(summary)).get("warmup_s")
    rows.append(dict(name=name, prec=prec, train=train / len(runs),
                     startup=wall - train - evals, eval=evals / len(runs),
                     ips=ips, tflops=tflops, acc=acc, runs=len(runs),
                     epochs=max(r["epoch"] for r in recs), warm=warm,
                     pct=100 * tflops / peak if peak else None,
                     test_images=recs[-1]["test_images"],
                     train_images=recs[-1]["train_images"]))
lines = []
lines.append(f"GPU: {gpu}; dense fp16 peak: " +
             (f"{peak:g} TFLOP/s ('{pattern}')" if peak else "unknown"))
lines.append(f"Training FLOPs: {flop_img / 1e9:.4f} GFLOP per image (conv + linear, "
             "3 x forward, 2 FLOPs per MAC; bench/flops.py).")
if rows:
    r0 = rows[0]
    lines.append(f"Data per epoch: {r0['train_images']} training images, "
                 f"{r0['test_images']} test images; {r0['epochs']} epochs, "
                 f"{r0['runs']} run(s); times per run.")
lines.append("")
lines.append("| system | train time s (excl. start-up) | start-up s | images/s "
             "| TFLOP/s | % of dense fp16 peak | test acc |")
lines.append("|---|---|---|---|---|---|---|")
for r in rows:
    pct = f"{r['pct']:.2f}" if r["pct"] is not None else "-"
    su = f"{r['startup']:.1f}"
    if r["warm"] is not None:
        su += f" (warm-up/compile {r['warm']:.1f})"
    lines.append(f"| {r['name']} | {r['train']:.2f} | {su} | {r['ips']:.0f} | "
                 f"{r['tflops']:.2f} | {pct} | {r['acc']:.4f} |")
lines.append("")
lines.append("start-up = wall time of the process - training - evaluation "
             "(process start, data, cuDNN/compile warm-up, teardown); "
             "train time counts the training steps only.")
ratios = []
for f in rows:
    if not f["name"].startswith("fcc-"):
        continue
    for t in rows:
        if t["name"].startswith("pytorch-") and t["prec"] == f["prec"] and t["train"] > 0:
            ratio = f["train"] / t["train"]
            ratios.append(f"- {f['name']} / {t['name']}: {ratio:.2f} "
                          f"({'fcc faster' if ratio < 1 else 'fcc slower'}; "
                          f"training time, start-up excluded)")
if ratios:
    lines.append("")
    lines.append("fcc time / PyTorch time:")
    lines += ratios
# fcc against fcc: a variant's time over its baseline's. NHWC against NCHW
# of the same precision (P-nhwc / P), and the side stream against one stream
# (P / P-serial, FCC_CUDA_SERIAL=1: no overlap of the weight gradients).
# (--smoke-cpu names end in -smoke.)
def key(name):
    return name[:-len("-smoke")] if name.endswith("-smoke") else name
by_key = {key(r["name"]): r for r in rows}
for suffix, variant_first, meaning in (("-nhwc", True, "NHWC faster"),
                                       ("-serial", False, "the side stream faster")):
    for r in rows:
        k = key(r["name"])
        base = by_key.get(k[:-len(suffix)]) if k.endswith(suffix) else None
        if not base:
            continue
        num, den = (r, base) if variant_first else (base, r)
        if den["train"] > 0:
            lines.append("")
            lines.append(f"{num['name']} / {den['name']}: "
                         f"{num['train'] / den['train']:.2f} (training time; "
                         f"below 1: {meaning})")
text = "\n".join(lines)
print(text)
with open(out, "w") as fh:
    fh.write(text + "\n")
EOF
  then
    record table ok "$RESULTS/summary.md"
  else
    record table FAIL "the summary could not be computed"
  fi
}

finish() {
  section "status"
  local s failed=0 skipped=0
  for s in "${STATUS[@]}"; do
    IFS='|' read -r part state note <<<"$s"
    printf '  %-28s %-8s %s\n' "$part" "$state" "$note"
    [ "$state" = FAIL ] && failed=$((failed + 1))
    [ "$state" = skipped ] && skipped=$((skipped + 1))
  done
  # the small outputs (not the raw dumps) in one archive
  (cd "$WORK" && tar -czf "$RESULTS/results.tar.gz" --exclude='*.f32' \
     step train logs 2>/dev/null) && echo "results: $RESULTS/results.tar.gz"
  echo "gpu-check: done in $(( $(date +%s) - T_START )) s: $failed failed, $skipped skipped"
  [ "$failed" -gt 0 ] && return 1
  [ "$STRICT" = 1 ] && [ "$skipped" -gt 0 ] && return 1
  return 0
}

run_all() {
  main
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "gpu-check: stopped during setup (status $rc)"
    return "$rc"
  fi
  finish
}

run_all 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
