#!/usr/bin/env bash
# `make deploy`: deploys the built worker (build/) with `wrangler deploy`, after checking what
# would make the deployed gateway fail or refuse: a Durable Object class no migration creates,
# the placeholder KV namespace id, the sandbox as upstream, no Cloudflare login, a missing
# HF_TOKEN or ADMIN_TOKEN secret. Each refusal says what to run. It prints secret names only,
# never a value (wrangler's secret list holds no values anyway).
#
#   scripts/deploy.sh            the checks, then `wrangler deploy`
#   scripts/deploy.sh --dry-run  the checks a fresh checkout can pass (no account, no network):
#                                `wrangler deploy --dry-run` into a temporary directory, its
#                                warnings and the bundle's compressed size held against
#                                Cloudflare's limit. scripts/test.sh runs this.
#
# WRANGLER is the command line that runs wrangler, split on spaces (default `npx wrangler`;
# e2e/deploy.test.mjs points it at a fake).
# DEPLOY_ALLOW_SANDBOX=1 deploys with UPSTREAM_URL = "sandbox" (a demo, never production).
set -euo pipefail
cd "$(dirname "$0")/.."
export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false
read -r -a WRANGLER_CMD <<<"${WRANGLER:-npx wrangler}"
wrangler() { "${WRANGLER_CMD[@]}" "$@"; }
refuse() { printf 'deploy: %s\n' "$1" >&2; shift; [ $# -eq 0 ] || printf '%s\n' "$@" >&2; exit 1; }

mode=deploy
case "${1:-}" in
  "") ;;
  --dry-run) mode=dry-run ;;
  *) refuse "unknown argument ${1}; scripts/deploy.sh takes only --dry-run" ;;
esac

[ -f build/index.js ] && [ -f build/index_bg.wasm ] || refuse "no built worker in build/: run \`make deploy\` (or \`make build\` first)"

# wrangler.toml as wrangler reads it (its own parser and defaults), checked in node.
MODE=$mode node --input-type=module - <<'EOF'
import { unstable_readConfig } from "wrangler";
const c = unstable_readConfig({ config: "wrangler.toml" });
const problems = [];

// Cloudflare refuses a Durable Object binding whose class no migration created (wrangler's
// dry run does not check it), and a class a migration deleted.
const live = new Set();
for (const m of c.migrations) {
  for (const k of [...(m.new_classes ?? []), ...(m.new_sqlite_classes ?? [])]) live.add(k);
  for (const r of m.renamed_classes ?? []) { live.delete(r.from); live.add(r.to); }
  for (const r of m.transferred_classes ?? []) live.add(r.to);
  for (const k of m.deleted_classes ?? []) live.delete(k);
}
for (const b of c.durable_objects.bindings) {
  if (!b.script_name && !live.has(b.class_name)) {
    problems.push(`Durable Object binding ${b.name} uses class ${b.class_name}, which no [[migrations]] entry in wrangler.toml creates: a typo, or a new class that needs a new [[migrations]] tag with new_sqlite_classes = ["${b.class_name}"] (never edit a deployed one)`);
  }
}

if (process.env.MODE === "deploy") {
  for (const kv of c.kv_namespaces) {
    if (!kv.id || /^0+$/.test(kv.id)) {
      problems.push(`KV namespace ${kv.binding} has ${kv.id ? "the local placeholder id" : "no id"} in wrangler.toml. Create it with \`npx wrangler kv namespace create ${kv.binding}\` and put the id it prints in wrangler.toml, under [[kv_namespaces]] binding = "${kv.binding}": id = "<that id>"`);
    }
  }
  const upstream = String(c.vars?.UPSTREAM_URL ?? "").trim();
  if (upstream === "sandbox" && process.env.DEPLOY_ALLOW_SANDBOX !== "1") {
    problems.push(`UPSTREAM_URL in wrangler.toml [vars] is "sandbox", the built-in fake upstream: production would answer with made-up completions. Set it to "https://router.huggingface.co" (or leave it out), or run with DEPLOY_ALLOW_SANDBOX=1 for a demo deploy`);
  }
}
for (const p of problems) console.error(`deploy: ${p}`);
process.exit(problems.length ? 1 : 0);
EOF

