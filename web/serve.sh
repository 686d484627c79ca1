#!/usr/bin/env bash
# Serve web/ on 127.0.0.1 (build it first: web/build.sh), cross-origin isolated so the page's CPU
# backend runs on every core (web/serve.py). Usage: bash web/serve.sh [PORT] [--no-isolation]
set -euo pipefail
cd "$(dirname "$0")"
[ -f pkg/fairtune_bg.wasm ] || { echo "error: web/pkg is missing; run web/build.sh first" >&2; exit 2; }
exec python3 serve.py "$@"
