#!/usr/bin/env bash
# The tests: the Rust suite (native: CPU and wgpu backends), then the browser build and its
# real-browser test (headless Chromium on WebGPU, web/test/browser.mjs). Needs what .ci/run
# installs on a fresh Debian machine: Mesa's Vulkan driver, chromium, node/npm, the wasm32 target.
set -euo pipefail
cd "$(dirname "$0")/.."

# Without the `autotune` feature (Cargo.toml says why), with `gpu` (wgpu): one burn build for
# the suite and the binary it drives.
cargo test --release --locked --no-default-features --features gpu

bash web/build.sh
(cd web && npm ci --no-audit --no-fund --loglevel=error && node test/browser.mjs)
