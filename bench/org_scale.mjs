// `make bench` (org scale): what a call costs when its org's ledger holds thousands of keys.
// An org's keys share one account Durable Object whose state lists every key that has been
// seen, so its cost can grow with the org. Measured here on one gateway (workerd via
// Miniflare) against the fake upstream:
//   - an org with 1 key, against an org with BENCH_ORG_KEYS keys (default 5,000) that have
//     each made a call, with load spread across 64 of them, and on one of them alone;
//     interleaved in rounds, concurrency 1 and 16, non-streamed (p50/p99, req/s);
//   - what building that org took: the keys created through the admin API in parallel
//     batches, then one call per key;
//   - `GET /admin/keys` (it answers every key in one page), `GET /admin/orgs/{id}` and
//     `GET /v1/usage` at that size.
// Prints a table and writes bench/results/org_scale.json. BENCH_ROUNDS and BENCH_SECONDS as
// for bench/run.mjs.
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Miniflare } from "miniflare";
import { gatewayOptions } from "../e2e/miniflare.mjs";
import { ADMIN, UNTHROTTLED, admin, callHeaders, chatBody, createKey, inBatches, median, ms, runWrk, startNginx } from "./harness.mjs";

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const ORG_KEYS = Number(process.env.BENCH_ORG_KEYS ?? 5000);
const SPREAD = 64;
// admin calls and first calls in flight at once: enough to keep both cores busy
const WIDTH = 16;
const OUT = "bench/results";
const work = mkdtempSync(join(tmpdir(), "hfg-orgscale-"));
mkdirSync(OUT, { recursive: true });
const children = [];
const since = (t) => Date.now() - t;
const elapsed = (t0) => `${Math.round(since(t0) / 1000)} s`;

/** Milliseconds of `n` sequential `GET`s of `path` with `key`, and the last answer's size. */
async function timeGets(label, url, path, key, n) {
  const times = [];
  let status = 0;
  let bytes = 0;
  let count = null;
  const once = () => fetch(`${url}${path}`, { headers: { authorization: `Bearer ${key}` } });
  // a kept-alive connection that workerd closed while the load ran fails at once, before the
  // read being timed has started: try again on a fresh one
  const get = () => once().catch(once);
  for (let i = 0; i < n; i++) {
    const t = process.hrtime.bigint();
    const res = await get();
    const body = await res.text();
    times.push(Number(process.hrtime.bigint() - t) / 1e6);
    status = res.status;
    bytes = body.length;
    try {
      count = JSON.parse(body).data?.length ?? null;
    } catch {}
  }
  return { read: label, status, median_ms: +median(times).toFixed(1), max_ms: +Math.max(...times).toFixed(1), bytes, entries: count, n };
}

