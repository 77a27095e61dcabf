// What the load benchmarks share (bench/run.mjs, bench/org_scale.mjs): the fake upstream and
// the plain reverse proxy (one nginx), the gateway's admin calls, and wrk with a Lua script
// that rotates requests across a set of keys and prints its result as one JSON line.
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import http from "node:http";

export const ADMIN = "bench-admin-token";
export const MODEL = "meta-llama/Llama-3.1-8B-Instruct";
export const PERCENTILES = [1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9];

export const freePort = () =>
  new Promise((resolve) => {
    const s = http.createServer().listen(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });

export async function waitFor(url, ms = 60_000) {
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

// --- the fake upstream's answers ------------------------------------------------------------
const usage = { prompt_tokens: 12, completion_tokens: 24, total_tokens: 36 };
export const completion = JSON.stringify({
  id: "bench", object: "chat.completion", created: 1, model: MODEL,
  choices: [{ index: 0, message: { role: "assistant", content: "An instant reply from the benchmark upstream." }, finish_reason: "stop" }],
  usage,
});
const chunk = (delta, finish = null) => `data: ${JSON.stringify({ id: "bench", object: "chat.completion.chunk", created: 1, model: MODEL, choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
export const sse = [chunk({ role: "assistant", content: "" }), ...["An", " instant", " streamed", " reply."].map((w) => chunk({ content: w })), chunk({}, "stop"),
  `data: ${JSON.stringify({ id: "bench", object: "chat.completion.chunk", created: 1, model: MODEL, choices: [], usage })}\n\n`, "data: [DONE]\n\n"].join("");
const nginxQuote = (s) => `'${s.replace(/\\/g, "\\\\").replace(/'/g, "\\'").replace(/\n/g, "\\n")}'`;

/**
 * One nginx with two server blocks: the fake upstream (answers at once; `x-bench-stream`
 * selects the SSE answer) and a plain reverse proxy in front of it. `children` collects the
 * process so the caller can end it.
 */
export async function startNginx(work, children) {
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

// --- the gateway's admin API ----------------------------------------------------------------
// Limits far above any load here, so nothing is throttled.
export const UNTHROTTLED = { rpm: 100_000_000, burst: 10_000_000 };

export async function admin(base, method, path, body) {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
    body: body && JSON.stringify(body),
  });
  const text = await res.text();
  if (res.status >= 300) throw new Error(`${method} ${path} answered ${res.status}: ${text.slice(0, 300)}`);
  return JSON.parse(text);
}

/** A metered key (`pro`: its own account object) or, with `org`, a key in that org's pool. */
export async function createKey(base, { org, name = "bench" } = {}) {
  const body = org ? { org, name, rate_limit: UNTHROTTLED } : { plan: "pro", name, rate_limit: UNTHROTTLED };
  return (await admin(base, "POST", "/admin/keys", body)).key;
}

/** `n` results of `make(i)`, at most `width` in flight at a time. */
export async function inBatches(n, width, make) {
  const out = new Array(n);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(width, n) }, async () => {
    while (next < n) {
      const i = next++;
      out[i] = await make(i);
    }
  }));
  return out;
}

// --- load -----------------------------------------------------------------------------------
/**
 * The chat body every load sends; `stream` asks for SSE, and for the usage chunk, so every
 * target hands the client the same bytes (the gateway drops that chunk from a stream whose
 * caller did not ask for it).
 */
export const chatBody = (stream) => JSON.stringify({
  model: MODEL, max_tokens: 64, stream, ...(stream ? { stream_options: { include_usage: true } } : {}),
  messages: [{ role: "user", content: "Say something short." }],
});

/**
 * The headers of one call to `target`, with key `key`: a bearer key, `x-bench-stream` for
 * the fake upstream, and whatever the target adds (Portkey's routing headers).
 */
export function callHeaders(target, key, stream) {
  return {
    "content-type": "application/json",
    authorization: `Bearer ${key}`,
    ...(stream ? { "x-bench-stream": "1" } : {}),
    ...(target.headers ?? {}),
  };
}

// Each wrk thread builds one request per key up front and then takes them in turn, starting
// at its own offset, so a run spreads evenly across `target.keys` with no Lua work per call
// beyond an index.
function wrkScript(target, stream) {
  const lua = (s) => JSON.stringify(s);
  const requests = target.keys.map((k) => {
    const h = Object.entries(callHeaders(target, k, stream)).map(([n, v]) => `[${lua(n)}] = ${lua(v)}`).join(", ");
    return `wrk.format("POST", "/v1/chat/completions", { ${h} }, body)`;
  });
  return `
local threads = 0
function setup(thread)
  thread:set("offset", threads * 7919)
  threads = threads + 1
end
local reqs, i
function init(args)
  local body = ${lua(chatBody(stream))}
  reqs = { ${requests.join(",\n    ")} }
  i = (offset or 0) % #reqs
end
function request()
  i = i % #reqs + 1
  return reqs[i]
end
function done(summary, latency, requests)
  local p = {}
  for _, q in ipairs({${PERCENTILES.join(",")}}) do p[#p + 1] = string.format('"%s":%d', q, latency:percentile(q)) end
  io.write(string.format('BENCH {"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"percentiles_us":{%s}}\\n',
    summary.requests, summary.duration, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, table.concat(p, ",")))
end`;
}

// wrk runs as a child while this process keeps serving: Miniflare (workerd's logs, its
// loopback services) lives in this process, so blocking it would stall the targets.
export function run(cmd, args) {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args);
    let out = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => (out += d));
    p.on("error", reject);
    p.on("close", (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} exited ${code}: ${out}`))));
  });
}

/**
 * `seconds` of wrk at `conns` connections against `target` ({name, url, keys, headers?}).
 * `rps` counts every answer, `admitted_rps` only the 2xx ones.
 */
export async function runWrk(work, target, conns, stream, seconds) {
  const script = `${work}/${target.name}-${stream ? "s" : "n"}.lua`;
  writeFileSync(script, wrkScript(target, stream));
  const threads = conns === 1 ? 1 : 2;
  const out = await run("wrk", ["-t", String(threads), "-c", String(conns), "-d", `${seconds}s`, "--timeout", "10s", "-s", script, target.url]);
  const line = out.split("\n").find((l) => l.startsWith("BENCH "));
  if (!line) throw new Error(`wrk printed no result for ${target.name}: ${out.slice(0, 500)}`);
  const r = JSON.parse(line.slice(6));
  const secs = r.duration_us / 1e6;
  return { rps: r.requests / secs, admitted_rps: (r.requests - r.non2xx) / secs, errors: r.errors, non2xx: r.non2xx, requests: r.requests, p: r.percentiles_us };
}

/**
 * What a gateway's log says went wrong: `ledger` are the lines where accounting may be lost or
 * late (a settle or release given up, a call to an account object that failed or did not
 * decode), `other` every other fault line (`platform::fault`'s JSON, or an uncaught error).
 */
export function faults(logText) {
  const lines = logText.split("\n").filter((l) => l.trim());
  const ledger = lines.filter((l) => /settle or release failed|"what":"ACCOUNTS |ACCOUNTS \S+: (failed|reply does not decode)/.test(l));
  const other = lines.filter((l) => !ledger.includes(l) && /"fault":|Uncaught|panicked/.test(l));
  return { ledger, other };
}

export const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
export const ms = (us) => (us / 1000).toFixed(2);
