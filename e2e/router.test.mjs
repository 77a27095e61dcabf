// The gateway against a double of the Hugging Face router: the live price book and what it
// prices (pinned, unpinned, policy suffixes, PRICES over it, per-model usage), byok on /v1,
// queued jobs and predictions (charged once, polled free, owner only), time-billed routes,
// the router's 402, dedicated endpoints, and the upstream's own RateLimit headers.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { HF_TOKEN, startGateway, admin, newKey, chat, usage, eventually, secret, sleep } from "./harness.mjs";
import { startRouter, FAL_IMAGES, REPLICATE_OUTPUT, EMBEDDING, PROVIDER_SECRET, ENDPOINT_SECRET } from "./router_double.mjs";

const SEAL = "pks_router_e2e_sealing_secret_0123456789";
secret(SEAL, "PROVIDER_KEY_SECRET");
secret(PROVIDER_SECRET, "provider key (together)");
secret(ENDPOINT_SECRET, "MINE_TOKEN");

const ROUTE_PRICES = JSON.stringify({ "fal-ai/*": { per_request: 0.02 }, "replicate/*": { per_request: 0.01 } });
const FAST = { rpm: 60000, burst: 1000 };
const FAL_SUBMIT = "/fal-ai/fal-ai/flux/dev?_subdomain=queue";

let router, gw, gwShort;
const endpoints = (url) =>
  JSON.stringify({
    mine: { url: `${url}/endpoint/mine`, token_secret: "MINE_TOKEN", price: { input: 2, output: 4 } },
    hourly: { url: `${url}/endpoint/mine`, token_secret: "MINE_TOKEN", price: { per_hour: 3.6 } },
  });

before(async () => {
  router = await startRouter();
  gw = await startGateway({
    UPSTREAM_URL: router.url,
    ROUTE_PRICES,
    COMPUTE_USD_PER_SECOND: "0.001",
    RETRY_MAX_WAIT_MS: "2000",
    ENDPOINTS: endpoints(router.url),
    MINE_TOKEN: ENDPOINT_SECRET,
    PROVIDER_KEY_SECRET: SEAL,
    PROVIDER_URLS: JSON.stringify({ together: `${router.url}/provider/together` }),
  });
  // short waits are the only ones retried here: 429s reach the caller
  gwShort = await startGateway({ UPSTREAM_URL: router.url, RETRY_MAX_WAIT_MS: "100", ENDPOINTS: endpoints(router.url), MINE_TOKEN: ENDPOINT_SECRET });
});
after(async () => {
  await gw?.stop();
  await gwShort?.stop();
  await router?.close();
});

const ask = (model, extra = {}) => ({ model, max_tokens: 1000, messages: [{ role: "user", content: "hi" }], ...extra });
const post = (g, key, path, body, headers = {}) =>
  fetch(g.url + path, { method: "POST", headers: { authorization: `Bearer ${key}`, "content-type": "application/json", ...headers }, body: JSON.stringify(body) });
const get = (g, key, path) => fetch(g.url + path, { headers: { authorization: `Bearer ${key}` } });
/** A chat call that must succeed, its body read. */
async function served(g, key, model, extra) {
  const res = await chat(g, key, ask(model, extra));
  const text = await res.text();
  assert.equal(res.status, 200, `${model}: ${text}`);
  return { res, json: JSON.parse(text) };
}
const chatCalls = () => router.callsTo("/v1/chat/completions", "POST");
const modelsCalls = (r) => r.callsTo("/v1/models", "GET").length;

/** `/v1/usage` once nothing is held and, if `want` is given, `used` has reached it. */
async function settled(g, key, want) {
  let last;
  await eventually(async () => {
    last = await usage(g, key);
    return last.credits?.reserved_micro_usd === 0 && (want === undefined || last.credits.used_micro_usd === want);
  }, 5000);
  return last;
}

/** The same from the admin view, which does not take from the key's own throttle. */
async function settledAdmin(g, id, want) {
  let last;
  await eventually(async () => {
    last = (await admin(g, "GET", `/admin/keys/${id}`)).json.usage;
    return last?.credits?.reserved_micro_usd === 0 && (want === undefined || last.credits.used_micro_usd === want);
  }, 5000);
  return last;
}

const ROW = ["model", "provider", "requests", "prompt_tokens", "completion_tokens", "cost_micro_usd"];
/** A `by_model` list as comparable rows (the contract's fields, in a stable order). */
const rows = (list) =>
  Array.isArray(list)
    ? list.map((r) => Object.fromEntries(ROW.map((k) => [k, r[k]]))).sort((a, b) => `${a.model}|${a.provider}`.localeCompare(`${b.model}|${b.provider}`))
    : list;
