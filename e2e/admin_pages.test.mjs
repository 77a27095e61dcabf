// Admin lists that scale: /admin/keys, /admin/orgs and /admin/orgs/{id}/keys come a page at a
// time with a cursor, each page built from one KV list call (key summaries are KV metadata),
// and keys written before the summaries existed are still listed (and indexed on the way).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, admin, newKey } from "./harness.mjs";

let gw;
const ORG = "pages-org";
const OTHER_ORG = "pages-other";
const created = { all: new Set(), org: new Set(), other: new Set() };

/** Runs `make` for 0..n-1, `width` at a time. */
async function inBatches(n, width, make) {
  for (let i = 0; i < n; i += width) {
    await Promise.all(Array.from({ length: Math.min(width, n - i) }, (_, j) => make(i + j)));
  }
}

/** Every page of `path` at `limit`, in order. */
async function allPages(path, limit) {
  const pages = [];
  let cursor = null;
  for (;;) {
    const q = new URLSearchParams({ limit: String(limit) });
    if (cursor) q.set("cursor", cursor);
    const r = await admin(gw, "GET", `${path}?${q}`);
    assert.equal(r.status, 200, JSON.stringify(r.json));
    pages.push(r.json);
    if (!r.json.has_more) return pages;
    assert.equal(typeof r.json.next_cursor, "string", "has_more comes with a cursor");
    cursor = r.json.next_cursor;
    assert.ok(pages.length < 50, "paging ends");
  }
}

before(async () => {
  gw = await startGateway({ UPSTREAM_URL: "sandbox" });
  for (const id of [ORG, OTHER_ORG]) {
    assert.equal((await admin(gw, "POST", "/admin/orgs", { id, plan: "team", seats: 2 })).status, 201);
  }
  await inBatches(250, 10, async (i) => {
    const body = i < 60 ? { plan: "team", org: ORG, name: `org-${i}` } : i < 70 ? { plan: "team", org: OTHER_ORG } : { plan: "free", name: `k-${i}` };
    const k = await newKey(gw, body);
    created.all.add(k.id);
    if (i < 60) created.org.add(k.id);
    else if (i < 70) created.other.add(k.id);
  });
});
after(async () => {
  await gw?.stop();
});

test("GET /admin/keys pages through 250 keys at 100 a page: 3 pages, no duplicates, none missing", async () => {
  const pages = await allPages("/admin/keys", 100);
  assert.deepEqual(pages.map((p) => p.data.length), [100, 100, 50]);
  for (const p of pages) assert.equal(p.object, "list");
  assert.deepEqual(pages.map((p) => p.has_more), [true, true, false]);
  assert.equal(pages[2].next_cursor, null);
  const ids = pages.flatMap((p) => p.data.map((k) => k.id));
  assert.equal(new Set(ids).size, ids.length, "no key twice");
  assert.deepEqual(new Set(ids), created.all);
  // each item is the key's public view, as before pagination
  const one = pages[0].data[0];
  for (const field of ["id", "name", "plan", "org", "allowed_origins", "rate_limit", "created_at", "revoked", "version", "providers"]) {
    assert.ok(field in one, `items carry ${field}`);
  }
  assert.ok(!JSON.stringify(pages).includes("digest"), "no digests in the list");
});

test("without a limit a page holds 100; limit=1000 holds them all", async () => {
  const first = await admin(gw, "GET", "/admin/keys");
  assert.equal(first.json.data.length, 100);
  assert.equal(first.json.has_more, true);
  const all = await admin(gw, "GET", "/admin/keys?limit=1000");
  assert.equal(all.json.data.length, 250);
  assert.equal(all.json.has_more, false);
  assert.equal(all.json.next_cursor, null);
});

test("a page is built from the summaries beside the ids: no key record is read", async () => {
  const kv = await gw.mf.getKVNamespace("GATEWAY_KV");
  const [id] = created.all;
  const digest = await kv.get(`id:${id}`);
  const record = await kv.get(`k:${digest}`);
  // a record that cannot be read: a listing that read it would fail
  await kv.put(`k:${digest}`, "not json");
  try {
    const all = await admin(gw, "GET", "/admin/keys?limit=1000");
    assert.equal(all.status, 200, JSON.stringify(all.json));
    assert.ok(all.json.data.some((k) => k.id === id));
    const one = await admin(gw, "GET", `/admin/keys/${id}`);
    assert.equal(one.status, 500, "reading it is the gateway's own failure, not the caller's");
    assert.equal(one.json.error.code, "internal_error");
  } finally {
    await kv.put(`k:${digest}`, record);
  }
});

test("the list shows edits and revocations (the summary is rewritten with the record)", async () => {
  const k = await newKey(gw, { plan: "pro", name: "before" });
  created.all.add(k.id);
  assert.equal((await admin(gw, "PATCH", `/admin/keys/${k.id}`, { name: "after" })).status, 200);
  assert.equal((await admin(gw, "DELETE", `/admin/keys/${k.id}`)).status, 200);
  const all = await admin(gw, "GET", "/admin/keys?limit=1000");
  const item = all.json.data.find((x) => x.id === k.id);
  assert.deepEqual([item.name, item.revoked, item.version], ["after", true, 3]);
});

