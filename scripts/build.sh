#!/usr/bin/env bash
# Builds the release worker into build/ with no downloads: worker-build is pointed at the
# wasm-bindgen, wasm-opt and esbuild already installed. PROFILE=1 (bench/build-prof.sh) builds
# the same worker with its names kept for CPU profiles: the wasm's names section not
# stripped, the JS glue not minified.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
minify=(--minify)
if [ -n "${PROFILE:-}" ]; then
  export NO_MINIFY=1
  minify=()
fi
# the pages as they ship: scripts and styles minified (scripts/pages.mjs, read by build.rs)
node scripts/pages.mjs pages target/pages
HFGATE_PAGES="$PWD/target/pages" \
WASM_BINDGEN_BIN=wasm-bindgen \
WASM_OPT_BIN="$PWD/node_modules/.bin/wasm-opt" \
ESBUILD_BIN="$PWD/node_modules/.bin/esbuild" \
  worker-build --release

# worker-build keeps the names section (readable stack traces); the gateway never panics on
# a request path, so ship without it: about a sixth of the bundle.
if [ -z "${PROFILE:-}" ]; then
  node_modules/.bin/wasm-opt --strip-debug --strip-producers build/index_bg.wasm -o build/index_bg.wasm
fi

# The entry module: worker-build's glue plus what it does not do (scripts/entry.mjs says what
# and why), bundled back into build/index.js, the module wrangler.toml and Miniflare load. The
# glue's microtasks are queued on a resolved promise (scripts/microtask.mjs says why).
mv build/index.js build/worker.js
cp scripts/entry.mjs build/entry.mjs
node_modules/.bin/esbuild build/entry.mjs --bundle --format=esm "${minify[@]}" --log-level=warning \
  --inject:scripts/microtask.mjs \
  --external:./index_bg.wasm '--external:cloudflare:*' --outfile=build/index.js
rm build/entry.mjs build/worker.js
