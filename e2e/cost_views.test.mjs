// Cost views in a real headless Chromium: the admin page draws a key's and an org's request
// log (spend per day stacked by model, latency percentiles, error and 429 rates, the log as a
// filterable table, CSV), and the playground lists the caller's own last calls. Upstream is
// the router double, so calls have models, providers and prices; the page's totals are held
// to /v1/usage read over HTTP.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import {
  ADMIN, REQUEST_LOG_FIELDS, startGateway, admin, newKey, chat, usage, eventually, requestLog, parseCsv, launchChromium, pageErrors,
} from "./harness.mjs";
import { startRouter } from "./router_double.mjs";

const ARTIFACTS = "e2e/artifacts";
const ORG = "cost-org";
let router, gw, browser, key, orgKey;
const pending = [];

const ask = (model, extra = {}) => ({ model, max_tokens: 600, messages: [{ role: "user", content: `cost view: ${model}` }], ...extra });

// What the test makes through the gateway with the personal key, and what each should log:
// the model without its provider suffix, and the status the caller got.
const CALLS = [
  { body: ask("acme/chat-1:together"), model: "acme/chat-1", status: 200 },
  { body: ask("acme/chat-1:groq"), model: "acme/chat-1", status: 200 },
  { body: ask("acme/cheap-1"), model: "acme/cheap-1", status: 200 },
  { body: ask("acme/cheap-1", { stream: true }), model: "acme/cheap-1", status: 200 },
  { body: ask("acme/broke"), model: "acme/broke", status: 402 }, // the router's account is out of credits
  // the provider's 429 with a wait too long to retry: the caller gets it (and the route cools down,
  // so it comes last of the calls to that route)
  { body: ask("acme/chat-1:together"), model: "acme/chat-1", status: 429, upstream: { match: "/v1/chat/completions", status: 429, headers: { "retry-after": "60" } } },
];
const ORG_CALLS = [
  { body: ask("acme/cheap-1"), model: "acme/cheap-1", status: 200 },
  { body: ask("acme/chat-1:groq"), model: "acme/chat-1", status: 200 },
];

const sortedPairs = (xs) => xs.map((x) => `${x.model} ${x.status}`).sort();

async function make(k, calls) {
  for (const c of calls) {
    if (c.upstream) router.state.next.push(c.upstream);
    const res = await chat(gw, k.key, c.body);
    await res.text();
    assert.equal(res.status, c.status, `${c.body.model}: ${res.status}`);
  }
}

/**
 * A request log read over HTTP (with `bearer`: the admin token, or the key for its own log)
 * once `k`'s calls are settled and `count` records are in it.
 */
async function settledLog(path, bearer, k, count) {
  let log = await requestLog(gw, path, { bearer });
  // the pages read this API: when it is missing, say so and stop here
  assert.equal(log.status, 200, `GET ${path} (the request log the cost views read) answered ${log.status} ${JSON.stringify(log.error)}`);
  await eventually(async () => {
    const u = await usage(gw, k.key);
    log = await requestLog(gw, path, { bearer });
    return u.credits.reserved_micro_usd === 0 && log.records.length >= count;
  }, 10_000);
  return log.records;
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  router = await startRouter();
  gw = await startGateway({ UPSTREAM_URL: router.url });
  assert.equal((await admin(gw, "POST", "/admin/orgs", { id: ORG, plan: "team", seats: 1, bill_to: ORG })).status, 201);
  key = await newKey(gw, { plan: "pro", name: "cv-personal" });
  orgKey = await newKey(gw, { plan: "team", org: ORG, name: "cv-in-org" });
  await make(key, CALLS);
  await make(orgKey, ORG_CALLS);
  browser = await launchChromium(gw, pending);
});
after(async () => {
  await Promise.all(pending);
  await browser?.close();
  await gw?.stop();
  await router?.close();
});

/** Opens the admin page, logs in as a person would, and opens the cost view from a row. */
async function adminView(table, text) {
  const page = await browser.newPage();
  const errors = pageErrors(page);
  await page.goto(`${gw.url}/admin`);
  await page.fill("#token", ADMIN);
  await page.click("#load");
  await page.locator(`#${table} a`, { hasText: text }).click();
  await page.waitForFunction(() => ["ready", "error"].includes(document.getElementById("view").dataset.state), null, { timeout: 20_000 });
  const state = await page.getAttribute("#view", "data-state");
  assert.equal(state, "ready", `the cost view did not load: ${await page.textContent("#status")}`);
  return { page, errors };
}

