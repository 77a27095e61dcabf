// `make bench` (memory part): how much memory the gateway's isolate takes when 8 callers
// each send a 9.5 MiB body at once while another key streams. Reports the workerd process's
// peak resident memory over its idle baseline (sampled every 10 ms from /proc), the wasm heap
// the isolate ended with (`/admin/stats`), how the 8 calls were answered, and whether the
// stream completed and was billed. `node bench/memory.mjs [build dir]` (default: build).
import http from "node:http";
import { readFileSync, readdirSync } from "node:fs";
import { Miniflare } from "miniflare";
import { gatewayOptions } from "../e2e/miniflare.mjs";

const ADMIN = "bench-admin-token";
const BIG = Math.floor(9.5 * 1024 * 1024);
const CALLERS = 8;
const buildDir = process.argv[2] ?? "build";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// the fake upstream: reads and drops bodies, answers at once; the streamer gets 40 chunks
const upstream = http.createServer((req, res) => {
  let bytes = 0;
  let head = "";
  req.on("data", (c) => {
    if (head.length < 200) head += c.toString("utf8", 0, Math.min(c.length, 200));
    bytes += c.length;
  });
  req.on("end", async () => {
    if (head.includes("m/stream")) {
      res.writeHead(200, { "content-type": "text/event-stream" });
      for (let i = 0; i < 40; i++) {
        res.write(`data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: "w " } }] })}\n\n`);
        await sleep(50);
      }
      res.write(`data: ${JSON.stringify({ choices: [], usage: { prompt_tokens: 5, completion_tokens: 40 } })}\n\n`);
      return res.end("data: [DONE]\n\n");
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ choices: [{ index: 0, message: { role: "assistant", content: "ok" } }], usage: { prompt_tokens: 10, completion_tokens: 1 }, received: bytes }));
  });
});
await new Promise((r) => upstream.listen(0, "127.0.0.1", r));
const upUrl = `http://127.0.0.1:${upstream.address().port}`;

const options = gatewayOptions({
  bindings: { ADMIN_TOKEN: ADMIN, HF_TOKEN: "hf_bench", UPSTREAM_URL: upUrl },
  // a JSON line per call: read and dropped (an unread pipe would stall workerd)
  handleRuntimeStdio: (out, err) => { out.resume(); err.resume(); },
});
options.workers[0].scriptPath = `${buildDir}/index.js`;
const mf = new Miniflare(options);
const gw = (await mf.ready).href.replace(/\/$/, "");

/** The workerd processes started under this one. */
function workerdPids() {
  const children = new Map();
  for (const p of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(Number(p), { ppid, cmd: readFileSync(`/proc/${p}/cmdline`, "utf8") });
    } catch {}
  }
  const mine = new Set([process.pid]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const [pid, { ppid }] of children) if (mine.has(ppid) && !mine.has(pid)) mine.add(pid), (grew = true);
  }
  return [...mine].filter((pid) => children.get(pid)?.cmd.includes("workerd"));
}
const rss = () => workerdPids().reduce((n, pid) => {
  try {
    return n + Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]) * 1024;
  } catch {
    return n;
  }
}, 0);

const adminCall = async (method, path, body) => {
  const r = await fetch(gw + path, { method, headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" }, body: body && JSON.stringify(body) });
  return r.json();
};
const FAST = { rpm: 60000, burst: 1000 };
const streamer = await adminCall("POST", "/admin/keys", { plan: "pro", rate_limit: FAST });
const bulk = await adminCall("POST", "/admin/keys", { plan: "pro", rate_limit: FAST });
const chat = (key, body) => fetch(`${gw}/v1/chat/completions`, { method: "POST", headers: { authorization: `Bearer ${key}`, "content-type": "application/json" }, body });

// warm up: one small call each, so the baseline includes a loaded isolate
for (const k of [streamer, bulk]) await (await chat(k.key, JSON.stringify({ model: "m/warm", max_tokens: 1, messages: [] }))).text();
await sleep(500);
const baseline = rss();
let peak = baseline;
const sampler = setInterval(() => (peak = Math.max(peak, rss())), 10);

const big = JSON.stringify({ model: "m/big", max_tokens: 1, messages: [{ role: "user", content: "x".repeat(BIG - 100) }] });
const started = Date.now();
const stream = chat(streamer.key, JSON.stringify({ model: "m/stream", stream: true, max_tokens: 64, messages: [{ role: "user", content: "go" }] })).then((r) => r.text());
await sleep(100);
const answers = await Promise.all(Array.from({ length: CALLERS }, () => chat(bulk.key, big).then(async (r) => `${r.status}${r.status === 200 ? "" : " " + JSON.parse(await r.text()).error.code}`)));
const streamed = await stream;
const elapsed = Date.now() - started;
await sleep(300);
clearInterval(sampler);
const stats = await adminCall("GET", "/admin/stats");
let billed = 0;
for (let i = 0; i < 50 && !billed; i++) {
  const u = await (await fetch(`${gw}/v1/usage`, { headers: { authorization: `Bearer ${streamer.key}` } })).json();
  if (u.credits?.reserved_micro_usd === 0) billed = u.credits.used_micro_usd;
  else await sleep(100);
}

const mib = (n) => (n / 1048576).toFixed(1);
const counts = answers.reduce((m, a) => ((m[a] = (m[a] ?? 0) + 1), m), {});
console.log(`memory: ${CALLERS} concurrent ${mib(BIG)} MiB bodies while another key streams (build: ${buildDir})`);
console.log(`  workerd RSS: baseline ${mib(baseline)} MiB, peak ${mib(peak)} MiB, peak over baseline ${mib(peak - baseline)} MiB`);
console.log(`  isolate wasm heap afterwards: ${mib(stats.isolate?.wasm_memory_bytes ?? 0)} MiB; body bytes still held: ${stats.isolate?.request_body_bytes_held ?? "n/a"}`);
console.log(`  the 8 calls: ${JSON.stringify(counts)} in ${elapsed} ms`);
console.log(`  the stream: ${streamed.includes("[DONE]") ? "completed" : "CUT"}, billed ${billed} micro-USD`);

await mf.dispose();
upstream.close();
