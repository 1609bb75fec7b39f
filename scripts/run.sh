#!/usr/bin/env bash
# The main job: install missing packages, build, and run m40llm.
# With no arguments it generates from the built-in demo model (random
# weights, so the text is gibberish). Arguments replace the default command,
# e.g.  scripts/run.sh generate --model model.gguf --prompt "Hello"
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh >/dev/null
if [ $# -eq 0 ]; then
  set -- generate --prompt "Once upon a time" --max-tokens 64
fi
exec build/tools/m40llm "$@"
