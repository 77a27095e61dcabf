// Shared pieces of the end-to-end tests: the built worker on workerd (Miniflare) with
// local KV and Durable Objects, a fake upstream that records every call, and helpers.
import http from "node:http";
import net from "node:net";
import { appendFileSync, mkdirSync } from "node:fs";
import { basename } from "node:path";
import { Miniflare, Log, LogLevel } from "miniflare";
import { gatewayOptions } from "./miniflare.mjs";

export const ADMIN = "adm_e2e_0123456789abcdef";
export const HF_TOKEN = "hf_e2e_upstream_secret_token";

// Secret hygiene: every response the gateway gives and every line it logs, in every test
// file, goes into a transcript; e2e/hygiene/secrets.check.mjs greps them all for secrets.
const TRANSCRIPTS = "e2e/artifacts/transcripts";
mkdirSync(TRANSCRIPTS, { recursive: true });
const transcriptFile = `${TRANSCRIPTS}/${basename(process.argv[1] ?? "run")}-${process.pid}.jsonl`;
const gatewayUrls = new Set();

/** Records something the gateway said (a response or a log line) for the hygiene check. */
export function record(kind, text, extra = {}) {
  appendFileSync(transcriptFile, JSON.stringify({ kind, text: String(text), ...extra }) + "\n");
}

/** Records every response from a gateway started outside `startGateway` (wrangler dev). */
export function watchGateway(url) {
  gatewayUrls.add(url);
}

/** Notes a secret the hygiene check must never find where it does not belong. */
export function secret(value, label) {
  record("secret", value, { label });
}

secret(ADMIN, "ADMIN_TOKEN");
secret(HF_TOKEN, "HF_TOKEN");

const realFetch = globalThis.fetch;
globalThis.fetch = async (input, init) => {
  const res = await realFetch(input, init);
  const url = typeof input === "string" ? input : input.url ?? String(input);
  if ([...gatewayUrls].some((g) => url.startsWith(g))) {
    const method = (init?.method ?? input.method ?? "GET").toUpperCase();
    const headers = JSON.stringify([...res.headers]);
    // the one response allowed to carry a gateway key is the one that creates it
    const createsKey = method === "POST" && new URL(url).pathname === "/admin/keys";
    res.clone().text().then(
      (body) => record("response", `${res.status} ${headers}\n${createsKey ? "<key creation body>" : body}`, { url }),
      () => record("response", `${res.status} ${headers}`, { url }),
    );
  }
  return res;
};

/** Every line the worker logs, across every gateway started by this process. */
export const workerLogs = [];

class CapturingLog extends Log {
  constructor() {
    super(LogLevel.INFO);
  }
  log(message) {
    workerLogs.push(String(message));
    record("log", message);
  }
}

// The runtime's output, a line per entry: a pipe's chunks split lines anywhere, so a test
// looking for one line (a call's log line with its request id) could find it in two halves.
function captureStdio(stdout, stderr) {
  for (const stream of [stdout, stderr]) {
    stream.setEncoding("utf8");
    let partial = "";
    const push = (line) => {
      workerLogs.push(line);
      record("log", line);
    };
    stream.on("data", (chunk) => {
      const lines = (partial + chunk).split("\n");
      partial = lines.pop();
      lines.forEach(push);
    });
    stream.on("end", () => {
      if (partial) push(partial);
      partial = "";
    });
  }
}

/**
 * Starts the built gateway. `vars` are its settings, as `wrangler dev --var` would give.
 * `brokenLedger` binds the account Durable Objects to one that always fails; `persist` keeps
 * KV and Durable Object state in a folder, so a second gateway can start where one stopped.
 */
export async function startGateway(vars = {}, { brokenLedger = false, persist = undefined } = {}) {
  // E2E_LEASE_MS runs a suite with leasing set so (`0`: off), unless a test sets it itself
  const leasing = process.env.E2E_LEASE_MS === undefined ? {} : { LEASE_MS: process.env.E2E_LEASE_MS };
  const mf = new Miniflare(
    gatewayOptions({ bindings: { ADMIN_TOKEN: ADMIN, HF_TOKEN, ...leasing, ...vars }, brokenLedger, persist, log: new CapturingLog(), handleRuntimeStdio: captureStdio }),
  );
  const url = (await mf.ready).href.replace(/\/$/, "");
  gatewayUrls.add(url);
  return { url, mf, stop: () => mf.dispose() };
}

