#!/usr/bin/env bash
# Build the browser package into web/pkg: fairtune's library for wasm32 (profile wasm-release,
# size-optimized), then wasm-bindgen's JS glue. The wasm-bindgen CLI must be exactly the version
# of the wasm-bindgen crate in Cargo.lock; it is installed (cargo install, ~6 min) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-unknown-unknown >/dev/null
version=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $version"; then
    echo "installing wasm-bindgen-cli $version" >&2
    cargo install wasm-bindgen-cli --version "$version"
fi

cargo rustc --lib --locked --no-default-features --profile wasm-release --target wasm32-unknown-unknown --crate-type cdylib
wasm="target/wasm32-unknown-unknown/wasm-release/fairtune.wasm"
wasm-bindgen --target web --remove-name-section --out-dir web/pkg "$wasm"
size=$(stat -c %s web/pkg/fairtune_bg.wasm)
gzipped=$(gzip -9 -c web/pkg/fairtune_bg.wasm | wc -c)
echo "web/pkg/fairtune_bg.wasm: $((size / 1024)) KiB ($((gzipped / 1024)) KiB gzipped)"
