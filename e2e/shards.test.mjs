// An org spread over several Durable Objects (`shards`): each shard admits its keys' calls on
// credit it leases from the org's pool object, so the org is never charged past its ceiling,
// its rate is never passed, and its usage adds up exactly across the shards.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, startUpstream, admin, newKey, chat, usage, eventually, completion, sleep } from "./harness.mjs";

let up, gw;
// $1 per 1M output tokens, nothing for input: max_tokens 100 reserves exactly 100 micro-USD,
// and the fake upstream generates 100 completion tokens, or fewer where the gateway lowered
// max_tokens to what a shard's last credit pays for (as a provider stops at its max_tokens)
const PRICES = JSON.stringify({ "*": { input: 0, output: 1.0 } });
const FAST = { rpm: 600000, burst: 100000 };
// the completion tokens upstream reported
let billed = 0;

before(async () => {
  up = await startUpstream();
  gw = await startGateway({ UPSTREAM_URL: up.url, PRICES });
  up.on(async (req, res, call) => {
    await sleep(20); // keep them in flight together
    const tokens = Math.min(100, call.json.max_tokens ?? 100);
    billed += tokens;
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(completion(call.json.model, { prompt_tokens: 3, completion_tokens: tokens })));
  });
});
after(async () => {
  await gw?.stop();
  await up?.close();
});

const call = (k) => chat(gw, k.key, { model: "m/sharded", max_tokens: 100, messages: [{ role: "user", content: "go" }] });

async function orgWithKeys(id, org, n) {
  const made = await admin(gw, "POST", "/admin/orgs", { id, plan: "team", seats: 1, ...org });
  assert.equal(made.status, 201, JSON.stringify(made.json));
  assert.equal(made.json.shards, org.shards);
  return Promise.all(Array.from({ length: n }, (_, i) => newKey(gw, { org: id, name: `k${i}`, rate_limit: FAST })));
}

test("50 concurrent callers over 4 shards never spend past the org's cap, and usage adds up exactly", async () => {
  // a $0.005 cap: room for exactly 50 calls of 100 micro-USD, for 80 callers
  const keys = await orgWithKeys("shardco", { shards: 4, spend_limit_micro_usd: 5_000, rate_limit: FAST }, 20);
  billed = 0;
  const first = await Promise.all(Array.from({ length: 50 }, (_, i) => call(keys[i % keys.length])));
  const more = await Promise.all(Array.from({ length: 30 }, (_, i) => call(keys[(i * 7) % keys.length])));
  const results = [...first, ...more];
  const ok = results.filter((r) => r.status === 200);
  // a shard's last credit, split by the pool's leases, may still pay for a shorter answer:
  // such a call goes with a lower max_tokens (and says so), and costs what it was bounded to
  const lowered = ok.filter((r) => r.headers.get("x-hfgate-max-tokens") !== null);
  for (const r of results) {
    if (r.status !== 200) {
      assert.equal(r.status, 429);
      assert.equal((await r.json()).error.code, "insufficient_quota");
    } else {
      await r.json();
    }
  }
  const spent = billed; // micro-USD: $1 per 1M output tokens
  console.log(`admitted ${ok.length} of 80 on credit for 50 (${lowered.length} of them bounded lower), ${spent} micro-USD`);
  assert.ok(spent <= 5_000, `upstream billed ${spent} micro-USD against a cap of 5,000`);
  assert.ok(ok.length - lowered.length <= 50, `${ok.length - lowered.length} whole calls admitted on credit for 50`);
  assert.ok(ok.length >= 30, `${ok.length} calls admitted: leases strand too much of the pool`);
  // the org's figures are every shard's added up: exact, to the micro-USD
  const org = await eventually(async () => {
    const o = await admin(gw, "GET", "/admin/orgs/shardco");
    return o.json.usage.used_micro_usd === spent && o.json.usage.reserved_micro_usd === 0 && o.json;
  }, 10_000);
  assert.ok(org, "the org's usage is what upstream billed");
  assert.equal(org.usage.remaining_micro_usd, 5_000 - spent);
  // each key sees the org's totals and its own share; the shares add up to the total
  const views = await Promise.all(keys.map((k) => usage(gw, k.key)));
  for (const v of views) assert.equal(v.credits.used_micro_usd, spent);
  assert.equal(views.reduce((sum, v) => sum + v.credits.key_used_micro_usd, 0), spent);
});

test("the org's rate holds across its shards: each admits its slice", async () => {
  // 40 at once for the org: a burst of 10 for each of 4 shards
  const keys = await orgWithKeys("ratedco", { shards: 4, spend_limit_micro_usd: 100_000_000, rate_limit: { rpm: 40, burst: 40 } }, 20);
  const results = await Promise.all(Array.from({ length: 50 }, (_, i) => call(keys[i % keys.length])));
  const ok = results.filter((r) => r.status === 200).length;
  for (const r of results) await r.arrayBuffer();
  console.log(`admitted ${ok} of 50 on a burst of 40`);
  assert.ok(ok <= 40, `${ok} admitted at once on a burst of 40`);
  assert.ok(ok > 0);
  const limited = results.filter((r) => r.status === 429);
  assert.equal(limited.length, 50 - ok);
});

test("a shard count is fixed at creation and bounded", async () => {
  const bad = await admin(gw, "POST", "/admin/orgs", { id: "toomany", plan: "team", seats: 1, shards: 65 });
  assert.equal(bad.status, 400);
  assert.equal((await admin(gw, "POST", "/admin/orgs", { id: "fixed", plan: "team", seats: 1, shards: 2 })).status, 201);
  const change = await admin(gw, "PATCH", "/admin/orgs/fixed", { shards: 3 });
  assert.equal(change.status, 400);
  assert.match(change.json.error.message, /shards/);
  assert.equal((await admin(gw, "PATCH", "/admin/orgs/fixed", { shards: 2, seats: 2 })).status, 200);
});
