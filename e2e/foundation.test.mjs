// The foundation, end to end: keys, the proxy with real clients, edge cases of the HTTP surface.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { InferenceClient } from "@huggingface/inference";
import { ADMIN, HF_TOKEN, startGateway, startUpstream, admin, newKey, chat, usage, rawRequest, eventually } from "./harness.mjs";

let up, gw, key;
const MODEL = "meta-llama/Llama-3.1-8B-Instruct";

before(async () => {
  up = await startUpstream();
  gw = await startGateway({ UPSTREAM_URL: up.url, MAX_BODY_BYTES: "65536" });
  key = await newKey(gw, { plan: "pro", name: "foundation" });
});
after(async () => {
  await gw?.stop();
  await up?.close();
});

test("healthz names the upstream and the version", async () => {
  const res = await fetch(`${gw.url}/healthz`);
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.equal(body.status, "ok");
  assert.equal(body.upstream, new URL(up.url).host);
  assert.match(body.version, /^\d+\.\d+\.\d+/);
  assert.ok(res.headers.get("x-request-id"));
});

test("a key is shown once, stored as a digest, and has 256 random bits", async () => {
  assert.match(key.key, /^hfg_[A-Za-z0-9_-]{43}$/);
  assert.match(key.id, /^key_[a-z2-7]{16}$/);
  const read = await admin(gw, "GET", `/admin/keys/${key.id}`);
  assert.equal(read.status, 200);
  assert.equal(read.json.key, undefined);
  assert.ok(!JSON.stringify(read.json).includes(key.key));
  const list = await admin(gw, "GET", "/admin/keys");
  assert.ok(list.json.data.some((k) => k.id === key.id));
  assert.ok(!JSON.stringify(list.json).includes(key.key));
  const kv = await gw.mf.getKVNamespace("GATEWAY_KV");
  const names = (await kv.list()).keys.map((k) => k.name);
  for (const n of names) {
    const v = await kv.get(n);
    assert.ok(!v.includes(key.key), `KV entry ${n} holds the secret`);
  }
});

test("openai SDK: a chat completion goes upstream with the HF token, not the caller's key", async () => {
  up.reset();
  const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: key.key, maxRetries: 0 });
  const out = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 50 });
  assert.equal(out.choices[0].message.content, "fake reply");
  assert.equal(up.calls.length, 1);
  const call = up.calls[0];
  assert.equal(call.path, "/v1/chat/completions");
  assert.equal(call.headers.authorization, `Bearer ${HF_TOKEN}`);
  assert.ok(!JSON.stringify(call.headers).includes(key.key));
  assert.equal(call.json.model, MODEL);
  assert.equal(call.json.max_tokens, 50);
});

test("openai SDK: a streamed completion arrives chunk by chunk and is metered", async () => {
  up.reset();
  const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: key.key, maxRetries: 0 });
  const stream = await client.chat.completions.create({ model: MODEL, stream: true, messages: [{ role: "user", content: "hi" }] });
  const pieces = [];
  let sawUsage = false;
  for await (const chunk of stream) {
    if (chunk.usage) sawUsage = true;
    const d = chunk.choices[0]?.delta?.content;
    if (d) pieces.push(d);
  }
  assert.equal(pieces.join(""), "fake streamed reply");
  assert.ok(pieces.length >= 3, "streamed in several chunks");
  assert.equal(sawUsage, false, "the caller did not ask for usage, so it does not see the usage chunk");
  assert.equal(up.calls[0].json.stream_options.include_usage, true, "the gateway asked upstream for usage");
});

test("@huggingface/inference: chatCompletion and chatCompletionStream through endpointUrl", async () => {
  up.reset();
  const hf = new InferenceClient(key.key, { endpointUrl: gw.url });
  const out = await hf.chatCompletion({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 20 });
  assert.equal(out.choices[0].message.content, "fake reply");
  let text = "";
  for await (const chunk of hf.chatCompletionStream({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 20 })) {
    text += chunk.choices?.[0]?.delta?.content ?? "";
  }
  assert.equal(text, "fake streamed reply");
  assert.ok(up.calls.length >= 2);
  for (const c of up.calls) {
    assert.equal(c.headers.authorization, `Bearer ${HF_TOKEN}`);
    assert.match(c.path, /\/chat\/completions$/);
  }
});