/** A request's whole body. */
export function collect(req) {
  return new Promise((resolve, reject) => {
    const parts = [];
    req.on("data", (c) => parts.push(c));
    req.on("end", () => resolve(Buffer.concat(parts)));
    req.on("error", reject);
  });
}

/** A chat completion as a provider would send it. */
export function completion(model, usage = { prompt_tokens: 10, completion_tokens: 20 }, text = "fake reply") {
  return {
    id: "chatcmpl-fake",
    object: "chat.completion",
    created: 1,
    model,
    choices: [{ index: 0, message: { role: "assistant", content: text }, finish_reason: "stop" }],
    usage: { ...usage, total_tokens: usage.prompt_tokens + usage.completion_tokens },
  };
}

/** Writes an SSE chat stream: one chunk per word, usage last when the request asked for it. */
export async function streamCompletion(res, body, usage = { prompt_tokens: 10, completion_tokens: 20 }, words = ["fake", "streamed", "reply"]) {
  res.writeHead(200, { "content-type": "text/event-stream", "x-request-id": "up-stream-1" });
  const chunk = (delta, finish = null) =>
    `data: ${JSON.stringify({ id: "c", object: "chat.completion.chunk", created: 1, model: body.model, choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
  res.write(chunk({ role: "assistant", content: "" }));
  for (const [i, w] of words.entries()) {
    res.write(chunk({ content: (i ? " " : "") + w }));
    await new Promise((r) => setTimeout(r, 5));
  }
  res.write(chunk({}, "stop"));
  if (body.stream_options?.include_usage) {
    res.write(`data: ${JSON.stringify({ id: "c", object: "chat.completion.chunk", created: 1, model: body.model, choices: [], usage: { ...usage, total_tokens: usage.prompt_tokens + usage.completion_tokens } })}\n\n`);
  }
  res.end("data: [DONE]\n\n");
}

async function defaultHandler(req, res, call) {
  if (req.url.startsWith("/v1/models")) {
    res.writeHead(200, { "content-type": "application/json" });
    return res.end(JSON.stringify({ object: "list", data: [{ id: "m/one", object: "model" }] }));
  }
  const body = call.json ?? {};
  if (body.stream) return streamCompletion(res, body);
  res.writeHead(200, { "content-type": "application/json", "x-request-id": "up-req-1" });
  res.end(JSON.stringify(completion(body.model)));
}

/** A fake upstream on loopback. `calls` records what it received; `on(fn)` scripts it. */
export async function startUpstream() {
  const calls = [];
  const bookCalls = [];
  let handler = defaultHandler;
  const server = http.createServer(async (req, res) => {
    const raw = await collect(req);
    let json;
    try {
      json = JSON.parse(raw.toString("utf8"));
    } catch {}
    const call = { method: req.method, path: req.url, headers: req.headers, raw, json };
    // the gateway's own read of /v1/models for its price book is not a call a test made
    if (String(req.headers["user-agent"] ?? "").endsWith(" price-book")) bookCalls.push(call);
    else calls.push(call);
    try {
      await handler(req, res, call, calls.length);
    } catch (e) {
      if (!res.headersSent) res.writeHead(599);
      res.end(String(e));
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    calls,
    bookCalls,
    on(fn) {
      handler = fn;
    },
    reset() {
      calls.length = 0;
      handler = defaultHandler;
    },
    defaultHandler,
    close: () => new Promise((r) => server.close(r)),
  };
}

/** Admin API call; `headers` adds to the admin's own (e.g. `if-match`). */
export async function admin(gw, method, path, body, headers = {}) {
  const res = await fetch(gw.url + path, {
    method,
    headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, headers: res.headers, json: await res.json() };
}

/** Creates a key and returns its record with the secret (`key`). */
export async function newKey(gw, body) {
  const r = await admin(gw, "POST", "/admin/keys", body);
  if (r.status !== 201) throw new Error(`key creation failed: ${r.status} ${JSON.stringify(r.json)}`);
  secret(r.json.key, `gateway key ${r.json.id}`);
  return r.json;
}

/** A chat request with the gateway key. */
export function chat(gw, key, body, extraHeaders = {}) {
  return fetch(`${gw.url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json", ...extraHeaders },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

/** The most of one body `openCall` keeps for the transcript (the rest is counted, not kept). */
const TRANSCRIPT_BODY_BYTES = 4 * 1024 * 1024;

/**
 * A call on a connection of its own (node:http, no pool), for tests where how the caller reads
 * matters: `res.pause()` stops reading from the socket, so the gateway sees a caller that does
 * not read, and `req.destroy()` hangs up on it. A fetch cannot do either here: the patched
 * fetch above reads a clone of every gateway response to its end for the transcript, so a
 * cancelled or unread fetch body is still drained. Answers `{req, res}` once the response
 * head has come, `res` paused: add listeners, then `res.resume()` to read. The body, as read,
 * is recorded for the hygiene check when the call closes.
 */
export function openCall(gw, key, path, body, headers = {}) {
  const payload = typeof body === "string" ? body : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(gw.url + path, {
      method: "POST",
      agent: false,
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json", "content-length": Buffer.byteLength(payload), ...headers },
    });
    req.on("error", reject);
    req.on("response", (res) => {
      const kept = [];
      let keptBytes = 0;
      let dropped = 0;
      res.on("data", (chunk) => {
        if (keptBytes + chunk.length <= TRANSCRIPT_BODY_BYTES) kept.push(Buffer.from(chunk)), (keptBytes += chunk.length);
        else dropped += chunk.length;
      });
      res.pause(); // the caller decides when to read
      res.on("error", () => {});
      res.on("close", () => {
        const more = dropped ? `\n[${dropped} bytes more]` : "";
        record("response", `${res.statusCode} ${JSON.stringify(res.headers)}\n${Buffer.concat(kept).toString("utf8")}${more}`, { url: gw.url + path });
      });
      resolve({ req, res });
    });
    req.end(payload);
  });
}

