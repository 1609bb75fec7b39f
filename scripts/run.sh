#!/usr/bin/env bash
# The main job: install missing packages, build, and run m40llm.
# With no arguments it serves the built-in demo model (random weights, so the
# text is gibberish) on 0.0.0.0:50051, metrics on 0.0.0.0:8002. Arguments
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
exec build/tools/m40llm "$@"
