#!/usr/bin/env bash
# Fuzzes the GGUF reader: configures a clang build with M40LLM_FUZZ=ON
# (ASan + UBSan + libFuzzer), builds tests/fuzz/gguf_fuzz, writes the seed
# corpus, runs the fuzzer for a bounded time and fails if it finds a crash.
#
# Environment: BUILD_DIR (default <repo>/build-fuzz), FUZZ_SECONDS (60),
# JOBS (2), CC/CXX (clang/clang++). Extra arguments go to the fuzzer.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${BUILD_DIR:-$root/build-fuzz}
fuzz_seconds=${FUZZ_SECONDS:-60}
jobs=${JOBS:-2}
cc=${CC:-clang}
cxx=${CXX:-clang++}

cmake -S "$root" -B "$build_dir" -G Ninja \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DM40LLM_FUZZ=ON -DM40LLM_CUDA=OFF -DM40LLM_BUILD_BENCH=OFF
cmake --build "$build_dir" --target gguf_fuzz gguf_make_seed_corpus -j "$jobs"

work=$build_dir/fuzz-gguf
seeds=$work/seeds
corpus=$work/corpus        # grows across runs
artifacts=$work/artifacts
rm -rf "$seeds" "$artifacts"
mkdir -p "$seeds" "$corpus" "$artifacts"
"$build_dir/tests/fuzz/gguf_make_seed_corpus" "$seeds"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# The fuzzer's progress lines go to a log; its tail is shown, all of it on failure.
log=$work/fuzz.log
status=0
"$build_dir/tests/fuzz/gguf_fuzz" "$corpus" "$seeds" \
  -dict="$root/tests/fuzz/gguf.dict" \
  -max_total_time="$fuzz_seconds" \
  -rss_limit_mb=2048 -max_len=65536 -timeout=10 \
  -artifact_prefix="$artifacts/" -print_final_stats=1 "$@" >"$log" 2>&1 || status=$?

found=$(find "$artifacts" -type f | head -n 20)
if [[ $status -ne 0 || -n $found ]]; then
  cat "$log" >&2
  echo "fuzz.sh: the fuzzer failed (exit $status); reproducers:" >&2
  echo "${found:-  (none written)}" >&2
  echo "rerun one with: $build_dir/tests/fuzz/gguf_fuzz <file>" >&2
  exit 1
fi
tail -n 8 "$log"
echo "fuzz.sh: no crash in ${fuzz_seconds}s"
