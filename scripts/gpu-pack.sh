#!/usr/bin/env bash
# Builds the CUDA configuration here and packs what a GPU machine needs to run
# every GPU test (and the tools, for benchmarks) into one folder:
#   ${PACK_DIR:-gpu-pack}/payload.tar.xz  bin/: the test binaries (ctest label
#                   `gpu`), m40llm and the GPU benchmarks; lib/: their shared
#                   libraries that are not part of a base Ubuntu 24.04 /
#                   Debian 12 system or of the GPU machine's CUDA toolkit
#   ${PACK_DIR:-gpu-pack}/run.sh  unpacks the payload next to itself and runs
#                   everything there, logs and JSON under $OUT
# Every test binary carries the kernels for every architecture, so the
# folder is compressed: the payload must stay within 64 MiB (the device
# tool's carry limit).
# Usage: scripts/gpu-pack.sh [extra CMake arguments]; see docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build_dir=${BUILD_DIR:-build-gpu}
pack=${PACK_DIR:-gpu-pack}
limit_mib=64

BUILD_DIR=$build_dir scripts/build.sh -DM40LLM_BUILD_BENCH=ON "$@" >/dev/null
if [ ! -f "$build_dir/cuda/libm40llm_cuda.a" ]; then
  echo "gpu-pack: $build_dir was configured without CUDA" >&2
  exit 1
fi

rm -rf "$pack"
stage=$pack/payload
mkdir -p "$stage/bin" "$stage/lib"

