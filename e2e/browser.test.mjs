// Browser frontends in a real headless Chromium: CORS across origins with a browser key,
// a 429's Retry-After readable from page script, and the playground and admin pages at work.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { mkdirSync } from "node:fs";
import { ADMIN, startGateway, newKey, launchChromium } from "./harness.mjs";

const ARTIFACTS = "e2e/artifacts";
let gw, browser, allowed, other;
const pending = [];

/** A static page server: one origin per port. */
async function pageServer() {
  const server = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end("<!doctype html><title>frontend</title><p>frontend</p>");
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { origin: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  gw = await startGateway({ UPSTREAM_URL: "sandbox", SANDBOX_CHUNK_DELAY_MS: "15" });
  allowed = await pageServer();
  other = await pageServer();
  // what the browser receives from the gateway goes into the secret-hygiene transcript
  browser = await launchChromium(gw, pending);
});
after(async () => {
  await Promise.all(pending);
  await browser?.close();
  await gw?.stop();
  await allowed?.close();
  await other?.close();
});

// Runs in the page: a streamed chat completion through the gateway, chunk by chunk.
async function streamFromPage({ gateway, key }) {
  try {
    const res = await fetch(`${gateway}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json", "x-stainless-os": "browser" },
      body: JSON.stringify({ model: "meta-llama/Llama-3.1-8B-Instruct", stream: true, messages: [{ role: "user", content: "from a page" }] }),
    });
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let text = "", reads = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      reads++;
      for (const line of decoder.decode(value).split("\n")) {
        if (line.startsWith("data: {")) text += JSON.parse(line.slice(6)).choices?.[0]?.delta?.content ?? "";
      }
    }
    return { status: res.status, text, reads, requestId: res.headers.get("x-request-id") };
  } catch (e) {
    return { blocked: String(e) };
  }
}

test("a page on an allowed origin streams a completion with a browser key", async () => {
  const key = await newKey(gw, { plan: "free", name: "browser", allowed_origins: [allowed.origin] });
  const page = await browser.newPage();
  await page.goto(allowed.origin);
  const out = await page.evaluate(streamFromPage, { gateway: gw.url, key: key.key });
  assert.equal(out.status, 200);
  assert.equal(out.text, "Hello from the hf-gate sandbox. You said: from a page");
  assert.ok(out.reads > 1, `arrived in ${out.reads} reads`);
  assert.ok(out.requestId, "x-request-id is exposed to page script");
  await page.close();
});

test("the same key from another origin fails, in the browser and on the wire", async () => {
  const key = await newKey(gw, { plan: "free", name: "pinned", allowed_origins: [allowed.origin] });
  const page = await browser.newPage();
  await page.goto(other.origin);
  const out = await page.evaluate(streamFromPage, { gateway: gw.url, key: key.key });
  assert.match(out.blocked ?? "", /TypeError|Failed to fetch/);
  await page.close();
  const res = await fetch(`${gw.url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key.key}`, origin: other.origin, "content-type": "application/json" },
    body: JSON.stringify({ model: "m", messages: [] }),
  });
  assert.equal(res.status, 403);
  assert.equal((await res.json()).error.code, "origin_not_allowed");
  assert.equal(res.headers.get("access-control-allow-origin"), null);
  const none = await fetch(`${gw.url}/v1/usage`, { headers: { authorization: `Bearer ${key.key}` } });
  assert.equal(none.status, 403, "a browser key with no Origin at all is refused too");
});

test("preflight answers allowed origins before authentication, with the SDKs' headers", async () => {
  const pre = await fetch(`${gw.url}/v1/chat/completions`, {
    method: "OPTIONS",
    headers: { origin: allowed.origin, "access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type, x-stainless-retry-count" },
  });
  assert.equal(pre.status, 204);
  assert.equal(pre.headers.get("access-control-allow-origin"), allowed.origin);
  const allowHeaders = pre.headers.get("access-control-allow-headers");
  for (const h of ["authorization", "content-type", "x-hf-bill-to", "user-agent", "x-stainless-retry-count"]) assert.ok(allowHeaders.includes(h), h);
  assert.ok(Number(pre.headers.get("access-control-max-age")) > 0);
  assert.match(pre.headers.get("vary"), /Origin/);
  const refused = await fetch(`${gw.url}/v1/chat/completions`, { method: "OPTIONS", headers: { origin: "https://evil.example", "access-control-request-method": "POST" } });
  assert.equal(refused.headers.get("access-control-allow-origin"), null);
});

test("a 429's Retry-After, retry-after-ms and RateLimit are readable from page script", async () => {
  const key = await newKey(gw, { plan: "free", name: "tight", allowed_origins: [allowed.origin], rate_limit: { rpm: 6, burst: 1 } });
  const page = await browser.newPage();
  await page.goto(allowed.origin);
  const out = await page.evaluate(async ({ gateway, key }) => {
    const call = () => fetch(`${gateway}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "meta-llama/Llama-3.1-8B-Instruct", messages: [{ role: "user", content: "x" }] }),
    });
    const first = await call();
    const second = await call();
    const body = await second.json();
    return {
      first: first.status, status: second.status, code: body.error.code,
      retryAfter: second.headers.get("retry-after"), retryAfterMs: second.headers.get("retry-after-ms"),
      rateLimit: second.headers.get("ratelimit"), policy: second.headers.get("ratelimit-policy"),
    };
  }, { gateway: gw.url, key: key.key });
  assert.equal(out.first, 200);
  assert.equal(out.status, 429);
  assert.equal(out.code, "rate_limit_exceeded");
  assert.equal(out.retryAfter, "10");
  assert.ok(Number(out.retryAfterMs) > 9000);
  assert.equal(out.rateLimit, '"rpm";r=0;t=10');
  assert.equal(out.policy, '"rpm";q=6;w=60;burst=1');
  await page.close();
});

