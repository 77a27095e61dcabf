// `make soak` (not part of `make bench`): the gateway under steady load for a long time, over
// many keys, while keys are revoked and edited, against a provider that keeps its own invoice.
// What a short bench cannot show: memory that grows, ledger failures that come once in ten
// thousand calls, leases that drift from the ledger, money that does not add up at the end.
//
//   - the provider double of the end-to-end tests (e2e/provider_double.mjs): it bills by its
//     own rules, each call in full as it starts, per model id; every key here calls its own
//     model (`soak/k<i>`), so the double's invoice is per key. With PRICES `*` at $1 per 1M
//     tokens, a token is a micro-USD and the invoice compares straight with the ledger;
//   - the gateway on workerd (Miniflare), LEASE_MS at its default unless SOAK_LEASE_MS;
//   - SOAK_KEYS (1,000) `pro` keys, unthrottled; SOAK_HOT (5) of them take half the calls, the
//     rest share the other half; a fifth of the calls are streamed;
//   - SOAK_RPS (100) calls a second, paced, at most SOAK_CONNS (32) in flight (0: as fast as
//     SOAK_CONNS connections go), for SOAK_SECONDS (600);
//   - during the run: cold keys revoked (at 20 %), a hot key's rate limit lowered (35 %), a hot
//     key revoked (50 %), spend caps put on two hot keys, one a little above what it has spent
//     and one far above (65 %), cold keys renamed and their credit lowered (80 %). Each edit's
//     answer time is reported (and whether it came only after the load stopped); a call on a
//     revoked key sent after its revocation was answered must be refused (401).
//
//   - the account objects SOAK_OBJECT_DELAY_MS (5) ms away (BENCH_OBJECT_DELAY_MS): no object is
//     0 ms away in production, and at 5 ms `Server-Timing: ledger;dur=` tells a call that
//     waited for an object (at least 5) from one admitted in its isolate (0); on one machine
//     an object answers in under a millisecond and the header's whole milliseconds cannot.
//
// Reports, every 10 s window and overall: calls/s, answers by status, calls that waited for
// an object (`ledger;dur=` of at least max(1, D) ms; the route's cooldown read, at most once a
// second per key here since every key calls its own model, counts too), workerd's RSS and
// the isolate's wasm heap (`/admin/stats`), ledger failures and other faults in the gateway's
// log. At the end, once the provider has written every answer and every key's ledger has
// stopped moving, the reconciliation: for every key the provider's invoice against what the
// ledger charged it (`GET /admin/keys/{id}`), which must be equal, and its call count against
// the ledger's. Writes bench/results/soak.json.
import http from "node:http";
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { Log, LogLevel, Miniflare } from "miniflare";
import { gatewayOptions } from "../e2e/miniflare.mjs";
import { startProvider } from "../e2e/provider_double.mjs";
import { ADMIN, UNTHROTTLED, admin, faults, inBatches, median } from "./harness.mjs";

const SECONDS = Number(process.env.SOAK_SECONDS ?? 600);
const KEYS = Number(process.env.SOAK_KEYS ?? 1000);
const HOT = Number(process.env.SOAK_HOT ?? 5);
const RPS = Number(process.env.SOAK_RPS ?? 100);
const CONNS = Number(process.env.SOAK_CONNS ?? 32);
const DELAY = Number(process.env.SOAK_OBJECT_DELAY_MS ?? 5);
const LEASE_MS = process.env.SOAK_LEASE_MS;
const STREAM_SHARE = 0.2;
const WINDOW_MS = 10_000;
const OUT = "bench/results";
mkdirSync(OUT, { recursive: true });
const COLD_MS = Math.max(1, DELAY);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const since = (t) => Date.now() - t;
// Counted, not printed: the provider double adds an error listener to the connection for
// every stream it answers (its `sse`), and the gateway keeps its connections alive, so Node
// warns about a listener leak on the double's side once per connection.
const warnings = {};
process.removeAllListeners("warning");
process.on("warning", (w) => (warnings[w.name] = (warnings[w.name] ?? 0) + 1));

