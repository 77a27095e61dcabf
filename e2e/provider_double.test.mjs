// The provider double on its own, no gateway: it must bill by its own rules (OpenAI's limit
// fields, its context default, n, the agent loop, the fal-ai queue read with URLSearchParams),
// bill on arrival, and keep generating after the caller has gone. A reconciliation is only as
// good as the invoice it reconciles against.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { startProvider, bill } from "./provider_double.mjs";

let p;
before(async () => {
  p = await startProvider();
});
after(async () => {
  await p?.close();
});

const post = (path, body) => fetch(p.url + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
const msgs = [{ role: "user", content: "hello" }];
// {"role":"user","content":"hello"}: keys and values, 4 + 4 + 7 + 5 bytes, plus 2
const PROMPT = 22;

test("limit fields by OpenAI's rules: each API honours its own, ignores the others, and fills its context without one", async () => {
  p.reset();
  p.script({ contextTokens: 700 });
  const cases = [
    ["/v1/chat/completions", { model: "t/a", max_new_tokens: 16, messages: msgs }, PROMPT + 700],
    ["/v1/chat/completions", { model: "t/b", max_output_tokens: 16, messages: msgs }, PROMPT + 700],
    ["/v1/chat/completions", { model: "t/c", max_tokens: 30, max_completion_tokens: null, messages: msgs }, PROMPT + 30],
    ["/v1/chat/completions", { model: "t/d", max_tokens: 30, max_completion_tokens: 40, messages: msgs }, PROMPT + 40],
    ["/v1/chat/completions", { model: "t/e:groq", max_tokens: 10, n: 3, messages: msgs }, PROMPT + 30],
    ["/v1/responses", { model: "t/f", max_tokens: 16, input: "hello" }, 7 + 700],
    ["/v1/responses", { model: "t/g", max_output_tokens: 16, max_tokens: 5, input: "hello", instructions: "be" }, 9 + 16],
    ["/v1/completions", { model: "t/h", max_tokens: 12, prompt: ["ab", "cd"], n: 2 }, 6 + 48],
  ];
  for (const [path, body, want] of cases) {
    const res = await post(path, body);
    assert.equal(res.status, 200, path);
    const out = await res.json();
    const u = out.usage;
    const reported = (u.prompt_tokens ?? u.input_tokens) + (u.completion_tokens ?? u.output_tokens);
    const tag = body.model.split(":")[0];
    assert.equal(p.invoice(tag), want, `${path} ${JSON.stringify(body)}`);
    assert.equal(reported, want, "its usage is what it billed");
  }
  assert.equal(p.callsFor("t/e")[0].headers["content-type"], "application/json", "the tag leaves the provider suffix off");
});

test("a chat stream is billed on arrival and written to the end after the caller hangs up", async () => {
  p.reset();
  p.script("t/stream", { tokensPerEvent: 100, eventDelayMs: 20 });
  const ctl = new AbortController();
  const res = await fetch(p.url + "/v1/chat/completions", {
    method: "POST",
    signal: ctl.signal,
    body: JSON.stringify({ model: "t/stream", stream: true, max_tokens: 3000, messages: msgs }),
  });
  assert.equal(res.headers.get("x-request-id"), "prov-req-1");
  const reader = res.body.getReader();
  await reader.read();
  assert.equal(p.invoice("t/stream"), PROMPT + 3000, "billed in full before the first event was read");
  await reader.cancel().catch(() => {});
  ctl.abort();
  await p.idle();
  const call = p.calls[0];
  assert.equal(call.events, 32, "role, 30 events of 100 tokens, finish: all written");
  assert.ok(call.finished - call.at >= 30 * 20, `at its own pace (${call.finished - call.at} ms)`);
});

test("a streamed chat carries usage only when asked; a responses stream starts with zeros and ends with the count", async () => {
  p.reset();
  const read = async (path, body) => (await post(path, body)).text();
  const plain = await read("/v1/chat/completions", { model: "t/s1", stream: true, max_tokens: 250, messages: msgs });
  assert.ok(!plain.includes('"usage"'));
  assert.ok(plain.endsWith("data: [DONE]\n\n"));
  const withUsage = await read("/v1/chat/completions", { model: "t/s2", stream: true, stream_options: { include_usage: true }, max_tokens: 250, messages: msgs });
  const chunks = withUsage.split("\n\n").filter((l) => l.startsWith("data: {")).map((l) => JSON.parse(l.slice(6)));
  assert.deepEqual(chunks.at(-1).choices, []);
  assert.deepEqual(chunks.at(-1).usage, { prompt_tokens: PROMPT, completion_tokens: 250, total_tokens: PROMPT + 250 });
  assert.equal(chunks.filter((c) => c.choices[0]?.delta?.content).reduce((n, c) => n + c.choices[0].delta.content.length, 0), 250);

  const events = (await read("/v1/responses", { model: "t/r", stream: true, max_output_tokens: 250, input: "hello" }))
    .split("\n\n").filter(Boolean).map((e) => {
      const [type, data] = e.split("\n");
      const json = JSON.parse(data.slice("data: ".length));
      assert.equal(type, `event: ${json.type}`);
      return json;
    });
  const types = events.map((e) => e.type);
  assert.deepEqual(types.filter((t) => t !== "response.output_text.delta"), [
    "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
    "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
  ]);
  assert.equal(types.filter((t) => t === "response.output_text.delta").length, 3);
  assert.deepEqual([events[0].response.usage.input_tokens, events[0].response.usage.output_tokens], [0, 0]);
  assert.deepEqual([events.at(-1).response.usage.input_tokens, events.at(-1).response.usage.output_tokens], [7, 250]);
});

test("the router's agent loop bills every turn, the prompt growing by the tool's output", async () => {
  p.reset();
  const body = { model: "t/agent", max_output_tokens: 100, input: "hello", tools: [{ type: "mcp", server_label: "x", server_url: "https://mcp.example" }] };
  const want = 5 * 7 + (0 + 1 + 2 + 3 + 4) * 1000 + 5 * 100;
  assert.equal(bill("responses", body).prompt + bill("responses", body).completion, want);
  const out = await (await post("/v1/responses", body)).json();
  assert.equal(out.usage.input_tokens + out.usage.output_tokens, want);
  assert.equal(p.invoice("t/agent"), want);
  assert.equal(out.output.filter((o) => o.type === "mcp_call").length, 4);
});

test("scripted faults: a 500 bills nothing; a delayed answer is billed before it starts; a break destroys the socket", async () => {
  p.reset();
  p.script("t/500", { status: 500 });
  const failed = await post("/v1/chat/completions", { model: "t/500", max_tokens: 10, messages: msgs });
  assert.equal(failed.status, 500);
  await failed.text();
  assert.equal(p.invoice("t/500"), 0);

  p.script("t/slow", { delayMs: 300 });
  const slow = post("/v1/chat/completions", { model: "t/slow", max_tokens: 10, messages: msgs });
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(p.invoice("t/slow"), PROMPT + 10, "billed while it is still thinking");
  assert.equal((await slow).status, 200);

  p.script("t/break", { breakAfter: "response.created" });
  const broken = await post("/v1/responses", { model: "t/break", stream: true, max_output_tokens: 500, input: "hello" });
  await assert.rejects(broken.text(), "the body breaks off");
  assert.equal(p.invoice("t/break"), 7 + 500);
  assert.equal(p.callsFor("t/break")[0].events, 1);
});

test("fal-ai: a submit is billed at the app's price times its outputs; the query is read as the router reads it", async () => {
  p.reset();
  const sub = await post("/fal-ai/fal-ai/veo3?_subdomain=queue", { prompt: "a cat" });
  const job = await sub.json();
  assert.equal(job.status, "IN_QUEUE");
  assert.equal(p.invoice("fal-ai/fal-ai/veo3"), 5_000_000);
  await (await post("/fal-ai/fal-ai/flux/dev?%5Fsubdomain=queue", { prompt: "a dog", num_images: 3 })).json();
  assert.equal(p.invoice("fal-ai/fal-ai/flux/dev"), 75_000);
  const id = job.request_id;
  for (const q of ["_subdomain=queue", "%5Fsubdomain=queue", "_subdomain=%71ueue", "%5F%73ubdomain=%71ueue"]) {
    const res = await fetch(`${p.url}/fal-ai/fal-ai/veo3/requests/${id}/status?${q}`);
    assert.equal(res.status, 200, q);
    assert.equal((await res.json()).status, "COMPLETED");
    const result = await fetch(`${p.url}/fal-ai/fal-ai/veo3/requests/${id}?${q}`);
    assert.equal(result.status, 200, q);
    assert.equal((await result.json()).request_id, id);
  }
  const notQueue = await fetch(`${p.url}/fal-ai/fal-ai/veo3/requests/${id}?_subdomain=que`);
  assert.equal(notQueue.status, 404);
  await notQueue.text();
  assert.equal(p.callsMatching(`/requests/${id}?%5Fsubdomain=queue`).length, 1, "calls are recorded with the raw query");
  assert.equal(p.invoice("fal-ai/fal-ai/veo3"), 5_000_000, "polls are free");
});

test("a hang-up mid-answer does not stop the provider writing, nor crash it", async () => {
  p.reset();
  p.script("t/gone", { tokensPerEvent: 10, eventDelayMs: 5 });
  const { port } = new URL(p.url);
  await new Promise((resolve) => {
    const req = http.request({ port, host: "127.0.0.1", method: "POST", path: "/v1/chat/completions", headers: { "content-type": "application/json" } }, (res) => {
      res.once("data", () => {
        req.destroy();
        resolve();
      });
    });
    req.on("error", () => {});
    req.end(JSON.stringify({ model: "t/gone", stream: true, max_tokens: 500, messages: msgs }));
  });
  await p.idle();
  assert.equal(p.callsFor("t/gone")[0].events, 52);
  assert.equal(p.invoice("t/gone"), PROMPT + 500);
  assert.equal((await post("/v1/chat/completions", { model: "t/after", max_tokens: 1, messages: msgs })).status, 200, "still serving");
});
