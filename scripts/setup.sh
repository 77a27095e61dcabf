#!/usr/bin/env bash
# Installs what building and testing hf-gate needs, skipping whatever is already there:
# the wasm32 target, worker-build, wasm-bindgen-cli (at the version Cargo.lock pins),
# wasm-pack, and the npm packages. Idempotent: a warm machine pays a few checks.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

WORKER_BUILD_VERSION=0.8.7
WASM_PACK_VERSION=0.15.1
# wasm-bindgen-cli must match the wasm-bindgen crate exactly; read it from the lock file.
WASM_BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/version = |"/,""); print; exit}' Cargo.lock)

have() { command -v "$1" >/dev/null 2>&1 && "$1" --version 2>/dev/null | grep -q "$2"; }

rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
have worker-build "$WORKER_BUILD_VERSION" || cargo install worker-build --version "$WORKER_BUILD_VERSION"
# no --locked: one of its locked dependencies is missing from the registry
have wasm-bindgen "$WASM_BINDGEN_VERSION" || cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
have wasm-pack "$WASM_PACK_VERSION" || cargo install wasm-pack --version "$WASM_PACK_VERSION"

if [ ! -x node_modules/.bin/wrangler ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

# The Python clients the end-to-end tests drive (openai, huggingface_hub), in a local venv.
if [ ! -x .venv/bin/python ] || [ e2e/requirements.txt -nt .venv/.installed ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r e2e/requirements.txt
  touch .venv/.installed
fi

# Headless Chromium for the browser tests (Debian's package; playwright-core drives it).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