const logRows = (page) => page.$$eval("#log tr", (trs) => trs.map((tr) => ({ model: tr.dataset.model, status: Number(tr.dataset.status), cost: Number(tr.dataset.cost) })));

/** Applies the log filters and waits for the table to be redrawn from what they match. */
async function filter(page, { model = "", status = "" }) {
  await page.selectOption("#f-model", model);
  await page.selectOption("#f-status", status);
  const asked = (r) => {
    const u = new URL(r.url());
    return u.pathname.endsWith("/requests") && (u.searchParams.get("model") ?? "") === model && (u.searchParams.get("status") ?? "") === status;
  };
  await Promise.all([page.waitForResponse(asked), page.click("#filters button[type=submit]")]);
  await page.waitForFunction(() => document.getElementById("log").dataset.state !== "loading");
  assert.equal(await page.getAttribute("#log", "data-state"), "ready", await page.textContent("#status"));
}

test("the admin page draws a key's calls: the log, totals equal to /v1/usage, a bar group per day, filters and CSV", async () => {
  const records = await settledLog(`/admin/keys/${key.id}/requests`, ADMIN, key, CALLS.length);
  assert.deepEqual(sortedPairs(records), sortedPairs(CALLS), "the API logged the calls the test made");
  const { page, errors } = await adminView("keys", "cv-personal");

  // the log table: one row per call, with its model and status
  assert.deepEqual(sortedPairs(await logRows(page)), sortedPairs(CALLS));
  assert.equal(await page.locator("#log tr.err").count(), 2, "the 402 and the 429 stand out");

  // the totals are the ledger's
  const u = await usage(gw, key.key);
  assert.ok(u.credits.used_micro_usd > 0);
  assert.equal(Number(await page.getAttribute("#t-cost", "data-micro")), u.credits.used_micro_usd, "the page's total is /v1/usage's used");
  assert.equal(Number(await page.getAttribute("#t-ledger", "data-micro")), u.credits.used_micro_usd);
  assert.equal(Number(await page.getAttribute("#t-requests", "data-count")), CALLS.length);
  assert.equal(Number(await page.getAttribute("#t-errors", "data-count")), 2);
  assert.equal(Number(await page.getAttribute("#t-429", "data-count")), 1);
  const p = JSON.parse(await page.getAttribute("#t-latency", "data-p"));
  assert.ok(p.every((x) => Number.isInteger(x) && x >= 0) && p[0] <= p[1] && p[1] <= p[2], `p50/p90/p99 ${p}`);

  // the chart: one stacked bar per day present in the log, its segments adding up to the total
  const days = [...new Set(records.map((r) => r.at.slice(0, 10)))].sort();
  const groups = await page.$$eval("#spend g.day", (gs) => gs.map((g) => ({ date: g.dataset.date, micro: Number(g.dataset.micro), segments: [...g.querySelectorAll("rect")].map((r) => r.dataset.model) })));
  assert.deepEqual(groups.map((g) => g.date).sort(), days);
  assert.equal(groups.reduce((s, g) => s + g.micro, 0), u.credits.used_micro_usd);
  for (const g of groups) assert.equal(new Set(g.segments).size, g.segments.length, "one segment per model in a day");
  assert.deepEqual(new Set(groups.flatMap((g) => g.segments)), new Set(records.map((r) => r.model)), "every model logged has its colour");

  // the by-model table is the ledger's by_model
  assert.equal(await page.locator("#by-model tr").count(), u.by_model.length);
  await page.screenshot({ path: `${ARTIFACTS}/admin-cost-view.png`, fullPage: true });

  // filters: by model, then by status class
  await filter(page, { model: "acme/chat-1" });
  const chat1 = await logRows(page);
  assert.deepEqual(sortedPairs(chat1), sortedPairs(CALLS.filter((c) => c.model === "acme/chat-1")));

  // the CSV of what the filter shows: the header in the contract's order, one row per record
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#csv")]);
  const csv = parseCsv(readFileSync(await download.path(), "utf8")).filter((r) => r.join("") !== "");
  assert.deepEqual(csv[0], REQUEST_LOG_FIELDS);
  assert.equal(csv.length - 1, chat1.length);
  const modelAt = REQUEST_LOG_FIELDS.indexOf("model");
  assert.ok(csv.slice(1).every((r) => r[modelAt] === "acme/chat-1"));

  await filter(page, { status: "4xx" });
  assert.deepEqual(sortedPairs(await logRows(page)), sortedPairs(CALLS.filter((c) => c.status >= 400)));

  assert.deepEqual(errors, [], "no console errors on the admin page");
  await page.close();
});

