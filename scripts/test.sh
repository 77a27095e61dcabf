#!/usr/bin/env bash
# Every test hf-gate has, in order of cost: lint, native, wasm, then the built worker
# end to end with real clients. Stops at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$1" "$(( $(date +%s) - start ))"; }

step "lint: rustfmt, clippy (native and wasm32)"
cargo fmt --check
cargo clippy --all-targets -q -- -D warnings
cargo clippy --target wasm32-unknown-unknown --all-targets -q -- -D warnings

step "native: cargo test (pure core, no workers-rs in this build)"
cargo test -q

step "wasm: wasm-pack test --node (edge pieces that need a JS host)"
wasm-pack --log-level warn test --node

step "build: release worker, held to its size budget"
scripts/build.sh >/dev/null 2>&1 || scripts/build.sh
node scripts/size.mjs --check

step "deploy dry run: wrangler deploy --dry-run (no account, no network), Cloudflare's size limit"
scripts/deploy.sh --dry-run

step "end to end: the built worker on workerd, fake upstream, real clients"
rm -rf e2e/artifacts/transcripts
node --test --test-concurrency=1 --test-timeout=120000 e2e/

step "end to end, the money tests again with leasing off (LEASE_MS=0)"
E2E_LEASE_MS=0 node --test --test-concurrency=1 --test-timeout=120000 \
  e2e/invoice.test.mjs e2e/credits.test.mjs e2e/bounds.test.mjs e2e/leases.test.mjs

step "secret hygiene: every response and log line of the suite"
node --test e2e/hygiene/secrets.check.mjs

step "done"
