// Throttles and upstream 429s end to end: the gateway's own GCRA, its retries of short
// upstream waits, 429s passed on with the upstream's wait, shared cooldowns, and faults.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startGateway, startUpstream, newKey, chat, usage, eventually, completion, requestLog } from "./harness.mjs";

let up, gw;

before(async () => {
  up = await startUpstream();
  // a hung upstream is given up on half a second after the deadline (METER_GRACE_MS), not 25 s
  gw = await startGateway({ UPSTREAM_URL: up.url, UPSTREAM_DEADLINE_MS: "3000", METER_GRACE_MS: "500" });
});
after(async () => {
  await gw?.stop();
  await up?.close();
});

const body = (model) => ({ model, max_tokens: 10, messages: [{ role: "user", content: "hi" }] });
const ok = (res, call) => {
  res.writeHead(200, { "content-type": "application/json" });
  res.end(JSON.stringify(completion(call.json?.model ?? "m")));
};

test("burst + 1 rapid calls: the last is refused with consistent Retry-After and RateLimit", async () => {
  up.reset();
  const k = await newKey(gw, { plan: "free", rate_limit: { rpm: 60, burst: 3 } });
  const results = [];
  for (let i = 0; i < 4; i++) results.push(await chat(gw, k.key, body("m/a")));
  assert.deepEqual(results.map((r) => r.status), [200, 200, 200, 429]);
  assert.equal(results[0].headers.get("ratelimit-policy"), '"rpm";q=60;w=60;burst=3');
  assert.deepEqual(results.slice(0, 3).map((r) => r.headers.get("ratelimit").split(";")[1]), ["r=2", "r=1", "r=0"]);
  const last = results[3];
  const err = await last.json();
  assert.equal(err.error.code, "rate_limit_exceeded");
  const ms = Number(last.headers.get("retry-after-ms"));
  assert.ok(ms > 0 && ms <= 1000, `retry-after-ms ${ms}`);
  assert.equal(last.headers.get("retry-after"), String(Math.ceil(ms / 1000)));
  assert.equal(last.headers.get("ratelimit"), `"rpm";r=0;t=${Math.ceil(ms / 1000)}`);
  assert.equal(last.headers.get("x-should-retry"), "true");
  assert.equal(up.calls.length, 3, "the throttled call never reached upstream");
  // and after the wait it passes
  await new Promise((r) => setTimeout(r, ms));
  assert.equal((await chat(gw, k.key, body("m/a"))).status, 200);
});

test("upstream 429 with Retry-After: 1, once: the caller gets 200 after about a second", async () => {
  up.reset();
  up.on((req, res, call, n) => {
    if (n === 1) {
      res.writeHead(429, { "retry-after": "1", "content-type": "application/json" });
      return res.end('{"error":"slow down"}');
    }
    ok(res, call);
  });
  const k = await newKey(gw, { plan: "pro" });
  const t0 = Date.now();
  const res = await chat(gw, k.key, body("m/retry"));
  const took = Date.now() - t0;
  assert.equal(res.status, 200);
  assert.equal(up.calls.length, 2);
  assert.ok(took >= 950 && took < 2500, `took ${took} ms`);
  // a leased call's settle reaches the object with its isolate's next report (a quarter
  // second later): until then nothing is reserved there and nothing used yet
  const u = await eventually(async () => {
    const u = await usage(gw, k.key);
    return u.credits.reserved_micro_usd === 0 && u.credits.used_micro_usd > 0 && u;
  });
  assert.ok(u && u.credits.used_micro_usd > 0, "the successful retry is charged once");
});

test("upstream 503 with retry-after-ms is retried the same way", async () => {
  up.reset();
  up.on((req, res, call, n) => {
    if (n === 1) {
      res.writeHead(503, { "retry-after-ms": "200" });
      return res.end("busy");
    }
    ok(res, call);
  });
  const k = await newKey(gw, { plan: "pro" });
  const res = await chat(gw, k.key, body("m/busy"));
  assert.equal(res.status, 200);
  assert.equal(up.calls.length, 2);
});

