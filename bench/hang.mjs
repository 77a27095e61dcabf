// A quick check for requests the runtime cancels as hung: nginx + the gateway, then wrk on
// one shape of load for a few runs, printing the non-2xx count and the gateway's "hung" lines
// per run. HANG_STREAM (1), HANG_CONNS (16), HANG_KEYS (1), HANG_SECONDS (20), HANG_RUNS (1).
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Log, LogLevel, Miniflare } from "miniflare";
import { gatewayOptions } from "../e2e/miniflare.mjs";
import { ADMIN, createKey, inBatches, runWrk, startNginx } from "./harness.mjs";

const STREAM = (process.env.HANG_STREAM ?? "1") === "1";
const CONNS = Number(process.env.HANG_CONNS ?? 16);
const KEYS = Number(process.env.HANG_KEYS ?? 1);
const SECONDS = Number(process.env.HANG_SECONDS ?? 20);
const RUNS = Number(process.env.HANG_RUNS ?? 1);

const work = mkdtempSync(join(tmpdir(), "hfg-hang-"));
const children = [];
const gatewayLog = [];
const odd = {};
class StatusLog extends Log {
  constructor() {
    super(LogLevel.INFO);
  }
  log(message) {
    const m = /(GET|POST) (\S+) (\d{3}) /.exec(String(message).replace(/\x1b\[[0-9;]*m/g, ""));
    if (m && !m[3].startsWith("2")) odd[m[3]] = (odd[m[3]] ?? 0) + 1;
  }
}

let gw;
try {
  const ng = await startNginx(work, children);
  gw = new Miniflare(gatewayOptions({
    bindings: { UPSTREAM_URL: ng.upstream, HF_TOKEN: "hf_bench", ADMIN_TOKEN: ADMIN },
    handleRuntimeStdio: (o, e) => { for (const s of [o, e]) s.on("data", (d) => gatewayLog.push(String(d))); },
    log: new StatusLog(),
  }));
  const url = (await gw.ready).href.replace(/\/$/, "");
  const keys = await inBatches(KEYS, 8, (i) => createKey(url, { name: `hang-${i}` }));
  const target = { name: "hang", url, keys };
  for (let run = 1; run <= RUNS; run++) {
    const before = gatewayLog.length;
    const r = await runWrk(work, target, CONNS, STREAM, SECONDS);
    await new Promise((res) => setTimeout(res, 1500));
    const lines = gatewayLog.slice(before).join("").split("\n");
    const hung = lines.filter((l) => /hung/.test(l)).length;
    const other = lines.filter((l) => l.trim() && !/hung/.test(l));
    console.log(`run ${run}: stream=${STREAM} c=${CONNS} keys=${KEYS}: ${r.requests} requests, ${r.non2xx} non-2xx, ${r.errors} errors, ${hung} hung lines; statuses ${JSON.stringify(odd)}`);
    if (other.length || hung) {
      const f = `${work}/gateway-run${run}.log`;
      writeFileSync(f, lines.join("\n"));
      console.log(`  ${other.length} other log lines; log in ${f}`);
    }
  }
} finally {
  await gw?.dispose().catch(() => {});
  for (const c of children) try { process.kill(c.pid, "SIGTERM"); } catch {}
}
process.exit(0);
