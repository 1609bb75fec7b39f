#!/usr/bin/env bash
# Builds the CUDA configuration here and packs what a GPU machine needs to run
# every GPU test (and the tools, for benchmarks) into one folder:
#   ${PACK_DIR:-gpu-pack}/bin/   test binaries (ctest label `gpu`) and m40llm
#   ${PACK_DIR:-gpu-pack}/lib/   their shared libraries that are not part of a
#                                base Ubuntu 24.04 / Debian 12 system
#   ${PACK_DIR:-gpu-pack}/run.sh runs everything there, logs under $OUT
# The pack must stay within 64 MiB (the device tool's carry limit).
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
mkdir -p "$pack/bin" "$pack/lib"

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
cp "${tests[@]}" "$pack/bin/"
cp "$build_dir/tools/m40llm" "$pack/bin/"
for b in "$build_dir"/bench/m40llm_*bench; do
  if [ -x "$b" ]; then cp "$b" "$pack/bin/"; fi
done

# Shared libraries outside the C/C++ runtime and the CUDA driver. cuBLAS
# (the benchmarks' yardstick, several hundred MiB) is far over the carry
# limit: the GPU machine's CUDA toolkit provides it (run.sh below).
system_lib='^(linux-vdso|ld-linux|libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|libcuda)\.'
toolkit_lib='^(libcublas|libcublasLt)\.'
for exe in "$pack"/bin/*; do
  ldd "$exe" | awk '$3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r name path; do
  if [[ ! $name =~ $system_lib && ! $name =~ $toolkit_lib ]]; then cp -L "$path" "$pack/lib/$name"; fi
done

cat > "$pack/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine: every GPU test, compute-sanitizer memcheck on them,
# then the GPU kernel benchmark; logs, JSON and a summary under $OUT (default
# ./gpu-out).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/../gpu-out}
mkdir -p "$out"
# The pack's libraries first, then the machine's CUDA toolkit for cuBLAS
# (libcublas.so.13, libcublasLt.so.13), which the pack leaves out.
cuda_lib=
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  if ls "$d"/libcublas.so.* >/dev/null 2>&1; then cuda_lib=$d; break; fi
done
[ -n "$cuda_lib" ] || echo "warning: no libcublas under /usr/local/cuda: the benchmarks will not start"
export LD_LIBRARY_PATH=$here/lib${cuda_lib:+:$cuda_lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
status=0
for t in "$here"/bin/*_test; do
  name=$(basename "$t")
  if timeout 300 "$t" >"$out/$name.log" 2>&1; then
    echo "PASS $name: $(grep -E '^\[  PASSED  \]' "$out/$name.log")"
  else
    echo "FAIL $name (see $name.log)"
    status=1
  fi
done
cs=/usr/local/cuda/bin/compute-sanitizer
[ -x "$cs" ] || cs=$(command -v compute-sanitizer || true)
if [ -n "$cs" ]; then
  for t in "$here"/bin/*_test; do
    name=$(basename "$t")
    # Deliberate out-of-memory requests would count as reported API errors.
    if timeout 300 "$cs" --tool memcheck --error-exitcode 9 "$t" \
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
if [ -x "$here/bin/m40llm_cuda_kernel_bench" ]; then
  "$here/bin/m40llm_cuda_kernel_bench" --json "$out/cuda_kernel_bench.json" |
    tee "$out/cuda_kernel_bench.txt" || status=1
fi
exit $status
RUN
chmod +x "$pack/run.sh"

size_kib=$(du -sk "$pack" | cut -f1)
echo "gpu-pack: $pack holds $(find "$pack/bin" -type f | wc -l) binaries and $(find "$pack/lib" -type f | wc -l) libraries, $((size_kib / 1024)) MiB"
if [ "$size_kib" -gt $((limit_mib * 1024)) ]; then
  echo "gpu-pack: over the ${limit_mib} MiB carry limit" >&2
  exit 1
fi
echo "run it on the GPU machine: $root/$pack/run.sh (with OUT set)"
