// Credits as a hard bound, end to end: a fake upstream that generates until the limit it is
// sent (in whichever limit field is largest), bills every byte of text and of object keys as a
// token, and counts what it receives. No body a caller can send gets billed past its reservation; overshoots are
// charged in full and recorded; holds settle or release exactly once; one credential's 429
// does not block the others.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, startUpstream, admin, newKey, chat, usage, eventually, sleep, HF_TOKEN } from "./harness.mjs";

// $1 per 1M tokens both ways: a token is a micro-USD, so costs read as token counts.
const PRICES = JSON.stringify({ "*": { input: 1.0, output: 1.0 } });
const FAST = { rpm: 60000, burst: 1000 };
const MEDIA = 1000;
const LIMITS = ["max_tokens", "max_completion_tokens", "max_output_tokens", "max_new_tokens"];

let up, gw;

/** The most a provider could bill for the body it received (worst-case tokenizer). */
function bill(body) {
  let media = 0;
  const text = (v) => {
    if (typeof v === "string") return Buffer.byteLength(v);
    if (Array.isArray(v)) return v.reduce((n, x) => n + text(x), 0);
    if (v && typeof v === "object") {
      // keys are text too: a template renders an object (tool-call arguments) with its keys
      const keys = Object.keys(v).reduce((n, k) => n + Buffer.byteLength(k), 0);
      if (v.type === "image_url") {
        media += 1;
        return keys + Buffer.byteLength("image_url");
      }
      return keys + Object.values(v).reduce((n, x) => n + text(x), 0);
    }
    return 0;
  };
  const messages = body.messages ?? [];
  const prompt = 64 + messages.length * 8 + text(messages) + media * MEDIA;
  const limits = LIMITS.filter((f) => f in body).map((f) => body[f]);
  // no limit at all: a provider would generate as long as it likes
  const limit = limits.length && limits.every((l) => Number.isInteger(l)) ? Math.max(...limits) : 1_000_000;
  const choices = Math.max(body.n ?? 1, body.best_of ?? 1);
  return { prompt_tokens: prompt, completion_tokens: limit * choices };
}

/** Generates to the limit: a completion (or stream) billed at the worst case of its body. */
async function generate(req, res, call, extra = {}) {
  const u = { ...bill(call.json), ...extra };
  if (call.json.stream) {
    if (!res.headersSent) res.writeHead(200, { "content-type": "text/event-stream" });
    const words = Math.min(u.completion_tokens, 20);
    for (let i = 0; i < words; i++) res.write(`data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: "w " } }] })}\n\n`);
    if (call.json.stream_options?.include_usage) res.write(`data: ${JSON.stringify({ choices: [], usage: u })}\n\n`);
    return res.end("data: [DONE]\n\n");
  }
  res.writeHead(200, { "content-type": "application/json" });
  res.end(JSON.stringify({ id: "x", object: "chat.completion", choices: [{ index: 0, message: { role: "assistant", content: "w" } }], usage: u }));
}

before(async () => {
  up = await startUpstream();
  gw = await startGateway({ UPSTREAM_URL: up.url, PRICES, MEDIA_PART_TOKENS: String(MEDIA) });
});
after(async () => {
  await gw?.stop();
  await up?.close();
});

const settled = (key) =>
  eventually(async () => {
    const u = await usage(gw, key);
    return u.credits.reserved_micro_usd === 0 && u.credits.used_micro_usd > 0 && u;
  }, 5000);

/** How often a key occurs in a raw JSON text at any depth. */
const occurrences = (raw, key) => raw.split(`"${key}"`).length - 1;