const row = (model, provider, requests, prompt_tokens, completion_tokens, cost_micro_usd) => ({ model, provider, requests, prompt_tokens, completion_tokens, cost_micro_usd });

/** The first number named `name` anywhere in `obj`. */
function findNumber(obj, name) {
  if (obj === null || typeof obj !== "object") return undefined;
  if (typeof obj[name] === "number") return obj[name];
  for (const v of Object.values(obj)) {
    const found = findNumber(v, name);
    if (found !== undefined) return found;
  }
  return undefined;
}

async function errorOf(res) {
  const text = await res.text();
  try {
    return JSON.parse(text).error ?? { raw: text };
  } catch {
    return { raw: text };
  }
}

// ---------------------------------------------------------------------------------------
// 1. The live price book

test("the price book is read from upstream /v1/models once, kept, refreshed by the admin and by the cron", async () => {
  const r = await startRouter(); // its own router: its /v1/models calls are this gateway's alone
  const g = await startGateway({ UPSTREAM_URL: r.url });
  try {
    const k = await newKey(g, { plan: "pro", rate_limit: FAST });
    assert.equal(modelsCalls(r), 0, "not read before a call needs a price");
    for (let i = 0; i < 10; i++) await served(g, k.key, "acme/chat-1");
    assert.equal(modelsCalls(r), 1, "ten calls, one read of /v1/models");

    const unauthorised = await fetch(`${g.url}/admin/prices`);
    assert.equal(unauthorised.status, 401);
    await unauthorised.arrayBuffer();

    const book = await admin(g, "GET", "/admin/prices");
    assert.equal(book.status, 200, JSON.stringify(book.json));
    assert.equal(modelsCalls(r), 1, "reading the book does not refetch it");
    assert.equal(typeof book.json.fetched_at, "string");
    assert.match(book.json.fetched_at, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/);
    assert.ok(Math.abs(Date.parse(book.json.fetched_at) - Date.now()) < 60_000, `fetched_at ${book.json.fetched_at}`);
    const entry = (m, p) => {
      const e = book.json.models?.[m]?.[p];
      return e && { live: e.live, input: e.input, output: e.output };
    };
    assert.deepEqual(Object.keys(book.json.models ?? {}).sort(), ["acme/broke", "acme/chat-1", "acme/cheap-1", "acme/embed-1"]);
    assert.deepEqual(Object.keys(book.json.models["acme/chat-1"]).sort(), ["groq", "nebius", "sambanova", "together"]);
    assert.deepEqual(entry("acme/chat-1", "together"), { live: true, input: 1, output: 2 });
    assert.deepEqual(entry("acme/chat-1", "groq"), { live: true, input: 0.5, output: 1 });
    assert.deepEqual(entry("acme/chat-1", "nebius"), { live: false, input: 10, output: 10 });
    assert.deepEqual(entry("acme/chat-1", "sambanova"), { live: true, input: null, output: null });
    assert.deepEqual(entry("acme/cheap-1", "groq"), { live: true, input: 0.1, output: 0.1 });
    assert.deepEqual(entry("acme/broke", "together"), { live: true, input: 1, output: 2 });

    const refreshed = await admin(g, "POST", "/admin/prices/refresh");
    assert.equal(refreshed.status, 200, JSON.stringify(refreshed.json));
    assert.equal(modelsCalls(r), 2, "refresh reads /v1/models again, now");
    assert.deepEqual(refreshed.json.models, book.json.models, "the same shape");
    assert.ok(Date.parse(refreshed.json.fetched_at) >= Date.parse(book.json.fetched_at));

    const worker = await g.mf.getWorker();
    const ran = await worker.scheduled({ cron: "*/30 * * * *" });
    assert.equal(ran.outcome, "ok", `the scheduled handler ran: ${JSON.stringify(ran)}`);
    assert.ok(await eventually(() => modelsCalls(r) === 3), `the scheduled handler reads /v1/models (${modelsCalls(r)} reads)`);

    for (let i = 0; i < 3; i++) await served(g, k.key, "acme/chat-1");
    assert.equal(modelsCalls(r), 3, "calls after a refresh use the refreshed book");
  } finally {
    await g.stop();
    await r.close();
  }
});

test("a price book older than PRICE_BOOK_TTL_SECONDS is read again", async () => {
  const r2 = await startRouter();
  const g2 = await startGateway({ UPSTREAM_URL: r2.url, PRICE_BOOK_TTL_SECONDS: "1" });
  try {
    const k = await newKey(g2, { plan: "pro", rate_limit: FAST });
    await served(g2, k.key, "acme/chat-1");
    await served(g2, k.key, "acme/chat-1");
    assert.equal(modelsCalls(r2), 1, "fresh: read once");
    await sleep(1500);
    await served(g2, k.key, "acme/chat-1");
    assert.ok(await eventually(() => modelsCalls(r2) === 2), `stale after 1 s: read again (${modelsCalls(r2)} reads)`);
  } finally {
    await g2.stop();
    await r2.close();
  }
});

