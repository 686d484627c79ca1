#!/usr/bin/env bash
# Build the browser packages into web/pkg and web/pkg-threads: fairtune's library for wasm32
# (profile wasm-release, size-optimized), then wasm-bindgen's JS glue. The wasm-bindgen CLI must be exactly the version
# of the wasm-bindgen crate in Cargo.lock; it is installed (cargo install, ~6 min) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-unknown-unknown >/dev/null
version=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $version"; then
    echo "installing wasm-bindgen-cli $version" >&2
    cargo install wasm-bindgen-cli --version "$version"
fi

# The single-threaded package (web/pkg): both backends, WebGPU and burn's CPU backend.
cargo rustc --lib --locked --no-default-features --features gpu --profile wasm-release \
    --target wasm32-unknown-unknown --crate-type cdylib
wasm="target/wasm32-unknown-unknown/wasm-release/fairtune.wasm"
wasm-bindgen --target web --remove-name-section --out-dir web/pkg "$wasm"

# The threaded package (web/pkg-threads), which a cross-origin isolated page runs: burn's CPU
# backend on a rayon pool of Web Workers sharing the module's memory (feature `web-threads`; no
# wgpu, whose WebGPU types are not Send under atomics). Threads need the standard library rebuilt
# with atomics: this toolchain's own sources (rust-src) and cargo's -Z build-std, which a stable
# cargo takes under RUSTC_BOOTSTRAP=1 — the same compiler, no nightly. The linker is told to make
# the memory shared (imported, so every worker gets the same one) with a maximum of 4 GiB, as the
# single-threaded module has, and to export the thread-local storage symbols wasm-bindgen's
# thread start-up uses. Its own target directory: other flags for every crate.
src="$(rustc --print sysroot)/lib/rustlib/src/rust/library"
rustup component add rust-src >/dev/null 2>&1 || true
if [ -d "$src" ]; then
    link="--shared-memory --import-memory --max-memory=4294967296 --export=__wasm_init_tls"
    link="$link --export=__tls_size --export=__tls_align --export=__tls_base"
    RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=target/web-threads \
        RUSTFLAGS="-C target-feature=+atomics,+bulk-memory,+mutable-globals $(printf -- ' -C link-arg=%s' $link)" \
        cargo rustc --lib --locked --no-default-features --features web-threads --profile wasm-release \
        --target wasm32-unknown-unknown --crate-type cdylib -Z build-std=std,panic_abort
    wasm-bindgen --target web --remove-name-section --out-dir web/pkg-threads \
        target/web-threads/wasm32-unknown-unknown/wasm-release/fairtune.wasm
    threads=true
else
    echo "warning: rustup could not add rust-src, so there is no threaded build (web/pkg-threads)" >&2
    rm -rf web/pkg-threads
    threads=false
fi
# Which builds the page may load (web/engine.js reads it).
echo "{\"threads\": $threads}" > web/pkg/builds.json

for pkg in pkg pkg-threads; do
    [ -f "web/$pkg/fairtune_bg.wasm" ] || continue
    size=$(stat -c %s "web/$pkg/fairtune_bg.wasm")
    gzipped=$(gzip -9 -c "web/$pkg/fairtune_bg.wasm" | wc -c)
    echo "web/$pkg/fairtune_bg.wasm: $((size / 1024)) KiB ($((gzipped / 1024)) KiB gzipped)"
done