test("null bounds are absent: the body upstream carries one bound, the plan's, and streams ask for usage", async () => {
  up.reset();
  up.on(generate);
  const k = await newKey(gw, { plan: "pro", rate_limit: FAST });
  const res = await chat(gw, k.key, { model: "m/a", stream: true, stream_options: null, max_tokens: null, messages: [{ role: "user", content: "hi" }] });
  assert.equal(res.status, 200);
  await res.text();
  const raw = up.calls[0].raw.toString();
  assert.equal(occurrences(raw, "max_tokens"), 1, raw);
  assert.equal(up.calls[0].json.max_tokens, 1024, "the pro plan's default bound");
  assert.equal(up.calls[0].json.stream_options.include_usage, true);
  const u = await settled(k.key);
  const b = bill(up.calls[0].json);
  assert.equal(u.credits.used_micro_usd, b.prompt_tokens + b.completion_tokens);
  assert.equal(u.credits.overrun_micro_usd, 0, "the worst case was reserved: no overrun");
});

test("both bounds given: the smaller is written into both, so whichever upstream honours is within it", async () => {
  up.reset();
  up.on(generate);
  const k = await newKey(gw, { plan: "pro", rate_limit: FAST });
  const res = await chat(gw, k.key, { model: "m/a", max_tokens: 50, max_completion_tokens: 20, max_new_tokens: null, messages: [{ role: "user", content: "x" }] });
  assert.equal(res.status, 200);
  await res.json();
  const sent = up.calls[0].json;
  assert.deepEqual([sent.max_tokens, sent.max_completion_tokens, sent.max_new_tokens], [20, 20, 20]);
  const u = await settled(k.key);
  assert.equal(u.credits.overrun_micro_usd, 0);
});

test("n multiplies the bound; an absurd n, a duplicate key or a disguised one is a 400 that reaches no one", async () => {
  up.reset();
  up.on(generate);
  const k = await newKey(gw, { plan: "pro", rate_limit: FAST });
  const res = await chat(gw, k.key, { model: "m/a", n: 3, max_tokens: 10, messages: [{ role: "user", content: "x" }] });
  assert.equal(res.status, 200);
  await res.json();
  const u = await settled(k.key);
  assert.equal(u.credits.used_micro_usd, bill(up.calls[0].json).prompt_tokens + 30);
  assert.equal(u.credits.overrun_micro_usd, 0);
  for (const body of [
    '{"model":"m/a","n":1000,"messages":[]}',
    '{"model":"m/a","max_tokens":10,"max_tokens":null,"messages":[]}',
    '{"model":"m/a","max_tokens":10,"max\\u005ftokens":null,"messages":[]}',
    '{"model":"m/a","max_tokens":10.0,"messages":[]}',
  ]) {
    const bad = await chat(gw, k.key, body);
    assert.equal(bad.status, 400, body);
    assert.equal((await bad.json()).error.code, "invalid_request");
  }
  assert.equal(up.calls.length, 1);
});

test("images count at the part ceiling, not their base64 size, and the bill stays within the hold", async () => {
  up.reset();
  up.on(generate);
  const k = await newKey(gw, { plan: "pro", rate_limit: FAST });
  const image = { type: "image_url", image_url: { url: `data:image/png;base64,${"A".repeat(200_000)}` } };
  const res = await chat(gw, k.key, { model: "m/vision", max_tokens: 5, messages: [{ role: "user", content: [{ type: "text", text: "what is it" }, image] }] });
  assert.equal(res.status, 200);
  await res.json();
  const u = await settled(k.key);
  assert.ok(u.credits.used_micro_usd < 2000, `an image is ~${MEDIA} tokens, not 200,000: ${u.credits.used_micro_usd}`);
  assert.equal(u.credits.overrun_micro_usd, 0);
});

test("a key funded for ten small calls makes ten, and the eleventh is refused", async () => {
  up.reset();
  up.on(generate);
  const body = { model: "m/small", max_tokens: 50, messages: [{ role: "user", content: "hi" }] };
  const b = bill(body);
  const cost = b.prompt_tokens + b.completion_tokens;
  const k = await newKey(gw, { plan: "free", monthly_credit_micro_usd: cost * 10 + 40, rate_limit: FAST });
  for (let i = 0; i < 10; i++) {
    const res = await chat(gw, k.key, body);
    assert.equal(res.status, 200, `call ${i + 1}`);
    assert.equal(res.headers.get("x-hfgate-max-tokens"), null, "nothing lowered while the credit covers the call");
    await res.json();
  }
  await eventually(async () => (await usage(gw, k.key)).credits.reserved_micro_usd === 0);
  const eleventh = await chat(gw, k.key, body);
  assert.equal(eleventh.status, 429, "40 left does not cover the prompt alone");
  assert.equal((await eleventh.json()).error.code, "insufficient_quota");
  assert.equal(up.calls.length, 10);
  assert.equal((await usage(gw, k.key)).credits.used_micro_usd, cost * 10);
});

