#!/usr/bin/env bash
# The race against TRL (see race.py for the work and how it is measured): one command that sets up
# a venv with the pinned TRL/torch (requirements.txt), builds fairtune, fetches SmolLM2 and the
# LLaMA-Factory demo pairs, exports the fp32 checkpoint both sides train, then runs TRL and fairtune
# one after the other and prints one table. Run it on an idle machine; it takes ~15 min on 2 cores.
# Never part of the build, the tests or CI. Flags go to race.py (--modes lora,full --steps 10 ...).
source "$(dirname "$0")/setup.sh"
exec "$venv/bin/python" bench/trl/race.py --fairtune target/release/fairtune --python "$venv/bin/python" \
    --cache "$cache" --work "$cache/trl-race" "$@"