# Every executable behind a `gpu` test, from ctest's own description.
mapfile -t tests < <(ctest --test-dir "$build_dir" -L gpu --show-only=json-v1 |
  /usr/bin/python3 -c '
import json, sys
seen = set()
for t in json.load(sys.stdin)["tests"]:
    exe = t["command"][0]
    if exe not in seen:
        seen.add(exe)
        print(exe)
')
if [ ${#tests[@]} -eq 0 ]; then
  echo "gpu-pack: no test carries the ctest label gpu" >&2
  exit 1
fi
cp "${tests[@]}" "$stage/bin/"
cp "$build_dir/tools/m40llm" "$stage/bin/"
for b in "$build_dir"/bench/m40llm_cuda_*bench; do
  if [ -x "$b" ]; then cp "$b" "$stage/bin/"; fi
done

# Shared libraries outside the C/C++ runtime and the CUDA driver. cuBLAS
# (the benchmarks' yardstick, several hundred MiB) is far over the carry
# limit: the GPU machine's CUDA toolkit provides it (run.sh below).
system_lib='^(linux-vdso|ld-linux|libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|libcuda)\.'
toolkit_lib='^(libcublas|libcublasLt)\.'
for exe in "$stage"/bin/*; do
  ldd "$exe" | awk '$3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r name path; do
  if [[ ! $name =~ $system_lib && ! $name =~ $toolkit_lib ]]; then cp -L "$path" "$stage/lib/$name"; fi
done

cat > "$pack/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine: unpacks the payload, then every GPU test (a test
# binary named *fault_test one test per process: each faults its CUDA
# context on purpose), compute-sanitizer memcheck on them, an end-to-end
# check of `m40llm serve --backend cuda` (generate, health, a device fault
# turning health NOT_SERVING, drain), and the benchmarks; logs, JSON and a
# summary under $OUT (default ./gpu-out). Environment:
#   M40LLM_FIXTURES   conformance fixtures folder (cuda_conformance_test skips without)
#   GPU_TESTS=0       skip the test binaries (and memcheck)
#   GPU_MEMCHECK=0    skip memcheck
#   GPU_BENCH=0       skip the benchmarks
#   GPU_PRESETS       mkmodel presets for `m40llm bench` (default "tinyllama-1.1b llama2-7b";
#                     written under $GPU_MODEL_DIR, default /tmp/m40llm-models)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/../gpu-out}
mkdir -p "$out"
pay=$here/payload
if [ ! -x "$pay/bin/m40llm" ]; then
  tar -xJf "$here/payload.tar.xz" -C "$here" || { echo "cannot unpack the payload"; exit 1; }
fi
# The pack's libraries first, then the machine's CUDA toolkit for cuBLAS
# (libcublas.so.13, libcublasLt.so.13), which the pack leaves out.
cuda_lib=
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  if ls "$d"/libcublas.so.* >/dev/null 2>&1; then cuda_lib=$d; break; fi
done
[ -n "$cuda_lib" ] || echo "warning: no libcublas under /usr/local/cuda: m40llm and the benchmarks will not start"
export LD_LIBRARY_PATH=$pay/lib${cuda_lib:+:$cuda_lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export M40LLM_CACHE_DIR=$out/cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
status=0
m40llm=$pay/bin/m40llm

# Runs one test binary (each test in its own process for *fault_test).
run_test() {
  local t=$1 name log
  name=$(basename "$t")
  log=$out/$name.log
  if [[ $name == *fault_test ]]; then
    : >"$log"
    local ok=1 c
    for c in $("$t" --gtest_list_tests | awk '/^[^ ]/ {s=$1} /^  / {print s $1}'); do
      timeout 300 "$t" --gtest_filter="$c" >>"$log" 2>&1 || ok=0
    done
    [ $ok = 1 ]
  else
    timeout 600 "$t" >"$log" 2>&1
  fi
}

tests=("$pay"/bin/*_test)
[ "${GPU_TESTS:-1}" = 0 ] && tests=()
for t in "${tests[@]}"; do
  name=$(basename "$t")
  if run_test "$t"; then
    echo "PASS $name: $(grep -E '^\[  PASSED  \]' "$out/$name.log" | tr '\n' ' ')"
  else
    echo "FAIL $name (see $name.log)"
    status=1
  fi
  grep -h '^\[ figures  \]' "$out/$name.log" || true
done

cs=/usr/local/cuda/bin/compute-sanitizer
[ -x "$cs" ] || cs=$(command -v compute-sanitizer || true)
if [ "${GPU_MEMCHECK:-1}" = 0 ] || [ ${#tests[@]} = 0 ]; then
  echo "memcheck skipped (GPU_MEMCHECK=0)"
elif [ -n "$cs" ]; then
  for t in "${tests[@]}"; do
    name=$(basename "$t")
    # Deliberate faults are what memcheck reports, and the conformance cases
    # are long and run the same kernels as the backend test.
    case $name in *fault_test | *conformance_test) continue ;; esac
    # Deliberate out-of-memory requests would count as reported API errors.
    if timeout 600 "$cs" --tool memcheck --error-exitcode 9 "$t" \
        --gtest_filter='-*OutOfMemory*' >"$out/$name.memcheck.log" 2>&1; then
      echo "memcheck clean: $name"
    else
      echo "memcheck FAILED: $name (see $name.memcheck.log)"
      status=1
    fi
  done
else
  echo "compute-sanitizer not found: memcheck skipped"
fi

# End to end: the server on the GPU, driven by m40llm client. Fresh ports
# each run; a server is always killed before the check returns.
serve_pid=
stop_server() {
  if [ -n "$serve_pid" ]; then kill -9 "$serve_pid" 2>/dev/null; wait "$serve_pid" 2>/dev/null; fi
  serve_pid=
}
# Metrics stay off: the device tool's sandbox refuses civetweb's listening
# socket (any address), which the e2e tests here cover on the CPU backend.
start_server() {  # start_server PORT [ENV=VALUE...]
  local port=$1
  shift
  env "$@" "$m40llm" serve --backend cuda --listen 127.0.0.1:"$port" --metrics-listen "" \
    --max-batch 4 --drain-timeout 5 &
  serve_pid=$!
  for _ in $(seq 150); do
    "$m40llm" client health --addr 127.0.0.1:"$port" >/dev/null 2>&1 && return 0
    kill -0 "$serve_pid" 2>/dev/null || break
    sleep 0.2
  done
  echo "the server did not become healthy"
  return 1
}
drain_server() {  # SIGTERM, expect exit 0
  local rc
  kill -TERM "$serve_pid"; wait "$serve_pid"; rc=$?
  serve_pid=
  echo "exit after SIGTERM: $rc"
  [ "$rc" = 0 ]
}
serve_check() {
  local port=$((20000 + RANDOM % 20000))
  echo "== serve --backend cuda: generate, health, drain"
  start_server "$port" || return 1
  "$m40llm" client generate --addr 127.0.0.1:"$port" --prompt "hello there" -n 16 \
    --temperature 0 || return 1
  "$m40llm" client health --addr 127.0.0.1:"$port" || return 1
  drain_server || return 1
  echo "== serve --backend cuda with a device fault after 3 passes"
  start_server "$port" M40LLM_CUDA_FAULT_AFTER_PASSES=3 || return 1
  if "$m40llm" client generate --addr 127.0.0.1:"$port" --prompt "hello there" -n 32; then
    echo "generate succeeded across a device fault"
    return 1
  fi
  sleep 1
  if "$m40llm" client health --addr 127.0.0.1:"$port"; then
    echo "health still SERVING after a device fault"
    return 1
  fi
  drain_server
}
serve_check >"$out/serve_e2e.log" 2>&1
serve_rc=$?
stop_server
if [ $serve_rc = 0 ]; then echo "PASS serve end to end (serve_e2e.log)"; else
  echo "FAIL serve end to end (see serve_e2e.log)"; status=1; fi

if [ "${GPU_BENCH:-1}" != 0 ]; then
  for b in m40llm_cuda_kernel_bench m40llm_cuda_attention_bench; do
    if [ -x "$pay/bin/$b" ]; then
      "$pay/bin/$b" --json "$out/$b.json" >"$out/$b.txt" 2>&1 || status=1
      echo "== $b"; cat "$out/$b.txt"
    fi
  done
  models=${GPU_MODEL_DIR:-/tmp/m40llm-models}
  for preset in ${GPU_PRESETS:-tinyllama-1.1b llama2-7b}; do
    echo "== m40llm bench --preset $preset"
    "$m40llm" bench --preset "$preset" --preset-dir "$models" --json "$out/bench_$preset.json" \
      2>&1 | tee "$out/bench_$preset.txt" || status=1
    # The same decode steps launched one kernel at a time, side by side.
    echo "== m40llm bench --preset $preset, decode without CUDA graphs"
    M40LLM_CUDA_GRAPHS=0 "$m40llm" bench --preset "$preset" --preset-dir "$models" --prefill 0 \
      --no-kernels --json "$out/bench_${preset}_nographs.json" 2>&1 |
      tee "$out/bench_${preset}_nographs.txt" || status=1
  done
fi
exit $status
RUN
chmod +x "$pack/run.sh"

tar -cf - -C "$pack" payload | xz -T0 -6 >"$pack/payload.tar.xz"
raw_kib=$(du -sk "$stage" | cut -f1)
echo "gpu-pack: $(find "$stage/bin" -type f | wc -l) binaries and $(find "$stage/lib" -type f | wc -l) libraries, $((raw_kib / 1024)) MiB, compressed to $(($(stat -c %s "$pack/payload.tar.xz") / 1048576)) MiB"
rm -rf "$stage"
size_kib=$(du -sk "$pack" | cut -f1)
if [ "$size_kib" -gt $((limit_mib * 1024)) ]; then
  echo "gpu-pack: $pack is over the ${limit_mib} MiB carry limit" >&2
  exit 1
fi
echo "run it on the GPU machine: $root/$pack/run.sh (with OUT set)"
