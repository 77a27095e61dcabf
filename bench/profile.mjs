// `node bench/profile.mjs`: where the metered path's CPU goes. Starts the fake upstream
// (nginx), the gateway on workerd via Miniflare with the V8 inspector open, creates KEYS
// metered keys (each its own account object), measures sequential calls (Server-Timing), then
// takes a CPU profile of every inspector target (the worker's isolate; the Durable Objects of
// the same script run in it too) while wrk drives POST /v1/chat/completions across the keys.
//
// Build with names first: bench/build-prof.sh [DIR] (scripts/build.sh with PROFILE=1: no
// --strip-debug and no minification).
//
// Env: BUILD (dir with index.js, default build), SECONDS (10), CONNS (16), KEYS (1),
// INTERVAL_US (100), SEQ (300 sequential calls, 0 for none), STREAM=1 (the load's calls
// streamed), PERSIST (a folder for KV and Durable Object storage, e.g. /dev/shm/hfg-prof for tmpfs; default Miniflare's temporary
// folder under os.tmpdir(), /tmp: ext4 here), EPHEMERAL=1 (DO storage in memory),
// NOPROFILE=1 (no profiler: CPU per call without its overhead), OUT (bench/results), TAG.
// Writes OUT/profile-TAG-*.cpuprofile (open in Chrome DevTools) and prints the groups of
// bench/profile-groups.mjs, the top functions by self time, and workerd's process CPU per call.
// The V8 profile samples wall time on the isolate thread: where that thread blocks (SQLite
// commits on a disk filesystem) the time shows up as "busy" in whatever frame is current, so
// on ext4 trust workerd's process CPU, not the profile's µs. To compare builds, use
// bench/ab.mjs (interleaved, CPU from /proc, no profiler).
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { Log, LogLevel, Miniflare } from "miniflare";
import { WebSocket } from "undici";
import { gatewayOptions } from "../e2e/miniflare.mjs";
import { ADMIN, chatBody, createKey, freePort, inBatches, runWrk, startNginx } from "./harness.mjs";
import { analyse, printAnalysis } from "./profile-groups.mjs";

const SECONDS = Number(process.env.SECONDS ?? 10);
const CONNS = Number(process.env.CONNS ?? 16);
const KEYS = Number(process.env.KEYS ?? 1);
const SEQ = Number(process.env.SEQ ?? 300);
const STREAM = Boolean(process.env.STREAM);
const INTERVAL_US = Number(process.env.INTERVAL_US ?? 100);
const BUILD = resolve(process.env.BUILD ?? "build");
const OUT = process.env.OUT ?? "bench/results";
const TAG = process.env.TAG ?? `k${KEYS}-c${CONNS}`;
const work = mkdtempSync(join(tmpdir(), "hfg-prof-"));
mkdirSync(OUT, { recursive: true });
const children = [];

// workerd's CPU (user+system jiffies) from /proc: includes what V8's profiler cannot see
// (HTTP, KJ event loop, SQLite, the Durable Object plumbing in C++).
export function workerdPids(parent = process.pid) {
  return readdirSync("/proc").filter((d) => /^\d+$/.test(d)).filter((d) => {
    try {
      return readFileSync(`/proc/${d}/comm`, "utf8").trim() === "workerd" && Number(readFileSync(`/proc/${d}/stat`, "utf8").split(") ")[1].split(" ")[1]) === parent;
    } catch { return false; }
  });
}
const cpuTicks = (pids) => pids.reduce((a, p) => {
  try { const f = readFileSync(`/proc/${p}/stat`, "utf8").split(") ")[1].split(" "); return a + Number(f[11]) + Number(f[12]); } catch { return a; }
}, 0);
const HZ = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim());

function cdp(wsUrl) {
  return new Promise((res, rej) => {
    const ws = new WebSocket(wsUrl, { headers: { origin: "http://localhost" } });
    let id = 0;
    const pending = new Map();
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (m.id && pending.has(m.id)) {
        const { ok, ko } = pending.get(m.id);
        pending.delete(m.id);
        m.error ? ko(new Error(JSON.stringify(m.error))) : ok(m.result);
      }
    };
    ws.onerror = (e) => rej(e.error ?? new Error("ws error"));
    ws.onopen = () => res({
      send: (method, params = {}) => new Promise((ok, ko) => { const i = ++id; pending.set(i, { ok, ko }); ws.send(JSON.stringify({ id: i, method, params })); }),
      close: () => ws.close(),
    });
  });
}