if [ "$mode" = dry-run ]; then
  out=$(mktemp -d)
  # wrangler makes .wrangler/tmp in the checkout: take it away again unless it was there before
  if [ -e .wrangler ]; then trap 'rm -rf "$out"' EXIT; else trap 'rm -rf "$out" .wrangler' EXIT; fi
  start=$(date +%s%N)
  log=$(wrangler deploy --dry-run --outdir "$out/bundle" 2>&1) || { printf '%s\n' "$log" >&2; refuse "wrangler deploy --dry-run failed (above): this worker would not deploy"; }
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  LOG=$log MS=$ms node --input-type=module - <<'EOF'
const log = process.env.LOG.replace(/\x1b\[[0-9;]*m/g, "");
const fail = (m) => { console.error(log); console.error(`deploy: ${m}`); process.exit(1); };
// a warning from wrangler here is a deploy that fails or misbehaves (e.g. Durable Objects with
// no migrations); wrangler is pinned, so a new warning is a change someone should read
if (/\[WARNING\]/.test(log)) fail("wrangler deploy --dry-run warned (above): fix the configuration");
const m = log.match(/Total Upload: ([\d.]+) KiB \/ gzip: ([\d.]+) KiB/);
if (!m) fail("wrangler deploy --dry-run printed no \"Total Upload\" line to check the bundle's size against");
// Cloudflare's limits are on the compressed upload: 3 MiB on Workers Free, 10 MiB on Paid
const gzipKiB = Number(m[2]), FREE = 3 * 1024, PAID = 10 * 1024;
const pct = (l) => `${((gzipKiB / l) * 100).toFixed(1)} %`;
console.log(`wrangler deploy --dry-run: ${m[1]} KiB, ${gzipKiB} KiB gzipped: ${pct(FREE)} of the Free plan's 3 MiB, ${pct(PAID)} of Paid's 10 MiB (${process.env.MS} ms)`);
if (gzipKiB > FREE) fail(`the bundle is ${gzipKiB} KiB gzipped, over Workers Free's 3 MiB limit`);
EOF
  exit 0
fi

err=$(mktemp)
trap 'rm -f "$err"' EXIT

# Logged in? `whoami --json` exits non-zero with {"loggedIn":false} when not.
who=$(wrangler whoami --json 2>"$err") || true
WHO=$who ERR=$err node --input-type=module - <<'EOF' || exit 1
import { readFileSync } from "node:fs";
let who;
try { who = JSON.parse(process.env.WHO.slice(process.env.WHO.indexOf("{"))); } catch {}
if (!who) {
  console.error(readFileSync(process.env.ERR, "utf8").trimEnd());
  console.error("deploy: `wrangler whoami --json` gave no answer (above): is Cloudflare's API reachable?");
  process.exit(1);
}
if (!who.loggedIn) {
  console.error("deploy: not logged in to Cloudflare: run `npx wrangler login`, or export CLOUDFLARE_API_TOKEN (a token with the \"Edit Cloudflare Workers\" template)");
  process.exit(1);
}
// with several accounts wrangler would stop to ask which one (or fail when not interactive)
if ((who.accounts ?? []).length > 1 && !process.env.CLOUDFLARE_ACCOUNT_ID) {
  const { unstable_readConfig } = await import("wrangler");
  if (!unstable_readConfig({ config: "wrangler.toml" }).account_id) {
    console.error(`deploy: this login has ${who.accounts.length} Cloudflare accounts: export CLOUDFLARE_ACCOUNT_ID=<id> to say which one (\`npx wrangler whoami\` lists them)`);
    process.exit(1);
  }
}
EOF

# The secrets, by name.
if ! secrets=$(wrangler secret list --format json 2>"$err"); then
  if grep -Eq 'Worker ".*".* not found' "$err"; then
    refuse "there is no Worker named in wrangler.toml on this account yet. Set its secrets first (the first \`secret put\` creates it):" \
      "  npx wrangler secret put HF_TOKEN" "  npx wrangler secret put ADMIN_TOKEN" "  npx wrangler secret put PROVIDER_KEY_SECRET   (only for byok keys)"
  fi
  cat "$err" >&2
  refuse "\`wrangler secret list\` failed (above)"
fi
SECRETS=$secrets node --input-type=module - <<'EOF' || exit 1
const text = process.env.SECRETS;
let names;
try {
  names = JSON.parse(text.slice(text.indexOf("["))).map((s) => s.name);
} catch {
  console.error("deploy: could not read the output of `wrangler secret list --format json` as a list of secrets");
  process.exit(1);
}
// alerts posted to a webhook are signed, and the gateway refuses a webhook without its key
const { unstable_readConfig } = await import("wrangler");
const vars = unstable_readConfig({ config: "wrangler.toml" }).vars ?? {};
const alerts = String(vars.ALERT_WEBHOOK_URL ?? "").trim() !== "";
const missing = ["HF_TOKEN", "ADMIN_TOKEN", ...(alerts ? ["ALERT_WEBHOOK_SECRET"] : [])].filter((n) => !names.includes(n));
if (missing.length) {
  const what = {
    HF_TOKEN: "a Hugging Face token allowed to call Inference Providers",
    ADMIN_TOKEN: "the admin API's token: a long random string, e.g. `openssl rand -hex 32`",
    ALERT_WEBHOOK_SECRET: "the key credit alerts are signed with, shared with their receiver: `openssl rand -hex 32`",
  };
  console.error(`deploy: secret${missing.length > 1 ? "s" : ""} not set: ${missing.join(", ")}. Set ${missing.length > 1 ? "them" : "it"} first:`);
  for (const n of missing) console.error(`  npx wrangler secret put ${n}    (${what[n]})`);
  process.exit(1);
}
if (!names.includes("PROVIDER_KEY_SECRET")) {
  console.error("deploy: warning: PROVIDER_KEY_SECRET is not set, so byok keys cannot be created (`npx wrangler secret put PROVIDER_KEY_SECRET` to allow them)");
}
EOF

wrangler deploy
