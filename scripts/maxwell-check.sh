#!/usr/bin/env bash
# Maxwell (sm_52) check of the CUDA sources, for the Tesla M40; CI runs it
# from scripts/test.sh. See docs/gpu.md.
#
# CUDA 13 (/usr/local/cuda) cannot target sm_52, so this uses Debian's CUDA
# 11.8 (`nvidia-cuda-toolkit`, non-free) and installs it when no working nvcc
# is found. Then, failing on any defect:
#   1. compiles every cuda/*.cu, plus a generated kernel that drives the
#      device side of persistent/ring.h, for sm_52 with `ptxas -v`;
#   2. prints registers, spills, stack, shared and constant memory per kernel;
#      a spill fails unless scripts/maxwell-spill-allowlist.txt names the
#      kernel (a stack frame without spills is a warning);
#   3. rejects FP16 arithmetic, which sm_52 lacks (nvcc emulates some of it
#      through float): the half intrinsics by a source scan of cuda/ and every
#      repository header the .cu files include; the __half/__half2 operators
#      by deleting them in a header force-included into each compile.
#
# Usage: scripts/maxwell-check.sh [--install-only]
# Environment:
#   MAXWELL_CUDA_HOME   toolkit root to use (its bin/nvcc); then nothing is
#                       installed. Default: Debian's /usr/lib/nvidia-cuda-toolkit.
#   MAXWELL_HOST_CXX    host compiler for nvcc (default clang++-14, else g++-11;
#                       CUDA 11.8 rejects GCC 12, Debian 12's default).
#   MAXWELL_NVCC_FLAGS  extra nvcc flags, split on spaces.
#   MAXWELL_ALLOW_SPILLS=1  report spills as warnings instead of failing.
#   KEEP_TMP=1          keep the build folder (objects, logs) and print its path.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

allowlist=scripts/maxwell-spill-allowlist.txt
debian_cuda_home=/usr/lib/nvidia-cuda-toolkit
cuda_home=${MAXWELL_CUDA_HOME:-$debian_cuda_home}
nvcc=$cuda_home/bin/nvcc

install_only=0
case "${1:-}" in
  "") ;;
  --install-only) install_only=1 ;;
  *) echo "usage: $0 [--install-only]" >&2; exit 2 ;;
esac

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# True when $1 runs and can target sm_52.
nvcc_works() {
  "$1" --version >/dev/null 2>&1 && "$1" --list-gpu-arch 2>/dev/null | grep -qx compute_52
}

# Prints the deb822 sources file $1 with contrib and non-free added to the
# Components of every Debian stanza (URIs naming debian) that lacks them.
add_components_deb822() {
  awk '
    function flush(   i, debian) {
      debian = 0
      for (i = 1; i <= n; i++) if (lines[i] ~ /^URIs:.*debian/) debian = 1
      for (i = 1; i <= n; i++) {
        if (debian && lines[i] ~ /^Components:/) {
          if (lines[i] !~ /[ \t]contrib([ \t]|$)/) sub(/[ \t]*$/, " contrib", lines[i])
          if (lines[i] !~ /[ \t]non-free([ \t]|$)/) sub(/[ \t]*$/, " non-free", lines[i])
        }
        print lines[i]
      }
      n = 0
    }
    /^[ \t]*$/ { flush(); print; next }
    { lines[++n] = $0 }
    END { flush() }
  ' "$1"
}

# Prints the one-line-style sources.list $1 with contrib and non-free added
# to every active Debian "deb"/"deb-src" line that carries main.
add_components_list() {
  awk '
    /^[ \t]*deb(-src)?[ \t]/ && /debian/ && /[ \t]main([ \t]|$)/ {
      if ($0 !~ /[ \t]contrib([ \t]|$)/) sub(/[ \t]*$/, " contrib")
      if ($0 !~ /[ \t]non-free([ \t]|$)/) sub(/[ \t]*$/, " non-free")
    }
    { print }
  ' "$1"
}

# Rewrites sources file $1 through function $2 when that changes it.
edit_sources() {
  local file=$1 edit=$2 new
  new=$(mktemp)
  "$edit" "$file" >"$new"
  if ! cmp -s "$file" "$new"; then
    echo "enabling contrib and non-free in $file"
    as_root cp "$new" "$file"  # cp keeps the file's owner and mode
  fi
  rm -f "$new"
}