/** Opens the playground and types the key in, as a person would (keys never travel in URLs). */
async function playground(key) {
  const page = await browser.newPage();
  await page.goto(`${gw.url}/`);
  await page.fill("#key", key);
  await page.press("#key", "Tab");
  return page;
}

test("the playground streams a reply and its usage meter moves", async () => {
  const key = await newKey(gw, { plan: "free", name: "playground", allowed_origins: [gw.url] });
  const page = await playground(key.key);
  await page.waitForFunction(() => document.getElementById("credit-text").dataset.used !== undefined);
  const before = Number(await page.getAttribute("#credit-text", "data-used"));
  assert.equal(before, 0);
  await page.fill("#prompt", "Hello from Chromium");
  await page.click("#send");
  await page.waitForSelector(".assistant[data-done=true]", { timeout: 10_000 });
  assert.equal(await page.textContent(".assistant"), "Hello from the hf-gate sandbox. You said: Hello from Chromium");
  await page.waitForFunction(() => Number(document.getElementById("credit-text").dataset.used) > 0, null, { timeout: 5_000 });
  const after = Number(await page.getAttribute("#credit-text", "data-used"));
  assert.ok(after > before, `usage moved from ${before} to ${after}`);
  assert.match(await page.textContent("#rate-text"), /of 10 requests available/);
  await page.screenshot({ path: `${ARTIFACTS}/playground.png` });
  await page.close();
});

test("the playground shows a countdown when a 429 arrives", async () => {
  const key = await newKey(gw, { plan: "free", name: "countdown", allowed_origins: [gw.url], rate_limit: { rpm: 2, burst: 3 } });
  // the page spends two when the key is typed in (/v1/models and /v1/usage, which is
  // throttled like any call), the first message the third
  const page = await playground(key.key);
  await page.fill("#prompt", "one");
  await page.click("#send");
  await page.waitForSelector(".assistant[data-done=true]");
  await page.fill("#prompt", "two");
  await page.evaluate(() => document.getElementById("ask").requestSubmit());
  await page.waitForFunction(() => /Retry in \d+ s/.test(document.getElementById("notice").textContent));
  assert.match(await page.textContent("#notice"), /Rate limited\. Retry in (29|30) s\./);
  assert.equal(await page.isDisabled("#send"), true);
  await page.screenshot({ path: `${ARTIFACTS}/playground-429.png` });
  await page.close();
});

test("the playground takes neither a key nor a gateway from its URL, and talks to its own origin only", async () => {
  const key = await newKey(gw, { plan: "free", name: "url-key", allowed_origins: [gw.url] });
  const evilHits = [];
  const evil = http.createServer((req, res) => {
    evilHits.push(`${req.method} ${req.url}`);
    res.writeHead(200, { "access-control-allow-origin": "*", "access-control-allow-headers": "*", "content-type": "application/json" });
    res.end("{}");
  });
  await new Promise((r) => evil.listen(0, "127.0.0.1", r));
  const evilUrl = `http://127.0.0.1:${evil.address().port}`;
  const page = await browser.newPage();
  const elsewhere = [];
  page.on("request", (r) => {
    if (!r.url().startsWith(gw.url)) elsewhere.push(r.url());
  });
  try {
    await page.goto(`${gw.url}/?key=${key.key}&gateway=${encodeURIComponent(evilUrl)}`);
    await page.waitForLoadState("networkidle");
    assert.equal(await page.inputValue("#key"), "", "the key in the URL was not filled in");
    assert.ok(!page.url().includes(key.key), "and was dropped from the address bar");
    // typed in, the key is used, against the page's own origin
    await page.fill("#key", key.key);
    await page.press("#key", "Tab");
    await page.fill("#prompt", "where do you go?");
    await page.click("#send");
    await page.waitForSelector(".assistant[data-done=true]", { timeout: 10_000 });
    await page.waitForLoadState("networkidle");
    assert.deepEqual(elsewhere, [], "the page asked no other host for anything");
    assert.deepEqual(evilHits, [], "the other gateway heard nothing");
  } finally {
    await page.close();
    await new Promise((r) => evil.close(r));
  }
});

test("the admin page lists keys with credit bars and revokes", async () => {
  const victim = await newKey(gw, { plan: "pro", name: "to-revoke" });
  const page = await browser.newPage();
  page.on("dialog", (d) => d.accept());
  await page.goto(`${gw.url}/admin`);
  await page.fill("#token", ADMIN);
  await page.click("#load");
  await page.waitForSelector("#keys tr");
  const names = await page.$$eval("#keys tr td:first-child", (tds) => tds.map((t) => t.textContent));
  assert.ok(names.includes("to-revoke") && names.includes("playground"));
  assert.ok((await page.$$("#keys .bar")).length >= names.length);
  const row = page.locator("#keys tr", { hasText: "to-revoke" });
  await row.locator("button").click();
  await page.waitForSelector("#keys tr.revoked");
  const res = await fetch(`${gw.url}/v1/usage`, { headers: { authorization: `Bearer ${victim.key}` } });
  assert.equal(res.status, 401);
  assert.equal(await page.evaluate(() => localStorage.length + sessionStorage.length), 0, "the admin token is kept in memory only");
  await page.screenshot({ path: `${ARTIFACTS}/admin.png`, fullPage: true });
  await page.close();
});
