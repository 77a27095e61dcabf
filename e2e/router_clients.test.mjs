// The clients users have, through the gateway, against the router double: openai (node and
// Python) with provider-pinned models, huggingface_hub's InferenceClient(base_url), a dedicated
// endpoint through @huggingface/inference's endpointUrl, and a fal-ai job polled the way
// huggingface_hub polls. Each result is checked, then what each key was charged.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import OpenAI from "openai";
import { InferenceClient } from "@huggingface/inference";
import { HF_TOKEN, startGateway, newKey, usage, eventually, secret } from "./harness.mjs";
import { startRouter, FAL_IMAGES, ENDPOINT_SECRET } from "./router_double.mjs";

const run = promisify(execFile);
secret(ENDPOINT_SECRET, "MINE_TOKEN");
const FAST = { rpm: 60000, burst: 1000 };
let router, gw;

before(async () => {
  router = await startRouter();
  gw = await startGateway({
    UPSTREAM_URL: router.url,
    ROUTE_PRICES: JSON.stringify({ "fal-ai/*": { per_request: 0.02 }, "replicate/*": { per_request: 0.01 } }),
    ENDPOINTS: JSON.stringify({ mine: { url: `${router.url}/endpoint/mine`, token_secret: "MINE_TOKEN", price: { input: 2, output: 4 } } }),
    MINE_TOKEN: ENDPOINT_SECRET,
  });
});
after(async () => {
  await gw?.stop();
  await router?.close();
});

const ROW = ["model", "provider", "requests", "prompt_tokens", "completion_tokens", "cost_micro_usd"];
const rows = (list) => (Array.isArray(list) ? list.map((r) => Object.fromEntries(ROW.map((k) => [k, r[k]]))) : list);

/** `/v1/usage` once nothing is held and `used` is `want`. */
async function charged(key, want) {
  let last;
  await eventually(async () => {
    last = await usage(gw, key);
    return last.credits?.reserved_micro_usd === 0 && last.credits.used_micro_usd === want;
  }, 5000);
  return last;
}

const chatBodies = () => router.callsTo("/v1/chat/completions", "POST").map((c) => c.json);

test("openai (node) embeddings on a provider's route: a vector a text, charged the input tokens the provider reports at the book's price", async () => {
  router.reset();
  const k = await newKey(gw, { plan: "pro", rate_limit: FAST });
  const client = new OpenAI({ baseURL: `${gw.url}/nebius/v1`, apiKey: k.key, maxRetries: 0 });
  const r = await client.embeddings.create({ model: "acme/embed-1", input: ["first text", "second text"] });
  assert.equal(r.data.length, 2);
  assert.deepEqual(r.data[1].embedding, [0.1, 0.2]);
  // sent as it came: no limit field, no stream options
  const sent = router.callsTo("/nebius/v1/embeddings", "POST")[0].json;
  assert.deepEqual(sent.input, ["first text", "second text"]);
  assert.equal(sent.max_tokens, undefined);
  assert.equal(sent.stream_options, undefined);
  // 2 texts x 20 tokens at $0.5 per 1M
  const u = await charged(k.key, 20);
  assert.deepEqual(rows(u.by_model), [{ model: "acme/embed-1", provider: "nebius", requests: 1, prompt_tokens: 40, completion_tokens: 0, cost_micro_usd: 20 }]);
});

test("openai (node): a provider-pinned model, streamed and not, priced at that provider", async () => {
  router.reset();
  const k = await newKey(gw, { plan: "pro", rate_limit: FAST });
  const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: k.key, maxRetries: 0 });
  const { data, response } = await client.chat.completions
    .create({ model: "acme/chat-1:groq", messages: [{ role: "user", content: "hi" }], max_tokens: 20 })
    .withResponse();
  assert.equal(data.choices[0].message.content, "fake reply");
  assert.equal(data.model, "acme/chat-1:groq");
  assert.equal(response.headers.get("x-inference-provider"), "groq");
  let text = "";
  for await (const c of await client.chat.completions.create({ model: "acme/chat-1:groq", stream: true, messages: [{ role: "user", content: "hi" }], max_tokens: 20 })) {
    text += c.choices[0]?.delta?.content ?? "";
  }
  assert.equal(text, "fake streamed reply");
  assert.deepEqual(chatBodies().map((b) => b.model), ["acme/chat-1:groq", "acme/chat-1:groq"]);
  for (const c of router.callsTo("/v1/chat/completions")) assert.equal(c.headers.authorization, `Bearer ${HF_TOKEN}`);
  // groq, $0.50 / $1 per 1M, 1000 + 500 tokens: 1000 a call, the stream metered from the usage the gateway asked for
  const u = await charged(k.key, 2000);
  assert.equal(u.credits.used_micro_usd, 2000);
  assert.deepEqual(rows(u.by_model), [{ model: "acme/chat-1", provider: "groq", requests: 2, prompt_tokens: 2000, completion_tokens: 1000, cost_micro_usd: 2000 }]);
});