async function main() {
  const t0 = Date.now();
  const ng = await startNginx(work, children);
  // the gateway logs a JSON line per call: read and dropped, not printed 5,000 times
  const mf = new Miniflare(gatewayOptions({
    bindings: { UPSTREAM_URL: ng.upstream, HF_TOKEN: "hf_bench", ADMIN_TOKEN: ADMIN },
    handleRuntimeStdio: (out, err) => { out.resume(); err.resume(); },
  }));
  try {
    const url = (await mf.ready).href.replace(/\/$/, "");
    // the most seats an org may have: credit far above any load here
    const org = (id) => admin(url, "POST", "/admin/orgs", { id, plan: "team", seats: 100_000, rate_limit: UNTHROTTLED });
    await org("org-small");
    await org("org-big");
    const small = await createKey(url, { org: "org-small", name: "small-0" });

    let t = Date.now();
    const big = await inBatches(ORG_KEYS, WIDTH, (i) => createKey(url, { org: "org-big", name: `big-${i}` }));
    const createMs = since(t);
    process.stderr.write(`${ORG_KEYS} keys created in one org in ${(createMs / 1000).toFixed(1)} s (${elapsed(t0)})\n`);

    t = Date.now();
    const firstCall = async (key) => {
      const res = await fetch(`${url}/v1/chat/completions`, { method: "POST", headers: callHeaders({}, key, false), body: chatBody(false) });
      await res.arrayBuffer();
      return res.status;
    };
    const statuses = await inBatches(ORG_KEYS, WIDTH, (i) => firstCall(big[i]));
    const callMs = since(t);
    const notOk = statuses.filter((s) => s !== 200).length;
    if (notOk) throw new Error(`${notOk} of the ${ORG_KEYS} first calls were not answered 200: ${JSON.stringify(statuses.filter((s) => s !== 200).slice(0, 5))}`);
    if ((await firstCall(small)) !== 200) throw new Error("the 1-key org's first call was not answered 200");
    process.stderr.write(`one call per key made in ${(callMs / 1000).toFixed(1)} s (${elapsed(t0)})\n`);

    // 64 keys spread over the whole org, not its first 64
    const spread = Array.from({ length: SPREAD }, (_, i) => big[Math.floor((i * ORG_KEYS) / SPREAD)]);
    const targets = [
      { name: "org1", label: "org of 1 key", url, keys: [small] },
      { name: "orgbig", label: `org of ${ORG_KEYS} keys, ${SPREAD} of them`, url, keys: spread },
      { name: "orgbig1", label: `org of ${ORG_KEYS} keys, 1 of them`, url, keys: [big[0]] },
    ];
    const runs = [];
    for (let round = 1; round <= ROUNDS; round++) {
      for (const conns of [1, 16]) {
        for (const target of targets) {
          const r = await runWrk(work, target, conns, false, SECONDS);
          runs.push({ round, target: target.name, conns, ...r });
          if (r.errors || r.non2xx) console.error(`warning: ${target.name} c=${conns}: ${r.errors} errors, ${r.non2xx} non-2xx`);
        }
      }
      process.stderr.write(`round ${round}/${ROUNDS} done (${elapsed(t0)})\n`);
    }

    const reads = [
      await timeGets("GET /admin/keys", url, "/admin/keys", ADMIN, 3),
      await timeGets("GET /admin/orgs/{big org}", url, "/admin/orgs/org-big", ADMIN, 5),
      await timeGets("GET /admin/orgs/{1-key org}", url, "/admin/orgs/org-small", ADMIN, 5),
      await timeGets("GET /v1/usage, big-org key", url, "/v1/usage", big[0], 5),
      await timeGets("GET /v1/usage, 1-key-org key", url, "/v1/usage", small, 5),
    ];

    const summary = [];
    for (const conns of [1, 16]) {
      for (const target of targets) {
        const rows = runs.filter((r) => r.target === target.name && r.conns === conns);
        // each row against the 1-key org of the same round, then the median over rounds
        const vsSmall = median(rows.map((r) => r.rps / runs.find((s) => s.round === r.round && s.conns === conns && s.target === "org1").rps));
        summary.push({
          target: target.name, label: target.label, conns, rps: Math.round(median(rows.map((r) => r.rps))), p50_ms: +ms(median(rows.map((r) => r.p["50"]))),
          p99_ms: +ms(median(rows.map((r) => r.p["99"]))), vs_1_key_org: +vsSmall.toFixed(3), errors: rows.reduce((a, r) => a + r.errors + r.non2xx, 0),
        });
      }
    }
    const build = { keys: ORG_KEYS, parallel: WIDTH, create_s: +(createMs / 1000).toFixed(1), create_per_s: Math.round(ORG_KEYS / (createMs / 1000)), first_calls_s: +(callMs / 1000).toFixed(1), first_calls_per_s: Math.round(ORG_KEYS / (callMs / 1000)) };
    const meta = { date: new Date().toISOString(), rounds: ROUNDS, seconds_per_run: SECONDS, cpus: (await import("node:os")).cpus().length, load: "wrk, non-streamed chat completions" };
    writeFileSync(`${OUT}/org_scale.json`, JSON.stringify({ meta, build, summary, reads, runs }, null, 2));

    const pad = (v, n) => String(v).padStart(n);
    console.log(`\norg scale: ${ROUNDS} interleaved rounds of ${SECONDS} s per cell, wrk, ${meta.cpus} cores`);
    console.log(`building the org: ${ORG_KEYS} keys created ${WIDTH} at a time in ${build.create_s} s (${build.create_per_s}/s), then one call each in ${build.first_calls_s} s (${build.first_calls_per_s}/s)\n`);
    console.log(`${"calls".padEnd(32)}${pad("c", 4)}${pad("req/s", 9)}${pad("p50 ms", 9)}${pad("p99 ms", 9)}${pad("x 1-key org", 13)}${pad("errors", 8)}`);
    for (const r of summary) console.log(`${r.label.padEnd(32)}${pad(r.conns, 4)}${pad(r.rps, 9)}${pad(r.p50_ms.toFixed(2), 9)}${pad(r.p99_ms.toFixed(2), 9)}${pad(r.vs_1_key_org.toFixed(3), 13)}${pad(r.errors, 8)}`);
    console.log(`\n${"read".padEnd(32)}${pad("status", 7)}${pad("median ms", 11)}${pad("max ms", 9)}${pad("entries", 9)}${pad("bytes", 10)}`);
    for (const r of reads) console.log(`${r.read.padEnd(32)}${pad(r.status, 7)}${pad(r.median_ms.toFixed(1), 11)}${pad(r.max_ms.toFixed(1), 9)}${pad(r.entries ?? "-", 9)}${pad(r.bytes, 10)}`);
    console.log(`\nwrote ${OUT}/org_scale.json in ${elapsed(t0)}`);
  } finally {
    await mf.dispose().catch(() => {});
    for (const c of children) {
      try {
        process.kill(c.pid, "SIGTERM");
      } catch {}
    }
  }
}

await main();
process.exit(0);
