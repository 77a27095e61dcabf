// scripts/deploy.sh (`make deploy`) without a Cloudflare account: each case copies the script
// into a scratch checkout with a variant of the real wrangler.toml and a stub build/, and runs
// it with WRANGLER pointing at a fake wrangler that answers `whoami`, `secret list` and
// `deploy` as the case says and logs every call.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const REAL_TOML = readFileSync("wrangler.toml", "utf8");
const PLACEHOLDER = 'id = "00000000000000000000000000000000"';
const DEPLOYABLE = REAL_TOML.replace(PLACEHOLDER, 'id = "0f2ac74b498b48028cb68387c4c1a9b4"');
const ALL_SECRETS = ["HF_TOKEN", "ADMIN_TOKEN", "PROVIDER_KEY_SECRET"];
const EMAIL = "someone@example.com";
const DRY_RUN_OK = "Total Upload: 907.37 KiB / gzip: 324.35 KiB\nYour Worker has access to the following bindings:\n--dry-run: exiting now.\n";

const FAKE = `#!/usr/bin/env node
const { appendFileSync, readFileSync } = require("node:fs");
const dir = __dirname, args = process.argv.slice(2);
appendFileSync(dir + "/calls.log", JSON.stringify(args) + "\\n");
const s = JSON.parse(readFileSync(dir + "/state.json", "utf8"));
const cmd = args.join(" ");
if (cmd === "whoami --json") {
  if (s.offline) { console.error("✘ [ERROR] A request to the Cloudflare API failed. fetch failed"); process.exit(1); }
  if (!s.loggedIn) { console.log('{"loggedIn":false}'); process.exit(1); }
  console.log(JSON.stringify({ loggedIn: true, email: ${JSON.stringify(EMAIL)}, accounts: s.accounts ?? [{ id: "a1", name: "one" }] }));
} else if (cmd === "secret list --format json") {
  if (s.workerMissing) { console.error('✘ [ERROR] Worker "hf-gate" not found.'); process.exit(1); }
  console.log(JSON.stringify(s.secrets.map((name) => ({ name, type: "secret_text" })), null, "  "));
} else if (args[0] === "deploy" && args[1] === "--dry-run") {
  process.stdout.write(s.dryRun ?? "");
  process.exit(s.dryRunExit ?? 0);
} else if (cmd === "deploy") {
  console.log("Deployed hf-gate triggers");
} else {
  console.error("fake wrangler: unexpected " + cmd);
  process.exit(2);
}
`;