test("when credit cannot cover the output asked, the bound sent is lowered and said; below 16 tokens, refused", async () => {
  up.reset();
  up.on(generate);
  const body = { model: "m/low", max_tokens: 500, messages: [{ role: "user", content: "hi" }] };
  const prompt = bill(body).prompt_tokens;
  // room for the prompt and 40 output tokens
  const k = await newKey(gw, { plan: "free", monthly_credit_micro_usd: prompt + 40, rate_limit: FAST });
  const res = await chat(gw, k.key, body);
  assert.equal(res.status, 200);
  await res.json();
  assert.equal(res.headers.get("x-hfgate-max-tokens"), "40");
  assert.equal(up.calls[0].json.max_tokens, 40, "upstream got the lowered bound");
  const u = await settled(k.key);
  assert.equal(u.credits.used_micro_usd, prompt + 40);
  assert.equal(u.credits.overrun_micro_usd, 0);
  // room for the prompt and 10 output tokens: fewer than worth sending
  const k2 = await newKey(gw, { plan: "free", monthly_credit_micro_usd: prompt + 10, rate_limit: FAST });
  const refused = await chat(gw, k2.key, body);
  assert.equal(refused.status, 429);
  const err = await refused.json();
  assert.equal(err.error.code, "insufficient_quota");
  assert.match(err.error.message, /can only afford 10 output tokens/);
  // but a caller that asks for 10 or fewer gets exactly that
  const small = await chat(gw, k2.key, { ...body, max_tokens: 10 });
  assert.equal(small.status, 200);
  await small.json();
  assert.equal(up.calls.length, 2);
});

test("an overshoot is charged in full to the key, recorded as overrun, and refuses the next call", async () => {
  up.reset();
  up.on((req, res, call) => generate(req, res, call, { completion_tokens: 5000 }));
  const k = await newKey(gw, { plan: "free", monthly_credit_micro_usd: 3000, rate_limit: FAST });
  const res = await chat(gw, k.key, { model: "m/over", max_tokens: 100, messages: [{ role: "user", content: "x" }] });
  assert.equal(res.status, 200);
  await res.json();
  const u = await settled(k.key);
  const prompt = bill(up.calls[0].json).prompt_tokens;
  assert.equal(u.credits.used_micro_usd, prompt + 5000, "the whole cost, past the credit");
  assert.equal(u.credits.overrun_micro_usd, 4900);
  assert.equal(u.credits.key_overrun_micro_usd, 4900);
  assert.equal(u.credits.remaining_micro_usd, 0);
  const next = await chat(gw, k.key, { model: "m/over", max_tokens: 1, messages: [] });
  assert.equal(next.status, 429);
  assert.equal((await next.json()).error.code, "insufficient_quota");
  const seen = await admin(gw, "GET", `/admin/keys/${k.id}`);
  assert.equal(seen.json.usage.credits.overrun_micro_usd, 4900, "the admin view shows it too");
});