# Installs Debian's CUDA 11.8 toolkit. Its dependencies bring the driver's
# user-space CUDA library (libcuda1) and its alternatives glue, but no
# kernel module and no driver: nothing here needs a GPU.
install_toolkit() {
  local start=$SECONDS used_before used_after
  [ -f /etc/apt/sources.list.d/debian.sources ] &&
    edit_sources /etc/apt/sources.list.d/debian.sources add_components_deb822
  [ -f /etc/apt/sources.list ] && edit_sources /etc/apt/sources.list add_components_list
  used_before=$(df --output=used -B1M / | tail -n 1)
  as_root apt-get update -q
  # The recommended extras (nsight, visual profiler, cuda-gdb, docs, a JRE,
  # nvidia-smi) add 1.7 GB and nothing nvcc uses. Downloaded .debs are
  # deleted after unpacking: 1.6 GB the cache would otherwise keep.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o APT::Keep-Downloaded-Packages=false nvidia-cuda-toolkit
  used_after=$(df --output=used -B1M / | tail -n 1)
  echo "installed CUDA 11.8 in $((SECONDS - start)) s; / grew by $((used_after - used_before)) MiB"
}

if ! nvcc_works "$nvcc"; then
  if [ -n "${MAXWELL_CUDA_HOME:-}" ]; then
    echo "error: MAXWELL_CUDA_HOME=$MAXWELL_CUDA_HOME: $nvcc missing or cannot target sm_52" >&2
    exit 1
  fi
  install_toolkit
  if ! nvcc_works "$nvcc"; then
    echo "error: $nvcc still missing or cannot target sm_52 after installing" >&2
    exit 1
  fi