test("a call pinned to a provider is priced at that provider's live price", async () => {
  router.reset();
  const k = await newKey(gw, { plan: "pro", rate_limit: FAST });
  const res = await chat(gw, k.key, ask("acme/chat-1:together"));
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("x-inference-provider"), "together");
  await res.json();
  // together: $1 / $2 per 1M -> 1000 + 1000
  const u = await settled(gw, k.key, 2000);
  assert.equal(u.credits.used_micro_usd, 2000);
  assert.deepEqual(rows(u.by_model), [row("acme/chat-1", "together", 1, 1000, 500, 2000)]);
});

test("unpinned and policy-suffixed calls settle at the price of the provider that served them", async () => {
  router.reset();
  const k = await newKey(gw, { plan: "pro", rate_limit: FAST });
  const call = async (model) => {
    const res = await chat(gw, k.key, ask(model));
    assert.equal(res.status, 200, model);
    const out = await res.json();
    assert.equal(out.model, model, "the model as sent is what upstream answered for");
    return res;
  };
  // groq served: $0.50 / $1 per 1M -> 500 + 500
  assert.equal((await call("acme/chat-1")).headers.get("x-inference-provider"), "groq");
  assert.equal((await settled(gw, k.key, 1000)).credits.used_micro_usd, 1000);
  await call("acme/chat-1:cheapest");
  const u = await settled(gw, k.key, 2000);
  assert.equal(u.credits.used_micro_usd, 2000);
  assert.deepEqual(rows(u.by_model), [row("acme/chat-1", "groq", 2, 2000, 1000, 2000)], "suffix left off; the provider that served");

  router.state.provider = "together"; // together served: $1 / $2 -> 2000
  assert.equal((await call("acme/chat-1:fastest")).headers.get("x-inference-provider"), "together");
  assert.equal((await settled(gw, k.key, 4000)).credits.used_micro_usd, 4000);

  // upstream did not say who served: settled at the reserve price, the highest live price per
  // side: input max(1, 0.5, "*" 1) = $1, output max(2, 1, "*" 3 for unpriced sambanova) = $3
  router.state.provider = null;
  const unnamed = await call("acme/chat-1:preferred");
  assert.equal(unnamed.headers.get("x-inference-provider"), null);
  const after = await settled(gw, k.key, 6500);
  assert.equal(after.credits.used_micro_usd, 6500, "1000 x $1 + 500 x $3 = 2500 more");
});

test("the reserve of an unpinned call is the highest live price: the output bound sent upstream shows it", async () => {
  router.reset();
  const sent = async (model) => {
    const k = await newKey(gw, { plan: "free", monthly_credit_micro_usd: 3000 });
    const before = chatCalls().length;
    const res = await chat(gw, k.key, { model, max_tokens: 100000, messages: [{ role: "user", content: "hi" }] });
    assert.equal(res.status, 200, `${model}: ${await res.clone().text()}`);
    await res.json();
    const calls = chatCalls();
    assert.equal(calls.length, before + 1);
    return calls.at(-1).json.max_tokens;
  };
  const unpinned = await sent("acme/chat-1");
  const pinned = await sent("acme/chat-1:groq");
  assert.ok(Number.isInteger(unpinned) && Number.isInteger(pinned), `max_tokens sent: ${unpinned}, ${pinned}`);
  assert.ok(pinned < 100000, `the credit bounds the pinned call too (${pinned})`);
  assert.ok(unpinned < pinned, `unpinned (output $3) ${unpinned} < pinned to groq (output $1) ${pinned}`);
  const ratio = pinned / unpinned;
  assert.ok(ratio > 2 && ratio < 4, `pinned / unpinned = ${ratio}, about 3`);
});

test("PRICES overrides the live price book", async () => {
  router.reset();
  const g = await startGateway({ UPSTREAM_URL: router.url, PRICES: JSON.stringify({ "*": { input: 1, output: 3 }, "acme/chat-1:groq": { input: 4, output: 4 } }) });
  try {
    const k = await newKey(g, { plan: "pro", rate_limit: FAST });
    await served(g, k.key, "acme/chat-1:groq");
    assert.equal((await settled(g, k.key, 6000)).credits.used_micro_usd, 6000, "1000 x $4 + 500 x $4");
    await served(g, k.key, "acme/chat-1:together");
    assert.equal((await settled(g, k.key, 8000)).credits.used_micro_usd, 8000, "together is not overridden: its live $1 / $2");
    const unpinned = await chat(g, k.key, ask("acme/chat-1"));
    assert.equal(unpinned.status, 200);
    assert.equal(unpinned.headers.get("x-inference-provider"), "groq");
    assert.equal((await settled(g, k.key, 14000)).credits.used_micro_usd, 14000, "served by groq: groq's price is the override");
  } finally {
    await g.stop();
  }
});

