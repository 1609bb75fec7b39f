#!/usr/bin/env bash
# Prints, one a line, the Debian/Ubuntu packages that own the shared
# libraries a binary loads (its ldd closure), so that a runtime image can
# install exactly those. deploy/Dockerfile runs it in its build stage.
# Fails when a library is missing or no installed package owns it.
#
# Usage: deploy/runtime-packages.sh [--ignore PREFIX]... BINARY
#   --ignore PREFIX  leave out libraries whose path (as ldd prints it) starts
#                    with PREFIX, e.g. a CUDA toolkit installed without dpkg;
#                    they are named on stderr.
set -euo pipefail

ignore=()
while [ $# -gt 1 ] && [ "$1" = --ignore ]; do
  ignore+=("$2")
  shift 2
done
if [ $# -ne 1 ] || [ ! -x "$1" ]; then
  echo "usage: $0 [--ignore PREFIX]... BINARY" >&2
  exit 2
fi

ldd_out=$(ldd "$1")
if grep -q 'not found' <<<"$ldd_out"; then
  echo "$1: missing shared libraries:" >&2
  grep 'not found' <<<"$ldd_out" >&2
  exit 1
fi
libs=()
while read -r lib; do
  for prefix in "${ignore[@]}"; do
    if [[ $lib == "$prefix"* ]]; then
      echo "ignored: $lib" >&2
      continue 2
    fi
  done
  libs+=("$lib")
done < <(awk '$3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$ldd_out" | sort -u)

# Distributions with a merged /usr register a library under /lib or /usr/lib
# depending on the package's age, and ldd may print either spelling (or a
# symlink name), so each library is asked for under every spelling, all in
# one dpkg-query call.
declare -A owner=()
candidates() {  # $1: library path
  local real
  real=$(realpath "$1")
  printf '%s\n' "$1" "$real" "/usr${1#/usr}" "${1#/usr}" "/usr${real#/usr}" "${real#/usr}"
}
mapfile -t paths < <(for lib in "${libs[@]}"; do candidates "$lib"; done | sort -u)
# Lines are "package[:arch][, package...]: path"; unowned paths only warn.
while IFS= read -r line; do
  if [[ $line == diversion* ]]; then continue; fi
  pkg=${line%%: *}
  owner[${line#*: }]=${pkg%%[:,]*}
done < <(dpkg-query -S "${paths[@]}" 2>/dev/null || true)

packages=()
for lib in "${libs[@]}"; do
  found=
  while read -r c; do
    if [ -n "${owner[$c]:-}" ]; then found=${owner[$c]}; break; fi
  done < <(candidates "$lib")
  if [ -z "$found" ]; then
    echo "$1: no installed package owns $lib" >&2
    exit 1
  fi
  packages+=("$found")
done
printf '%s\n' "${packages[@]}" | sort -u
