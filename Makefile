# hf-gate: `make dev` serves the gateway locally on the sandbox upstream, `make test` runs
# every test, `make build` builds the release worker. Each sets up what is missing first.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
export WRANGLER_SEND_METRICS := false
export CLOUDFLARE_CF_FETCH_ENABLED := false
PORT ?= 8787

.PHONY: setup build dev deploy test test-native test-wasm test-e2e lint bench soak fuzz clean

setup:
	@scripts/setup.sh

build: setup
	@scripts/build.sh

dev: build
	@node scripts/dev.mjs --port $(PORT)

# Checks the login, the KV namespace id, the secrets and UPSTREAM_URL, then `wrangler deploy`
# (scripts/deploy.sh says what each refusal means; README "Deploy" walks through it).
deploy: build
	@scripts/deploy.sh

lint: setup
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --target wasm32-unknown-unknown --all-targets -- -D warnings

test-native: setup
	cargo test

test-wasm: setup
	wasm-pack test --node

test-e2e: build
	node --test --test-concurrency=1 --test-timeout=120000 e2e/

test: setup
	@scripts/test.sh

clean:
	rm -rf build target node_modules .wrangler

# A long fuzzing pass over every parser that takes outside input (make test runs a short one).
fuzz: setup
	FUZZ_CASES=$${FUZZ_CASES:-2000000} cargo test --release --test fuzz_parsers -- --nocapture

# Benchmarks: the core decisions (cargo bench), then the gateway under load (64 keys, and one
# hot key; leasing on and LEASE_MS=0) against the upstream, nginx, the runtime's floor, a
# pass-through worker and Portkey, with the ratios (bench/run.mjs), then the account objects
# 50 ms away, leasing on and off (bench/distance.mjs), then calls in an org of 5,000 keys
# against an org of one (bench/org_scale.mjs), then the isolate's memory under eight 9.5 MiB
# bodies while another key streams (bench/memory.mjs). About 14 minutes; BENCH_ROUNDS,
# BENCH_SECONDS and BENCH_ORG_KEYS shorten it.
bench: build
	@command -v nginx >/dev/null && command -v wrk >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null; }
	cargo bench --bench core
	node bench/run.mjs
	node bench/distance.mjs
	node bench/org_scale.mjs
	node bench/memory.mjs

# Ten minutes of steady load over 1,000 keys (5 take half the calls) while keys are revoked
# and edited, against the provider double; workerd's memory over time, errors, ledger
# failures, calls that waited for an object, and every key's invoice against its ledger
# (bench/soak.mjs). SOAK_SECONDS shortens it; SOAK_RPS, SOAK_KEYS, SOAK_LEASE_MS,
# SOAK_OBJECT_DELAY_MS change it.
soak: build
	node bench/soak.mjs