test("GET /admin/orgs/{id}/keys lists that org's keys only, paged the same way", async () => {
  const pages = await allPages(`/admin/orgs/${ORG}/keys`, 25);
  assert.deepEqual(pages.map((p) => p.data.length), [25, 25, 10]);
  const ids = pages.flatMap((p) => p.data.map((k) => k.id));
  assert.equal(new Set(ids).size, ids.length);
  assert.deepEqual(new Set(ids), created.org);
  assert.ok(pages.every((p) => p.data.every((k) => k.org === ORG)));
  const other = await admin(gw, "GET", `/admin/orgs/${OTHER_ORG}/keys`);
  assert.deepEqual(new Set(other.json.data.map((k) => k.id)), created.other);
  assert.equal(other.json.has_more, false);
});

test("GET /admin/orgs is paged too", async () => {
  for (const id of ["pages-a", "pages-b", "pages-c"]) {
    assert.equal((await admin(gw, "POST", "/admin/orgs", { id, plan: "team", seats: 1 })).status, 201);
  }
  const pages = await allPages("/admin/orgs", 2);
  assert.deepEqual(pages.map((p) => p.data.length), [2, 2, 1]);
  const ids = pages.flatMap((p) => p.data.map((o) => o.id));
  assert.deepEqual(ids.sort(), ["pages-a", "pages-b", "pages-c", OTHER_ORG, ORG].sort());
  assert.ok(pages[0].data.every((o) => o.plan === "team" && typeof o.seats === "number" && "bill_to" in o));
});

test("an unknown org is a 404, not an empty list", async () => {
  const r = await admin(gw, "GET", "/admin/orgs/no-such-org/keys");
  assert.equal(r.status, 404);
  assert.equal(r.json.error.code, "not_found");
  assert.equal((await admin(gw, "POST", `/admin/orgs/${ORG}/keys`, {})).status, 405);
});

test("a bad limit or cursor is a 400 in the error shape", async () => {
  const other = await admin(gw, "GET", "/admin/orgs?limit=1");
  const orgsCursor = other.json.next_cursor;
  assert.equal(typeof orgsCursor, "string");
  const keysCursor = (await admin(gw, "GET", "/admin/keys?limit=1")).json.next_cursor;
  for (const q of [
    "limit=0",
    "limit=1001",
    "limit=-1",
    "limit=abc",
    "limit=",
    "limit=%2B5",
    "limit=10&limit=20",
    "cursor=",
    "cursor=not-a-cursor",
    `cursor=${keysCursor.slice(0, -2)}`,
    `cursor=${orgsCursor}`, // another list's cursor
  ]) {
    const r = await admin(gw, "GET", `/admin/keys?${q}`);
    assert.equal(r.status, 400, `${q}: ${JSON.stringify(r.json)}`);
    assert.equal(r.json.error.code, "invalid_request", q);
    assert.equal(r.json.error.type, "invalid_request_error", q);
    assert.match(r.json.error.message, /limit|cursor/, q);
  }
  const wrongOrg = await admin(gw, "GET", `/admin/orgs/${OTHER_ORG}/keys?cursor=${encodeURIComponent(keysCursor)}`);
  assert.equal(wrongOrg.status, 400, "a cursor of /admin/keys does not page an org's keys");
});

test("keys written before summaries and the org index are listed, and indexed on the way", async () => {
  const kv = await gw.mf.getKVNamespace("GATEWAY_KV");
  const k = await newKey(gw, { plan: "team", org: ORG, name: "legacy" });
  created.all.add(k.id);
  // what KV held for a key before this change: the id entry with no metadata, no org index
  const digest = await kv.get(`id:${k.id}`);
  await kv.put(`id:${k.id}`, digest);
  await kv.delete(`ok:${ORG}:${k.id}`);
  assert.equal((await kv.getWithMetadata(`id:${k.id}`)).metadata, null);

  const orgBefore = await admin(gw, "GET", `/admin/orgs/${ORG}/keys?limit=1000`);
  assert.ok(!orgBefore.json.data.some((x) => x.id === k.id), "not in the org index yet");
  const all = await admin(gw, "GET", "/admin/keys?limit=1000");
  const item = all.json.data.find((x) => x.id === k.id);
  assert.deepEqual([item?.name, item?.org, item?.plan], ["legacy", ORG, "team"], "listed from its record");
  assert.equal(all.json.data.length, created.all.size);

  const orgAfter = await admin(gw, "GET", `/admin/orgs/${ORG}/keys?limit=1000`);
  assert.ok(orgAfter.json.data.some((x) => x.id === k.id && x.name === "legacy"), "in the org index after a listing");
  assert.notEqual((await kv.getWithMetadata(`id:${k.id}`)).metadata, null, "its summary was written");
});
