// `make bench`: what the gateway costs a request, measured on this machine against
//   1. the fake upstream directly (nginx answering instantly),
//   2. a plain nginx reverse proxy in front of it,
//   3. an empty worker on the same runtime (workerd via Miniflare): the runtime's floor,
//   4. the gateway on workerd via Miniflare with a metered key (ledger round trip + settle),
//   5. the gateway under `wrangler dev` (reference only: it adds a dev proxy and logging).
// Same load for each (wrk), interleaved in rounds, at concurrency 1 and 16, non-streamed and
// streamed; time to first byte for streams. Writes a table to stdout and
// bench/results/{bench.json,latency.svg,latency.png}.
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import http from "node:http";
import { Log, LogLevel, Miniflare } from "miniflare";
import { gatewayOptions } from "../e2e/miniflare.mjs";
import { bundleSize } from "../scripts/size.mjs";

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const OUT = "bench/results";
const ADMIN = "bench-admin-token";
const MODEL = "meta-llama/Llama-3.1-8B-Instruct";
const work = mkdtempSync(join(tmpdir(), "hfg-bench-"));
mkdirSync(OUT, { recursive: true });
const children = [];
const cleanups = [];

const freePort = () =>
  new Promise((resolve) => {
    const s = http.createServer().listen(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });

// --- the fake upstream and the plain proxy: one nginx, two server blocks -------------------
const usage = { prompt_tokens: 12, completion_tokens: 24, total_tokens: 36 };
const completion = JSON.stringify({
  id: "bench", object: "chat.completion", created: 1, model: MODEL,
  choices: [{ index: 0, message: { role: "assistant", content: "An instant reply from the benchmark upstream." }, finish_reason: "stop" }],
  usage,
});
const chunk = (delta, finish = null) => `data: ${JSON.stringify({ id: "bench", object: "chat.completion.chunk", created: 1, model: MODEL, choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
const sse = [chunk({ role: "assistant", content: "" }), ...["An", " instant", " streamed", " reply."].map((w) => chunk({ content: w })), chunk({}, "stop"),
  `data: ${JSON.stringify({ id: "bench", object: "chat.completion.chunk", created: 1, model: MODEL, choices: [], usage })}\n\n`, "data: [DONE]\n\n"].join("");
const nginxQuote = (s) => `'${s.replace(/\\/g, "\\\\").replace(/'/g, "\\'").replace(/\n/g, "\\n")}'`;

async function startNginx() {
  const upstreamPort = await freePort();
  const proxyPort = await freePort();
  const conf = `
worker_processes 1;
daemon off;
pid ${work}/nginx.pid;
error_log ${work}/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${work}/body; proxy_temp_path ${work}/proxy;
  fastcgi_temp_path ${work}/fcgi; uwsgi_temp_path ${work}/uwsgi; scgi_temp_path ${work}/scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:${upstreamPort};
    location / {
      if ($http_x_bench_stream) { rewrite ^ /__sse last; }
      default_type application/json;
      return 200 ${nginxQuote(completion)};
    }
    location = /__sse { internal; default_type text/event-stream; return 200 ${nginxQuote(sse)}; }
  }
  upstream fake { server 127.0.0.1:${upstreamPort}; keepalive 64; }
  server {
    listen 127.0.0.1:${proxyPort};
    location / {
      proxy_pass http://fake;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}`;
  writeFileSync(`${work}/nginx.conf`, conf);
  const p = spawn("nginx", ["-p", work, "-c", `${work}/nginx.conf`], { stdio: "ignore" });
  children.push(p);
  await waitFor(`http://127.0.0.1:${upstreamPort}/v1/models`);
  return { upstream: `http://127.0.0.1:${upstreamPort}`, proxy: `http://127.0.0.1:${proxyPort}` };
}