test("the admin page draws an org's calls, every key's, with the pooled total", async () => {
  const records = await settledLog(`/admin/orgs/${ORG}/requests`, ADMIN, orgKey, ORG_CALLS.length);
  assert.deepEqual(sortedPairs(records), sortedPairs(ORG_CALLS));
  const { page, errors } = await adminView("orgs", ORG);
  assert.deepEqual(sortedPairs(await logRows(page)), sortedPairs(ORG_CALLS));
  const keys = await page.$$eval("#log tr", (trs) => trs.map((tr) => tr.children[1].textContent));
  assert.deepEqual(new Set(keys), new Set([orgKey.id]), "an org's log says which key made each call");
  const u = await usage(gw, orgKey.key);
  assert.equal(u.credits.key_used_micro_usd, u.credits.used_micro_usd, "the org's one key spent all it spent");
  assert.equal(Number(await page.getAttribute("#t-cost", "data-micro")), u.credits.used_micro_usd);
  assert.equal(await page.locator("#spend g.day").count(), new Set(records.map((r) => r.at.slice(0, 10))).size);
  assert.deepEqual(errors, [], "no console errors on the admin page");
  await page.close();
});

test("the playground lists the caller's last calls and adds the one it just made", async () => {
  const own = await settledLog("/v1/usage/requests", key.key, key, CALLS.length);
  const page = await browser.newPage();
  const errors = pageErrors(page);
  await page.goto(`${gw.url}/`);
  await page.fill("#key", key.key);
  await page.press("#key", "Tab");
  // every call the test made is listed (the page's own read of /v1/models may be logged too)
  await page.waitForFunction((n) => document.querySelectorAll("#calls tbody tr").length >= n, own.length, { timeout: 10_000 });
  const rows = () => page.$$eval("#calls tbody tr", (trs) => trs.map((tr) => ({ model: tr.dataset.model, status: Number(tr.dataset.status), cost: Number(tr.dataset.cost) })));
  const shown = await rows();
  const unseen = sortedPairs(shown);
  for (const pair of sortedPairs(CALLS)) {
    assert.ok(unseen.includes(pair), `${pair} listed in ${JSON.stringify(shown)}`);
    unseen.splice(unseen.indexOf(pair), 1);
  }
  const usedBefore = (await usage(gw, key.key)).credits.used_micro_usd;

  await page.waitForSelector("#model option[value='acme/cheap-1']", { state: "attached" });
  await page.selectOption("#model", "acme/cheap-1");
  await page.fill("#prompt", "Hello from the cost views");
  await page.click("#send");
  await page.waitForSelector(".assistant[data-done=true]", { timeout: 10_000 });
  await page.waitForFunction((n) => document.querySelectorAll("#calls tbody tr").length > n, shown.length, { timeout: 10_000 });
  const [top] = await rows();
  assert.deepEqual([top.model, top.status], ["acme/cheap-1", 200], "the newest call is the one just made");
  const u = await eventually(async () => {
    const u = await usage(gw, key.key);
    return u.credits.reserved_micro_usd === 0 && u;
  });
  assert.ok(top.cost > 0);
  assert.equal(top.cost, u.credits.used_micro_usd - usedBefore, "its cost is what the ledger charged");
  await page.screenshot({ path: `${ARTIFACTS}/playground-calls.png` });
  assert.deepEqual(errors, [], "no console errors on the playground");
  await page.close();
});
