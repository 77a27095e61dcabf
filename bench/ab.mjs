// `node bench/ab.mjs DIR_A DIR_B ...`: the metered path of several builds compared interleaved
// on a shared machine. One fake upstream (nginx) and one gateway per build (each its own
// workerd process, all up at once, idle but for its turn); each round runs wrk against every
// build in turn (rotating the order) and reads that build's workerd CPU from /proc. Prints
// per build the median req/s and workerd CPU per call, and per round the ratios to the first.
//
// Env: ROUNDS (5), SECONDS (8), CONNS (16), KEYS (1), PERSIST_ROOT (a folder per build under it
// for DO and KV storage, default /dev/shm: tmpfs; /tmp for ext4), SEQ (0: sequential calls
// per build per round, to compare Server-Timing and wall p50 at c=1 too), STREAM=1 (the load's
// calls streamed).
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
import { Log, LogLevel, Miniflare } from "miniflare";
import { gatewayOptions } from "../e2e/miniflare.mjs";
import { ADMIN, chatBody, createKey, inBatches, median, runWrk, startNginx } from "./harness.mjs";

const ROUNDS = Number(process.env.ROUNDS ?? 5);
const SECONDS = Number(process.env.SECONDS ?? 8);
const CONNS = Number(process.env.CONNS ?? 16);
const STREAM = Boolean(process.env.STREAM);
const KEYS = Number(process.env.KEYS ?? 1);
const SEQ = Number(process.env.SEQ ?? 0);
const ROOT = process.env.PERSIST_ROOT ?? "/dev/shm";
// DIR or DIR@ROOT: a build, and optionally its own storage root (the same build twice, once
// under /tmp and once under /dev/shm, compares ext4 with tmpfs)
const builds = process.argv.slice(2).map((a) => { const [d, root] = a.split("@"); return { dir: resolve(d), root: root ?? ROOT }; });
if (builds.length < 2) throw new Error("usage: node bench/ab.mjs BUILD_DIR BUILD_DIR...");
const work = mkdtempSync(join(tmpdir(), "hfg-ab-"));
const children = [];
const HZ = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim());

const workerdPids = () => new Set(readdirSync("/proc").filter((d) => /^\d+$/.test(d)).filter((d) => {
  try {
    return readFileSync(`/proc/${d}/comm`, "utf8").trim() === "workerd" && Number(readFileSync(`/proc/${d}/stat`, "utf8").split(") ")[1].split(" ")[1]) === process.pid;
  } catch { return false; }
}));
const cpuTicks = (pids) => [...pids].reduce((a, p) => {
  try { const f = readFileSync(`/proc/${p}/stat`, "utf8").split(") ")[1].split(" "); return a + Number(f[11]) + Number(f[12]); } catch { return a; }
}, 0);

const { upstream } = await startNginx(work, children);
const gws = [];
try {
  for (const [i, { dir, root }] of builds.entries()) {
    const persist = join(root, `hfg-ab-${process.pid}-${i}`);
    rmSync(persist, { recursive: true, force: true });
    const before = workerdPids();
    const opts = gatewayOptions({
      bindings: { UPSTREAM_URL: upstream, HF_TOKEN: "hf_bench", ADMIN_TOKEN: ADMIN },
      log: new Log(LogLevel.WARN), handleRuntimeStdio: (out, err) => { out.resume(); err.resume(); }, persist,
    });
    opts.workers[0].scriptPath = join(dir, "index.js");
    const mf = new Miniflare(opts);
    const base = (await mf.ready).href.replace(/\/$/, "");
    const pids = new Set([...workerdPids()].filter((p) => !before.has(p)));
    const keys = await inBatches(KEYS, 8, (k) => createKey(base, { name: `ab-${k}` }));
    const name = `${i}:${basename(dir)}${root === ROOT ? "" : `@${root}`}`;
    gws.push({ name, mf, persist, pids, target: { name: `b${i}`, url: base, keys }, rows: [] });
    await runWrk(work, gws.at(-1).target, CONNS, STREAM, 2); // warm-up
  }
  const body = chatBody(false);
  for (let r = 0; r < ROUNDS; r++) {
    const order = gws.map((_, i) => gws[(i + r) % gws.length]);
    for (const g of order) {
      let seq = {};
      if (SEQ) {
        const wall = [], led = [], up = [];
        for (let i = 0; i < SEQ; i++) {
          const t0 = performance.now();
          const res = await fetch(`${g.target.url}/v1/chat/completions`, { method: "POST", body, headers: { "content-type": "application/json", authorization: `Bearer ${g.target.keys[i % KEYS]}` } });
          await res.arrayBuffer();
          wall.push(performance.now() - t0);
          const st = res.headers.get("server-timing") ?? "";
          led.push(Number(/ledger;dur=(\d+)/.exec(st)?.[1] ?? NaN));
          up.push(Number(/upstream;dur=(\d+)/.exec(st)?.[1] ?? NaN));
        }
        const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
        seq = { wall_p50: median(wall), ledger_mean: mean(led), upstream_mean: mean(up) };
      }
      const c0 = cpuTicks(g.pids);
      const load = await runWrk(work, g.target, CONNS, STREAM, SECONDS);
      const cpu = ((cpuTicks(g.pids) - c0) / HZ) * 1e6;
      g.rows.push({ rps: load.rps, cpu_us: cpu / load.requests, p50_ms: load.p[50] / 1000, non2xx: load.non2xx, ...seq });
    }
    const ref = gws[0].rows.at(-1);
    console.log(`round ${r + 1}: ` + gws.map((g) => {
      const x = g.rows.at(-1);
      return `${g.name} ${x.rps.toFixed(0)} req/s ${x.cpu_us.toFixed(0)} µs/call (x${(x.rps / ref.rps).toFixed(3)} rps, x${(x.cpu_us / ref.cpu_us).toFixed(3)} cpu)${x.non2xx ? ` non2xx ${x.non2xx}` : ""}${SEQ ? ` c1 p50 ${x.wall_p50.toFixed(2)} ms` : ""}`;
    }).join(" | "));
  }
  console.log(`\nmedians over ${ROUNDS} rounds (c=${CONNS}, ${KEYS} key(s)${STREAM ? ", streamed" : ""}, ${SECONDS}s each, storage under ${ROOT} unless named):`);
  const ratios = (g, f) => g.rows.map((x, r) => f(x) / f(gws[0].rows[r]));
  for (const g of gws) {
    const m = (f) => median(g.rows.map(f));
    console.log(`  ${g.name.padEnd(20)} ${m((x) => x.rps).toFixed(0).padStart(6)} req/s  ${m((x) => x.cpu_us).toFixed(0).padStart(5)} µs CPU/call  p50 ${m((x) => x.p50_ms).toFixed(2)} ms` +
      `  ratio rps ${median(ratios(g, (x) => x.rps)).toFixed(3)} cpu ${median(ratios(g, (x) => x.cpu_us)).toFixed(3)}` +
      (SEQ ? `  c=1: wall p50 ${m((x) => x.wall_p50).toFixed(2)} ms, ledger ${m((x) => x.ledger_mean).toFixed(2)} ms, upstream ${m((x) => x.upstream_mean).toFixed(2)} ms` : ""));
  }
} finally {
  for (const g of gws) { await g.mf.dispose().catch(() => {}); rmSync(g.persist, { recursive: true, force: true }); }
  for (const c of children) try { process.kill(c.pid, "SIGTERM"); } catch {}
  rmSync(work, { recursive: true, force: true });
}
process.exit(0);