// --- the provider, the gateway, its log -----------------------------------------------------
const provider = await startProvider();
// answers in full at once: the soak measures the gateway, not a slow provider
provider.script({ tokensPerEvent: 8 });

const logTally = { lines: 0, calls: 0, ledger: [], other: [], failed_calls: [] };
let partial = "";
function readLog(chunk) {
  const text = partial + chunk;
  const cut = text.lastIndexOf("\n");
  partial = cut < 0 ? text : text.slice(cut + 1);
  if (cut < 0) return;
  const lines = text.slice(0, cut);
  for (const l of lines.split("\n")) {
    logTally.lines++;
    if (l.startsWith('{"call":')) {
      logTally.calls++;
      if (/"status":5\d\d/.test(l) && logTally.failed_calls.length < 20) logTally.failed_calls.push(l);
    }
  }
  const f = faults(lines);
  // keep a few of each to show; count them all
  for (const k of ["ledger", "other"]) for (const l of f[k]) logTally[k].length < 1000 && logTally[k].push(l);
}

const bindings = {
  UPSTREAM_URL: provider.url, HF_TOKEN: "hf_soak", ADMIN_TOKEN: ADMIN, PRICES: JSON.stringify({ "*": { input: 1.0, output: 1.0 } }),
  ...(DELAY ? { BENCH_OBJECT_DELAY_MS: String(DELAY) } : {}), ...(LEASE_MS !== undefined ? { LEASE_MS } : {}),
};
const mf = new Miniflare(gatewayOptions({
  bindings, log: new Log(LogLevel.WARN),
  handleRuntimeStdio: (out, err) => { for (const s of [out, err]) { s.setEncoding("utf8"); s.on("data", readLog); } },
}));
const gw = (await mf.ready).href.replace(/\/$/, "");
const gwUrl = new URL(gw);

/** workerd processes started under this one (Miniflare's runtime), and their resident memory. */
function workerdPids() {
  const procs = new Map();
  for (const p of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, "utf8");
      procs.set(Number(p), { ppid: Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]), comm: readFileSync(`/proc/${p}/comm`, "utf8").trim() });
    } catch {}
  }
  const mine = new Set([process.pid]);
  for (let grew = true; grew;) {
    grew = false;
    for (const [pid, { ppid }] of procs) if (mine.has(ppid) && !mine.has(pid)) mine.add(pid), (grew = true);
  }
  return [...mine].filter((pid) => procs.get(pid)?.comm === "workerd");
}
const rssBytes = (pids) => pids.reduce((n, pid) => {
  try { return n + Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]) * 1024; } catch { return n; }
}, 0);
const mib = (n) => +(n / 1048576).toFixed(1);

// --- keys -----------------------------------------------------------------------------------
const t0 = Date.now();
const keys = await inBatches(KEYS, 16, async (i) => {
  const k = await admin(gw, "POST", "/admin/keys", { plan: "pro", name: `soak-${i}`, rate_limit: UNTHROTTLED });
  return { i, id: k.id, key: k.key, tag: `soak/k${i}`, hot: i < HOT, revokedAt: null, sent: 0, ok: 0 };
});
process.stderr.write(`${KEYS} keys created in ${(since(t0) / 1000).toFixed(1)} s\n`);

// --- load -----------------------------------------------------------------------------------
const agent = new http.Agent({ keepAlive: true, maxSockets: CONNS });
const bodies = new Map();
function bodyOf(k, stream) {
  const id = `${k.tag}|${stream}`;
  if (!bodies.has(id)) {
    bodies.set(id, JSON.stringify({
      model: k.tag, max_tokens: 16, stream, ...(stream ? { stream_options: { include_usage: true } } : {}),
      messages: [{ role: "user", content: "Say something short." }],
    }));
  }
  return bodies.get(id);
}
/**
 * One call: status, wall time, `ledger;dur=`, what the error said. Never throws. A connection
 * reset is retried once on a fresh connection, as the OpenAI clients do, and reported with the
 * status of the answer the connection carried before it (`reset`).
 */
