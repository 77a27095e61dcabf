#!/usr/bin/env bash
# Builds the worker for CPU profiles into ${1:-build}: scripts/build.sh without --strip-debug
# (the wasm names section stays) and without minifying the JS glue, so profiles show names.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-build}"
export PATH="$HOME/.cargo/bin:$PATH"
NO_MINIFY=1 WASM_BINDGEN_BIN=wasm-bindgen \
WASM_OPT_BIN="$PWD/node_modules/.bin/wasm-opt" \
ESBUILD_BIN="$PWD/node_modules/.bin/esbuild" \
  worker-build --release
mv build/index.js build/worker.js
cp scripts/entry.mjs build/entry.mjs
node_modules/.bin/esbuild build/entry.mjs --bundle --format=esm --log-level=warning \
  --inject:scripts/microtask.mjs \
  --external:./index_bg.wasm '--external:cloudflare:*' --outfile=build/index.js
rm build/entry.mjs build/worker.js
if [ "$OUT" != build ]; then rm -rf "$OUT"; mkdir -p "$OUT"; cp -r build/. "$OUT/"; fi