async function waitFor(url, ms = 60_000) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    try {
      const r = await fetch(url);
      await r.arrayBuffer();
      if (r.status < 500) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} did not come up`);
}

async function createKey(base) {
  const res = await fetch(`${base}/admin/keys`, {
    method: "POST",
    headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
    // a metered plan, with limits far above the load so nothing is throttled
    body: JSON.stringify({ plan: "pro", name: "bench", rate_limit: { rpm: 100_000_000, burst: 10_000_000 } }),
  });
  if (res.status !== 201) throw new Error(`key creation failed: ${res.status} ${await res.text()}`);
  return (await res.json()).key;
}

// --- the targets ----------------------------------------------------------------------------
// What the gateway logs under load: a failed settle would mean lost accounting, so it is
// counted and reported, not just scrolled past.
const gatewayLog = [];
// Miniflare's request log ("POST /v1/chat/completions 503 Service Unavailable (2ms)"): the
// status of every answer that was not a 2xx, so an odd one can be explained.
const oddStatuses = {};
class StatusLog extends Log {
  constructor() {
    super(LogLevel.INFO);
  }
  log(message) {
    const m = /(GET|POST) (\S+) (\d{3}) /.exec(String(message).replace(/\x1b\[[0-9;]*m/g, ""));
    if (m && !m[3].startsWith("2")) oddStatuses[`${m[1]} ${m[2]} ${m[3]}`] = (oddStatuses[`${m[1]} ${m[2]} ${m[3]}`] ?? 0) + 1;
  }
}

function captureGatewayLog(stdout, stderr) {
  for (const s of [stdout, stderr]) s.on("data", (d) => gatewayLog.push(String(d)));
}

async function startTargets() {
  const ng = await startNginx();
  const empty = new Miniflare({
    modules: true, compatibilityDate: "2026-04-01", host: "127.0.0.1", port: 0, cf: false,
    // it reads the body, as any real worker does (answering before reading resets keep-alive)
    script: `export default { async fetch(req) { await req.arrayBuffer(); return new Response(${JSON.stringify(completion)}, { headers: { "content-type": "application/json" } }); } };`,
  });
  cleanups.push(() => empty.dispose());
  const emptyUrl = (await empty.ready).href.replace(/\/$/, "");
  const vars = { UPSTREAM_URL: ng.upstream, HF_TOKEN: "hf_bench", ADMIN_TOKEN: ADMIN };
  const gw = new Miniflare(gatewayOptions({ bindings: vars, handleRuntimeStdio: captureGatewayLog, log: new StatusLog() }));
  cleanups.push(() => gw.dispose());
  const gwUrl = (await gw.ready).href.replace(/\/$/, "");
  const wranglerPort = await freePort();
  const wrangler = spawn("npx", ["wrangler", "dev", "--ip", "127.0.0.1", "--port", String(wranglerPort), "--show-interactive-dev-session=false",
    "--persist-to", `${work}/wrangler-state`, ...Object.entries(vars).flatMap(([k, v]) => ["--var", `${k}:${v}`])],
  { stdio: "ignore", env: { ...process.env, WRANGLER_SEND_METRICS: "false", CLOUDFLARE_CF_FETCH_ENABLED: "false" }, detached: true });
  children.push(wrangler);
  const wranglerUrl = `http://127.0.0.1:${wranglerPort}`;
  await waitFor(`${wranglerUrl}/healthz`, 120_000);
  return [
    { name: "direct", label: "fake upstream, direct", url: ng.upstream, key: "none" },
    { name: "nginx", label: "nginx reverse proxy", url: ng.proxy, key: "none" },
    { name: "floor", label: "empty worker (workerd)", url: emptyUrl, key: "none" },
    { name: "gateway", label: "hf-gate (workerd)", url: gwUrl, key: await createKey(gwUrl) },
    { name: "wrangler", label: "hf-gate (wrangler dev)", url: wranglerUrl, key: await createKey(wranglerUrl) },
  ];
}