test("upstream 429 with Retry-After: 30: the caller gets it, and the route cools down for every caller of that token", async () => {
  up.reset();
  up.on((req, res, call) => {
    if (call.json?.model === "m/hot") {
      res.writeHead(429, { "retry-after": "30", "content-type": "application/json" });
      return res.end('{"error":"provider says wait"}');
    }
    ok(res, call);
  });
  const k = await newKey(gw, { plan: "pro" });
  const other = await newKey(gw, { plan: "free" });
  const first = await chat(gw, k.key, body("m/hot"));
  assert.equal(first.status, 429);
  assert.equal((await first.json()).error.code, "upstream_rate_limited");
  assert.equal(first.headers.get("retry-after"), "30");
  assert.equal(first.headers.get("retry-after-ms"), "30000");
  assert.equal(up.calls.length, 1, "a 30 s wait is not retried by the gateway");
  for (const key of [k.key, other.key]) {
    const again = await chat(gw, key, body("m/hot"));
    assert.equal(again.status, 429);
    assert.equal((await again.json()).error.code, "upstream_rate_limited");
    const wait = Number(again.headers.get("retry-after"));
    assert.ok(wait > 25 && wait <= 30, `remaining wait ${wait}`);
  }
  assert.equal(up.calls.length, 1, "calls during the cooldown never reached upstream");
  const elsewhere = await chat(gw, k.key, body("m/cool"));
  assert.equal(elsewhere.status, 200, "another model still works");
  // the cooldown lives in a Durable Object, not only in this isolate's memory
  const stub = (await gw.mf.getDurableObjectNamespace("COOLDOWNS")).get((await gw.mf.getDurableObjectNamespace("COOLDOWNS")).idFromName("hf:|auto/m/hot"));
  const until = await (await stub.fetch("https://object.internal/", { method: "POST", body: JSON.stringify("read") })).json();
  assert.ok(until > Date.now() + 25_000);
  // a leased call's settle reaches the object with its isolate's next report (a quarter
  // second later): until then nothing is reserved there and nothing used yet
  const u = await eventually(async () => {
    const u = await usage(gw, k.key);
    return u.credits.reserved_micro_usd === 0 && u.credits.used_micro_usd > 0 && u;
  });
  assert.ok(u && u.credits.used_micro_usd > 0, "only the successful call was charged");
});

test("an upstream 429 without any wait header: backoff with jitter, then 429 with the computed wait", async () => {
  up.reset();
  up.on((req, res) => {
    res.writeHead(429);
    res.end();
  });
  const k = await newKey(gw, { plan: "pro" });
  const res = await chat(gw, k.key, body("m/nowait"));
  assert.equal(res.status, 429);
  assert.equal((await res.json()).error.code, "upstream_rate_limited");
  assert.ok(up.calls.length >= 1 && up.calls.length <= 3, `upstream saw ${up.calls.length}`);
  assert.ok(res.headers.get("retry-after") !== null);
});

test("the openai SDK waits the gateway's Retry-After before its own retry", async () => {
  up.reset();
  const k = await newKey(gw, { plan: "free", rate_limit: { rpm: 60, burst: 1 } });
  const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: k.key, maxRetries: 2 });
  await client.chat.completions.create(body("m/sdk"));
  const t0 = Date.now();
  const out = await client.chat.completions.create(body("m/sdk"));
  const took = Date.now() - t0;
  assert.equal(out.choices[0].message.content, "fake reply");
  assert.ok(took >= 800, `the SDK retried after ${took} ms, not at once`);
  assert.equal(up.calls.length, 2, "the throttled attempt never reached upstream");
});

// A hang is not a refusal: the request reached upstream, which may be generating and billing,
// so the timeout is charged the reservation in full, as unmetered (SPEC sections 3 and 5).
// Only a call upstream never received, or answered non-2xx, costs nothing.
test("upstream hangs and refused connections: 504 charged in full as unmetered, 502 free", async () => {
  up.reset();
  up.on(() => {}); // never answers
  // polled for its usage while the hung call settles: a rate that does not refuse the polls
  const k = await newKey(gw, { plan: "free", rate_limit: { rpm: 6000, burst: 200 } });
  const t0 = Date.now();
  const hung = await chat(gw, k.key, body("m/hang"));
  assert.equal(hung.status, 504);
  assert.equal((await hung.json()).error.code, "upstream_timeout");
  assert.ok(Date.now() - t0 < 6000);
  const dead = await startGateway({ UPSTREAM_URL: "http://127.0.0.1:9" });
  try {
    const k2 = await newKey(dead, { plan: "free" });
    const res = await chat(dead, k2.key, body("m/dead"));
    assert.equal(res.status, 502);
    assert.equal((await res.json()).error.code, "upstream_error");
    const u = await eventually(async () => {
      const u = await usage(dead, k2.key);
      return u.credits.reserved_micro_usd === 0 && u;
    });
    assert.equal(u.credits.used_micro_usd, 0);
  } finally {
    await dead.stop();
  }
  const u = await eventually(async () => {
    const u = await usage(gw, k.key);
    return u.credits.reserved_micro_usd === 0 && u;
  }, 10000);
  assert.ok(u, "the hung call's hold was settled");
  const [record] = (await requestLog(gw, "/v1/usage/requests", { bearer: k.key })).records;
  assert.ok(record?.reserved_micro_usd > 0, JSON.stringify(record));
  assert.equal(u.credits.used_micro_usd, record.reserved_micro_usd, "the whole reservation");
  assert.equal(u.credits.unmetered_micro_usd, record.reserved_micro_usd);
  assert.equal(record.unmetered_micro_usd, record.reserved_micro_usd);
});
