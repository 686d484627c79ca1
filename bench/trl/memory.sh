#!/usr/bin/env bash
# The memory table against TRL (see memory.py for the work and how it is measured): sets up what
# race.sh sets up (the TRL venv, fairtune, SmolLM2, the demo pairs), then runs TRL and fairtune one
# after the other and prints one table. ~1 h on 2 cores (the 1.5B runs dominate); needs ~16 GB of
# RAM for TRL's fp32 1.5B run. Never part of the build, the tests or CI. Flags go to memory.py
# (--sizes smollm2,0.5B --steps 2 ...).
source "$(dirname "$0")/setup.sh"
exec "$venv/bin/python" bench/trl/memory.py --fairtune target/release/fairtune --python "$venv/bin/python" \
    --cache "$cache" --work "$cache/trl-race" "$@"