test("@huggingface/inference: chatCompletion through endpointUrl reaches a dedicated endpoint", async () => {
  router.reset();
  const k = await newKey(gw, { plan: "pro", allowed_endpoints: ["mine"], rate_limit: FAST });
  const hf = new InferenceClient(k.key);
  // the client appends /v1/chat/completions to an endpointUrl that does not end in /v1 or
  // /chat/completions, and sends the endpointUrl itself as `model` when none is given
  const out = await hf.chatCompletion({ endpointUrl: `${gw.url}/endpoints/mine`, messages: [{ role: "user", content: "hi" }], max_tokens: 20 });
  assert.equal(out.choices[0].message.content, "fake reply");
  let text = "";
  for await (const c of hf.chatCompletionStream({ endpointUrl: `${gw.url}/endpoints/mine`, messages: [{ role: "user", content: "hi" }], max_tokens: 20 })) {
    text += c.choices?.[0]?.delta?.content ?? "";
  }
  assert.equal(text, "fake streamed reply");
  const calls = router.callsTo("/endpoint/mine/v1/chat/completions", "POST");
  assert.equal(calls.length, 2, `the endpoint saw ${router.calls.map((c) => `${c.method} ${c.path}`)}`);
  for (const c of calls) {
    assert.equal(c.headers.authorization, `Bearer ${ENDPOINT_SECRET}`);
    assert.ok(!JSON.stringify(c.headers).includes(HF_TOKEN) && !JSON.stringify(c.headers).includes(k.key));
  }
  assert.equal(router.callsTo("/v1/chat/completions").length, 0, "not through the router");
  // $2 / $4 per 1M, 100 + 50 tokens: 400 a call
  assert.equal((await charged(k.key, 800)).credits.used_micro_usd, 800);
});

test("openai and huggingface_hub (Python), and a fal-ai job polled as huggingface_hub polls", async () => {
  router.reset();
  const [oa, hub, fal] = [await newKey(gw, { plan: "pro", rate_limit: FAST }), await newKey(gw, { plan: "pro", rate_limit: FAST }), await newKey(gw, { plan: "pro", rate_limit: FAST })];
  const { stdout } = await run(".venv/bin/python", ["e2e/router_clients.py", gw.url, oa.key, hub.key, fal.key], { timeout: 90_000 }).catch((e) => {
    throw new Error(`router_clients.py failed: ${e.stderr || e.message}`);
  });
  const out = JSON.parse(stdout.trim().split("\n").at(-1));

  assert.equal(out.openai, "fake reply");
  assert.equal(out.openai_model, "acme/chat-1:together");
  assert.equal(out.openai_provider, "together");
  assert.equal(out.openai_stream, "fake streamed reply");
  assert.equal(out.hub, "fake reply");
  assert.equal(out.hub_model, "acme/chat-1:groq");
  const models = chatBodies().map((b) => b.model).sort();
  assert.deepEqual(models, ["acme/chat-1:groq", "acme/chat-1:together", "acme/chat-1:together"], "suffixes reached upstream unchanged");

  const routed = out.fal_router_form;
  assert.deepEqual(routed.statuses, ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"], JSON.stringify(routed));
  assert.ok(routed.min_gap_ms >= 450, `polled every 0.5 s (${routed.min_gap_ms} ms)`);
  assert.equal(routed.result_status, 200, JSON.stringify(routed));
  assert.deepEqual(routed.result, FAL_IMAGES);
  assert.equal(routed.status_url, `/fal-ai/fal-ai/flux/requests/${routed.request_id}/status?_subdomain=queue`);
  assert.deepEqual(out.fal_hub_code.result, FAL_IMAGES, `huggingface_hub's own polling, off the router host: ${JSON.stringify(out.fal_hub_code)}`);
  for (const id of [routed.request_id, out.fal_hub_code.request_id]) {
    const polls = router.calls.filter((c) => c.path === `/fal-ai/fal-ai/flux/requests/${id}/status?_subdomain=queue`);
    assert.equal(polls.length, 3, `the router saw each job's polls at the path it gave (${id})`);
    assert.equal(router.calls.filter((c) => c.path === `/fal-ai/fal-ai/flux/requests/${id}?_subdomain=queue`).length, 1);
  }

  // together $1 / $2: 2000 a call, twice; groq $0.50 / $1: 1000; two jobs at $0.02, polls free
  const uo = await charged(oa.key, 4000);
  assert.equal(uo.credits.used_micro_usd, 4000);
  assert.deepEqual(rows(uo.by_model), [{ model: "acme/chat-1", provider: "together", requests: 2, prompt_tokens: 2000, completion_tokens: 1000, cost_micro_usd: 4000 }]);
  const uh = await charged(hub.key, 1000);
  assert.equal(uh.credits.used_micro_usd, 1000);
  assert.deepEqual(rows(uh.by_model), [{ model: "acme/chat-1", provider: "groq", requests: 1, prompt_tokens: 1000, completion_tokens: 500, cost_micro_usd: 1000 }]);
  assert.equal((await charged(fal.key, 40000)).credits.used_micro_usd, 40000);
});