async function call(k, stream) {
  const r = await callOnce(k, stream);
  if (r.status !== "error" || r.code !== "ECONNRESET") return r;
  const again = await callOnce(k, stream);
  return { ...again, reset: r.previous ?? "none" };
}
function callOnce(k, stream) {
  const body = bodyOf(k, stream);
  const started = process.hrtime.bigint();
  return new Promise((resolve) => {
    const req = http.request({ host: gwUrl.hostname, port: gwUrl.port, path: "/v1/chat/completions", method: "POST", agent, timeout: 30_000,
      headers: { "content-type": "application/json", authorization: `Bearer ${k.key}`, "content-length": Buffer.byteLength(body) } }, (res) => {
      const parts = [];
      res.on("data", (c) => res.statusCode !== 200 && parts.push(c));
      res.on("end", () => {
        if (socket) socket.hfgLastStatus = res.statusCode;
        const m = /ledger;dur=(\d+)/.exec(res.headers["server-timing"] ?? "");
        let code = null;
        if (res.statusCode !== 200) try { code = JSON.parse(Buffer.concat(parts).toString()).error?.code ?? null; } catch {}
        resolve({ status: res.statusCode, ms: Number(process.hrtime.bigint() - started) / 1e6, ledger: m ? Number(m[1]) : null, code });
      });
      res.on("error", () => resolve({ status: "reset", ms: 0, ledger: null }));
    });
    let socket = null;
    req.on("socket", (s) => (socket = s));
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", (e) => resolve({ status: e.message === "timeout" ? "timeout" : "error", ms: 0, ledger: null, code: e.code ?? e.message, previous: socket?.hfgLastStatus }));
    req.end(body);
  });
}

const windows = [];
const newWindow = (start) => ({ start, calls: 0, statuses: {}, waited: 0, waited_hot: 0, hot: 0, cooldown_candidates: 0, latencies: [], rss: null, wasm: null });
let win = newWindow(0);
const totals = { calls: 0, statuses: {}, codes: {}, waited: 0, hot: 0, waited_hot: 0, cooldown_candidates: 0, after_revocation_admitted: 0, after_revocation_sent: 0, resets: {}, ledger_ms: {} };
const BUCKETS = [[0, "0"], [1, "1-4"], [5, "5-9"], [10, "10-49"], [50, "50-199"], [200, ">=200"]];
const bucket = (x) => BUCKETS.filter(([lo]) => x >= lo).at(-1)[1];
const lastRead = new Map(); // key -> when this isolate last read its route's cooldown (as far as we can tell)
const cold = KEYS - HOT;
const pick = () => (Math.random() < 0.5 || cold === 0 ? keys[Math.floor(Math.random() * HOT)] : keys[HOT + Math.floor(Math.random() * cold)]);

let running = true;
let loadEnded = null;
const loadStart = Date.now();
let nextDue = loadStart;
async function worker() {
  while (running) {
    if (RPS > 0) {
      // paced: a stall (the machine is shared) is made up for by at most a second of calls,
      // not by a burst of everything it missed
      const due = Math.max(nextDue, Date.now() - 1000);
      nextDue = due + 1000 / RPS;
      const wait = due - Date.now();
      if (wait > 0) await sleep(wait);
      if (!running) break;
    }
    const k = pick();
    const stream = Math.random() < STREAM_SHARE;
    const sentAt = Date.now();
    const afterRevocation = k.revokedAt !== null && sentAt > k.revokedAt;
    // the route's cooldown is read at most once a second per isolate: the first call of a key
    // in a second may wait for that object even when its admission is local
    const candidate = sentAt - (lastRead.get(k.i) ?? 0) >= 1000;
    if (candidate) lastRead.set(k.i, sentAt);
    k.sent++;
    const r = await call(k, stream);
    if (r.status === 200) k.ok++;
    const w = win;
    for (const t of [w, totals]) {
      t.calls++;
      t.statuses[r.status] = (t.statuses[r.status] ?? 0) + 1;
      if (r.ledger !== null && r.ledger >= COLD_MS) t.waited++;
      if (k.hot) {
        t.hot++;
        if (r.ledger !== null && r.ledger >= COLD_MS) {
          t.waited_hot++;
          // not its key's first call in a second: the wait was not the cooldown read (as far
          // as the client can tell), so its admission went to the object
          if (!candidate) t.waited_hot_admission = (t.waited_hot_admission ?? 0) + 1;
        }
      }
      if (candidate) t.cooldown_candidates++;
    }
    if (r.code) totals.codes[`${r.status} ${r.code}`] = (totals.codes[`${r.status} ${r.code}`] ?? 0) + 1;
    if (r.reset) totals.resets[`after ${r.reset}`] = (totals.resets[`after ${r.reset}`] ?? 0) + 1;
    if (r.ledger !== null) totals.ledger_ms[bucket(r.ledger)] = (totals.ledger_ms[bucket(r.ledger)] ?? 0) + 1;
    w.latencies.push(r.ms);
    if (afterRevocation) {
      totals.after_revocation_sent++;
      if (r.status === 200) totals.after_revocation_admitted++;
    }
  }
}

