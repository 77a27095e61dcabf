// `make bench` (distance): what it costs a call that its account's Durable Object is far away,
// and what leases save of it. On one machine an object is a fraction of a millisecond off; in
// production the nearest copy of an account's object can be a continent away. The gateway's
// BENCH_OBJECT_DELAY_MS=D (refused outside local runs) makes every call to an object wait D ms
// first, so here the objects are D ms away.
//
// Targets, interleaved in rounds (wrk, concurrency 1, non-streamed, one key each, warmed up):
// the pass-through worker of bench/run.mjs (the floor any gateway on workerd stands on), and
// the gateway four times, each its own workerd: D = 0 and D = DISTANCE (default 50), each with
// leasing on (LEASE_MS at its default: a warm key is admitted in its isolate) and with
// LEASE_MS=0 (every call is admitted by its object). Reports the p50 each adds over the
// pass-through within a round, and what D adds to that: a warm key should pay nothing for D,
// a key without leases at least D per call. A sequential sample per round (Node, keep-alive)
// reads each answer's `Server-Timing: ledger;dur=` to count the calls that waited for an
// object (at D > 0: a ledger time of at least D; the route's cooldown read, once a second,
// counts too). Writes bench/results/distance.json.
//
// Env: BENCH_ROUNDS (3), BENCH_SECONDS (3) as bench/run.mjs; BENCH_DISTANCE_MS (50);
// BENCH_DISTANCE_SAMPLE (200 sequential calls per target and round).
import http from "node:http";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Miniflare } from "miniflare";
import { gatewayOptions } from "../e2e/miniflare.mjs";
import { PASS_THROUGH } from "./pass_through.mjs";
import { ADMIN, chatBody, createKey, faults, median, ms, runWrk, startNginx } from "./harness.mjs";

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const DISTANCE = Number(process.env.BENCH_DISTANCE_MS ?? 50);
const SAMPLE = Number(process.env.BENCH_DISTANCE_SAMPLE ?? 200);
const OUT = "bench/results";
const work = mkdtempSync(join(tmpdir(), "hfg-distance-"));
mkdirSync(OUT, { recursive: true });
const children = [];
const cleanups = [];
const gatewayLog = [];

const GATEWAYS = [
  { name: "warm_d0", label: "leasing on, D=0", lease: true, d: 0 },
  { name: "off_d0", label: "LEASE_MS=0, D=0", lease: false, d: 0 },
  { name: "warm_d", label: `leasing on, D=${DISTANCE}`, lease: true, d: DISTANCE },
  { name: "off_d", label: `LEASE_MS=0, D=${DISTANCE}`, lease: false, d: DISTANCE },
];

async function startTargets() {
  const ng = await startNginx(work, children);
  const pass = new Miniflare({ modules: true, compatibilityDate: "2026-04-01", host: "127.0.0.1", port: 0, cf: false, script: PASS_THROUGH, bindings: { UPSTREAM: ng.upstream, TOKEN: "hf_bench" } });
  cleanups.push(() => pass.dispose());
  const targets = [{ name: "pass", label: "pass-through worker", url: (await pass.ready).href.replace(/\/$/, ""), keys: ["none"] }];
  for (const g of GATEWAYS) {
    const bindings = { UPSTREAM_URL: ng.upstream, HF_TOKEN: "hf_bench", ADMIN_TOKEN: ADMIN, BENCH_OBJECT_DELAY_MS: String(g.d), ...(g.lease ? {} : { LEASE_MS: "0" }) };
    const mf = new Miniflare(gatewayOptions({ bindings, handleRuntimeStdio: (out, err) => { for (const s of [out, err]) s.on("data", (d) => gatewayLog.push(String(d))); } }));
    cleanups.push(() => mf.dispose());
    const url = (await mf.ready).href.replace(/\/$/, "");
    targets.push({ ...g, url, keys: [await createKey(url, { name: `distance-${g.name}` })] });
  }
  return targets;
}

