// Leases, end to end: a warm key is admitted in its isolate with no round trip to its
// account's object (`Server-Timing: lease`), a cold one pays one (`ledger;dur=`); leasing
// weakens no promise: a revocation answers only once no call can be admitted on the old
// terms, a key's rate and credit hold exactly as without leases, and LEASE_MS=0 turns it off.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, startUpstream, admin, newKey, chat, usage, eventually, sleep } from "./harness.mjs";

const PRICES = JSON.stringify({ "*": { input: 1.0, output: 1.0 } });
const ask = (n = 10) => ({ model: "m/lease", max_tokens: n, messages: [{ role: "user", content: "hi" }] });

let up, gw, off;

before(async () => {
  up = await startUpstream();
  gw = await startGateway({ UPSTREAM_URL: up.url, PRICES, LEASE_MS: "1000" });
  off = await startGateway({ UPSTREAM_URL: up.url, PRICES, LEASE_MS: "0" });
});
after(async () => {
  await gw?.stop();
  await off?.stop();
  await up?.close();
});

/** Where a call was admitted, from its Server-Timing: "lease" or "ledger". */
const admittedBy = (res) => (/\blease\b/.test(res.headers.get("server-timing") ?? "") ? "lease" : "ledger");

test("a warm key is admitted on its isolate's lease; the first call, and every call with LEASE_MS=0, goes to the object", async () => {
  const k = await newKey(gw, { plan: "pro", rate_limit: { rpm: 6000, burst: 200 } });
  const where = [];
  for (let i = 0; i < 30; i++) {
    const res = await chat(gw, k.key, ask());
    assert.equal(res.status, 200);
    await res.arrayBuffer();
    where.push(admittedBy(res));
  }
  assert.equal(where[0], "ledger", "the first call in the isolate is cold");
  const local = where.filter((w) => w === "lease").length;
  assert.ok(local >= 20, `most calls admitted on the lease: ${where.join(" ")}`);
  // every call is settled once, leased or not: the ledger charged 30 calls exactly
  const u = await eventually(async () => {
    const u = await usage(gw, k.key);
    return u.credits.reserved_micro_usd === 0 && u.requests === 30 && u;
  }, 5000);
  assert.ok(u, "thirty calls reported and settled");
  assert.equal(u.credits.used_micro_usd, 30 * 30, "10 prompt + 20 completion tokens each");

  const k0 = await newKey(off, { plan: "pro", rate_limit: { rpm: 6000, burst: 200 } });
  for (let i = 0; i < 10; i++) {
    const res = await chat(off, k0.key, ask());
    await res.arrayBuffer();
    assert.equal(admittedBy(res), "ledger", "LEASE_MS=0: every call goes to the object");
  }
});

test("a revocation answers only once no call can be admitted on the old terms, with twenty callers on the key", async () => {
  const k = await newKey(gw, { plan: "pro", rate_limit: { rpm: 60000, burst: 1000 } });
  // warm the lease
  for (let i = 0; i < 5; i++) await (await chat(gw, k.key, ask())).arrayBuffer();
  let revokedAt = null;
  const late = [];
  let stop = false;
  const caller = async () => {
    while (!stop) {
      const started = Date.now();
      const res = await chat(gw, k.key, ask());
      await res.arrayBuffer();
      if (res.status === 200 && revokedAt !== null && started > revokedAt) late.push({ started, revokedAt, by: admittedBy(res) });
      if (res.status === 401) return;
    }
  };
  const callers = Array.from({ length: 20 }, caller);
  await sleep(300);
  const del = await admin(gw, "DELETE", `/admin/keys/${k.id}`);
  revokedAt = Date.now();
  assert.equal(del.status, 200);
  await sleep(1000);
  stop = true;
  await Promise.all(callers);
  assert.deepEqual(late, [], "no call that started after the DELETE answered was admitted");
  const res = await chat(gw, k.key, ask());
  assert.equal(res.status, 401);
});

test("a key's burst holds with leases: a tight free key gets exactly its burst", async () => {
  for (const g of [gw, off]) {
    const k = await newKey(g, { plan: "free", rate_limit: { rpm: 60, burst: 10 } });
    const statuses = [];
    for (let i = 0; i < 16; i++) {
      const res = await chat(g, k.key, ask(5));
      await res.arrayBuffer();
      statuses.push(res.status);
    }
    const ok = statuses.filter((s) => s === 200).length;
    // sixteen calls in well under a second: the burst, and perhaps one more the refill adds
    assert.ok(ok >= 10 && ok <= 11, `admitted ${ok}: ${statuses.join(" ")}`);
    assert.ok(statuses.slice(ok).every((s) => s === 429), "then throttled");
  }
});

test("credit holds with leases: fifty racing calls on a key funded for ten", async () => {
  for (const g of [gw, off]) {
    // 30 tokens a call (10 prompt + 20 completion); the reserve is the prompt bound + 10
    const k = await newKey(g, { plan: "free", monthly_credit_micro_usd: 100_000, rate_limit: { rpm: 60000, burst: 1000 } });
    // spend down to about ten calls' worth with leases warm, then race for the rest
    for (let i = 0; i < 5; i++) await (await chat(g, k.key, ask())).arrayBuffer();
    const before = await eventually(async () => {
      const u = await usage(g, k.key);
      return u.credits.reserved_micro_usd === 0 && u.requests >= 5 && u;
    });
    const answers = await Promise.all(Array.from({ length: 50 }, () => chat(g, k.key, ask(10_000))));
    await Promise.all(answers.map((r) => r.arrayBuffer()));
    const u = await eventually(async () => {
      const u = await usage(g, k.key);
      return u.credits.reserved_micro_usd === 0 && u.credits.leased_micro_usd === 0 && u;
    }, 15_000);
    assert.ok(u, "everything settled and every lease returned");
    assert.ok(u.credits.used_micro_usd <= 100_000, `never past the credit: ${u.credits.used_micro_usd}`);
    assert.ok(before.credits.used_micro_usd < u.credits.used_micro_usd);
  }
});
