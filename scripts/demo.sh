#!/usr/bin/env bash
# The main job, from a fresh clone: fairness-regularized DPO on the shipped demo data
# (assets/demo), trained twice — λ = 0 and λ = 100 — then compared side by side.
# Runs on the best backend the machine has (a GPU through wgpu, else the CPU);
# set BACKEND=cpu|wgpu to choose. Usage: bash scripts/demo.sh [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install Rust 1.95 or newer (https://rustup.rs)" >&2
    exit 2
fi

# The Vulkan loader lets wgpu reach a GPU on Linux; without it the run uses the CPU backend.
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libvulkan1 mesa-vulkan-drivers; } >/dev/null 2>&1; then
        echo "notice: could not install the Vulkan loader; training will use the CPU backend" >&2
    fi
fi

cargo build --release --locked
BIN=target/release/fairtune
OUT=${1:-runs/demo-$(date +%Y%m%d-%H%M%S)}
COMMON=(--task dpo --model tiny-llama
        --train assets/demo/train.jsonl --eval assets/demo/eval.jsonl
        --steps 150 --batch-size 8 --lr 2e-3 --beta 0.2 --sft-weight 1 --warmup-steps 10 --seed 1
        --backend "${BACKEND:-auto}")

for lambda in 0 100; do
    echo "== training with fairness λ = $lambda -> $OUT/lambda-$lambda" >&2
    "$BIN" train "${COMMON[@]}" --fairness-lambda "$lambda" --out "$OUT/lambda-$lambda" >/dev/null
done
echo
echo "Held-out results (F and the group gap are on the mean completion log-prob of each group's good replies):"
"$BIN" compare "$OUT/lambda-0" "$OUT/lambda-100"
