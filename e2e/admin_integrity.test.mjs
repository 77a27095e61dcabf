// Admin integrity: edits are compare-and-set on the record's version (ETag / If-Match), a
// revocation always wins a race and stays, the ledger refuses state it cannot read instead of
// starting over with full balances, and concurrent key creations lose no CORS origin.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import v8 from "node:v8";
import { ADMIN, startGateway, admin, newKey, chat, usage, workerLogs } from "./harness.mjs";

let gw;
const body = { model: "m/x", max_tokens: 10, messages: [{ role: "user", content: "hi" }] };

before(async () => {
  gw = await startGateway({ UPSTREAM_URL: "sandbox" });
});
after(async () => {
  await gw?.stop();
});

const shuffled = (list) => list.map((v) => [Math.random(), v]).sort((a, b) => a[0] - b[0]).map(([, v]) => v);

test("a DELETE racing 20 PATCHes always ends revoked: in reads, at call time and for later edits", async () => {
  for (let round = 0; round < 10; round++) {
    const k = await newKey(gw, { plan: "pro", name: `race-${round}` });
    const patches = Array.from({ length: 20 }, (_, i) => () => admin(gw, "PATCH", `/admin/keys/${k.id}`, { name: `p${i}` }));
    const del = () => admin(gw, "DELETE", `/admin/keys/${k.id}`);
    const results = await Promise.all(shuffled([...patches, del]).map((f) => f()));
    for (const r of results) {
      // a PATCH either landed before the DELETE, or was refused after it
      assert.ok([200, 400].includes(r.status), `round ${round}: ${r.status} ${JSON.stringify(r.json)}`);
    }
    const got = await admin(gw, "GET", `/admin/keys/${k.id}`);
    assert.equal(got.json.revoked, true, `round ${round}: GET says revoked`);
    assert.equal(got.headers.get("etag"), `"${got.json.version}"`);
    const kv = await gw.mf.getKVNamespace("GATEWAY_KV");
    const digest = await kv.get(`id:${k.id}`);
    assert.equal(JSON.parse(await kv.get(`k:${digest}`)).revoked, true, `round ${round}: KV says revoked`);
    const call = await chat(gw, k.key, body);
    assert.equal(call.status, 401, `round ${round}: the key is refused`);
    assert.equal((await call.json()).error.code, "invalid_api_key");
    const later = await admin(gw, "PATCH", `/admin/keys/${k.id}`, { name: "after" });
    assert.equal(later.status, 400, `round ${round}: a later PATCH is refused`);
    assert.match(later.json.error.message, /revoked/);
    const forced = await admin(gw, "PATCH", `/admin/keys/${k.id}`, { name: "after" }, { "if-match": got.headers.get("etag") });
    assert.equal(forced.status, 400, "even with the current ETag");
  }
});

test("concurrent PATCHes without If-Match all land, one version each", async () => {
  const k = await newKey(gw, { plan: "pro", name: "many" });
  const results = await Promise.all(Array.from({ length: 10 }, (_, i) => admin(gw, "PATCH", `/admin/keys/${k.id}`, { name: `n${i}` })));
  for (const r of results) assert.equal(r.status, 200, JSON.stringify(r.json));
  const versions = results.map((r) => r.json.version).sort((a, b) => a - b);
  assert.deepEqual(versions, Array.from({ length: 10 }, (_, i) => i + 2));
  const got = await admin(gw, "GET", `/admin/keys/${k.id}`);
  assert.equal(got.headers.get("etag"), '"11"');
  const last = results.find((r) => r.json.version === 11);
  assert.equal(got.json.name, last.json.name, "the last edit's name stands");
});

test("keys: If-Match current -> 200 and a new ETag; stale -> 412 precondition_failed", async () => {
  const created = await admin(gw, "POST", "/admin/keys", { plan: "pro", name: "v1" });
  assert.equal(created.status, 201);
  assert.equal(created.headers.get("etag"), '"1"');
  const id = created.json.id;
  const first = await admin(gw, "PATCH", `/admin/keys/${id}`, { name: "v2" }, { "if-match": '"1"' });
  assert.equal(first.status, 200);
  assert.equal(first.headers.get("etag"), '"2"');
  const stale = await admin(gw, "PATCH", `/admin/keys/${id}`, { name: "lost update" }, { "if-match": '"1"' });
  assert.equal(stale.status, 412);
  assert.equal(stale.json.error.code, "precondition_failed");
  assert.equal(stale.json.error.type, "invalid_request_error");
  assert.match(stale.json.error.message, /version 2/);
  const weak = await admin(gw, "PATCH", `/admin/keys/${id}`, { name: "weak" }, { "if-match": 'W/"2"' });
  assert.equal(weak.status, 412, "a weak tag never matches");
  const got = await admin(gw, "GET", `/admin/keys/${id}`);
  assert.equal(got.headers.get("etag"), '"2"');
  assert.equal(got.json.name, "v2", "the stale edit changed nothing");
  const next = await admin(gw, "PATCH", `/admin/keys/${id}`, { name: "v3" }, { "if-match": got.headers.get("etag") });
  assert.equal(next.status, 200);
  assert.equal(next.headers.get("etag"), '"3"');
  const revoked = await admin(gw, "DELETE", `/admin/keys/${id}`);
  assert.equal(revoked.status, 200);
  assert.equal(revoked.headers.get("etag"), '"4"');
});

