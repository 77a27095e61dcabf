#!/usr/bin/env bash
# Builds the worker for CPU profiles into ${1:-build}: scripts/build.sh with PROFILE=1 (the
# wasm names section stays and the JS glue is not minified), so profiles show names.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-build}"
PROFILE=1 scripts/build.sh
if [ "$OUT" != build ]; then rm -rf "$OUT"; mkdir -p "$OUT"; cp -r build/. "$OUT/"; fi