test("credentials, cookies, hop-by-hop, cf-* and caller billing headers never go upstream", async () => {
  up.reset();
  const res = await chat(gw, key.key, { model: MODEL, messages: [], max_tokens: 5 }, {
    cookie: "session=abc",
    "x-hf-bill-to": "someone-elses-org",
    "cf-connecting-ip": "1.2.3.4",
    "x-forwarded-for": "1.2.3.4",
    "x-custom": "kept",
  });
  assert.equal(res.status, 200);
  const h = up.calls[0].headers;
  assert.equal(h.cookie, undefined);
  assert.equal(h["x-hf-bill-to"], undefined);
  assert.equal(h["cf-connecting-ip"], undefined);
  assert.equal(h["x-forwarded-for"], undefined);
  assert.equal(h["x-custom"], "kept");
  assert.equal(res.headers.get("x-request-id"), "up-req-1", "upstream's request id is passed back");
});

test("provider paths go upstream on the same path; unknown providers and tricks do not", async () => {
  up.reset();
  const ok = await fetch(`${gw.url}/together/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key.key}`, "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, messages: [], max_tokens: 5 }),
  });
  assert.equal(ok.status, 200);
  assert.equal(up.calls.at(-1).path, "/together/v1/chat/completions");
  const before = up.calls.length;
  const tricks = [
    "/evil.example/v1/chat/completions",
    "/together/v1%2fchat/completions",
    "/together/v1%5cchat/completions",
    "/together//v1/chat/completions",
    "/together/%2e%2e/admin/keys",
    "/together/../../admin/keys",
    "/together/v1/chat/completions/%00",
  ];
  for (const path of tricks) {
    const res = await rawRequest(gw, "POST", path, { authorization: `Bearer ${key.key}` }, "{}");
    // 400/404 when refused as a path; 401 when the runtime had already resolved the dots
    // to /admin/keys, where a gateway key is no admin token
    assert.ok([400, 401, 404].includes(res.status), `${path} gave ${res.status}`);
    const err = JSON.parse(res.text);
    assert.ok(["not_found", "invalid_request", "invalid_api_key"].includes(err.error.code));
  }
  assert.equal(up.calls.length, before, "nothing reached upstream");
});

test("errors are OpenAI-shaped with the contract's codes", async () => {
  const cases = [
    [await fetch(`${gw.url}/v1/chat/completions`, { method: "POST", body: "{}" }), 401, "invalid_api_key"],
    [await chat(gw, "hfg_" + "x".repeat(43), { model: MODEL }), 401, "invalid_api_key"],
    [await fetch(`${gw.url}/v1/chat/completions`, { headers: { authorization: `Bearer ${key.key}` } }), 405, "method_not_allowed"],
    [await fetch(`${gw.url}/nope`), 404, "not_found"],
    [await chat(gw, key.key, "{not json"), 400, "invalid_request"],
    [await chat(gw, key.key, { messages: [] }), 400, "invalid_request"],
    [await chat(gw, key.key, { model: MODEL, max_tokens: -5 }), 400, "invalid_request"],
    [await chat(gw, key.key, { model: MODEL, messages: [{ role: "user", content: "x".repeat(70000) }] }), 413, "request_too_large"],
  ];
  for (const [res, status, code] of cases) {
    assert.equal(res.status, status, code);
    const body = await res.json();
    assert.equal(body.error.code, code);
    assert.equal(typeof body.error.message, "string");
    assert.equal(typeof body.error.type, "string");
    assert.ok(res.headers.get("x-request-id"));
  }
});

