#!/usr/bin/env bash
# Builds the release worker into build/ with no downloads: worker-build is pointed at the
# wasm-bindgen, wasm-opt and esbuild already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
WASM_BINDGEN_BIN=wasm-bindgen \
WASM_OPT_BIN="$PWD/node_modules/.bin/wasm-opt" \
ESBUILD_BIN="$PWD/node_modules/.bin/esbuild" \
  worker-build --release

# worker-build keeps the names section (readable stack traces); the gateway never panics on
# a request path, so ship without it: about a sixth of the bundle.
node_modules/.bin/wasm-opt --strip-debug --strip-producers build/index_bg.wasm -o build/index_bg.wasm