test("usage by model: the caller's own in /v1/usage, the key's in the admin view, the org's summed", async () => {
  router.reset();
  const org = await admin(gw, "POST", "/admin/orgs", { id: "router-usage-org", plan: "team", seats: 2, bill_to: "router-usage-org" });
  assert.equal(org.status, 201, JSON.stringify(org.json));
  const a = await newKey(gw, { org: "router-usage-org", name: "a", rate_limit: FAST });
  const b = await newKey(gw, { org: "router-usage-org", name: "b", rate_limit: FAST });
  await served(gw, a.key, "acme/chat-1:together"); // 2000
  await served(gw, b.key, "acme/chat-1:groq"); // 1000
  await served(gw, b.key, "acme/cheap-1"); // groq $0.10 / $0.10: 100 + 50
  await served(gw, b.key, "acme/cheap-1:groq"); // 150
  const ub = await settled(gw, b.key, 3300); // the org's pool: all four calls
  assert.equal(ub.credits.used_micro_usd, 3300);
  assert.deepEqual(rows(ub.by_model), [row("acme/chat-1", "groq", 1, 1000, 500, 1000), row("acme/cheap-1", "groq", 2, 2000, 1000, 300)], "b's own calls only");
  assert.deepEqual(rows((await usage(gw, a.key)).by_model), [row("acme/chat-1", "together", 1, 1000, 500, 2000)]);
  const ka = await admin(gw, "GET", `/admin/keys/${a.id}`);
  assert.deepEqual(rows(ka.json.usage?.by_model), [row("acme/chat-1", "together", 1, 1000, 500, 2000)]);
  const kb = await admin(gw, "GET", `/admin/keys/${b.id}`);
  assert.deepEqual(rows(kb.json.usage?.by_model), [row("acme/chat-1", "groq", 1, 1000, 500, 1000), row("acme/cheap-1", "groq", 2, 2000, 1000, 300)]);
  const o = await admin(gw, "GET", "/admin/orgs/router-usage-org");
  assert.equal(o.status, 200);
  assert.deepEqual(rows(o.json.usage?.by_model), [
    row("acme/chat-1", "groq", 1, 1000, 500, 1000),
    row("acme/chat-1", "together", 1, 1000, 500, 2000),
    row("acme/cheap-1", "groq", 2, 2000, 1000, 300),
  ]);
});

// ---------------------------------------------------------------------------------------
// 2. Suffixes, x-inference-provider, byok on /v1

test("model suffixes reach upstream unchanged and x-inference-provider comes back to the caller", async () => {
  router.reset();
  const k = await newKey(gw, { plan: "pro", rate_limit: FAST });
  for (const [model, provider] of [
    ["acme/chat-1:groq", "groq"],
    ["acme/chat-1:together", "together"],
    ["acme/chat-1:fastest", "groq"],
    ["acme/chat-1:cheapest", "groq"],
    ["acme/chat-1:preferred", "groq"],
  ]) {
    const res = await chat(gw, k.key, ask(model));
    assert.equal(res.status, 200, model);
    assert.equal(res.headers.get("x-inference-provider"), provider, model);
    await res.json();
    assert.equal(chatCalls().at(-1).json.model, model, `${model} reached upstream unchanged`);
  }
  const stream = await chat(gw, k.key, ask("acme/chat-1:groq", { stream: true }));
  assert.equal(stream.status, 200);
  assert.equal(stream.headers.get("x-inference-provider"), "groq", "on a stream too");
  assert.match(await stream.text(), /data: \[DONE\]/);
  assert.equal(chatCalls().at(-1).json.model, "acme/chat-1:groq");
});