// --- load -----------------------------------------------------------------------------------
const PERCENTILES = [1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9];
function wrkScript(key, stream) {
  const body = JSON.stringify({ model: MODEL, max_tokens: 64, stream, messages: [{ role: "user", content: "Say something short." }] });
  return `
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.body = ${JSON.stringify(body)}
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer ${key}"
${stream ? 'wrk.headers["x-bench-stream"] = "1"' : ""}
done = function(summary, latency, requests)
  local p = {}
  for _, q in ipairs({${PERCENTILES.join(",")}}) do p[#p + 1] = string.format('"%s":%d', q, latency:percentile(q)) end
  io.write(string.format('BENCH {"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"percentiles_us":{%s}}\\n',
    summary.requests, summary.duration, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, table.concat(p, ",")))
end`;
}

// wrk runs as a child while this process keeps serving: Miniflare (workerd's logs, its
// loopback services) lives in this process, so blocking it would stall the targets.
function run(cmd, args) {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args);
    let out = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => (out += d));
    p.on("error", reject);
    p.on("close", (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} exited ${code}: ${out}`))));
  });
}

async function runWrk(target, conns, stream) {
  const script = `${work}/${target.name}-${stream ? "s" : "n"}.lua`;
  writeFileSync(script, wrkScript(target.key, stream));
  const threads = conns === 1 ? 1 : 2;
  const out = await run("wrk", ["-t", String(threads), "-c", String(conns), "-d", `${SECONDS}s`, "--timeout", "10s", "-s", script, target.url]);
  const line = out.split("\n").find((l) => l.startsWith("BENCH "));
  const r = JSON.parse(line.slice(6));
  return { rps: r.requests / (r.duration_us / 1e6), errors: r.errors, non2xx: r.non2xx, requests: r.requests, p: r.percentiles_us };
}

// Time to first byte of a streamed response, with `conns` clients in parallel.
async function ttfb(target, conns, perClient) {
  const u = new URL(target.url);
  const agent = new http.Agent({ keepAlive: true, maxSockets: conns });
  const body = JSON.stringify({ model: MODEL, max_tokens: 64, stream: true, messages: [{ role: "user", content: "Say something short." }] });
  const one = () =>
    new Promise((resolve, reject) => {
      const t0 = process.hrtime.bigint();
      let first = null;
      const req = http.request({ host: u.hostname, port: u.port, path: "/v1/chat/completions", method: "POST", agent,
        headers: { "content-type": "application/json", authorization: `Bearer ${target.key}`, "x-bench-stream": "1", "content-length": Buffer.byteLength(body) } }, (res) => {
        res.on("data", () => { first ??= process.hrtime.bigint(); });
        res.on("error", reject);
        res.on("end", () => resolve(Number((first ?? process.hrtime.bigint()) - t0) / 1e3));
      });
      req.on("error", reject);
      req.end(body);
    });
  const samples = [];
  let failed = 0;
  await Promise.all(Array.from({ length: conns }, async () => {
    for (let i = 0; i < perClient; i++) {
      // a dropped connection is counted, not fatal: the run still reports everything else
      try {
        samples.push(await one());
      } catch (e) {
        if (!failed++) console.error(`warning: ${target.name} c=${conns} first-byte request failed: ${e.message}`);
      }
    }
  }));
  agent.destroy();
  if (failed) console.error(`warning: ${target.name} c=${conns}: ${failed} first-byte requests failed`);
  samples.sort((a, b) => a - b);
  const q = (p) => samples[Math.min(samples.length - 1, Math.floor((p / 100) * samples.length))];
  return { p50_us: q(50), p99_us: q(99), n: samples.length };
}

// --- report ---------------------------------------------------------------------------------
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const ms = (us) => (us / 1000).toFixed(2);

function svgChart(results, targets) {
  const panels = [];
  for (const stream of [false, true]) for (const conns of [1, 16]) panels.push({ stream, conns });
  const W = 980, rowH = 26, panelH = targets.length * rowH + 48, left = 200, right = 30;
  const H = panels.length * panelH + 40;
  const all = results.flatMap((r) => Object.values(r.p));
  const lo = Math.log10(Math.max(10, Math.min(...all))), hi = Math.log10(Math.max(...all));
  const x = (us) => left + ((Math.log10(Math.max(10, us)) - lo) / (hi - lo)) * (W - left - right);
  const colors = { direct: "#667085", nginx: "#2e90fa", floor: "#12b76a", gateway: "#ff9d00", wrangler: "#d92d20" };
  let s = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="system-ui, sans-serif" font-size="12">`;
  s += `<rect width="${W}" height="${H}" fill="#fff"/><text x="12" y="22" font-size="15" font-weight="600">Latency per request (log scale): whiskers p1-p99, box p25-p75, line p50</text>`;
  panels.forEach((pn, i) => {
    const top = 40 + i * panelH;
    s += `<text x="12" y="${top + 16}" font-weight="600">${pn.stream ? "streamed" : "non-streamed"}, concurrency ${pn.conns}</text>`;
    for (const tick of [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500]) {
      const us = tick * 1000;
      if (Math.log10(us) < lo || Math.log10(us) > hi) continue;
      s += `<line x1="${x(us)}" y1="${top + 24}" x2="${x(us)}" y2="${top + 24 + targets.length * rowH}" stroke="#eee"/><text x="${x(us)}" y="${top + 36 + targets.length * rowH}" text-anchor="middle" fill="#667085">${tick} ms</text>`;
    }
    targets.forEach((t, j) => {
      const rows = results.filter((r) => r.target === t.name && r.stream === pn.stream && r.conns === pn.conns);
      if (!rows.length) return;
      const p = (q) => median(rows.map((r) => r.p[q]));
      const y = top + 24 + j * rowH + rowH / 2;
      s += `<text x="${left - 8}" y="${y + 4}" text-anchor="end">${t.label}</text>`;
      s += `<line x1="${x(p("1"))}" y1="${y}" x2="${x(p("99"))}" y2="${y}" stroke="${colors[t.name]}"/>`;
      s += `<rect x="${x(p("25"))}" y="${y - 7}" width="${Math.max(1, x(p("75")) - x(p("25")))}" height="14" fill="${colors[t.name]}" fill-opacity="0.35" stroke="${colors[t.name]}"/>`;
      s += `<line x1="${x(p("50"))}" y1="${y - 9}" x2="${x(p("50"))}" y2="${y + 9}" stroke="#1d2330" stroke-width="2"/>`;
    });
  });
  return s + "</svg>";
}

