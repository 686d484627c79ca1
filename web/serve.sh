#!/usr/bin/env bash
# Serve web/ on 127.0.0.1 (build it first: web/build.sh). Usage: bash web/serve.sh [PORT]
set -euo pipefail
cd "$(dirname "$0")"
port=${1:-8000}
[ -f pkg/fairtune_bg.wasm ] || { echo "error: web/pkg is missing; run web/build.sh first" >&2; exit 2; }
echo "fairtune web demo: http://127.0.0.1:$port/"
exec python3 -m http.server --bind 127.0.0.1 "$port"
