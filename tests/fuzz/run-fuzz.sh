#!/usr/bin/env bash
# Builds (if needed) and runs fcc's ONNX-importer fuzzer.
#
#   tests/fuzz/run-fuzz.sh [SECONDS [BUILD_DIR]]
#
# SECONDS    fuzzing budget (-max_total_time), default 60 (what ctest runs).
# BUILD_DIR  the clang build, default <repo>/build-fuzz. It is configured with
#            CC=clang-19 CXX=clang++-19 -DFCC_BUILD_FUZZERS=ON the first time
#            and only fcc-import-fuzzer is built (incrementally afterwards).
#
# First every input that once crashed the importer is run once
# (tests/fuzz/regressions/*, tests/lit/errors/Inputs/fuzz-*); then the fuzzer
# runs from the seed corpus (tests/fuzz/corpus/, read only) plus a working
# corpus BUILD_DIR/fuzz-corpus that keeps what earlier runs found. Nothing is
# written to the source tree.
# Exit status: 0 clean, 1 a crash (the input's path is printed), 2 set-up.
# Environment: FCC_FUZZ_CC / FCC_FUZZ_CXX (default clang-19 / clang++-19),
# FCC_FUZZ_JOBS (build parallelism), FCC_FUZZ_ARGS (extra libFuzzer flags).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
seconds=${1:-60}
build=${2:-$repo/build-fuzz}
cc=${FCC_FUZZ_CC:-clang-19}
cxx=${FCC_FUZZ_CXX:-clang++-19}

say() { echo "run-fuzz: $*"; }
if ! command -v "$cxx" >/dev/null || ! command -v "$cc" >/dev/null; then
  say "$cxx not found (apt-get install clang-19 libclang-rt-19-dev)" >&2
  exit 2
fi

# --- build -------------------------------------------------------------------
mkdir -p "$build"
build=$(cd "$build" && pwd)
start=$(date +%s)
if ! grep -q '^FCC_BUILD_FUZZERS:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
  say "configuring $build with $cxx"
  # -O1 with line tables: fast enough to build on small machines, symbolized
  # stack traces. No NDEBUG: LLVM/MLIR's header assertions stay armed.
  CC=$cc CXX=$cxx cmake -G Ninja -S "$repo" -B "$build" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only" \
    "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only" \
    -DFCC_BUILD_FUZZERS=ON -DFCC_BUILD_TESTS=OFF -DFCC_ENABLE_CUDA=OFF \
    >"$build/fuzz-configure.log" 2>&1 ||
    { cat "$build/fuzz-configure.log" >&2; say "configure failed" >&2; exit 2; }
fi
cmake --build "$build" --target fcc-import-fuzzer ${FCC_FUZZ_JOBS:+-j "$FCC_FUZZ_JOBS"} \
  >"$build/fuzz-build.log" 2>&1 ||
  { grep -E -A3 'error:|FAILED' "$build/fuzz-build.log" | head -n 60 >&2
    say "build failed (log: $build/fuzz-build.log)" >&2; exit 2; }
fuzzer=$build/bin/fcc-import-fuzzer
say "built $fuzzer in $(( $(date +%s) - start )) s"

# ASan's defaults are built into the fuzzer (import_fuzzer.cpp). Leak
# detection stays on: LeakSanitizer reports nothing in libonnx or protobuf,
# so no suppressions are needed.
export UBSAN_OPTIONS="print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

artifacts=$build/fuzz-artifacts
rm -rf "$artifacts" && mkdir -p "$artifacts"
common=(-timeout=10 -rss_limit_mb=2048 "-artifact_prefix=$artifacts/")

report_crash() {
  say "CRASH: $1"
  for f in "$artifacts"/*; do
    [ -e "$f" ] && say "crashing input: $f"
  done
  say "reproduce: $fuzzer INPUT"
  say "minimize:  $fuzzer -minimize_crash=1 -max_total_time=60 -exact_artifact_path=MIN INPUT"
  say "then add it to tests/fuzz/regressions/ (see tests/fuzz/README.md)"
  exit 1
}

# --- regressions: every input that once crashed, run once ---------------------
# regressions/: the fuzzer's own (minimized) findings; the readable versions
# in tests/lit/errors/Inputs/fuzz-*.onnxtxt (checked for their message by
# tests/lit/errors/fuzz-regressions.test) run through the sanitizers too.
regressions=()
for f in "$here"/regressions/* "$repo"/tests/lit/errors/Inputs/fuzz-*; do
  case "$f" in *.md|*/\*) ;; *) regressions+=("$f") ;; esac
done
if [ "${#regressions[@]}" -gt 0 ]; then
  if ! "$fuzzer" "${common[@]}" "${regressions[@]}" >"$build/fuzz-regressions.log" 2>&1; then
    tail -n 60 "$build/fuzz-regressions.log"
    report_crash "a regression input crashes again (log: $build/fuzz-regressions.log)"
  fi
  say "${#regressions[@]} regression inputs: no crash"
fi

# --- fuzzing -----------------------------------------------------------------
work=$build/fuzz-corpus
mkdir -p "$work"
log=$build/fuzz.log
say "fuzzing for $seconds s (log: $log)"
status=0
# The working corpus comes first: libFuzzer writes new inputs only there.
# -max_len: the largest seed is ~14 KB; models of interest are small.
"$fuzzer" "${common[@]}" -max_total_time="$seconds" -max_len=16384 \
  -dict="$here/onnx.dict" -print_final_stats=1 ${FCC_FUZZ_ARGS:-} \
  "$work" "$here/corpus" >"$log" 2>&1 || status=$?

runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)
say "executions: ${runs:-?} (${rate:-?}/s), ${cov:-cov: ?}, corpus $(ls "$work" | wc -l) files"
if [ "$status" -ne 0 ]; then
  grep -E -A40 '^==[0-9]+==ERROR|runtime error|^==[0-9]+== ERROR|deadly signal|ERROR: libFuzzer' "$log" | head -n 80 || tail -n 60 "$log"
  report_crash "the fuzzer exited with status $status (log: $log)"
fi
say "no crash"