test("a caller that hangs up before a non-streamed answer is still settled, exactly once", async () => {
  up.reset();
  up.on(async (req, res, call) => {
    await sleep(600);
    return generate(req, res, call);
  });
  const k = await newKey(gw, { plan: "pro", rate_limit: FAST });
  const ctl = new AbortController();
  const call = fetch(`${gw.url}/v1/chat/completions`, {
    method: "POST",
    signal: ctl.signal,
    headers: { authorization: `Bearer ${k.key}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "m/slow", max_tokens: 10, messages: [{ role: "user", content: "y" }] }),
  }).catch(() => "hung up");
  await sleep(150);
  ctl.abort();
  assert.equal(await call, "hung up");
  const u = await settled(k.key);
  const b = bill(up.calls[0].json);
  assert.equal(u.credits.used_micro_usd, b.prompt_tokens + b.completion_tokens);
  await sleep(300);
  assert.equal((await usage(gw, k.key)).credits.used_micro_usd, b.prompt_tokens + b.completion_tokens, "charged once");
});

test("a long prefill is not a stall: a stream whose first token takes longer than the idle limit completes and is billed", async () => {
  const g = await startGateway({ UPSTREAM_URL: up.url, PRICES, STREAM_IDLE_MS: "300" });
  try {
    up.reset();
    up.on(async (req, res, call) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.flushHeaders();
      await sleep(1200); // thinking: headers out, no byte of the body yet
      return generate(req, res, call);
    });
    const k = await newKey(g, { plan: "pro", rate_limit: FAST });
    const res = await chat(g, k.key, { model: "m/think", stream: true, max_tokens: 20, messages: [{ role: "user", content: "x" }] });
    const text = await res.text();
    assert.match(text, /data: \[DONE\]/);
    assert.equal(text.split("\"w \"").length - 1, 20);
    const u = await eventually(async () => {
      const u = await usage(g, k.key);
      return u.credits.reserved_micro_usd === 0 && u.credits.used_micro_usd > 0 && u;
    }, 5000);
    const b = bill(up.calls[0].json);
    assert.equal(u.credits.used_micro_usd, b.prompt_tokens + b.completion_tokens, "billed from usage, not cut");
  } finally {
    await g.stop();
  }
});

test("/v1/usage takes from the throttle like any call", async () => {
  const k = await newKey(gw, { plan: "free", rate_limit: { rpm: 6, burst: 2 } });
  const a = await fetch(`${gw.url}/v1/usage`, { headers: { authorization: `Bearer ${k.key}` } });
  const b = await fetch(`${gw.url}/v1/usage`, { headers: { authorization: `Bearer ${k.key}` } });
  const c = await fetch(`${gw.url}/v1/usage`, { headers: { authorization: `Bearer ${k.key}` } });
  assert.deepEqual([a.status, b.status, c.status], [200, 200, 429]);
  assert.equal((await c.json()).error.code, "rate_limit_exceeded");
  assert.ok(Number(c.headers.get("retry-after")) >= 1);
});

test("a key's own spend cap inside an org pool is enforced there, and the pool goes on for the others", async () => {
  up.reset();
  up.on(generate);
  const org = `cap-${Date.now()}`;
  assert.equal((await admin(gw, "POST", "/admin/orgs", { id: org, plan: "team", seats: 2 })).status, 201);
  const body = { model: "m/org", max_tokens: 20, messages: [{ role: "user", content: "x" }] };
  const b = bill(body);
  const one = b.prompt_tokens + b.completion_tokens;
  const capped = await newKey(gw, { org, spend_cap_micro_usd: one * 2, rate_limit: FAST });
  const free = await newKey(gw, { org, rate_limit: FAST });
  const statuses = [];
  for (let i = 0; i < 4; i++) {
    const r = await chat(gw, capped.key, body);
    statuses.push(r.status);
    await r.text();
    await eventually(async () => (await usage(gw, capped.key)).credits.reserved_micro_usd === 0);
  }
  assert.deepEqual(statuses, [200, 200, 429, 429]);
  const other = await chat(gw, free.key, body);
  assert.equal(other.status, 200, "the pool still serves the org's other keys");
  await other.json();
});

test("one credential's 429 cools only that credential: another byok key, and another path, go on", async () => {
  const g = await startGateway({
    UPSTREAM_URL: up.url,
    PRICES,
    PROVIDER_KEY_SECRET: "seal-secret-for-e2e-0123456789",
    PROVIDER_URLS: JSON.stringify({ together: up.url }),
    // the fal-ai paths below must reach upstream: a route nothing prices never does
    ROUTE_PRICES: JSON.stringify({ "fal-ai/*": { per_request: 0.01 } }),
  });
  try {
    up.reset();
    up.on((req, res, call) => {
      if (call.headers.authorization === "Bearer prov-key-A" || call.path.startsWith("/fal-ai/fal-ai/hot")) {
        res.writeHead(429, { "retry-after": "30", "content-type": "application/json" });
        return res.end('{"error":"slow down"}');
      }
      return generate(req, res, call);
    });
    const a = await newKey(g, { plan: "byok", provider_key: { together: "prov-key-A" }, rate_limit: FAST });
    const b = await newKey(g, { plan: "byok", provider_key: { together: "prov-key-B" }, rate_limit: FAST });
    const call = (key) =>
      fetch(`${g.url}/together/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "m/shared", max_tokens: 5, messages: [] }),
      });
    const first = await call(a.key);
    assert.equal(first.status, 429);
    await first.text();
    const again = await call(a.key);
    assert.equal(again.status, 429, "key A waits out its own cooldown");
    await again.text();
    const callsSoFar = up.calls.length;
    assert.equal(callsSoFar, 1, "A's second call never reached the provider");
    const other = await call(b.key);
    assert.equal(other.status, 200, "key B's own provider key is not cooled by A's 429");
    await other.json();
    // a provider path with no model cools that path, not the whole provider
    const pro = await newKey(g, { plan: "pro", rate_limit: FAST });
    const path = (p) => fetch(`${g.url}${p}`, { method: "POST", headers: { authorization: `Bearer ${pro.key}`, "content-type": "application/json" }, body: "{}" });
    const hot = await path("/fal-ai/fal-ai/hot");
    assert.equal(hot.status, 429);
    await hot.text();
    const cool = await path("/fal-ai/fal-ai/cool");
    assert.notEqual(cool.status, 429, "another fal-ai path is not cooled");
    await cool.text();
    assert.ok(up.calls.some((c) => c.path.startsWith("/fal-ai/fal-ai/cool")));
    assert.ok(!up.calls.some((c) => c.headers.authorization?.includes(HF_TOKEN) && c.path.startsWith("/together")));
  } finally {
    await g.stop();
  }
});