test("orgs: If-Match current -> 200 and a new ETag; stale -> 412; racing PATCHes all land", async () => {
  const created = await admin(gw, "POST", "/admin/orgs", { id: "etag-org", plan: "team", seats: 2 });
  assert.equal(created.status, 201);
  assert.equal(created.headers.get("etag"), '"1"');
  const first = await admin(gw, "PATCH", "/admin/orgs/etag-org", { seats: 3 }, { "if-match": '"1"' });
  assert.equal(first.status, 200);
  assert.equal(first.headers.get("etag"), '"2"');
  const stale = await admin(gw, "PATCH", "/admin/orgs/etag-org", { seats: 9 }, { "if-match": '"1"' });
  assert.equal(stale.status, 412);
  assert.equal(stale.json.error.code, "precondition_failed");
  const got = await admin(gw, "GET", "/admin/orgs/etag-org");
  assert.equal(got.headers.get("etag"), '"2"');
  assert.equal(got.json.seats, 3);
  assert.equal(got.json.usage.limit_micro_usd, 6_000_000, "the ledger has the edit that won");
  const racing = await Promise.all(Array.from({ length: 8 }, (_, i) => admin(gw, "PATCH", "/admin/orgs/etag-org", { seats: 10 + i })));
  for (const r of racing) assert.equal(r.status, 200, JSON.stringify(r.json));
  const after = await admin(gw, "GET", "/admin/orgs/etag-org");
  assert.equal(after.headers.get("etag"), '"10"');
  assert.equal(after.json.usage.limit_micro_usd, 2_000_000 * after.json.seats, "KV and the ledger agree on the winner");
});

test("20 concurrent key creations with distinct origins: a preflight from each is approved", async () => {
  const origins = Array.from({ length: 20 }, (_, i) => `https://app${i}.example`);
  await Promise.all(origins.map((o, i) => newKey(gw, { plan: "free", name: `web-${i}`, allowed_origins: [o] })));
  for (const origin of origins) {
    const pre = await fetch(`${gw.url}/v1/chat/completions`, { method: "OPTIONS", headers: { origin, "access-control-request-method": "POST" } });
    assert.equal(pre.status, 204, origin);
    assert.equal(pre.headers.get("access-control-allow-origin"), origin);
  }
  // the registry itself holds all of them, not only this isolate's copy
  const ns = await gw.mf.getDurableObjectNamespace("REGISTRY");
  const ask = await ns.get(ns.idFromName("registry")).fetch("https://object.internal/", { method: "POST", body: JSON.stringify("origins") });
  const held = (await ask.json()).origins;
  for (const origin of origins) assert.ok(held.includes(origin), `${origin} is in the registry`);
});

// Miniflare 4 has no API to write a Durable Object's storage from outside, so these tests keep
// state in a folder (`persist`) and edit the object's SQLite file while no gateway runs
// (python3's sqlite3 does the SQL; node:v8 writes the V8-serialised values of `_cf_KV`, where
// the key-value API keeps what it stores).
function objectSql(persist, objectId) {
  const file = join(persist, "do", "hf-gate-Account", `${objectId}.sqlite`);
  return (script, ...args) =>
    execFileSync("python3", ["-c", `import sqlite3,sys,json\nc=sqlite3.connect(sys.argv[1])\n${script}\nc.commit()`, file, ...args]).toString();
}

async function spentKey(persist) {
  const g = await startGateway({ UPSTREAM_URL: "sandbox" }, { persist });
  const k = await newKey(g, { plan: "free" });
  assert.equal((await chat(g, k.key, body)).status, 200);
  const used = (await usage(g, k.key)).credits.used_micro_usd;
  assert.ok(used > 0);
  const ns = await g.mf.getDurableObjectNamespace("ACCOUNTS");
  const objectId = ns.idFromName(`key:${k.id}`).toString();
  await g.stop();
  return { k, used, sql: objectSql(persist, objectId) };
}

