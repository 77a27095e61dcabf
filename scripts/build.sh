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