fi
[ "$install_only" -eq 1 ] && exit 0
# nvcc runs ptxas, cudafe++, fatbinary from PATH. Debian keeps them in
# /usr/bin, after /usr/local/cuda/bin (CUDA 13, no sm_52) on a typical PATH,
# so put the toolkit's folders first and check that ptxas matches nvcc.
tool_dir=$cuda_home/bin
[ -x "$tool_dir/ptxas" ] || tool_dir=/usr/bin
export PATH="$cuda_home/bin:$tool_dir:$PATH"
cuda_version=$("$nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
ptxas_version=$(ptxas --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
if [ "$ptxas_version" != "$cuda_version" ]; then
  echo "error: ptxas on PATH ($(command -v ptxas)) is CUDA $ptxas_version, nvcc is" \
    "CUDA $cuda_version" >&2
  exit 1
fi

host_cxx=${MAXWELL_HOST_CXX:-}
if [ -z "$host_cxx" ]; then
  for c in clang++-14 g++-11; do
    if command -v "$c" >/dev/null 2>&1; then host_cxx=$c; break; fi
  done
fi
if [ -z "$host_cxx" ]; then
  echo "error: no host compiler for CUDA 11.8: install clang-14 or g++-11," \
    "or set MAXWELL_HOST_CXX" >&2
  exit 1
fi

if command -v c++filt >/dev/null 2>&1; then
  demangler="c++filt"
else
  demangler=cu++filt
fi

tmp=$(mktemp -d)
if [ "${KEEP_TMP:-0}" = 1 ]; then
  trap 'echo "kept $tmp"' EXIT
else
  trap 'rm -rf "$tmp"' EXIT
fi
mkdir -p "$tmp/obj" "$tmp/log" "$tmp/dep" "$tmp/gen"

# ----- Deleted FP16 operators, force-included into every compile. With the
# two NO_*_OPERATORS macros cuda_fp16.h declares no operators for __half and
# __half2; declaring deleted ones in their place makes any use a compile error
# at the offending line, while the implicit float conversions stay (they
# compute in float, which Maxwell has). A kernel that compiles here compiles
# to the same code without this header.
guard=$tmp/gen/m40_no_half_arithmetic.h
{
  echo '// Generated by scripts/maxwell-check.sh: no FP16 arithmetic on sm_52.'
  echo '#pragma once'
  echo '#define __CUDA_NO_HALF_OPERATORS__'
  echo '#define __CUDA_NO_HALF2_OPERATORS__'
  echo '#include <cuda_fp16.h>'
  for t in __half __half2; do
    for op in + - '*' /; do
      echo "__host__ __device__ $t operator$op(const $t&, const $t&) = delete;"
      echo "__host__ __device__ $t& operator$op=($t&, const $t&) = delete;"
    done
    for op in == '!=' '<' '>' '<=' '>='; do
      echo "__host__ __device__ bool operator$op(const $t&, const $t&) = delete;"
    done
    for op in + -; do
      echo "__host__ __device__ $t operator$op(const $t&) = delete;"
    done
    for op in ++ --; do
      echo "__host__ __device__ $t& operator$op($t&) = delete;"
      echo "__host__ __device__ $t operator$op($t&, int) = delete;"
    done
  done
} >"$guard"

# ----- The ring's device side. Every device entry point of both rings, on
# records in global memory, as the persistent kernel will use them.
ring_cu=$tmp/gen/ring_device.cu
cat >"$ring_cu" <<'EOF'
// Generated by scripts/maxwell-check.sh: persistent/ring.h on the device.
#include <cstdint>

#include "persistent/ring.h"

namespace m40llm {

__global__ void MaxwellCheckRingDevice(RingBlock* block, Command* commands, Event* events,
                                       uint32_t n, uint32_t* counts) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  counts[0] = block->commands.DevicePopBatch(commands, n);
  counts[1] = block->events.DevicePushBatch(events, n);
  counts[2] = block->commands.DevicePushBatch(commands, n);
  counts[3] = block->events.DevicePopBatch(events, n);
  counts[4] = block->commands.DeviceTryPop(&commands[0]);
  counts[5] = block->events.DeviceTryPush(events[0]);
  counts[6] = block->commands.DeviceTryPush(commands[0]);
  counts[7] = block->events.DeviceTryPop(&events[0]);
}

}  // namespace m40llm
EOF

# ----- Compile. Each source's ptxas report goes to log/<name>.log.
shopt -s nullglob
sources=(cuda/*.cu)
shopt -u nullglob
read -r -a extra_flags <<<"${MAXWELL_NVCC_FLAGS:-}"
nvcc_flags=(
  -std=c++17 -O3 -gencode "arch=compute_52,code=sm_52" -Xptxas -v
  -ccbin "$host_cxx" -I"$root" -include "$guard" -Werror cross-execution-space-call
  "${extra_flags[@]}"
)

echo "CUDA $cuda_version ($nvcc), host compiler $host_cxx, sm_52"
if [ ${#sources[@]} -eq 0 ]; then
  echo "no cuda/*.cu yet; checking the ring's device side only"
fi
failed=()
compile() {  # $1: source, $2: name for the logs, $3: what to call it (default $1)
  local src=$1 name=$2 shown=${3:-$1} log
  log=$tmp/log/$name.log
  if ! nvcc "${nvcc_flags[@]}" -MD -MF "$tmp/dep/$name.d" -c "$src" -o "$tmp/obj/$name.o" \
    >"$log" 2>&1; then
    echo "FAIL: $shown does not compile for sm_52:" >&2
    sed 's/^/  /' "$log" >&2
    if grep -q 'm40_no_half_arithmetic.h' "$log"; then
      echo "  (a deleted operator above is FP16 arithmetic on __half/__half2: convert" \
        "with __half2float/__half22float2 and compute in float)" >&2
    fi
    failed+=("$shown")
    return
  fi
  # Anything besides the ptxas report is a warning worth seeing.
  grep -vE '^ptxas info *:|^ +[0-9]+ bytes stack frame' "$log" | sed "s|^|warning: $shown: |" >&2 ||
    true
}
for src in "${sources[@]}"; do
  compile "$src" "$(basename "$src" .cu)"
done
compile "$ring_cu" persistent_ring_h "persistent/ring.h (generated $(basename "$ring_cu"))"

# ----- Resource table. ptxas -v reports, per function:
#   ptxas info    : Compiling entry function '<mangled>' for 'sm_52'   (kernels)
#   ptxas info    : Function properties for <mangled>
#       S bytes stack frame, T bytes spill stores, L bytes spill loads
#   ptxas info    : Used R registers, M bytes smem, C bytes cmem[0], ...   (kernels)
# Non-inlined device functions get a properties block too; they are listed
# (registers "-") because their spills are spills of the kernels calling them.
parse_ptxas() {  # $1: log, $2: file label; prints TSV rows
  awk -v file="$2" '
    /Compiling entry function/ {
      match($0, /'\''[^'\'']*'\''/); entry = substr($0, RSTART + 1, RLENGTH - 2)
      kernel[entry] = 1; order[++n] = entry; seen[entry] = 1; next
    }
    /Function properties for/ {
      props = $NF
      if (!(props in seen)) { order[++n] = props; seen[props] = 1 }
      next
    }
    props != "" && /bytes stack frame/ {
      stack[props] = $1; spst[props] = $5; spld[props] = $9; props = ""; next
    }
    /ptxas info *: Used [0-9]+ registers/ && entry != "" {
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^register/) regs[entry] = $(i - 1)
        if ($i ~ /^smem/) smem[entry] = $(i - 2)
        if ($i ~ /^cmem\[/) cmem[entry] += $(i - 2)
      }
      entry = ""
    }
    END {
      for (i = 1; i <= n; i++) {
        f = order[i]
        printf "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", file, f, (f in kernel) ? "kernel" : "device",
          (f in kernel) ? regs[f] + 0 : "-", stack[f], spst[f], spld[f],
          (f in kernel) ? smem[f] + 0 : "-", (f in kernel) ? cmem[f] + 0 : "-"
      }
    }
  ' "$1"
}

allowed=()
if [ -f "$allowlist" ]; then
  while IFS= read -r line; do
    line=${line#"${line%%[![:space:]]*}"}
    line=${line%"${line##*[![:space:]]}"}
    [ -z "$line" ] || [ "${line:0:1}" = "#" ] || allowed+=("$line")
  done <"$allowlist"
fi
is_allowed() {  # $1: mangled, $2: demangled
  local a
  for a in "${allowed[@]}"; do
    if [ "$a" = "$1" ] || [ "$a" = "$2" ]; then return 0; fi
  done
  return 1
}

rows=$tmp/rows.tsv
: >"$rows"
for src in "${sources[@]}"; do
  name=$(basename "$src" .cu)
  [ -f "$tmp/obj/$name.o" ] && parse_ptxas "$tmp/log/$name.log" "$src" >>"$rows"
done
[ -f "$tmp/obj/persistent_ring_h.o" ] &&
  parse_ptxas "$tmp/log/persistent_ring_h.log" "(gen) persistent/ring.h" >>"$rows"

# A spill is a defect: on the M40 local memory is off-chip DRAM. A stack
# frame without spills (a dynamically indexed local array, a libdevice slow
# path, printf) is local memory too; it is flagged, not failed.
spills=()
lmem=()
used_allow=()
kernels=0
max_regs=0
printf '\n%-5s %5s %8s %8s %6s %6s %6s  %-24s %s\n' \
  "" regs spill_st spill_ld stack smem cmem file function
while IFS=$'\t' read -r file mangled kind regs stack spst spld smem cmem; do
  demangled=$("$demangler" "$mangled")
  what=$demangled
  if [ "$kind" = kernel ]; then
    kernels=$((kernels + 1))
    if [ "$regs" -gt "$max_regs" ]; then max_regs=$regs; fi
  else
    what="$demangled [device fn]"
  fi
  mark=""
  if [ "$spst" -gt 0 ] || [ "$spld" -gt 0 ] || [ "$stack" -gt 0 ]; then
    if is_allowed "$mangled" "$demangled"; then
      used_allow+=("$mangled" "$demangled")
      mark=allow
    elif [ "$spst" -gt 0 ] || [ "$spld" -gt 0 ]; then
      mark=SPILL
      spills+=("$file: $what ($spst bytes stored, $spld bytes loaded)")
    else
      mark=lmem
      lmem+=("$file: $what ($stack bytes stack frame)")
    fi
  fi
  printf '%-5s %5s %8s %8s %6s %6s %6s  %-24s %s\n' \
    "$mark" "$regs" "$spst" "$spld" "$stack" "$smem" "$cmem" "$file" "$what"
done <"$rows"
echo "(bytes; SPILL: a defect; lmem: a stack frame in local memory, a warning;" \
  "allow: named in $allowlist)"

if [ ${#lmem[@]} -gt 0 ]; then
  echo "warning: local memory (stack frame, no spills) in:"
  printf '  %s\n' "${lmem[@]}"
fi
for a in "${allowed[@]}"; do
  stale=1
  for u in "${used_allow[@]}"; do
    if [ "$a" = "$u" ]; then stale=0; break; fi
  done
  if [ "$stale" -eq 1 ]; then
    echo "warning: $allowlist: '$a' uses no local memory (or does not exist); drop it"
  fi
done

# ----- FP16 intrinsics. Scan cuda/ and every repository header the compiles
# pulled in (from nvcc's dependency files), comments and strings stripped.
scan=$tmp/scan.txt
{
  shopt -s nullglob
  printf '%s\n' cuda/*.cu cuda/*.cuh cuda/*.h
  shopt -u nullglob
  for d in "$tmp"/dep/*.d; do
    [ -f "$d" ] || continue
    sed -e 's/^[^:]*://' -e 's/\\$//' "$d" | tr -s ' \t' '\n'
  done | sort -u | xargs -r realpath -m --relative-base="$root" | grep -v '^/' || true
} | sort -u >"$scan"

fp16_hits=$tmp/fp16.txt
python3 - "$scan" >"$fp16_hits" <<'EOF'
# Prints file:line: name: source line for each FP16 arithmetic intrinsic.
import re
import sys

NAMES = re.compile(r"""\b(
    __h(?:add|sub|mul)2?(?:_sat|_rn)? | __hdiv | __h2div
  | __hfma2?(?:_sat|_relu)? | __hneg2? | __habs2? | __h(?:max|min)2?(?:_nan)?
  | __hb?(?:eq|ne|lt|le|gt|ge)u?2 | __h(?:eq|ne|lt|le|gt|ge)u? | __hcmadd
  | h2?(?:exp|exp2|exp10|log|log2|log10|sqrt|rsqrt|rcp|sin|cos|trunc|ceil|floor|rint)
)\s*\(""", re.X)
# Comments and literals, replaced by blanks that keep the line numbers.
TOKENS = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)

def blank(m):
    return re.sub(r"[^\n]", " ", m.group(0))

for path in open(sys.argv[1]).read().split():
    text = open(path, encoding="utf-8", errors="replace").read()
    code = TOKENS.sub(blank, text)
    lines = text.split("\n")
    for lineno, line in enumerate(code.split("\n"), 1):
        for m in NAMES.finditer(line):
            print(f"{path}:{lineno}: {m.group(1)}: {lines[lineno - 1].strip()}")
EOF

# ----- Verdict.
status=0
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAIL: ${#failed[@]} source(s) do not compile for sm_52: ${failed[*]}" >&2
  status=1
fi
if [ ${#spills[@]} -gt 0 ] && [ "${MAXWELL_ALLOW_SPILLS:-0}" = 1 ]; then
  echo "warning: register spills (MAXWELL_ALLOW_SPILLS=1):" >&2
  printf '  %s\n' "${spills[@]}" >&2
elif [ ${#spills[@]} -gt 0 ]; then
  echo "FAIL: register spills (local memory is off-chip DRAM on the M40; allowlist a" \
    "documented exception in $allowlist):" >&2
  printf '  %s\n' "${spills[@]}" >&2
  status=1
fi
if [ -s "$fp16_hits" ]; then
  echo "FAIL: FP16 arithmetic intrinsics (sm_52 has no FP16 arithmetic: CUDA 11.8 emulates" \
    "some through float, newer toolkits more); convert and compute in float:" >&2
  sed 's/^/  /' "$fp16_hits" >&2
  status=1
fi
if [ "$status" -ne 0 ]; then exit "$status"; fi
echo "maxwell-check: OK: ${#sources[@]} cuda/*.cu + ring.h, $kernels kernels for sm_52" \
  "(max $max_regs registers), ${#spills[@]} spilling, ${#lmem[@]} with local memory," \
  "no FP16 arithmetic in $(wc -l <"$scan") sources; CUDA $cuda_version, $host_cxx"