test("byok on /v1: a model pinned to a provider the key holds goes to that provider with its key, suffix removed", async () => {
  router.reset();
  const k = await newKey(gw, { plan: "byok", provider_key: { together: PROVIDER_SECRET } });
  const res = await chat(gw, k.key, ask("acme/chat-1:together"));
  assert.equal(res.status, 200, await res.clone().text());
  await res.json();
  const calls = router.callsTo("/provider/together/v1/chat/completions", "POST");
  assert.equal(calls.length, 1, `went to the provider's own API (router saw ${router.calls.map((c) => c.path)})`);
  assert.equal(calls[0].headers.authorization, `Bearer ${PROVIDER_SECRET}`);
  assert.equal(calls[0].json.model, "acme/chat-1", "the provider does not know the router's suffix");
  assert.equal(chatCalls().length, 0, "not through the router");
  assert.ok(!calls.some((c) => JSON.stringify(c.headers).includes(HF_TOKEN)), "HF_TOKEN never sent to the provider");
  const u = await settled(gw, k.key);
  assert.equal(u.credits.used_micro_usd, 0, "HF credits untouched");

  const unpinned = await chat(gw, k.key, ask("acme/chat-1"));
  assert.equal(unpinned.status, 400);
  assert.equal((await errorOf(unpinned)).code, "invalid_request");
  assert.equal(router.calls.filter((c) => c.method === "POST").length, 1, "the unpinned call went nowhere");
});

// ---------------------------------------------------------------------------------------
// 3. Jobs and predictions

const falSubmit = (g, key, body = { prompt: "a cat" }) => post(g, key, FAL_SUBMIT, body);
const statusPath = (job) => `/fal-ai${new URL(job.response_url).pathname}/status?_subdomain=queue`;
const resultPath = (job) => `/fal-ai${new URL(job.response_url).pathname}?_subdomain=queue`;

/** Polls the way huggingface_hub does: every 0.5 s until COMPLETED. */
async function pollUntilDone(g, key, path, max = 20) {
  const statuses = [];
  for (let i = 0; i < max; i++) {
    await sleep(500);
    const res = await get(g, key, path);
    const text = await res.text();
    assert.equal(res.status, 200, `poll ${i + 1}: ${res.status} ${text}`);
    statuses.push(JSON.parse(text).status);
    if (statuses.at(-1) === "COMPLETED") break;
  }
  return statuses;
}

test("a fal-ai queued job: charged once at submit, polled free and past the key's rate limit", async () => {
  router.reset();
  router.state.falPollsToComplete = 5;
  const k = await newKey(gw, { plan: "free", rate_limit: { rpm: 6, burst: 2 } });
  const sub = await falSubmit(gw, k.key);
  assert.equal(sub.status, 200, await sub.clone().text());
  const job = await sub.json();
  assert.deepEqual(job, router.state.jobs.get(job.request_id)?.submitted, "the queue's answer passed through");
  assert.equal(router.callsTo("/fal-ai/fal-ai/flux/dev", "POST")[0]?.path, FAL_SUBMIT);

  const statuses = await pollUntilDone(gw, k.key, statusPath(job));
  assert.deepEqual(statuses, ["IN_QUEUE", "IN_PROGRESS", "IN_PROGRESS", "IN_PROGRESS", "COMPLETED"]);
  const result = await get(gw, k.key, resultPath(job));
  assert.equal(result.status, 200, "six polls after a submit on a key allowed 2 at once and 6 a minute");
  assert.deepEqual(await result.json(), FAL_IMAGES);

  const id = job.request_id;
  assert.equal(router.calls.filter((c) => c.path === `/fal-ai/fal-ai/flux/requests/${id}/status?_subdomain=queue`).length, 5);
  assert.equal(router.calls.filter((c) => c.path === `/fal-ai/fal-ai/flux/requests/${id}?_subdomain=queue`).length, 1);
  for (const c of router.callsTo("/fal-ai/*")) assert.equal(c.headers.authorization, `Bearer ${HF_TOKEN}`, c.path);

  const u = await settledAdmin(gw, k.id, 20000);
  assert.equal(u.credits.used_micro_usd, 20000, "$0.02 once, for the whole job");
});

test("the prefix-less poll some clients send off the router host reaches the path recorded at submit", async () => {
  router.reset();
  const k = await newKey(gw, { plan: "pro", rate_limit: FAST });
  const sub = await falSubmit(gw, k.key);
  assert.equal(sub.status, 200);
  const job = await sub.json();
  const id = job.request_id;
  const statuses = await pollUntilDone(gw, k.key, `/fal-ai/flux/requests/${id}/status?_subdomain=queue`);
  assert.equal(statuses.at(-1), "COMPLETED");
  assert.equal(router.calls.filter((c) => c.path === `/fal-ai/fal-ai/flux/requests/${id}/status?_subdomain=queue`).length, statuses.length);
  const result = await get(gw, k.key, `/fal-ai/flux/requests/${id}?_subdomain=queue`);
  assert.equal(result.status, 200);
  assert.deepEqual(await result.json(), FAL_IMAGES);
  assert.equal(router.calls.filter((c) => c.path === `/fal-ai/fal-ai/flux/requests/${id}?_subdomain=queue`).length, 1);
  assert.equal((await settled(gw, k.key, 20000)).credits.used_micro_usd, 20000);
});