function deploy({ toml = DEPLOYABLE, args = [], env = {}, ...state }) {
  const dir = mkdtempSync(join(tmpdir(), "hfg-deploy-"));
  try {
    mkdirSync(join(dir, "scripts"));
    mkdirSync(join(dir, "build"));
    mkdirSync(join(dir, "bin"));
    writeFileSync(join(dir, "scripts/deploy.sh"), readFileSync("scripts/deploy.sh"));
    chmodSync(join(dir, "scripts/deploy.sh"), 0o755);
    writeFileSync(join(dir, "wrangler.toml"), toml);
    writeFileSync(join(dir, "build/index.js"), "export default {};\n");
    writeFileSync(join(dir, "build/index_bg.wasm"), "");
    symlinkSync(realpathSync("node_modules"), join(dir, "node_modules"));
    writeFileSync(join(dir, "bin/wrangler"), FAKE);
    chmodSync(join(dir, "bin/wrangler"), 0o755);
    writeFileSync(join(dir, "bin/state.json"), JSON.stringify({ loggedIn: true, secrets: ALL_SECRETS, ...state }));
    writeFileSync(join(dir, "bin/calls.log"), "");
    const { DEPLOY_ALLOW_SANDBOX, CLOUDFLARE_ACCOUNT_ID, ...inherited } = process.env;
    const r = spawnSync(join(dir, "scripts/deploy.sh"), args, {
      encoding: "utf8",
      env: { ...inherited, WRANGLER: join(dir, "bin/wrangler"), ...env },
    });
    const calls = readFileSync(join(dir, "bin/calls.log"), "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l).join(" "));
    return { code: r.status, out: r.stdout, err: r.stderr, calls };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test("every secret set: deploy.sh calls wrangler deploy, and prints no account detail", () => {
  const r = deploy({});
  assert.equal(r.code, 0, r.err);
  assert.deepEqual(r.calls, ["whoami --json", "secret list --format json", "deploy"]);
  assert.doesNotMatch(r.out + r.err, new RegExp(EMAIL));
  assert.doesNotMatch(r.err, /warning/);
});

test("HF_TOKEN or ADMIN_TOKEN missing: refused with their names and the command to set them", () => {
  const both = deploy({ secrets: ["PROVIDER_KEY_SECRET"] });
  assert.notEqual(both.code, 0);
  assert.match(both.err, /not set: HF_TOKEN, ADMIN_TOKEN/);
  assert.match(both.err, /npx wrangler secret put HF_TOKEN/);
  assert.match(both.err, /npx wrangler secret put ADMIN_TOKEN/);
  assert.ok(!both.calls.includes("deploy"), "did not deploy");

  const one = deploy({ secrets: ["HF_TOKEN"] });
  assert.notEqual(one.code, 0);
  assert.match(one.err, /secret not set: ADMIN_TOKEN\./);
  assert.doesNotMatch(one.err, /secret put HF_TOKEN/);
  assert.ok(!one.calls.includes("deploy"), "did not deploy");
});

test("ALERT_WEBHOOK_URL set without ALERT_WEBHOOK_SECRET: refused, since the gateway would refuse every request", () => {
  const toml = DEPLOYABLE.replace(/^UPSTREAM_URL = .*$/m, (l) => `${l}\nALERT_WEBHOOK_URL = "https://hooks.example/credits"`);
  assert.notEqual(toml, DEPLOYABLE);
  const r = deploy({ toml });
  assert.notEqual(r.code, 0);
  assert.match(r.err, /secret not set: ALERT_WEBHOOK_SECRET\./);
  assert.ok(!r.calls.includes("deploy"), "did not deploy");
  const ok = deploy({ toml, secrets: ["HF_TOKEN", "ADMIN_TOKEN", "PROVIDER_KEY_SECRET", "ALERT_WEBHOOK_SECRET"] });
  assert.equal(ok.code, 0, ok.err);
  assert.equal(ok.calls.at(-1), "deploy");
});

test("PROVIDER_KEY_SECRET missing: a warning, and the deploy goes ahead", () => {
  const r = deploy({ secrets: ["HF_TOKEN", "ADMIN_TOKEN"] });
  assert.equal(r.code, 0, r.err);
  assert.match(r.err, /warning: PROVIDER_KEY_SECRET is not set/);
  assert.equal(r.calls.at(-1), "deploy");
});

test("the placeholder KV namespace id: refused before any call to Cloudflare, saying how to make one", () => {
  const r = deploy({ toml: REAL_TOML });
  assert.notEqual(r.code, 0);
  assert.match(r.err, /KV namespace GATEWAY_KV has the local placeholder id/);
  assert.match(r.err, /npx wrangler kv namespace create GATEWAY_KV/);
  assert.deepEqual(r.calls, []);
});

test("not logged in: refused, saying to log in or set CLOUDFLARE_API_TOKEN", () => {
  const r = deploy({ loggedIn: false });
  assert.notEqual(r.code, 0);
  assert.match(r.err, /npx wrangler login/);
  assert.match(r.err, /CLOUDFLARE_API_TOKEN/);
  assert.deepEqual(r.calls, ["whoami --json"]);
});

test("whoami answers no JSON (no network): refused, showing what wrangler said", () => {
  const r = deploy({ offline: true });
  assert.notEqual(r.code, 0);
  assert.match(r.err, /fetch failed[\s\S]*gave no answer/);
  assert.doesNotMatch(r.err, /not logged in/);
  assert.deepEqual(r.calls, ["whoami --json"]);
});

test("several accounts and none chosen: refused until CLOUDFLARE_ACCOUNT_ID says which", () => {
  const accounts = [{ id: "a1", name: "one" }, { id: "a2", name: "two" }];
  const r = deploy({ accounts });
  assert.notEqual(r.code, 0);
  assert.match(r.err, /CLOUDFLARE_ACCOUNT_ID/);
  assert.ok(!r.calls.includes("deploy"));
  assert.equal(deploy({ accounts, env: { CLOUDFLARE_ACCOUNT_ID: "a2" } }).calls.at(-1), "deploy");
});

test("no Worker on the account yet: refused, saying that the first secret put creates it", () => {
  const r = deploy({ workerMissing: true });
  assert.notEqual(r.code, 0);
  assert.match(r.err, /npx wrangler secret put HF_TOKEN/);
  assert.match(r.err, /creates it/);
  assert.ok(!r.calls.includes("deploy"));
});

test("UPSTREAM_URL = sandbox: refused unless DEPLOY_ALLOW_SANDBOX=1", () => {
  const toml = DEPLOYABLE.replace(/^UPSTREAM_URL = .*$/m, 'UPSTREAM_URL = "sandbox"');
  assert.notEqual(toml, DEPLOYABLE);
  const r = deploy({ toml });
  assert.notEqual(r.code, 0);
  assert.match(r.err, /UPSTREAM_URL .* is "sandbox"/);
  assert.deepEqual(r.calls, []);
  assert.equal(deploy({ toml, env: { DEPLOY_ALLOW_SANDBOX: "1" } }).calls.at(-1), "deploy");
});

test("a Durable Object class no migration creates: refused, in a deploy and in a dry run", () => {
  const toml = DEPLOYABLE.replace('new_sqlite_classes = ["Account", "Cooldown", "Registry"]', 'new_sqlite_classes = ["Account", "Cooldown"]');
  assert.notEqual(toml, DEPLOYABLE);
  for (const args of [[], ["--dry-run"]]) {
    const r = deploy({ toml, args, dryRun: DRY_RUN_OK });
    assert.notEqual(r.code, 0);
    assert.match(r.err, /binding REGISTRY uses class Registry, which no \[\[migrations\]\] entry/);
    assert.deepEqual(r.calls, []);
  }
});

test("--dry-run: needs no login, secrets or KV id; reports the size and holds it to the Free plan's 3 MiB", () => {
  const ok = deploy({ toml: REAL_TOML, args: ["--dry-run"], loggedIn: false, secrets: [], dryRun: DRY_RUN_OK });
  assert.equal(ok.code, 0, ok.err);
  assert.match(ok.out, /324\.35 KiB gzipped: 10\.6 % of the Free plan's 3 MiB/);
  assert.equal(ok.calls.length, 1);
  assert.match(ok.calls[0], /^deploy --dry-run --outdir \S+$/);

  const big = deploy({ args: ["--dry-run"], dryRun: "Total Upload: 9000.00 KiB / gzip: 3100.00 KiB\n" });
  assert.notEqual(big.code, 0);
  assert.match(big.err, /over Workers Free's 3 MiB limit/);

  const warned = deploy({ args: ["--dry-run"], dryRun: "▲ [WARNING] no `migrations` for them\n" + DRY_RUN_OK });
  assert.notEqual(warned.code, 0);
  assert.match(warned.err, /warned/);

  const refused = deploy({ args: ["--dry-run"], dryRun: "✘ [ERROR] not exported\n", dryRunExit: 1 });
  assert.notEqual(refused.code, 0);
  assert.match(refused.err, /not exported[\s\S]*would not deploy/);

  const unreadable = deploy({ args: ["--dry-run"], dryRun: "--dry-run: exiting now.\n" });
  assert.notEqual(unreadable.code, 0);
  assert.match(unreadable.err, /no "Total Upload" line/);
});
