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
import { startGateway, admin, newKey, chat, usage, workerLogs } from "./harness.mjs";

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
  const held = await (await ns.get(ns.idFromName("registry")).fetch("https://registry.internal/origins")).json();
  for (const origin of origins) assert.ok(held.origins.includes(origin), `${origin} is in the registry`);
});

// Miniflare 4 has no API to write a Durable Object's storage from outside, so the test keeps
// state in a folder (`persist`) and edits the object's SQLite file while no gateway runs: the
// value under "state" in its `_cf_KV` table, a V8-serialised string (node:v8 reads and writes
// that format; python3's sqlite3 does the SQL).
function editStoredState(persist, objectId, edit) {
  const file = join(persist, "do", "hf-gate-Account", `${objectId}.sqlite`);
  const sql = (script, ...args) => execFileSync("python3", ["-c", `import sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\n${script}\nc.commit()`, file, ...args]).toString();
  const hex = sql("r=c.execute(\"select value from _cf_KV where key='state'\").fetchone()\nprint(r[0].hex() if r else '')").trim();
  assert.ok(hex, "the account has stored state");
  const next = edit(v8.deserialize(Buffer.from(hex, "hex")));
  sql("c.execute(\"update _cf_KV set value=? where key='state'\", (bytes.fromhex(sys.argv[2]),))", v8.serialize(next).toString("hex"));
}

test("stored ledger state that does not decode is a loud 503, never a fresh full balance", async () => {
  const persist = mkdtempSync(join(tmpdir(), "hfg-ledger-"));
  let g = await startGateway({ UPSTREAM_URL: "sandbox" }, { persist });
  const k = await newKey(g, { plan: "free" });
  assert.equal((await chat(g, k.key, body)).status, 200);
  const used = (await usage(g, k.key)).credits.used_micro_usd;
  assert.ok(used > 0);
  const ns = await g.mf.getDurableObjectNamespace("ACCOUNTS");
  const objectId = ns.idFromName(`key:${k.id}`).toString();
  await g.stop();
  const restart = async () => {
    g = await startGateway({ UPSTREAM_URL: "sandbox" }, { persist });
    return g;
  };
  try {
    // the state stored before the envelope existed (schema 0) still loads, spend and all
    let envelope;
    editStoredState(persist, objectId, (text) => {
      envelope = JSON.parse(text);
      assert.equal(envelope.schema, 1);
      return JSON.stringify(envelope.state);
    });
    await restart();
    assert.equal((await usage(g, k.key)).credits.used_micro_usd, used, "schema 0 read as it was");
    await g.stop();

    for (const [what, garbage] of [
      ["not JSON", '{"schema":1,"state":{"ledger":'],
      ["a state of the wrong shape", JSON.stringify({ schema: 1, state: { ledger: "full", keys: 7 } })],
      ["a schema from the future", JSON.stringify({ ...envelope, schema: 99 })],
    ]) {
      editStoredState(persist, objectId, () => garbage);
      await restart();
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