test("a job is its submitter's: another key, even in the same org or plan, gets 404 and upstream never sees it", async () => {
  router.reset();
  const org = await admin(gw, "POST", "/admin/orgs", { id: "router-jobs-org", plan: "team", seats: 1, bill_to: "router-jobs-org" });
  assert.equal(org.status, 201, JSON.stringify(org.json));
  const owner = await newKey(gw, { org: "router-jobs-org", name: "owner", rate_limit: FAST });
  const mate = await newKey(gw, { org: "router-jobs-org", name: "org mate", rate_limit: FAST });
  const proOwner = await newKey(gw, { plan: "pro", name: "pro owner", rate_limit: FAST });
  const proOther = await newKey(gw, { plan: "pro", name: "another pro", rate_limit: FAST });
  for (const [submitter, others] of [
    [owner, [mate, proOther]],
    [proOwner, [proOther, mate]],
  ]) {
    const sub = await falSubmit(gw, submitter.key);
    assert.equal(sub.status, 200);
    const job = await sub.json();
    const id = job.request_id;
    for (const other of others) {
      for (const path of [statusPath(job), resultPath(job), `/fal-ai/flux/requests/${id}/status?_subdomain=queue`]) {
        const res = await get(gw, other.key, path);
        assert.equal(res.status, 404, `${other.name} polling ${submitter.name}'s job: ${path}`);
        assert.equal((await errorOf(res)).code, "not_found");
      }
    }
    assert.equal(router.calls.filter((c) => c.path.includes(`/requests/${id}`)).length, 0, "no foreign poll reached upstream");
    const own = await get(gw, submitter.key, statusPath(job));
    assert.equal(own.status, 200, "its submitter still polls it");
    assert.equal((await own.json()).status, "IN_QUEUE");
  }
  const unknown = await get(gw, owner.key, "/fal-ai/fal-ai/flux/requests/00000000-0000-4000-8000-000000000000/status?_subdomain=queue");
  assert.equal(unknown.status, 404);
  await unknown.arrayBuffer();
});

test("a submit the queue refuses is passed through and costs nothing", async () => {
  router.reset();
  const k = await newKey(gw, { plan: "pro", rate_limit: FAST });
  const res = await falSubmit(gw, k.key, { fail: true });
  assert.equal(res.status, 422);
  const body = await res.json();
  assert.equal(body.detail?.[0]?.msg, "field required", "the queue's own answer");
  const u = await settled(gw, k.key);
  assert.equal(u.credits.used_micro_usd, 0);
  assert.equal(router.callsTo("/fal-ai/*").length, 1);
});

// No price is ever guessed (SPEC section 3): a route nothing prices would otherwise be charged
// a made-up amount while upstream bills its own, a $5 video for a $0.10 charge.
test("without ROUTE_PRICES a fal-ai submit or a prediction is refused with route_not_priced and reaches no one", async () => {
  router.reset();
  const g = await startGateway({ UPSTREAM_URL: router.url });
  try {
    const k = await newKey(g, { plan: "pro", rate_limit: FAST });
    for (const [path, body] of [
      [FAL_SUBMIT, { prompt: "a cat" }],
      ["/replicate/v1/models/acme/img/predictions", { input: { prompt: "a cat" } }],
    ]) {
      const res = await post(g, k.key, path, body);
      assert.equal(res.status, 403, path);
      const err = await errorOf(res);
      assert.equal(err.code, "route_not_priced", path);
      assert.match(String(err.message), /ROUTE_PRICES/, "the message names the setting");
    }
    assert.equal(router.calls.filter((c) => c.method === "POST").length, 0, "nothing reached upstream");
    assert.equal((await settled(g, k.key)).credits.used_micro_usd, 0);
  } finally {
    await g.stop();
  }
});

test("a Replicate prediction: created with Prefer: wait, charged once, read back free by its owner only", async () => {
  router.reset();
  const k = await newKey(gw, { plan: "pro", rate_limit: FAST });
  const other = await newKey(gw, { plan: "pro", rate_limit: FAST });
  const res = await post(gw, k.key, "/replicate/v1/models/acme/img/predictions", { input: { prompt: "a cat" } }, { prefer: "wait" });
  assert.equal(res.status, 201, await res.clone().text());
  const p = await res.json();
  assert.equal(p.status, "succeeded", "Prefer: wait reached upstream");
  assert.deepEqual(p.output, REPLICATE_OUTPUT);
  assert.deepEqual(p, router.state.predictions.get(p.id), "passed through");
  assert.equal((await settled(gw, k.key, 10000)).credits.used_micro_usd, 10000);

  const read = await get(gw, k.key, `/replicate/v1/predictions/${p.id}`);
  assert.equal(read.status, 200);
  const again = await read.json();
  assert.equal(again.id, p.id);
  assert.equal(again.status, "succeeded");
  assert.equal(router.callsTo(`/replicate/v1/predictions/${p.id}`, "GET").length, 1);
  const foreign = await get(gw, other.key, `/replicate/v1/predictions/${p.id}`);
  assert.equal(foreign.status, 404);
  assert.equal((await errorOf(foreign)).code, "not_found");
  assert.equal(router.callsTo(`/replicate/v1/predictions/${p.id}`, "GET").length, 1, "the foreign read never reached upstream");
  await sleep(200);
  assert.equal((await settled(gw, k.key)).credits.used_micro_usd, 10000, "the read was free");
});