/**
 * The key's `/v1/usage`. Reading it takes from the key's throttle like any call, so a test
 * polling it waits out a 429 as a client would (`retry-after-ms`).
 */
export async function usage(gw, key) {
  for (let i = 0; ; i++) {
    const res = await fetch(`${gw.url}/v1/usage`, { headers: { authorization: `Bearer ${key}` } });
    if (res.status !== 429 || i >= 20) return res.json();
    await res.arrayBuffer();
    await sleep(Number(res.headers.get("retry-after-ms") ?? 1000));
  }
}

/** Waits until `check()` is truthy (settles run after the response, in wait_until). */
export async function eventually(check, ms = 3000) {
  const until = Date.now() + ms;
  let last;
  while (Date.now() < until) {
    last = await check();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 25));
  }
  return last;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A request written to the socket byte for byte, path exactly as given (fetch and node:http
 * would normalise or reject it): how a hostile client talks.
 */
export function rawRequest(gw, method, path, headers = {}, body = "") {
  const { hostname, port } = new URL(gw.url);
  const head = [`${method} ${path} HTTP/1.1`, `host: ${hostname}`, "connection: close"];
  if (!Object.keys(headers).some((k) => k.toLowerCase() === "content-length")) head.push(`content-length: ${Buffer.byteLength(body)}`);
  for (const [k, v] of Object.entries(headers)) head.push(`${k}: ${v}`);
  return new Promise((resolve, reject) => {
    const chunks = [];
    const sock = net.connect(Number(port), hostname, () => sock.end(head.join("\r\n") + "\r\n\r\n" + body));
    sock.on("data", (d) => chunks.push(d));
    sock.on("error", reject);
    sock.on("close", () => {
      const raw = Buffer.concat(chunks).toString("utf8");
      const [top, ...rest] = raw.split("\r\n\r\n");
      const lines = top.split("\r\n");
      const status = Number(lines[0].split(" ")[1]);
      const hdrs = Object.fromEntries(lines.slice(1).map((l) => [l.slice(0, l.indexOf(":")).toLowerCase(), l.slice(l.indexOf(":") + 1).trim()]));
      let text = rest.join("\r\n\r\n");
      if (hdrs["transfer-encoding"] === "chunked") {
        let out = "";
        for (let at = 0; ; ) {
          const nl = text.indexOf("\r\n", at);
          const size = parseInt(text.slice(at, nl), 16);
          if (!size) break;
          out += text.slice(nl + 2, nl + 2 + size);
          at = nl + 2 + size + 2;
        }
        text = out;
      }
      record("response", `${status} ${JSON.stringify(hdrs)}\n${text}`, { url: path });
      resolve({ status, headers: hdrs, text });
    });
  });
}