test("admin API: wrong token refused, update and revoke take effect on the next request", async () => {
  const wrong = await fetch(`${gw.url}/admin/keys`, { headers: { authorization: "Bearer nope" } });
  assert.equal(wrong.status, 401);
  const k = await newKey(gw, { plan: "free", name: "short-lived" });
  assert.equal((await chat(gw, k.key, { model: MODEL, max_tokens: 5 })).status, 200);
  const patched = await admin(gw, "PATCH", `/admin/keys/${k.id}`, { name: "renamed", rate_limit: { rpm: 600, burst: 20 } });
  assert.equal(patched.status, 200);
  assert.equal(patched.json.name, "renamed");
  assert.deepEqual(patched.json.rate_limit, { rpm: 600, burst: 20 });
  const del = await admin(gw, "DELETE", `/admin/keys/${k.id}`);
  assert.equal(del.json.revoked, true);
  const after = await chat(gw, k.key, { model: MODEL, max_tokens: 5 });
  assert.equal(after.status, 401);
  assert.equal((await after.json()).error.code, "invalid_api_key");
  assert.equal((await admin(gw, "GET", "/admin/keys/key_doesnotexist")).status, 404);
  const bad = await admin(gw, "POST", "/admin/keys", { plan: "platinum" });
  assert.equal(bad.status, 400);
  assert.equal(bad.json.error.code, "invalid_request");
});

test("/v1/usage shows the caller's plan, period and credits", async () => {
  const u = await usage(gw, key.key);
  assert.equal(u.key_id, key.id);
  assert.equal(u.plan, "pro");
  assert.match(u.period.start, /^\d{4}-\d{2}-01T00:00:00Z$/);
  assert.equal(u.credits.limit_micro_usd, 2_000_000);
  assert.ok(u.credits.used_micro_usd > 0);
  assert.equal(u.rate_limit.rpm, 600);
});

test("without ADMIN_TOKEN the admin API is off; without HF_TOKEN the proxy fails closed", async () => {
  const bare = await startGateway({ UPSTREAM_URL: up.url, ADMIN_TOKEN: "", HF_TOKEN: "" });
  try {
    const res = await fetch(`${bare.url}/admin/keys`, { headers: { authorization: `Bearer ${ADMIN}` } });
    assert.equal(res.status, 503);
    assert.equal((await res.json()).error.code, "admin_disabled");
  } finally {
    await bare.stop();
  }
  const noToken = await startGateway({ UPSTREAM_URL: up.url, HF_TOKEN: "" });
  try {
    const k = await newKey(noToken, { plan: "free" });
    up.reset();
    const res = await chat(noToken, k.key, { model: MODEL, max_tokens: 5 });
    assert.equal(res.status, 503);
    assert.equal((await res.json()).error.code, "upstream_not_configured");
    assert.equal(up.calls.length, 0);
  } finally {
    await noToken.stop();
  }
});

test("the sandbox upstream answers chat (streamed and not) and models with no token", async () => {
  const sbx = await startGateway({ UPSTREAM_URL: "sandbox", HF_TOKEN: "", SANDBOX_CHUNK_DELAY_MS: "1" });
  try {
    const k = await newKey(sbx, { plan: "free" });
    const client = new OpenAI({ baseURL: `${sbx.url}/v1`, apiKey: k.key, maxRetries: 0 });
    const out = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "ping" }] });
    assert.equal(out.choices[0].message.content, "Hello from the hf-gate sandbox. You said: ping");
    let text = "";
    for await (const c of await client.chat.completions.create({ model: MODEL, stream: true, messages: [{ role: "user", content: "ping" }] })) {
      text += c.choices[0]?.delta?.content ?? "";
    }
    assert.equal(text, "Hello from the hf-gate sandbox. You said: ping");
    const models = await client.models.list();
    assert.ok(models.data.some((m) => m.id === MODEL));
    const raw = await fetch(`${sbx.url}/v1/models`, { headers: { authorization: `Bearer ${k.key}` } });
    assert.equal(raw.headers.get("x-upstream"), "sandbox");
    // the live price book works with no network: read from the sandbox's /v1/models, and
    // the calls above are counted under the sandbox's model and provider
    const book = await admin(sbx, "GET", "/admin/prices");
    assert.equal(book.json.models[MODEL]?.sandbox?.live, true, JSON.stringify(book.json).slice(0, 300));
    const u = await eventually(async () => {
      const x = await usage(sbx, k.key);
      return x.by_model?.[0]?.requests === 2 ? x : null;
    });
    assert.ok(u, "both calls counted by model");
    assert.deepEqual([u.by_model[0].model, u.by_model[0].provider], [MODEL, "sandbox"]);
    assert.equal(u.by_model[0].cost_micro_usd, u.credits.used_micro_usd);
  } finally {
    await sbx.stop();
  }
});