/** `n` sequential calls on one kept-alive connection: wall time and `ledger;dur=` of each. */
async function sequential(target, n) {
  const u = new URL(target.url);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const body = chatBody(false);
  const wall = [];
  const ledger = [];
  let failed = 0;
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    const res = await new Promise((resolve, reject) => {
      const req = http.request({ host: u.hostname, port: u.port, path: "/v1/chat/completions", method: "POST", agent,
        headers: { "content-type": "application/json", authorization: `Bearer ${target.keys[0]}`, "content-length": Buffer.byteLength(body) } }, (r) => {
        r.resume();
        r.on("end", () => resolve(r));
        r.on("error", reject);
      });
      req.on("error", reject);
      req.end(body);
    }).catch(() => null);
    if (!res || res.statusCode !== 200) {
      failed++;
      continue;
    }
    wall.push(Number(process.hrtime.bigint() - t0) / 1e3);
    const m = /ledger;dur=(\d+)/.exec(res.headers["server-timing"] ?? "");
    if (m) ledger.push(Number(m[1]));
  }
  agent.destroy();
  return { wall, ledger, failed };
}

async function main() {
  const t0 = Date.now();
  const targets = await startTargets();
  // warm every key (its lease granted, its caches filled) before anything is timed
  for (const t of targets) await runWrk(work, t, 1, false, 1);
  process.stderr.write(`${targets.length} targets up and warm (${Math.round((Date.now() - t0) / 1000)} s)\n`);
  const rows = [];
  for (let round = 1; round <= ROUNDS; round++) {
    for (const t of targets) {
      const r = await runWrk(work, t, 1, false, SECONDS);
      const seq = t.name === "pass" ? null : await sequential(t, SAMPLE);
      rows.push({ round, target: t.name, rps: r.rps, p: r.p, errors: r.errors + r.non2xx, seq });
      if (r.errors || r.non2xx) console.error(`warning: ${t.name}: ${r.errors} errors, ${r.non2xx} non-2xx`);
    }
    process.stderr.write(`round ${round}/${ROUNDS} done (${Math.round((Date.now() - t0) / 1000)} s)\n`);
  }

  const rounds = [...new Set(rows.map((r) => r.round))];
  const at = (round, name) => rows.find((r) => r.round === round && r.target === name);
  // p50 the gateway adds over the pass-through, within each round, median over rounds (µs)
  const added = (name, q = "50") => median(rounds.map((round) => at(round, name).p[q] - at(round, "pass").p[q]));
  const report = GATEWAYS.map((g) => {
    const mine = rows.filter((r) => r.target === g.name);
    const ledger = mine.flatMap((r) => r.seq.ledger);
    // a call that waited for an object: at D > 0 its ledger time is at least D; at D = 0 an
    // object is under a millisecond away and the header (whole ms) cannot tell
    const waited = g.d > 0 ? ledger.filter((x) => x >= g.d).length : null;
    return {
      target: g.name, label: g.label, leasing: g.lease, distance_ms: g.d,
      rps: Math.round(median(mine.map((r) => r.rps))),
      p50_ms: +ms(median(mine.map((r) => r.p["50"]))), p99_ms: +ms(median(mine.map((r) => r.p["99"]))),
      added_p50_over_pass_ms: +ms(added(g.name)), added_p99_over_pass_ms: +ms(added(g.name, "99")),
      sample_calls: ledger.length, sample_failed: mine.reduce((a, r) => a + r.seq.failed, 0),
      ledger_p50_ms: ledger.length ? median(ledger) : null,
      waited_for_object: waited, waited_share: waited === null || !ledger.length ? null : +(waited / ledger.length).toFixed(4),
      errors: mine.reduce((a, r) => a + r.errors, 0),
    };
  });
  const by = (name) => report.find((r) => r.target === name);
  // what D costs each, within a round: (added at D) - (added at 0)
  const cost = (far, near) => +ms(median(rounds.map((round) => (at(round, far).p["50"] - at(round, "pass").p["50"]) - (at(round, near).p["50"] - at(round, "pass").p["50"]))));
  const verdict = {
    distance_ms: DISTANCE,
    warm_key_pays_ms: cost("warm_d", "warm_d0"),
    lease_off_pays_ms: cost("off_d", "off_d0"),
  };
  verdict.warm_key_pays_nothing = verdict.warm_key_pays_ms < Math.max(1, DISTANCE / 10);
  verdict.lease_off_pays_at_least_d = verdict.lease_off_pays_ms >= DISTANCE - 1; // within a millisecond of timer and scheduling noise
  const { ledger: ledgerFailures, other: otherFaults } = faults(gatewayLog.join(""));
  const pass = rows.filter((r) => r.target === "pass");
  const meta = {
    date: new Date().toISOString(), rounds: ROUNDS, seconds_per_run: SECONDS, sample_per_round: SAMPLE, load: "wrk -c 1, JSON",
    pass_through: { rps: Math.round(median(pass.map((r) => r.rps))), p50_ms: +ms(median(pass.map((r) => r.p["50"]))) },
    gateway_ledger_failures: ledgerFailures.length, gateway_other_faults: otherFaults.length,
  };
  writeFileSync(`${OUT}/distance.json`, JSON.stringify({ meta, verdict, report, runs: rows.map(({ seq, ...r }) => r) }, null, 2));

  const pad = (v, n) => String(v).padStart(n);
  console.log(`\nhf-gate distance: account objects D ms away (BENCH_OBJECT_DELAY_MS), ${ROUNDS} interleaved rounds of ${SECONDS} s, wrk c=1, JSON`);
  console.log(`pass-through worker: ${meta.pass_through.rps} req/s, p50 ${meta.pass_through.p50_ms.toFixed(2)} ms; ledger failures ${ledgerFailures.length}, other faults ${otherFaults.length}\n`);
  console.log(`${"gateway".padEnd(22)}${pad("req/s", 8)}${pad("p50 ms", 9)}${pad("+p50 ms", 9)}${pad("+p99 ms", 9)}${pad("ledger p50", 12)}${pad("waited for an object", 22)}${pad("errors", 8)}`);
  for (const r of report) {
    const waited = r.waited_share === null ? "-" : `${r.waited_for_object}/${r.sample_calls} (${(r.waited_share * 100).toFixed(1)} %)`;
    console.log(`${r.label.padEnd(22)}${pad(r.rps, 8)}${pad(r.p50_ms.toFixed(2), 9)}${pad(r.added_p50_over_pass_ms.toFixed(2), 9)}${pad(r.added_p99_over_pass_ms.toFixed(2), 9)}${pad(r.ledger_p50_ms ?? "-", 12)}${pad(waited, 22)}${pad(r.errors, 8)}`);
  }
  console.log(`\nwhat D=${DISTANCE} ms adds to the p50 over the pass-through (within each round, median):`);
  console.log(`  warm key, leasing on: ${verdict.warm_key_pays_ms.toFixed(2)} ms ${verdict.warm_key_pays_nothing ? "(pays nothing for the distance, as it should)" : "(NOT nothing: a warm key pays for the distance)"}`);
  console.log(`  LEASE_MS=0:           ${verdict.lease_off_pays_ms.toFixed(2)} ms ${verdict.lease_off_pays_at_least_d ? "(about D a call or more, as expected)" : "(LESS than D: unexpected)"}`);
  console.log(`(+p99 and "waited for an object" include the route's cooldown read, once a second per isolate and route)`);
  console.log(`\nwrote ${OUT}/distance.json in ${Math.round((Date.now() - t0) / 1000)} s`);
}

try {
  await main();
} finally {
  for (const c of cleanups) await c().catch(() => {});
  for (const c of children) try { process.kill(c.pid, "SIGTERM"); } catch {}
}
process.exit(0);