test("the ledger is stored as rows and survives a restart; a row that does not decode is a loud 503", async () => {
  const persist = mkdtempSync(join(tmpdir(), "hfg-ledger-"));
  const { k, used, sql } = await spentKey(persist);
  // one row for the account and one per key; the settled hold is gone
  const counts = JSON.parse(sql("print(json.dumps([c.execute(f'select count(*) from {t}').fetchone()[0] for t in ('account','keys','holds')]))"));
  assert.deepEqual(counts, [1, 1, 0]);
  let g = await startGateway({ UPSTREAM_URL: "sandbox" }, { persist });
  try {
    assert.equal((await usage(g, k.key)).credits.used_micro_usd, used, "the spend is read back from the rows");
    await g.stop();
    for (const [what, edit] of [
      ["an account row that is not JSON", "c.execute(\"update account set body='{\\\"ledger\\\":'\")"],
      ["a key row of the wrong shape", "c.execute(\"update keys set state='[1,2]'\")"],
    ]) {
      sql(edit);
      g = await startGateway({ UPSTREAM_URL: "sandbox" }, { persist });
      const logsBefore = workerLogs.length;
      const res = await chat(g, k.key, body);
      assert.equal(res.status, 503, what);
      assert.equal((await res.json()).error.code, "ledger_unavailable", what);
      const u = await fetch(`${g.url}/v1/usage`, { headers: { authorization: `Bearer ${k.key}` } });
      assert.equal(u.status, 503, `${what}: no usage made up either`);
      const logged = workerLogs.slice(logsBefore).join("\n");
      assert.match(logged, new RegExp(`account key:${k.id}: stored state refused`), `${what}: the log names the account`);
      await g.stop();
    }
  } finally {
    await g.stop().catch(() => {});
  }
});

test("a ledger stored by an earlier build as one document is carried over into rows, spend and all", async () => {
  const persist = mkdtempSync(join(tmpdir(), "hfg-ledger-"));
  const { k, used, sql } = await spentKey(persist);
  // rebuild the earlier form from the rows: {"schema":1,"state":{ledger, tat, policy, keys, owners}}
  const head = JSON.parse(sql("print(c.execute('select body from account').fetchone()[0])"));
  const keys = JSON.parse(sql("print(json.dumps(dict((r[0], json.loads(r[1])) for r in c.execute('select key_id, state from keys'))))"));
  const state = { ledger: { ...head.ledger, reservations: {}, expired: {} }, tat: head.tat, policy: head.policy, keys, owners: {} };
  const doc = v8.serialize(JSON.stringify({ schema: 1, state })).toString("hex");
  sql("c.execute('delete from account'); c.execute('delete from keys'); c.execute('delete from holds')\n"
    + "c.execute('create table if not exists _cf_KV (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID')\n"
    + "c.execute(\"insert or replace into _cf_KV (key, value) values ('state', ?)\", (bytes.fromhex(sys.argv[2]),))", doc);
  const g = await startGateway({ UPSTREAM_URL: "sandbox" }, { persist });
  try {
    assert.equal((await usage(g, k.key)).credits.used_micro_usd, used, "the earlier document read as it was");
  } finally {
    await g.stop();
  }
  const left = JSON.parse(sql("print(json.dumps([c.execute('select count(*) from account').fetchone()[0], c.execute(\"select count(*) from _cf_KV where key='state'\").fetchone()[0]]))"));
  assert.deepEqual(left, [1, 0], "now stored as rows, and the document is gone");
});

test("an admin body past 64 KiB is refused with 413 request_too_large, declared or chunked, and creates nothing", async () => {
  const before = (await admin(gw, "GET", "/admin/keys")).json;
  const big = JSON.stringify({ name: "x".repeat(70 * 1024), plan: "free" });
  const declared = await admin(gw, "POST", "/admin/keys", JSON.parse(big));
  assert.equal(declared.status, 413);
  assert.equal(declared.json.error.code, "request_too_large");
  // chunked: no length declared, so the body is read until it passes the limit
  const chunks = (async function* () {
    for (let i = 0; i < 8; i++) yield new TextEncoder().encode(big.slice(i * 10_000, (i + 1) * 10_000));
    yield new TextEncoder().encode(big.slice(80_000));
  })();
  const res = await fetch(gw.url + "/admin/keys", {
    method: "POST",
    headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
    body: ReadableStream.from(chunks),
    duplex: "half",
  });
  assert.equal(res.status, 413);
  assert.equal((await res.json()).error.code, "request_too_large");
  assert.deepEqual((await admin(gw, "GET", "/admin/keys")).json, before);
});
