# Sourced by race.sh and memory.sh: the venv with the pinned TRL/torch (requirements.txt), the
# release build of fairtune, SmolLM2 and the demo pairs fetched. Sets $cache and $venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

cache="${FAIRTUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fairtune}"
venv="$cache/trl-venv"
if ! "$venv/bin/python" -c "import trl" >/dev/null 2>&1; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet -r bench/trl/requirements.txt
fi
cargo build --release --locked --quiet
target/release/fairtune fetch smollm2-135m-instruct dpo-demo >/dev/null
