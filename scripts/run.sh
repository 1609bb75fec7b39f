#!/usr/bin/env bash
# The main job: install missing packages, build, and run m40llm.
# With no arguments it serves the built-in demo model (random weights, so the
# text is gibberish) on 0.0.0.0:50051, metrics on 0.0.0.0:8002, on the GPU
# when there is one and the build has CUDA, else on the CPU. Arguments
# replace the default command, e.g.
#   scripts/run.sh serve --model model.gguf
#   scripts/run.sh generate --model model.gguf --prompt "Hello"
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh >/dev/null
if [ $# -eq 0 ]; then
  set -- serve
fi
# On a machine with an NVIDIA GPU and a CUDA build, serve on the GPU unless
# M40LLM_BACKEND says otherwise.
if [ -z "${M40LLM_BACKEND:-}" ] && [ -f build/cuda/libm40llm_cuda.a ] &&
  nvidia-smi -L >/dev/null 2>&1; then
  export M40LLM_BACKEND=cuda
  echo "run.sh: a GPU and a CUDA build: M40LLM_BACKEND=cuda (set M40LLM_BACKEND=cpu to use the CPU)" >&2
fi
exec build/tools/m40llm "$@"