test("a time-billed route is charged for upstream time only, not for the gateway's wait before a retry", async () => {
  router.reset();
  router.state.embedDelayMs = 100;
  router.state.next.push({ match: "/hf-inference/models/acme/embed", status: 429, headers: { "retry-after-ms": "600" } });
  const k = await newKey(gw, { plan: "pro", rate_limit: FAST });
  const t0 = Date.now();
  const res = await post(gw, k.key, "/hf-inference/models/acme/embed", { inputs: "hello" });
  const took = Date.now() - t0;
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), EMBEDDING);
  assert.equal(router.callsTo("/hf-inference/models/acme/embed", "POST").length, 2, "the 429 was retried by the gateway");
  assert.ok(took >= 650, `the caller waited the 600 ms and the 100 ms (${took} ms)`);
  const used = (await settled(gw, k.key)).credits.used_micro_usd;
  assert.ok(used >= 100 && used < 500, `charged ${used} micro-USD at 1 per ms: the 100 ms upstream, not the 600 ms wait`);
});

// ---------------------------------------------------------------------------------------
// 4. The router's 402

test("upstream 402: passed on as upstream_payment_required, not retried, nothing held; health says so until it clears", async () => {
  router.reset();
  const k = await newKey(gw, { plan: "pro", rate_limit: FAST });
  const res = await chat(gw, k.key, ask("acme/broke"));
  assert.equal(res.status, 402);
  const err = await errorOf(res);
  assert.equal(err.code, "upstream_payment_required");
  assert.match(String(err.message), /credit/i);
  assert.equal(typeof err.type, "string");
  assert.equal(chatCalls().length, 1, "not retried");
  const u = await settled(gw, k.key);
  assert.equal(u.credits.reserved_micro_usd, 0);
  assert.equal(u.credits.used_micro_usd, 0);
  const stats = await admin(gw, "GET", "/admin/stats");
  assert.ok(findNumber(stats.json, "upstream_payment_required") >= 1, `stats: ${JSON.stringify(stats.json)}`);
  const health = async () => (await (await fetch(`${gw.url}/healthz`)).json()).upstream;
  assert.ok(await eventually(async () => (await health()) === "payment_required"), `healthz upstream: ${await health()}`);

  router.state.broke402 = false;
  const ok = await chat(gw, k.key, ask("acme/broke"));
  assert.equal(ok.status, 200);
  await ok.json();
  assert.ok(await eventually(async () => (await health()) === router.host), `healthz upstream after a success: ${await health()}`);
});

// ---------------------------------------------------------------------------------------
// 5. Dedicated endpoints

const epChat = (g, key, name) => post(g, key, `/endpoints/${name}/v1/chat/completions`, { model: "tgi", max_tokens: 100, messages: [{ role: "user", content: "hi" }] });
const epCalls = () => router.callsTo("/endpoint/mine/v1/chat/completions", "POST");

test("a dedicated endpoint: reached with its own token, for keys allowed it, priced by its usage", async () => {
  router.reset();
  const allowed = await newKey(gw, { plan: "pro", allowed_endpoints: ["mine"], rate_limit: FAST });
  const res = await epChat(gw, allowed.key, "mine");
  assert.equal(res.status, 200, await res.clone().text());
  assert.equal((await res.json()).choices[0].message.content, "fake reply");
  assert.equal(epCalls().length, 1);
  const seen = epCalls()[0];
  assert.equal(seen.headers.authorization, `Bearer ${ENDPOINT_SECRET}`);
  const headers = JSON.stringify(seen.headers);
  assert.ok(!headers.includes(HF_TOKEN), "never the HF token");
  assert.ok(!headers.includes(allowed.key), "never the gateway key");
  assert.equal(chatCalls().length, 0, "not through the router");
  // $2 / $4 per 1M: 100 x 2 + 50 x 4
  assert.equal((await settled(gw, allowed.key, 400)).credits.used_micro_usd, 400);

  const notAllowed = await newKey(gw, { plan: "pro", rate_limit: FAST });
  const refused = await epChat(gw, notAllowed.key, "mine");
  assert.equal(refused.status, 404);
  assert.equal((await errorOf(refused)).code, "not_found");
  const unknown = await epChat(gw, allowed.key, "nope");
  assert.equal(unknown.status, 404);
  assert.equal((await errorOf(unknown)).code, "not_found");
  assert.equal(epCalls().length, 1, "neither reached the endpoint");
  assert.equal(router.calls.filter((c) => c.method === "POST").length, 1, "nor anything else upstream");

  const patched = await admin(gw, "PATCH", `/admin/keys/${notAllowed.id}`, { allowed_endpoints: ["mine"] });
  assert.equal(patched.status, 200, JSON.stringify(patched.json));
  const opened = await epChat(gw, notAllowed.key, "mine");
  assert.equal(opened.status, 200);
  await opened.json();
  assert.equal(epCalls().length, 2);
  assert.equal((await settled(gw, notAllowed.key, 400)).credits.used_micro_usd, 400);
});