const { upstream } = await startNginx(work, children);
const inspectorPort = await freePort();
if (process.env.PERSIST) rmSync(process.env.PERSIST, { recursive: true, force: true });
const opts = gatewayOptions({
  bindings: { UPSTREAM_URL: upstream, HF_TOKEN: "hf_bench", ADMIN_TOKEN: ADMIN },
  log: new Log(LogLevel.WARN),
  handleRuntimeStdio: (out, err) => { out.resume(); err.on("data", (d) => process.env.DEBUG_RUNTIME && process.stderr.write(d)); },
  persist: process.env.PERSIST || undefined,
  ...(process.env.NOPROFILE ? {} : { inspectorPort }),
});
opts.workers[0].scriptPath = join(BUILD, "index.js");
if (!process.env.NOPROFILE) opts.workers[0].unsafeInspectorProxy = true;
if (process.env.EPHEMERAL) opts.workers[0].unsafeEphemeralDurableObjects = true;
const mf = new Miniflare(opts);
try {
  const base = (await mf.ready).href.replace(/\/$/, "");
  const keys = await inBatches(KEYS, 8, (i) => createKey(base, { name: `prof-${i}` }));
  const body = chatBody(false);

  if (SEQ > 0) {
    // wall clock per call, sequential: the gateway's Server-Timing and the client's view
    const timing = {}, wall = [];
    for (let i = 0; i < SEQ + 50; i++) {
      const t0 = performance.now();
      const r = await fetch(`${base}/v1/chat/completions`, { method: "POST", body, headers: { "content-type": "application/json", authorization: `Bearer ${keys[i % KEYS]}` } });
      await r.arrayBuffer();
      if (r.status !== 200) throw new Error(`sequential call answered ${r.status}`);
      if (i < 50) continue; // warm-up
      wall.push(performance.now() - t0);
      for (const part of (r.headers.get("server-timing") ?? "").split(",")) {
        const m = /(\w+);dur=(\d+)/.exec(part.trim());
        if (m) (timing[m[1]] ??= []).push(Number(m[2]));
      }
    }
    const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const pick = (xs, q) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length * q)];
    console.log(`sequential calls (c=1, Node fetch, ${wall.length}): wall p50 ${pick(wall, 0.5).toFixed(2)} ms, p90 ${pick(wall, 0.9).toFixed(2)} ms, mean ${mean(wall).toFixed(2)} ms`);
    for (const [k, v] of Object.entries(timing)) {
      const hist = {};
      for (const x of v) hist[x] = (hist[x] ?? 0) + 1;
      console.log(`  server-timing ${k}: mean ${mean(v).toFixed(2)} ms (whole ms each; histogram ${JSON.stringify(hist)})`);
    }
  }

  const target = { name: "gateway", url: base, keys };
  await runWrk(work, target, CONNS, STREAM, 2); // warm-up under load
  const sessions = [];
  if (!process.env.NOPROFILE) {
    const targets = await (await fetch(`http://127.0.0.1:${inspectorPort}/json/list`)).json();
    for (const t of targets) {
      const s = await cdp(t.webSocketDebuggerUrl);
      await s.send("Profiler.enable");
      await s.send("Profiler.setSamplingInterval", { interval: INTERVAL_US });
      sessions.push({ t, s });
    }
  }
  const pids = workerdPids();
  for (const { s } of sessions) await s.send("Profiler.start");
  const c0 = cpuTicks(pids), w0 = performance.now();
  const load = await runWrk(work, target, CONNS, STREAM, SECONDS);
  const c1 = cpuTicks(pids), w1 = performance.now();
  const workerdCpuUs = ((c1 - c0) / HZ) * 1e6;
  console.log(`\nload (${TAG}): wrk c=${CONNS} ${SECONDS}s over ${KEYS} key(s): ${load.requests} calls, ${load.rps.toFixed(0)} req/s, non-2xx ${load.non2xx}, p50 ${(load.p[50] / 1000).toFixed(2)} ms`);
  console.log(`workerd process CPU: ${(workerdCpuUs / 1e6).toFixed(2)} s over ${((w1 - w0) / 1e3).toFixed(1)} s wall = ${(workerdCpuUs / load.requests).toFixed(0)} µs per call (all threads${sessions.length ? ", incl. profiler overhead" : ""})`);
  for (const { t, s } of sessions) {
    const { profile } = await s.send("Profiler.stop");
    s.close();
    const name = (t.title ?? t.id).replace(/[^\w.-]+/g, "_");
    const file = `${OUT}/profile-${TAG}-${name}.cpuprofile`;
    writeFileSync(file, JSON.stringify(profile));
    console.log(`\n== target ${t.title ?? t.id} (${file})`);
    printAnalysis(analyse(profile), load.requests, Number(process.env.TOP ?? 15));
  }
} finally {
  await mf.dispose().catch(() => {});
  for (const c of children) try { process.kill(c.pid, "SIGTERM"); } catch {}
  if (process.env.PERSIST) rmSync(process.env.PERSIST, { recursive: true, force: true });
  rmSync(work, { recursive: true, force: true });
}
process.exit(0);
