// The request log: one record per admitted call, written with its settle or release, read by
// the admin per key and per org (JSON pages, filters, CSV) and by a caller for itself; and
// the structured line per call the operator's log gets.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, startUpstream, newKey, admin, chat, usage, eventually, workerLogs, completion, ADMIN } from "./harness.mjs";

let up, gw;
const FAST = { rpm: 6000, burst: 1000 };

before(async () => {
  up = await startUpstream();
  gw = await startGateway({ UPSTREAM_URL: up.url, RETRY_MAX_WAIT_MS: "50" });
});
after(async () => {
  await gw?.stop();
  await up?.close();
});

const ask = (model, extra = {}) => ({ model, messages: [{ role: "user", content: "hi" }], ...extra });

async function records(path, query = "") {
  const res = await fetch(`${gw.url}${path}${query}`, { headers: { authorization: `Bearer ${ADMIN}` } });
  assert.equal(res.status, 200, await res.clone().text());
  return res.json();
}

test("every admitted call leaves one record: settled ones with their cost, failed ones with why", async () => {
  const k = await newKey(gw, { plan: "pro", rate_limit: FAST });
  up.on(async (req, res, call) => {
    const model = call.json?.model;
    if (model === "m/refused") {
      res.writeHead(400, { "content-type": "application/json" });
      return res.end(JSON.stringify({ error: "bad input" }));
    }
    if (model === "m/broken") {
      res.writeHead(500);
      return res.end("boom");
    }
    if (model === "m/busy") {
      res.writeHead(429, { "retry-after": "30" });
      return res.end("{}");
    }
    res.writeHead(200, { "content-type": "application/json", "x-inference-provider": "groq" });
    res.end(JSON.stringify(completion(model, { prompt_tokens: 10, completion_tokens: 20 })));
  });
  try {
    for (const m of ["m/a", "m/a", "m/b", "m/refused", "m/broken", "m/busy"]) {
      const r = await chat(gw, k.key, ask(m));
      await r.arrayBuffer();
    }
    const page = await eventually(async () => {
      const p = await records(`/admin/keys/${k.id}/requests`);
      return p.data.length === 6 ? p : null;
    });
    assert.ok(page, "six records");
    assert.equal(page.object, "list");
    assert.equal(page.next_cursor, null);
    const [busy, broken, refused, b, a2, a1] = page.data; // newest first
    assert.deepEqual([a1.model, a2.model, b.model], ["m/a", "m/a", "m/b"]);
    for (const r of [a1, a2, b]) {
      assert.equal(r.status, 200);
      assert.equal(r.error, null);
      assert.equal(r.provider, "groq");
      assert.equal(r.key_id, k.id);
      assert.equal(r.route, "/v1/chat/completions");
      assert.equal(r.api, "chat");
      assert.equal(r.prompt_tokens, 10);
      assert.equal(r.completion_tokens, 20);
      assert.ok(r.cost_micro_usd > 0 && r.cost_micro_usd <= r.reserved_micro_usd, JSON.stringify(r));
      assert.ok(r.latency_ms >= 0 && r.ttfb_ms !== null);
      assert.match(r.at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      assert.equal(r.stream, false);
    }
    assert.deepEqual([refused.status, refused.error, refused.cost_micro_usd], [400, null, 0]);
    assert.deepEqual([broken.status, broken.error, broken.cost_micro_usd], [502, "upstream_error", 0]);
    assert.deepEqual([busy.status, busy.error, busy.cost_micro_usd], [429, "upstream_rate_limited", 0]);
    // the log's costs add up to what the ledger charged
    const u = await usage(gw, k.key);
    assert.equal(page.data.reduce((s, r) => s + r.cost_micro_usd, 0), u.credits.used_micro_usd);
    // one structured line per call in the worker's log, with the same request ids (the
    // lines are written together, up to 50 ms after a call: the record can land first)
    const logged = (id) => workerLogs.some((l) => l.includes('{"call":') && l.includes(`"request_id":"${id}"`));
    await eventually(() => page.data.every((r) => logged(r.request_id)));
    for (const r of page.data) {
      assert.ok(logged(r.request_id), r.request_id);
    }
  } finally {
    up.reset();
  }
});

test("filters, pages and CSV", async () => {
  const k = await newKey(gw, { plan: "pro", rate_limit: FAST });
  for (let i = 0; i < 5; i++) await (await chat(gw, k.key, ask(i % 2 ? "m/odd" : "m/even"))).arrayBuffer();
  await eventually(async () => (await records(`/admin/keys/${k.id}/requests`)).data.length === 5);
  const odd = await records(`/admin/keys/${k.id}/requests`, "?model=m%2Fodd");
  assert.deepEqual(odd.data.map((r) => r.model), ["m/odd", "m/odd"]);
  assert.equal((await records(`/admin/keys/${k.id}/requests`, "?status=4xx")).data.length, 0);
  assert.equal((await records(`/admin/keys/${k.id}/requests`, "?status=200")).data.length, 5);
  // pages of two, resumed by the cursor: all five, once each, newest first
  const seen = [];
  let cursor = "";
  for (let i = 0; i < 5; i++) {
    const p = await records(`/admin/keys/${k.id}/requests`, `?limit=2${cursor ? `&cursor=${cursor}` : ""}`);
    seen.push(...p.data.map((r) => r.request_id));
    if (!p.next_cursor) break;
    cursor = encodeURIComponent(p.next_cursor);
  }
  assert.equal(seen.length, 5);
  assert.equal(new Set(seen).size, 5);
  const all = await records(`/admin/keys/${k.id}/requests`);
  assert.deepEqual(seen, all.data.map((r) => r.request_id));
  // a time window
  const newest = all.data[0].at;
  assert.equal((await records(`/admin/keys/${k.id}/requests`, `?since=${encodeURIComponent(newest)}`)).data.length >= 1, true);
  assert.equal((await records(`/admin/keys/${k.id}/requests`, "?until=1000")).data.length, 0);
  // CSV: the header and one row per record
  const csv = await fetch(`${gw.url}/admin/keys/${k.id}/requests`, { headers: { authorization: `Bearer ${ADMIN}`, accept: "text/csv" } });
  assert.equal(csv.status, 200);
  assert.match(csv.headers.get("content-type"), /text\/csv/);
  const lines = (await csv.text()).trim().split("\r\n");
  assert.equal(lines[0].split(",")[0], "request_id");
  assert.equal(lines.length, 6);
  // bad queries are 400s in the error shape
  for (const q of ["?limit=0", "?status=9xx", "?cursor=nope", "?since=soon", "?colour=red"]) {
    const r = await fetch(`${gw.url}/admin/keys/${k.id}/requests${q}`, { headers: { authorization: `Bearer ${ADMIN}` } });
    assert.equal(r.status, 400, q);
    assert.equal((await r.json()).error.code, "invalid_request");
  }
  assert.equal((await fetch(`${gw.url}/admin/keys/key_nope/requests`, { headers: { authorization: `Bearer ${ADMIN}` } })).status, 404);
});

test("the log keeps its most: past REQUEST_LOG_MAX_ROWS, the account's alarm drops the oldest records", async () => {
  // leases on whatever the suite runs with: their ends are what wake the account's alarm soon
  const small = await startGateway({ UPSTREAM_URL: up.url, REQUEST_LOG_MAX_ROWS: "100", LEASE_MS: "1000" });
  try {
    const k = await newKey(small, { plan: "pro", rate_limit: FAST });
    // each call its own model, to tell the records apart
    const ids = [];
    for (let i = 0; i < 130; i++) {
      const r = await chat(small, k.key, ask(`m/p${i}`));
      assert.equal(r.status, 200);
      ids.push(`m/p${i}`);
      await r.arrayBuffer();
    }
    const page = async () => {
      const res = await fetch(`${small.url}/admin/keys/${k.id}/requests?limit=1000`, { headers: { authorization: `Bearer ${ADMIN}` } });
      assert.equal(res.status, 200);
      return (await res.json()).data.map((r) => r.model);
    };
    // pruned by an alarm once an eighth of the most (12) was written since the last prune;
    // the calls after the last prune may stay until the next (a minute later at most). The
    // last calls' records come with their isolate's next report (a quarter second later): a
    // page read before they came is not the log's end yet.
    const kept = await eventually(async () => {
      const p = await page();
      return p.length <= 111 && p[0] === ids.at(-1) ? p : null;
    }, 20_000);
    assert.ok(kept, "the log was pruned");
    assert.ok(kept.length >= 100, `never below the most kept (${kept.length})`);
    // the newest stay, newest first; the oldest went
    assert.deepEqual(kept, ids.slice(-kept.length).reverse());
    assert.ok(!kept.includes(ids[0]));
  } finally {
    await small.stop();
  }
});

test("a caller reads its own log only; an org's log holds all its keys', across shards", async () => {
  for (const shards of [1, 4]) {
    const org = `log-org-${shards}`;
    assert.equal((await admin(gw, "POST", "/admin/orgs", { id: org, plan: "team", seats: 2, bill_to: org, shards })).status, 201);
    const a = await newKey(gw, { plan: "team", org, rate_limit: FAST });
    const b = await newKey(gw, { plan: "team", org, rate_limit: FAST });
    for (const [k, n] of [[a, 3], [b, 2]]) for (let i = 0; i < n; i++) await (await chat(gw, k.key, ask("m/one"))).arrayBuffer();
    const own = await eventually(async () => {
      const r = await fetch(`${gw.url}/v1/usage/requests`, { headers: { authorization: `Bearer ${a.key}` } });
      const j = await r.json();
      return j.data?.length === 3 ? j : null;
    });
    assert.ok(own, "a's three calls");
    assert.ok(own.data.every((r) => r.key_id === a.id && r.org === org));
    const all = await eventually(async () => {
      const p = await records(`/admin/orgs/${org}/requests`);
      return p.data.length === 5 ? p : null;
    });
    assert.ok(all, `the org's five calls (${shards} shards)`);
    const ats = all.data.map((r) => r.at);
    assert.deepEqual(ats, [...ats].sort().reverse(), "newest first across shards");
    // paged across shards: every record once
    const seen = new Set();
    let cursor = "";
    for (let i = 0; i < 10; i++) {
      const p = await records(`/admin/orgs/${org}/requests`, `?limit=2${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
      p.data.forEach((r) => seen.add(r.request_id));
      if (!p.next_cursor) break;
      cursor = p.next_cursor;
    }
    assert.equal(seen.size, 5);
  }
  // no gateway key reads the admin's view
  const k = await newKey(gw, { plan: "free" });
  assert.equal((await fetch(`${gw.url}/admin/orgs/log-org-1/requests`, { headers: { authorization: `Bearer ${k.key}` } })).status, 401);
});