test("a dedicated endpoint priced per hour is charged for upstream time", async () => {
  router.reset();
  router.state.endpointDelayMs = 300;
  const k = await newKey(gw, { plan: "pro", allowed_endpoints: ["hourly"], rate_limit: FAST });
  const res = await epChat(gw, k.key, "hourly");
  assert.equal(res.status, 200, await res.clone().text());
  await res.json();
  assert.equal(epCalls()[0]?.headers.authorization, `Bearer ${ENDPOINT_SECRET}`);
  // $3.60 an hour = 1 micro-USD per ms
  const used = (await settled(gw, k.key)).credits.used_micro_usd;
  assert.ok(used >= 300 && used < 1300, `charged ${used} for about 300 ms`);
});

test("a dedicated endpoint's 429 cools that endpoint only", async () => {
  router.reset();
  router.state.next.push({ match: "/endpoint/mine/", status: 429, headers: { "retry-after": "30" } });
  const k = await newKey(gwShort, { plan: "pro", allowed_endpoints: ["mine"], rate_limit: FAST });
  const first = await epChat(gwShort, k.key, "mine");
  assert.equal(first.status, 429);
  assert.equal((await errorOf(first)).code, "upstream_rate_limited");
  assert.equal(first.headers.get("retry-after"), "30");
  assert.equal(epCalls().length, 1);
  const again = await epChat(gwShort, k.key, "mine");
  assert.equal(again.status, 429);
  assert.equal((await errorOf(again)).code, "upstream_rate_limited");
  const wait = Number(again.headers.get("retry-after"));
  assert.ok(wait > 25 && wait <= 30, `remaining wait ${wait}`);
  assert.equal(epCalls().length, 1, "answered at once, without reaching the endpoint");
  const routed = await chat(gwShort, k.key, ask("acme/chat-1:groq"));
  assert.equal(routed.status, 200, "the router's own route is not cooled by the endpoint's 429");
  await routed.json();
});

// ---------------------------------------------------------------------------------------
// 6. The upstream's RateLimit headers

test("a 200 with RateLimit r=0 cools its model until t: the next call is 429 without reaching upstream", async () => {
  router.reset();
  router.state.next.push({
    match: "/v1/chat/completions",
    status: 200,
    headers: { RateLimit: '"api";r=0;t=55', "RateLimit-Policy": '"fixed window";"api";q=500;w=300' },
  });
  const k = await newKey(gwShort, { plan: "pro", rate_limit: FAST });
  const first = await chat(gwShort, k.key, ask("acme/cheap-1"));
  assert.equal(first.status, 200, "the call that used the window up succeeds");
  await first.json();
  const next = await chat(gwShort, k.key, ask("acme/cheap-1"));
  assert.equal(next.status, 429);
  assert.equal((await errorOf(next)).code, "upstream_rate_limited");
  const wait = Number(next.headers.get("retry-after"));
  assert.ok(wait >= 50 && wait <= 55, `retry-after ${wait}`);
  assert.equal(chatCalls().length, 1, "the second call never reached upstream");
});

test("a 429 whose only wait is RateLimit's t: the caller's Retry-After is that t", async () => {
  router.reset();
  router.state.next.push({ match: "/v1/chat/completions", status: 429, headers: { RateLimit: '"api";r=0;t=7' } });
  const k = await newKey(gwShort, { plan: "pro", rate_limit: FAST });
  const res = await chat(gwShort, k.key, ask("acme/chat-1:together"));
  assert.equal(res.status, 429);
  assert.equal((await errorOf(res)).code, "upstream_rate_limited");
  assert.equal(res.headers.get("retry-after"), "7");
  assert.equal(chatCalls().length, 1, "7 s is longer than RETRY_MAX_WAIT_MS: not retried");
});