test("eight 9.5 MiB bodies at once do not stop another key's stream, which completes and is billed", async () => {
  up.reset();
  up.on(async (req, res, call) => {
    if (call.json?.model === "m/stream") {
      res.writeHead(200, { "content-type": "text/event-stream" });
      for (let i = 0; i < 20; i++) {
        res.write(`data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: "w " } }] })}\n\n`);
        await sleep(50);
      }
      res.write(`data: ${JSON.stringify({ choices: [], usage: { prompt_tokens: 5, completion_tokens: 20 } })}\n\n`);
      return res.end("data: [DONE]\n\n");
    }
    return generate(req, res, call, { prompt_tokens: 10, completion_tokens: 1 });
  });
  const streamer = await newKey(gw, { plan: "pro", rate_limit: FAST });
  const bulk = await newKey(gw, { plan: "pro", rate_limit: FAST });
  const stream = chat(gw, streamer.key, { model: "m/stream", stream: true, max_tokens: 50, messages: [{ role: "user", content: "go" }] }).then((r) => r.text());
  const big = JSON.stringify({ model: "m/big", max_tokens: 1, messages: [{ role: "user", content: "x".repeat(9.5 * 1024 * 1024 - 100) }] });
  const bulkCalls = Array.from({ length: 8 }, () => chat(gw, bulk.key, big).then(async (r) => [r.status, await r.text()]));
  const text = await stream;
  assert.match(text, /data: \[DONE\]/);
  const results = await Promise.all(bulkCalls);
  for (const [status, body] of results) assert.ok(status === 200 || (status === 503 && body.includes("gateway_busy")), `${status} ${body.slice(0, 200)}`);
  const u = await eventually(async () => {
    const u = await usage(gw, streamer.key);
    return u.credits.reserved_micro_usd === 0 && u.credits.used_micro_usd > 0 && u;
  }, 5000);
  assert.equal(u.credits.used_micro_usd, 25, "the stream was billed from its usage");
});