// --- edits during the run -------------------------------------------------------------------
const edits = [];
async function edit(what, k, method, body) {
  const t = Date.now();
  let status = 0;
  try {
    const res = await fetch(`${gw}/admin/keys/${k.id}`, { method, headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" }, body: body && JSON.stringify(body) });
    status = res.status;
    await res.text();
  } catch (e) {
    status = e.message;
  }
  const answeredMs = since(t);
  if (method === "DELETE" && status === 200) k.revokedAt = Date.now();
  // an edit still waiting when the load stops (its key's leases renewed all along) says so
  const afterLoad = loadEnded === null ? null : Date.now() - loadEnded;
  edits.push({ at_s: +((t - loadStart) / 1000).toFixed(1), what, key: k.i, hot: k.hot, status, answered_ms: answeredMs, answered_after_load_stopped_ms: afterLoad });
  return status;
}
/** A key's usage document (`credits`, `requests`), read through the admin API: it answers for revoked keys too. */
async function usageOf(k) {
  return (await admin(gw, "GET", `/admin/keys/${k.id}`)).usage ?? {};
}
const SCHEDULE = [
  [0.2, "revoke 3 cold keys", async () => { for (const k of keys.slice(HOT, HOT + 3)) await edit("revoke", k, "DELETE"); }],
  [0.35, "lower a hot key's rate limit", async () => { await edit("rate_limit lowered", keys[Math.min(1, HOT - 1)], "PATCH", { rate_limit: { rpm: 6_000_000, burst: 1_000_000 } }); }],
  [0.5, "revoke a hot key", async () => { await edit("revoke", keys[0], "DELETE"); }],
  // one cap it soon reaches, one far above what it will spend (both lower a limit: no cap
  // before), in parallel so one's wait does not delay the other
  [0.65, "a spend cap on two hot keys", () => Promise.all([[Math.min(2, HOT - 1), 5_000], [Math.min(3, HOT - 1), 10_000_000]].map(async ([i, room]) => {
    const k = keys[i];
    const used = (await usageOf(k)).credits?.used_micro_usd ?? 0;
    k.cap = used + room;
    await edit(`spend cap ${k.cap} (spent ${used})`, k, "PATCH", { spend_cap_micro_usd: k.cap });
  }))],
  [0.8, "rename and lower the credit of 3 cold keys", async () => {
    for (const k of keys.slice(HOT + 3, HOT + 6)) {
      await edit("renamed", k, "PATCH", { name: `soak-renamed-${k.i}` });
      await edit("credit lowered", k, "PATCH", { monthly_credit_micro_usd: 1_000_000 });
    }
  }],
];

// --- run ------------------------------------------------------------------------------------
const pids = workerdPids();
const baseline = rssBytes(pids);
const stats = async () => {
  try { return (await admin(gw, "GET", "/admin/stats")).isolate?.wasm_memory_bytes ?? null; } catch { return null; }
};
const workers = Array.from({ length: CONNS }, worker);
const pending = [...SCHEDULE];
const editRuns = [];
while (since(loadStart) < SECONDS * 1000) {
  await sleep(Math.min(WINDOW_MS, SECONDS * 1000 - since(loadStart)));
  while (pending.length && since(loadStart) >= pending[0][0] * SECONDS * 1000) editRuns.push(pending.shift()[2]());
  // the provider double records every call whole; keep only what the reconciliation reads
  for (const c of provider.calls) if (c.finished !== null && c.json !== undefined) c.json = c.headers = c.done = undefined;
  const w = win;
  win = newWindow(since(loadStart));
  w.rss = rssBytes(pids);
  w.wasm = await stats();
  w.end = since(loadStart);
  // the machine is shared: a window that stalls while someone else builds says so
  w.load1 = +loadavg()[0].toFixed(2);
  windows.push(w);
  const secs = (w.end - w.start) / 1000;
  process.stderr.write(`${Math.round(w.end / 1000)} s: ${(w.calls / secs).toFixed(0)} calls/s, ${JSON.stringify(w.statuses)}, waited ${w.waited}, p50 ${median(w.latencies)?.toFixed(1)} ms, RSS ${mib(w.rss)} MiB, wasm ${w.wasm === null ? "-" : mib(w.wasm)} MiB, load ${w.load1}\n`);
}
running = false;
await Promise.all(workers);
const loadMs = since(loadStart);
loadEnded = Date.now();
await Promise.all(editRuns);

// --- settle, then reconcile -----------------------------------------------------------------
const settleStart = Date.now();
await Promise.race([provider.idle(), sleep(60_000)]);
/** Every key's ledger, once nothing is held and two reads agree (or after `ms`). */
async function settled(ms = 60_000) {
  const until = Date.now() + ms;
  const last = new Map();
  let todo = keys;
  while (todo.length && Date.now() < until) {
    const reads = await inBatches(todo.length, 16, async (i) => [todo[i], await usageOf(todo[i]).catch(() => null)]);
    const again = [];
    for (const [k, u] of reads) {
      const prev = last.get(k.i);
      last.set(k.i, u);
      const c = u?.credits;
      const still = !c || c.reserved_micro_usd !== 0 || !prev?.credits || prev.credits.used_micro_usd !== c.used_micro_usd || prev.requests !== u.requests;
      if (still) again.push(k);
    }
    todo = again;
    if (todo.length) await sleep(500);
  }
  return { ledgers: last, unsettled: todo.length };
}
const { ledgers, unsettled } = await settled();
const settleMs = since(settleStart);
const recon = { keys: KEYS, equal: 0, undercharged: [], overcharged: [], invoice_total: 0, charged_total: 0, unmetered_total: 0, overrun_total: 0, unsettled, calls_mismatch: [] };
for (const k of keys) {
  const ledger = ledgers.get(k.i) ?? {};
  const c = ledger.credits ?? {};
  const invoice = provider.invoice(k.tag);
  const charged = c.key_used_micro_usd ?? c.used_micro_usd ?? 0;
  recon.invoice_total += invoice;
  recon.charged_total += charged;
  recon.unmetered_total += c.unmetered_micro_usd ?? 0;
  recon.overrun_total += c.overrun_micro_usd ?? 0;
  const row = { key: k.i, hot: k.hot, invoice, charged, reserved: c.reserved_micro_usd, unmetered: c.unmetered_micro_usd, calls_ok: k.ok, provider_calls: provider.callsFor(k.tag).length };
  if (invoice === charged) recon.equal++;
  else if (invoice > charged) recon.undercharged.push(row);
  else recon.overcharged.push(row);
  if (k.cap !== undefined) (recon.capped ??= []).push({ key: k.i, cap: k.cap, charged, within: charged <= k.cap });
  // the provider saw every call the gateway let through; the client saw every answer
  if (row.provider_calls !== k.ok) recon.calls_mismatch.push({ key: k.i, client_200: k.ok, provider_calls: row.provider_calls, ledger_requests: ledger.requests });
}

// --- report ---------------------------------------------------------------------------------
const afterWarm = windows.filter((w) => w.end > Math.min(60_000, loadMs / 3));
const rssSeries = windows.map((w) => ({ t_s: Math.round(w.end / 1000), load1: w.load1, rss_mib: mib(w.rss), wasm_mib: w.wasm === null ? null : mib(w.wasm), calls_per_s: +(w.calls / ((w.end - w.start) / 1000)).toFixed(1), waited: w.waited, statuses: w.statuses, p50_ms: +(median(w.latencies) ?? 0).toFixed(2), p99_ms: +([...w.latencies].sort((a, b) => a - b)[Math.floor(w.latencies.length * 0.99)] ?? 0).toFixed(2) }));
// least-squares slope of RSS after warm-up, MiB per minute
function slope(pts) {
  if (pts.length < 2) return null;
  const xs = pts.map((w) => w.end / 60_000), ys = pts.map((w) => w.rss / 1048576);
  const mx = xs.reduce((a, b) => a + b) / xs.length, my = ys.reduce((a, b) => a + b) / ys.length;
  const num = xs.reduce((a, x, i) => a + (x - mx) * (ys[i] - my), 0), den = xs.reduce((a, x) => a + (x - mx) ** 2, 0);
  return den ? +(num / den).toFixed(3) : null;
}
const logFaults = { ledger_failures: logTally.ledger.length, other_faults: logTally.other.length, call_lines: logTally.calls };
const result = {
  meta: {
    date: new Date().toISOString(), seconds: SECONDS, keys: KEYS, hot: HOT, rps_target: RPS, conns: CONNS, stream_share: STREAM_SHARE,
    object_delay_ms: DELAY, lease_ms: LEASE_MS ?? "default", waited_threshold_ms: COLD_MS, load_ms: loadMs, settle_ms: settleMs,
  },
  load: {
    calls: totals.calls, calls_per_s: +(totals.calls / (loadMs / 1000)).toFixed(1), statuses: totals.statuses, error_codes: totals.codes,
    resets_retried: totals.resets, ledger_ms_histogram: totals.ledger_ms,
    waited_for_object: totals.waited, waited_share: +(totals.waited / totals.calls).toFixed(4),
    hot_calls: totals.hot, hot_waited: totals.waited_hot, hot_waited_share: totals.hot ? +(totals.waited_hot / totals.hot).toFixed(4) : null,
    hot_waited_not_first_in_second: totals.waited_hot_admission ?? 0,
    cold_calls: totals.calls - totals.hot, cold_waited: totals.waited - totals.waited_hot, cold_waited_share: totals.calls - totals.hot ? +((totals.waited - totals.waited_hot) / (totals.calls - totals.hot)).toFixed(4) : null,
    cooldown_read_candidates: totals.cooldown_candidates,
    after_revocation: { sent: totals.after_revocation_sent, admitted: totals.after_revocation_admitted },
  },
  memory: {
    baseline_mib: mib(baseline), after_warmup_mib: afterWarm.length ? mib(afterWarm[0].rss) : null, end_mib: windows.length ? mib(windows.at(-1).rss) : null,
    max_mib: windows.length ? mib(Math.max(...windows.map((w) => w.rss))) : null, slope_after_warmup_mib_per_min: slope(afterWarm),
    wasm_end_mib: windows.at(-1)?.wasm == null ? null : mib(windows.at(-1).wasm),
  },
  edits,
  log: { ...logFaults, ledger_examples: logTally.ledger.slice(0, 5), other_examples: logTally.other.slice(0, 5), failed_call_examples: logTally.failed_calls },
  node_warnings: warnings,
  reconciliation: { ...recon, undercharged: recon.undercharged.slice(0, 20), overcharged: recon.overcharged.slice(0, 20), undercharged_keys: recon.undercharged.length, overcharged_keys: recon.overcharged.length, calls_mismatch: recon.calls_mismatch.slice(0, 20), calls_mismatch_keys: recon.calls_mismatch.length },
  windows: rssSeries,
};
writeFileSync(`${OUT}/soak.json`, JSON.stringify(result, null, 2));

const L = result.load, M = result.memory, R = result.reconciliation;
const pct = (x) => (x === null ? "-" : `${(x * 100).toFixed(1)} %`);
console.log(`\nhf-gate soak: ${(loadMs / 1000).toFixed(0)} s, ${KEYS} keys (${HOT} hot with half the calls), target ${RPS || "unpaced"} calls/s, ${CONNS} connections, ${STREAM_SHARE * 100} % streamed, LEASE_MS ${LEASE_MS ?? "default"}, objects ${DELAY} ms away`);
console.log(`calls: ${L.calls} (${L.calls_per_s}/s); answers: ${JSON.stringify(L.statuses)}; refusals: ${JSON.stringify(L.error_codes)}`);
console.log(`connection resets (retried once; by the status the connection answered before): ${JSON.stringify(L.resets_retried)}`);
console.log(`ledger;dur= (ms) of every answer that carried it: ${JSON.stringify(L.ledger_ms_histogram)}`);
console.log(`waited for an object (ledger;dur >= ${COLD_MS} ms): ${L.waited_for_object} (${pct(L.waited_share)}); hot keys ${L.hot_waited}/${L.hot_calls} (${pct(L.hot_waited_share)}; ${L.hot_waited_not_first_in_second} of them not the key's first call in a second, so not the cooldown read), cold keys ${L.cold_waited}/${L.cold_calls} (${pct(L.cold_waited_share)}); calls that were a key's first in a second (its route's cooldown may be read): ${L.cooldown_read_candidates}`);
console.log(`revoked keys: ${L.after_revocation.sent} calls sent after the revocation answered, ${L.after_revocation.admitted} admitted`);
console.log(`workerd RSS: baseline ${M.baseline_mib} MiB, after warm-up ${M.after_warmup_mib}, end ${M.end_mib}, max ${M.max_mib}; slope after warm-up ${M.slope_after_warmup_mib_per_min} MiB/min; wasm heap at the end ${M.wasm_end_mib} MiB`);
console.log(`RSS over time (MiB): ${rssSeries.map((w) => `${w.t_s}s ${w.rss_mib}`).join(", ")}`);
console.log(`gateway log: ${logFaults.call_lines} call lines, ${logFaults.ledger_failures} ledger failures, ${logFaults.other_faults} other faults${logTally.ledger[0] ? `; e.g. ${logTally.ledger[0].slice(0, 300)}` : ""}${logTally.other[0] ? `; e.g. ${logTally.other[0].slice(0, 300)}` : ""}`);
if (logTally.failed_calls.length) console.log(`  5xx call lines, e.g. ${logTally.failed_calls.slice(0, 2).join(" ")}`);
if (Object.keys(warnings).length) console.log(`node warnings (the load generator's process, provider double included): ${JSON.stringify(warnings)}`);
console.log(`edits (answer times): ${edits.map((e) => `${e.what} key ${e.key}${e.hot ? " (hot)" : ""} ${e.status} in ${e.answered_ms} ms${e.answered_after_load_stopped_ms === null ? "" : ` (${e.answered_after_load_stopped_ms} ms after the load stopped)`}`).join("; ")}`);
console.log(`reconciliation after ${(settleMs / 1000).toFixed(1)} s of settling (${R.unsettled} keys still moving): invoice == charged for ${R.equal}/${R.keys} keys; undercharged ${R.undercharged_keys}, overcharged ${R.overcharged_keys}; totals invoice ${R.invoice_total}, charged ${R.charged_total} micro-USD (unmetered ${R.unmetered_total}, overrun ${R.overrun_total})`);
if (R.undercharged_keys) console.log(`  undercharged, e.g. ${JSON.stringify(R.undercharged.slice(0, 3))}`);
if (R.overcharged_keys) console.log(`  overcharged, e.g. ${JSON.stringify(R.overcharged.slice(0, 3))}`);
for (const c of R.capped ?? []) console.log(`  capped key ${c.key}: cap ${c.cap}, charged ${c.charged} (${c.within ? "within" : "OVER"} the cap)`);
console.log(`  calls: ${R.calls_mismatch_keys} keys whose 200s differ from the provider's calls${R.calls_mismatch_keys ? `, e.g. ${JSON.stringify(R.calls_mismatch.slice(0, 3))}` : ""}`);
console.log(`\nwrote ${OUT}/soak.json`);

agent.destroy();
await mf.dispose();
await provider.close();
process.exit(0);
