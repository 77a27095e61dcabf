// Credit alerts: a webhook fires once per threshold per period, in order, signed, and is
// retried from the account object's alarm when the receiver fails, however many calls cross
// a threshold at once.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { createHmac } from "node:crypto";
import { startGateway, startUpstream, newKey, chat, usage, eventually, secret } from "./harness.mjs";

const SECRET = "whsec_e2e_alert_signing_secret_0123";
secret(SECRET, "ALERT_WEBHOOK_SECRET");

let up, gw, receiver;
const got = []; // every attempt: {status, id, signature, body}
let failNext = 0;

before(async () => {
  receiver = http.createServer((req, res) => {
    const parts = [];
    req.on("data", (c) => parts.push(c));
    req.on("end", () => {
      const body = Buffer.concat(parts).toString("utf8");
      const status = failNext > 0 ? 500 : 200;
      if (failNext > 0) failNext--;
      got.push({ status, path: req.url, id: req.headers["x-hfgate-delivery"], signature: req.headers["x-hfgate-signature"], body });
      res.writeHead(status);
      res.end();
    });
  });
  await new Promise((r) => receiver.listen(0, "127.0.0.1", r));
  up = await startUpstream();
  gw = await startGateway({
    UPSTREAM_URL: up.url,
    ALERT_WEBHOOK_URL: `http://127.0.0.1:${receiver.address().port}/hooks/credits`,
    ALERT_WEBHOOK_SECRET: SECRET,
  });
});
after(async () => {
  await gw?.stop();
  await up?.close();
  await new Promise((r) => receiver.close(r));
});

const ask = { model: "m/one", messages: [{ role: "user", content: "hi" }] };

test("50, 80 and 100 % of credits: each fires once, in order, signed, even when twenty calls race past them", async () => {
  failNext = 1; // the receiver is down for the first attempt: it is retried, not lost
  // every call costs 70 micro-USD (10 prompt and 20 completion tokens at the "*" price)
  const k = await newKey(gw, { plan: "pro", monthly_credit_micro_usd: 1000, rate_limit: { rpm: 6000, burst: 1000 } });
  const answers = await Promise.all(Array.from({ length: 20 }, () => chat(gw, k.key, ask)));
  assert.deepEqual(answers.map((r) => r.status), Array(20).fill(200));
  await Promise.all(answers.map((r) => r.arrayBuffer()));
  const u = await eventually(async () => {
    const x = await usage(gw, k.key);
    return x.credits.used_micro_usd === 1400 ? x : null;
  });
  assert.ok(u, "all twenty settled");
  const delivered = await eventually(() => {
    const ok = got.filter((g) => g.status === 200);
    return ok.length >= 3 ? ok : null;
  }, 15_000);
  assert.ok(delivered, `three deliveries (got ${JSON.stringify(got.map((g) => g.status))})`);
  // a moment more: nothing else comes
  await new Promise((r) => setTimeout(r, 1500));
  const ok = got.filter((g) => g.status === 200);
  assert.equal(ok.length, 3, "exactly once per threshold");
  const bodies = ok.map((g) => JSON.parse(g.body));
  assert.deepEqual(bodies.map((b) => b.threshold_percent), [50, 80, 100], "in order");
  for (const [i, b] of bodies.entries()) {
    assert.equal(b.type, "credit_threshold");
    assert.equal(b.scope, "key");
    assert.equal(b.id, k.id);
    assert.equal(b.of, "credits");
    assert.equal(b.limit_micro_usd, 1000);
    assert.ok(b.used_micro_usd * 100 >= b.limit_micro_usd * b.threshold_percent);
    assert.equal(ok[i].path, "/hooks/credits");
    assert.equal(ok[i].id, b.delivery_id);
    const want = createHmac("sha256", SECRET).update(ok[i].body).digest("hex");
    assert.equal(ok[i].signature, `sha256=${want}`, "signed over the body");
  }
  // the failed first attempt was the 50 % alert, delivered on its retry
  const failed = got.filter((g) => g.status === 500);
  assert.equal(failed.length, 1);
  assert.equal(failed[0].id, ok[0].id);
  assert.ok(!got.some((g) => g.body.includes(k.key)), "no gateway key in an alert");
});
