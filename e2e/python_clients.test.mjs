// The Python clients users have (openai, huggingface_hub) against the running gateway.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { startGateway, startUpstream, newKey, HF_TOKEN } from "./harness.mjs";

const run = promisify(execFile);
let up, gw;

before(async () => {
  up = await startUpstream();
  gw = await startGateway({ UPSTREAM_URL: up.url });
});
after(async () => {
  await gw?.stop();
  await up?.close();
});

test("openai (Python) and huggingface_hub chat through the gateway, streamed and not", async () => {
  const k = await newKey(gw, { plan: "pro" });
  const { stdout } = await run(".venv/bin/python", ["e2e/python_clients.py", gw.url, k.key, "meta-llama/Llama-3.1-8B-Instruct"], { timeout: 60_000 });
  const out = JSON.parse(stdout.trim().split("\n").at(-1));
  assert.equal(out.openai, "fake reply");
  assert.equal(out.openai_stream, "fake streamed reply");
  assert.equal(out.hub, "fake reply");
  assert.equal(out.hub_stream, "fake streamed reply");
  assert.equal(out.bad_key, "AuthenticationError:401");
  assert.equal(up.calls.length, 4);
  for (const c of up.calls) {
    assert.equal(c.headers.authorization, `Bearer ${HF_TOKEN}`);
    assert.equal(c.path, "/v1/chat/completions");
  }
});
