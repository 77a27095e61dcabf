// The contract's way in for tools and reviewers: `npx wrangler dev --var NAME:VALUE` on a
// built checkout. Its output goes into the secret-hygiene transcript like the worker's.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import http from "node:http";
import { ADMIN, HF_TOKEN, startUpstream, record, secret, eventually, watchGateway } from "./harness.mjs";

let up, wrangler, base;

const freePort = () =>
  new Promise((resolve) => {
    const s = http.createServer().listen(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });

before(async () => {
  up = await startUpstream();
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  watchGateway(base);
  wrangler = spawn(
    "npx",
    ["wrangler", "dev", "--ip", "127.0.0.1", "--port", String(port), "--show-interactive-dev-session=false", "--persist-to", mkdtempSync(join(tmpdir(), "hfg-wrangler-")),
      "--var", `UPSTREAM_URL:${up.url}`, "--var", `HF_TOKEN:${HF_TOKEN}`, "--var", `ADMIN_TOKEN:${ADMIN}`],
    { env: { ...process.env, WRANGLER_SEND_METRICS: "false", CLOUDFLARE_CF_FETCH_ENABLED: "false" }, detached: true },
  );
  for (const s of [wrangler.stdout, wrangler.stderr]) s.on("data", (d) => record("log", d));
  const ok = await eventually(async () => {
    try {
      return (await fetch(`${base}/healthz`)).ok;
    } catch {
      return false;
    }
  }, 90_000);
  assert.ok(ok, "wrangler dev came up");
});
after(async () => {
  if (wrangler) process.kill(-wrangler.pid, "SIGTERM");
  await up?.close();
});

test("npx wrangler dev --var serves the built gateway against any upstream", async () => {
  const health = await (await fetch(`${base}/healthz`)).json();
  assert.equal(health.upstream, new URL(up.url).host);
  const created = await fetch(`${base}/admin/keys`, { method: "POST", headers: { authorization: `Bearer ${ADMIN}` }, body: JSON.stringify({ plan: "free" }) });
  assert.equal(created.status, 201);
  const key = (await created.json()).key;
  secret(key, "gateway key (wrangler dev)");
  up.reset();
  const res = await fetch(`${base}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "meta-llama/Llama-3.1-8B-Instruct", max_tokens: 10, messages: [{ role: "user", content: "hi" }] }),
  });
  assert.equal(res.status, 200);
  assert.equal((await res.json()).choices[0].message.content, "fake reply");
  assert.equal(up.calls.length, 1);
  assert.equal(up.calls[0].headers.authorization, `Bearer ${HF_TOKEN}`);
  const usage = await eventually(async () => {
    const u = await (await fetch(`${base}/v1/usage`, { headers: { authorization: `Bearer ${key}` } })).json();
    return u.credits.used_micro_usd > 0 && u;
  });
  assert.ok(usage, "the call was metered");
});
