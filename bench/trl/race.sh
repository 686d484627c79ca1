#!/usr/bin/env bash
# The race against TRL (see race.py for the work and how it is measured): one command that sets up
# a venv with the pinned TRL/torch (requirements.txt), builds fairtune, fetches SmolLM2 and the
# LLaMA-Factory demo pairs, exports the fp32 checkpoint both sides train, then runs TRL and fairtune
# one after the other and prints one table. Run it on an idle machine; it takes ~15 min on 2 cores.
# Never part of the build, the tests or CI. Flags go to race.py (--modes lora,full --steps 10 ...).
set -euo pipefail
cd "$(dirname "$0")/../.."

cache="${FAIRTUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fairtune}"
venv="$cache/trl-venv"
if ! "$venv/bin/python" -c "import trl" >/dev/null 2>&1; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet -r bench/trl/requirements.txt
fi
cargo build --release --locked --quiet
target/release/fairtune fetch smollm2-135m-instruct dpo-demo >/dev/null
exec "$venv/bin/python" bench/trl/race.py --fairtune target/release/fairtune --python "$venv/bin/python" \
    --cache "$cache" --work "$cache/trl-race" "$@"