async function renderPng(svgPath, pngPath) {
  try {
    const { chromium } = await import("playwright-core");
    const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"] });
    const page = await browser.newPage({ viewport: { width: 980, height: 500 } });
    await page.setContent(`<body style="margin:0">${readFileSync(svgPath, "utf8")}</body>`);
    await page.screenshot({ path: pngPath, fullPage: true });
    await browser.close();
  } catch (e) {
    console.error(`(no PNG: ${e.message.split("\n")[0]})`);
  }
}

async function main() {
  const t0 = Date.now();
  const targets = await startTargets();
  const results = [];
  for (let round = 1; round <= ROUNDS; round++) {
    for (const stream of [false, true]) {
      for (const conns of [1, 16]) {
        for (const t of targets) {
          const r = await runWrk(t, conns, stream);
          results.push({ round, target: t.name, stream, conns, ...r });
          if (r.errors || r.non2xx) console.error(`warning: ${t.name} c=${conns} ${stream ? "stream" : ""}: ${r.errors} errors, ${r.non2xx} non-2xx`);
        }
      }
    }
    process.stderr.write(`round ${round}/${ROUNDS} done (${Math.round((Date.now() - t0) / 1000)} s)\n`);
  }
  const firstBytes = [];
  for (const t of targets) for (const conns of [1, 16]) firstBytes.push({ target: t.name, conns, ...(await ttfb(t, conns, conns === 1 ? 200 : 25)) });

  const summary = [];
  for (const stream of [false, true]) {
    for (const conns of [1, 16]) {
      const pick = (name) => results.filter((r) => r.target === name && r.stream === stream && r.conns === conns);
      const stat = (name) => {
        const rows = pick(name);
        return { rps: median(rows.map((r) => r.rps)), p50: median(rows.map((r) => r.p["50"])), p99: median(rows.map((r) => r.p["99"])), errors: rows.reduce((a, r) => a + r.errors + r.non2xx, 0) };
      };
      const direct = stat("direct"), floor = stat("floor");
      for (const t of targets) {
        const st = stat(t.name);
        const fb = stream ? firstBytes.find((f) => f.target === t.name && f.conns === conns) : null;
        summary.push({
          target: t.name, label: t.label, stream, conns, rps: Math.round(st.rps), p50_ms: +ms(st.p50), p99_ms: +ms(st.p99),
          added_p50_ms: +ms(st.p50 - direct.p50), vs_direct: +(st.rps / direct.rps).toFixed(3), vs_floor: +(st.rps / floor.rps).toFixed(3),
          ttfb_p50_ms: fb ? +ms(fb.p50_us) : null, ttfb_p99_ms: fb ? +ms(fb.p99_us) : null, errors: st.errors,
        });
      }
    }
  }
  const ledgerFailures = gatewayLog.join("").split("\n").filter((l) => /settle failed|ledger .* (unreachable|answered)/.test(l));
  if (Object.keys(oddStatuses).length) console.error(`gateway answers that were not 2xx: ${JSON.stringify(oddStatuses)}`);
  if (ledgerFailures.length) console.error(`gateway logged ${ledgerFailures.length} ledger failures under load, e.g. ${ledgerFailures[0]}`);
  const size = bundleSize();
  const meta = {
    date: new Date().toISOString(), rounds: ROUNDS, seconds_per_run: SECONDS, cpus: (await import("node:os")).cpus().length, load: "wrk",
    bundle: size, gateway_ledger_failures: ledgerFailures.length, gateway_non_2xx: oddStatuses,
  };
  writeFileSync(`${OUT}/bench.json`, JSON.stringify({ meta, summary, runs: results, ttfb: firstBytes }, null, 2));
  writeFileSync(`${OUT}/latency.svg`, svgChart(results, targets));
  await renderPng(`${OUT}/latency.svg`, `${OUT}/latency.png`);

  const pad = (v, n) => String(v).padStart(n);
  console.log(`\nhf-gate benchmark: ${ROUNDS} interleaved rounds of ${SECONDS} s per cell, wrk, ${meta.cpus} cores`);
  console.log(`bundle: wasm ${(size.wasm_raw_bytes / 1024).toFixed(1)} KiB raw, ${(size.wasm_gzip_bytes / 1024).toFixed(1)} KiB gzipped; ledger failures under load: ${ledgerFailures.length}\n`);
  console.log(`${"target".padEnd(24)}${pad("mode", 9)}${pad("c", 4)}${pad("req/s", 9)}${pad("p50 ms", 9)}${pad("p99 ms", 9)}${pad("+p50 ms", 9)}${pad("x direct", 10)}${pad("x floor", 9)}${pad("ttfb p50", 10)}${pad("errors", 8)}`);
  for (const r of summary) {
    console.log(`${r.label.padEnd(24)}${pad(r.stream ? "stream" : "json", 9)}${pad(r.conns, 4)}${pad(r.rps, 9)}${pad(r.p50_ms.toFixed(2), 9)}${pad(r.p99_ms.toFixed(2), 9)}${pad(r.added_p50_ms.toFixed(2), 9)}${pad(r.vs_direct.toFixed(3), 10)}${pad(r.vs_floor.toFixed(3), 9)}${pad(r.ttfb_p50_ms === null ? "-" : r.ttfb_p50_ms.toFixed(2), 10)}${pad(r.errors, 8)}`);
  }
  console.log(`\nwrote ${OUT}/bench.json, ${OUT}/latency.svg, ${OUT}/latency.png in ${Math.round((Date.now() - t0) / 1000)} s`);
}

function shutdown() {
  for (const c of children) {
    try {
      process.kill(c.detached ? -c.pid : c.pid, "SIGTERM");
    } catch {}
  }
}

try {
  await main();
} finally {
  for (const c of cleanups) await c().catch(() => {});
  shutdown();
}
process.exit(0);