/** The request log's field names, in the order of the CSV header. */
export const REQUEST_LOG_FIELDS = [
  "request_id", "at", "key_id", "org", "route", "api", "model", "provider", "status", "error",
  "prompt_tokens", "completion_tokens", "cost_micro_usd", "reserved_micro_usd", "latency_ms",
  "ttfb_ms", "retries", "cooldown_wait_ms", "stream", "upstream_request_id", "unmetered_micro_usd",
];

/**
 * Every record of a request log (`/admin/keys/{id}/requests`, `/admin/orgs/{id}/requests`
 * with the admin token, `/v1/usage/requests` with a gateway key as `bearer`), newest first,
 * following `next_cursor`. Answers `{status, error, records}`: the first non-200 stops it.
 */
export async function requestLog(gw, path, { bearer = ADMIN, query = {} } = {}) {
  const records = [];
  let cursor = null;
  for (let pages = 0; pages < 50; pages++) {
    const q = new URLSearchParams({ limit: "1000", ...query });
    if (cursor) q.set("cursor", cursor);
    const res = await fetch(`${gw.url}${path}?${q}`, { headers: { authorization: `Bearer ${bearer}` } });
    const json = await res.json().catch(() => null);
    if (res.status !== 200) return { status: res.status, error: json?.error ?? null, records };
    records.push(...json.data);
    cursor = json.next_cursor;
    if (!cursor) break;
  }
  return { status: 200, error: null, records };
}

/** A CSV document as rows of fields (RFC 4180: quoted fields may hold commas, quotes, newlines). */
export function parseCsv(text) {
  const rows = [];
  let row = [], field = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') (field += '"'), i++;
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") row.push(field), (field = "");
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(field), rows.push(row), (row = []), (field = "");
    } else field += c;
  }
  if (field !== "" || row.length) row.push(field), rows.push(row);
  return rows;
}

/**
 * Headless Chromium (the system's, through playwright-core) in a fresh profile, with what it
 * receives from `gw` recorded for the secret-hygiene transcript. `pending` collects the
 * recordings: await them before the run ends.
 */
export async function launchChromium(gw, pending = []) {
  const { chromium } = await import("playwright-core");
  const { mkdtempSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  const browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "hfg-chromium-")), {
    executablePath: "/usr/bin/chromium",
    headless: true,
    acceptDownloads: true,
    viewport: { width: 1200, height: 760 },
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  browser.on("response", (r) => {
    if (!r.url().startsWith(gw.url)) return;
    const creates = r.request().method() === "POST" && r.url().endsWith("/admin/keys");
    pending.push(
      Promise.all([r.allHeaders(), r.text()])
        .then(([headers, body]) => record("response", `${r.status()} ${JSON.stringify(headers)}\n${creates ? "<key creation body>" : body}`, { url: r.url() }))
        .catch(() => record("response", `${r.status()}`, { url: r.url() })),
    );
  });
  return browser;
}

/** What a page reports as going wrong: console errors and uncaught exceptions. */
export function pageErrors(page) {
  const errors = [];
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`console: ${m.text()} (${m.location()?.url ?? ""})`);
  });
  page.on("pageerror", (e) => errors.push(`exception: ${e.message}`));
  return errors;
}
