// A fake inference provider behind the router ("provider double") that bills like the worst
// HONEST provider, by its own rules and never by the gateway's: it reads only the limit field
// its API defines (OpenAI's rules), generates its whole context when it finds none, bills the
// whole generation the moment it starts, and goes on generating whatever happens to the
// connection. Its invoice is what the upstream can bill; the gateway's ledger must cover it.
//
// Money: with the gateway's PRICES `{"*": {"input": 1.0, "output": 1.0}}` one token is one
// micro-USD, so the invoice is kept in tokens and compares straight with `*_micro_usd`.
//
// The invoice is kept per TAG: the request's model id without a `:provider` suffix (every test
// key uses its own model id), or, for fal-ai, the route (`fal-ai/fal-ai/veo3`).
import http from "node:http";
import { randomUUID } from "node:crypto";
import { collect } from "./harness.mjs";

/** The tool types the router runs itself, looping the model over their results. */
export const SERVER_TOOLS = new Set(["mcp", "web_search", "web_search_preview", "file_search", "code_interpreter", "image_generation", "computer_use_preview"]);

/**
 * Models the router lists (`GET /v1/models`) with their providers' prices, USD per 1M tokens.
 * A listed model is served under any spelling of its id (Hub ids are case-insensitive) and
 * billed at the price of the provider that serves it: the one a suffix or the path pins (in
 * any case), else the one whose bill for the call is the largest. Its invoice is kept in
 * micro-USD, whatever the gateway's PRICES say, not in tokens.
 */
export const CATALOG = {
  "inv-org/Dear-Model": { together: { input: 3, output: 7 }, cerebras: { input: 2, output: 9 } },
  "inv-org/Path-Served": { "hf-inference": { input: 5, output: 15 } },
};
const POLICIES = ["fastest", "cheapest", "preferred"];

/** The listed id of `model` (any case, no suffix), or null. */
function listedId(model) {
  const want = String(model ?? "").toLowerCase();
  return Object.keys(CATALOG).find((id) => id.toLowerCase() === want) ?? null;
}

/**
 * Who serves a listed model and at what price, for a call billed `billed` tokens: `pin` (a
 * provider, in any case) if given, else the dearest. `undefined` when the pin is not one of
 * the model's providers (the router refuses it), null for a model nobody lists.
 */
function servedBy(model, pin, billed) {
  const id = listedId(model);
  if (!id) return null;
  const offers = Object.entries(CATALOG[id]).map(([provider, price]) => ({ provider, price, micro: billed.prompt * price.input + billed.completion * price.output }));
  if (pin && !POLICIES.includes(pin.toLowerCase())) return offers.find((o) => o.provider === pin.toLowerCase());
  return offers.reduce((a, b) => (b.micro > a.micro ? b : a));
}

/** What an hf-inference task costs a second of compute, in micro-USD (HF's $0.00012). */
export const COMPUTE_PER_SECOND = 120;

/**
 * fal-ai apps' prices in micro-USD by app path: per output (a video, an image), or, for the
 * apps in FAL_PER_MEGAPIXEL, per megapixel of each image (fal's FLUX: "$0.025 per megapixel",
 * rounded up, 1024x1024 one megapixel; no size means the app's default, landscape_4_3).
 */
export const FAL_PRICES = { "fal-ai/veo3": 5_000_000, "fal-ai/flux/dev": 25_000, "fal-ai/flux/schnell": 3_000 };
export const FAL_PER_MEGAPIXEL = new Set(["fal-ai/flux/dev"]);
const FAL_SIZES = { square_hd: [1024, 1024], square: [512, 512], portrait_4_3: [768, 1024], portrait_16_9: [576, 1024], landscape_4_3: [1024, 768], landscape_16_9: [1024, 576] };

/** The megapixels fal bills one image of a body at (`image_size`: a preset or {width, height}). */
function megapixelsOf(body) {
  const size = body?.image_size ?? "landscape_4_3";
  const [w, h] = typeof size === "string" ? FAL_SIZES[size] ?? [1024, 768] : [size.width, size.height];
  return Math.max(1, Math.ceil((w * h) / 2 ** 20));
}

/** How a call is answered; every field can be scripted per tag (`script`) or for all. */
function defaultBehaviour() {
  return {
    contextTokens: 60_000, // generated when no limit field this API honours is present
    tokensPerEvent: 100, // tokens ("x", one byte each) packed into one SSE event
    eventDelayMs: 0, // pause between two SSE events
    padBytes: 0, // an `obfuscation` field of this many bytes in every chunk (OpenAI pads events so)
    delayMs: 0, // before the answer starts (already billed): for timeouts
    status: 200, // non-2xx: an error answer, nothing billed
    breakAfter: null, // a stream: destroy the socket after this many events, or after the event of this type
    agentTurns: 5, // turns of the router's own tool loop (server tools on /v1/responses)
    toolOutputTokens: 1_000, // prompt growth per tool turn (the tool's output fed back)
    falPollsToComplete: 1, // the status poll that answers COMPLETED
    computeMs: 500, // an hf-inference task's run, billed by the second whatever the connection does
    // how a chat answer reports what it billed: "whole" (both counts and their total),
    // "no-completion" (the prompt and the total only), "reasoning-apart" (completion_tokens
    // the visible quarter, the rest as reasoning outside it, the total all of it), or
    // "then-lower" (a stream: whole, then after [DONE] a second, lower count)
    usageReport: "whole",
  };
}

/** A chat answer's `usage` for what it billed, as `usageReport` says it is reported. */
function reportedUsage(how, billed) {
  const total = billed.prompt + billed.completion;
  if (how === "no-completion") return { prompt_tokens: billed.prompt, total_tokens: total };
  if (how === "reasoning-apart") {
    const visible = Math.floor(billed.completion / 4);
    return { prompt_tokens: billed.prompt, completion_tokens: visible, completion_tokens_details: { reasoning_tokens: billed.completion - visible }, total_tokens: total };
  }
  return { prompt_tokens: billed.prompt, completion_tokens: billed.completion, total_tokens: total };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The tag of a model id: the id without a `:provider` (or policy) suffix. */
export function tagOf(model) {
  const m = String(model ?? "");
  const at = m.lastIndexOf(":");
  return at < 0 ? m : m.slice(0, at);
}

/** A positive integer limit, or null: anything else is absent to this provider. */
function limit(v) {
  return Number.isInteger(v) && v > 0 ? v : null;
}

/**
 * The output limit the provider honours, by OpenAI's rules for each API:
 * chat: `max_completion_tokens` if present and non-null, else `max_tokens` (never
 * `max_new_tokens` nor `max_output_tokens`); responses: `max_output_tokens` only;
 * completions: `max_tokens`. Null when none is given: the provider then fills its context.
 */
export function honouredLimit(api, body) {
  if (api === "chat") return body.max_completion_tokens != null ? limit(body.max_completion_tokens) : limit(body.max_tokens);
  if (api === "responses") return limit(body.max_output_tokens);
  if (api === "completions") return limit(body.max_tokens);
  return null;
}

/** Bytes of text in a value: strings, object keys, numbers as printed. */
function textBytes(v) {
  if (typeof v === "string") return Buffer.byteLength(v);
  if (typeof v === "number" || typeof v === "boolean") return String(v).length;
  if (Array.isArray(v)) return v.reduce((n, x) => n + textBytes(x), 0);
  if (v && typeof v === "object") return Object.entries(v).reduce((n, [k, x]) => n + Buffer.byteLength(k) + textBytes(x), 0);
  return 0;
}

/**
 * Prompt tokens: one per byte of the prompt's text (chat: the messages, roles and keys
 * included; responses: `input` and `instructions`; completions: each prompt), plus 2 for the
 * template. For the short conversations the tests send this stays at or below the gateway's
 * contract (text bytes + 8 a message + 64 a request), so a reconciliation failure is the
 * gateway's reservation or metering, not a tokenizer meaner than the contract.
 */
export function promptTokens(api, body) {
  if (api === "embeddings") return (Array.isArray(body.input) ? body.input : [body.input]).reduce((n, t) => n + 2 + textBytes(t ?? ""), 0);
  if (api === "chat") return 2 + textBytes(body.messages ?? []);
  if (api === "responses") return 2 + textBytes(body.input ?? "") + textBytes(body.instructions ?? "");
  if (api === "completions") return 2 + textBytes(body.prompt ?? "");
  return 0;
}

/** How many generations one call runs: `n` (and `best_of`), times the prompts of a batch. */
export function choicesOf(api, body) {
  const n = Math.max(limit(body.n) ?? 1, api === "completions" ? limit(body.best_of) ?? 1 : 1);
  const prompts = api === "completions" && Array.isArray(body.prompt) && body.prompt.length > 0 && typeof body.prompt[0] === "string" ? body.prompt.length : 1;
  return n * prompts;
}

/** Whether a /v1/responses body asks the router to run tools itself (an agent loop). */
export function serverTools(body) {
  return Array.isArray(body.tools) && body.tools.some((t) => t && SERVER_TOOLS.has(t.type));
}

/**
 * What one call is billed, in tokens, before a byte is answered: `{prompt, completion,
 * turns}`. An agent loop bills each turn's prompt (grown by the tool output fed back) and
 * each turn's output to the limit.
 */
export function bill(api, body, b = defaultBehaviour()) {
  // an embedding is billed by its input alone, however long the batch
  if (api === "embeddings") return { prompt: promptTokens(api, body), completion: 0, turns: 1 };
  const output = (honouredLimit(api, body) ?? b.contextTokens) * choicesOf(api, body);
  const prompt = promptTokens(api, body);
  if (api === "responses" && serverTools(body)) {
    let p = 0;
    for (let t = 0; t < b.agentTurns; t++) p += prompt + t * b.toolOutputTokens;
    return { prompt: p, completion: output * b.agentTurns, turns: b.agentTurns };
  }
  return { prompt, completion: output, turns: 1 };
}

/** The count of outputs a fal-ai body asks for. */
function outputsOf(body) {
  for (const f of ["num_images", "num_outputs", "batch_size", "num_videos"]) if (limit(body?.[f])) return body[f];
  return 1;
}

function send(res, status, body, headers = {}) {
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(JSON.stringify(body));
}

/** An SSE writer that ignores a gone peer and counts events, for `breakAfter`. */
function sse(res, call, b) {
  res.on("error", () => {});
  res.socket?.on("error", () => {});
  let events = 0;
  const write = (text) => {
    try {
      if (!res.destroyed && !res.writableEnded) res.write(text);
    } catch {}
  };
  return {
    /** Writes one event; answers false once the scripted break has happened. */
    async event(text, type = null) {
      if (call.broken) return false;
      events += 1;
      call.events = events;
      if (b.breakAfter !== null && (b.breakAfter === events || b.breakAfter === type)) {
        // the event goes out whole, then the connection breaks with no end to the body
        call.broken = true;
        await new Promise((r) => {
          try {
            res.write(text, r);
          } catch {
            r();
          }
        });
        res.socket?.destroy();
        return false;
      }
      write(text);
      if (b.eventDelayMs) await sleep(b.eventDelayMs);
      return true;
    },
    end(text = "") {
      try {
        if (!res.destroyed && !res.writableEnded) res.end(text);
      } catch {}
    },
  };
}

const pad = (b) => (b.padBytes ? { obfuscation: "p".repeat(b.padBytes) } : {});

/** Token counts in `total`, cut into events of `per`. */
function* pieces(total, per) {
  for (let left = total; left > 0; left -= per) yield Math.min(per, left);
}

/** The router names the provider that served a listed model. */
const servedHeader = (call) => (call.servedBy ? { "x-inference-provider": call.servedBy } : {});

async function chatAnswer(res, call, b, billed) {
  const body = call.json;
  const id = `chatcmpl-${call.n}`;
  const usage = reportedUsage(b.usageReport, billed);
  const choices = choicesOf("chat", body);
  const each = billed.completion / choices;
  if (!body.stream) {
    return send(res, 200, {
      id, object: "chat.completion", created: 1, model: body.model,
      choices: Array.from({ length: choices }, (_, i) => ({ index: i, message: { role: "assistant", content: "x".repeat(each) }, finish_reason: "length" })),
      usage,
    }, { "x-request-id": call.requestId, ...servedHeader(call) });
  }
  res.writeHead(200, { "content-type": "text/event-stream", "x-request-id": call.requestId, ...servedHeader(call) });
  const out = sse(res, call, b);
  const chunk = (choices, extra = {}) => `data: ${JSON.stringify({ id, object: "chat.completion.chunk", created: 1, model: body.model, choices, ...extra, ...pad(b) })}\n\n`;
  for (let i = 0; i < choices; i++) {
    if (!(await out.event(chunk([{ index: i, delta: { role: "assistant", content: "" }, finish_reason: null }])))) return;
    for (const k of pieces(each, b.tokensPerEvent)) {
      if (!(await out.event(chunk([{ index: i, delta: { content: "x".repeat(k) }, finish_reason: null }])))) return;
    }
    if (!(await out.event(chunk([{ index: i, delta: {}, finish_reason: "length" }])))) return;
  }
  if (body.stream_options?.include_usage === true) {
    if (!(await out.event(chunk([], { usage })))) return;
  }
  const lower = { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 };
  out.end(b.usageReport === "then-lower" ? `data: [DONE]\n\n${chunk([], { usage: lower })}` : "data: [DONE]\n\n");
}

function completionsAnswer(res, call, billed) {
  const body = call.json;
  const choices = choicesOf("completions", body);
  send(res, 200, {
    id: `cmpl-${call.n}`, object: "text_completion", created: 1, model: body.model,
    choices: Array.from({ length: choices }, (_, i) => ({ index: i, text: "x".repeat(billed.completion / choices), finish_reason: "length" })),
    usage: { prompt_tokens: billed.prompt, completion_tokens: billed.completion, total_tokens: billed.prompt + billed.completion },
  }, { "x-request-id": call.requestId });
}

async function responsesAnswer(res, call, b, billed) {
  const body = call.json;
  const rid = `resp_${call.n}`;
  const mid = `msg_${call.n}`;
  const tools = billed.turns - 1;
  const text = billed.completion / billed.turns; // the last turn's output is the message
  const usage = (i, o) => ({ input_tokens: i, input_tokens_details: { cached_tokens: 0 }, output_tokens: o, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: i + o });
  const toolItem = (t, status) => ({ id: `mcp_${call.n}_${t}`, type: "mcp_call", status, server_label: "tools", name: "lookup", arguments: "{}", output: status === "completed" ? "y".repeat(16) : null });
  const message = (status, content) => ({ id: mid, type: "message", status, role: "assistant", content });
  const part = (t) => ({ type: "output_text", text: t, annotations: [] });
  const response = (status, output, u) => ({ id: rid, object: "response", created_at: 1, status, model: body.model, output, usage: u, max_output_tokens: body.max_output_tokens ?? null });
  const done = [...Array.from({ length: tools }, (_, t) => toolItem(t, "completed")), message("completed", [part("x".repeat(text))])];
  if (!body.stream) return send(res, 200, response("completed", done, usage(billed.prompt, billed.completion)), { "x-request-id": call.requestId });

  res.writeHead(200, { "content-type": "text/event-stream", "x-request-id": call.requestId });
  const out = sse(res, call, b);
  let seq = 0;
  const ev = (type, data) => out.event(`event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: seq++, ...data, ...pad(b) })}\n\n`, type);
  // the router's response.created carries usage, all zeros: not a count to settle on
  if (!(await ev("response.created", { response: response("in_progress", [], usage(0, 0)) }))) return;
  if (!(await ev("response.in_progress", { response: response("in_progress", [], usage(0, 0)) }))) return;
  for (let t = 0; t < tools; t++) {
    if (!(await ev("response.output_item.added", { output_index: t, item: toolItem(t, "in_progress") }))) return;
    if (!(await ev("response.output_item.done", { output_index: t, item: toolItem(t, "completed") }))) return;
  }
  const at = { item_id: mid, output_index: tools, content_index: 0 };
  if (!(await ev("response.output_item.added", { output_index: tools, item: message("in_progress", []) }))) return;
  if (!(await ev("response.content_part.added", { ...at, part: part("") }))) return;
  for (const k of pieces(text, b.tokensPerEvent)) {
    if (!(await ev("response.output_text.delta", { ...at, delta: "x".repeat(k) }))) return;
  }
  if (!(await ev("response.output_text.done", { ...at, text: "x".repeat(text) }))) return;
  if (!(await ev("response.content_part.done", { ...at, part: part("x".repeat(text)) }))) return;
  if (!(await ev("response.output_item.done", { output_index: tools, item: done.at(-1) }))) return;
  if (!(await ev("response.completed", { response: response("completed", done, usage(billed.prompt, billed.completion)) }))) return;
  out.end();
}

/**
 * The fal-ai queue as the router passes it on: `POST /fal-ai/<app>?_subdomain=queue` submits
 * (billed on arrival, the app's price times the outputs asked), `GET
 * /fal-ai/<app>/requests/<id>/status` and `GET /fal-ai/<app>/requests/<id>` read the job.
 * The query is read with URLSearchParams, as the router reads it: `%5Fsubdomain=queue` and
 * `_subdomain=%71ueue` are the queue too. Jobs are the router's: it knows no gateway keys, so
 * anyone with the job's id reads it.
 */
function falAnswer(p, req, res, call, path, url) {
  const queue = url.searchParams.get("_subdomain") === "queue";
  const rest = path.slice("/fal-ai/".length).split("/");
  const at = rest.indexOf("requests");
  if (at >= 0) {
    const app = rest.slice(0, at).join("/");
    const id = rest[at + 1];
    const tail = rest.slice(at + 2).join("/");
    const job = p.jobs.get(id);
    if (!queue || !job || !`${job.app}/`.startsWith(`${app}/`) || req.method !== "GET") return send(res, 404, { detail: "Request not found" });
    const b = p.behaviour(job.tag);
    if (tail === "status") {
      job.polls += 1;
      job.status = job.polls >= b.falPollsToComplete ? "COMPLETED" : "IN_PROGRESS";
      return send(res, 200, { status: job.status, request_id: id, response_url: job.submitted.response_url });
    }
    if (tail === "") return send(res, 200, { request_id: id, output: job.output });
    return send(res, 404, { detail: "Not Found" });
  }
  if (req.method !== "POST") return send(res, 405, { detail: "Method Not Allowed" });
  const app = rest.join("/");
  const tag = path.slice(1);
  call.tag = tag;
  const b = p.behaviour(tag);
  if (b.status >= 300) return send(res, b.status, { detail: `status ${b.status}` });
  const outputs = outputsOf(call.json);
  const each = (p.falPrices[app] ?? p.falPrices["*"] ?? 0) * (FAL_PER_MEGAPIXEL.has(app) ? megapixelsOf(call.json) : 1);
  const price = each * outputs;
  p.charge(tag, price, call);
  const output = Array.from({ length: outputs }, (_, i) => ({ url: `https://fal.media/${call.n}-${i}.bin` }));
  if (!queue) return send(res, 200, { output }, { "x-request-id": call.requestId });
  const id = randomUUID();
  const base = `https://queue.fal.run/${rest.slice(0, 2).join("/")}/requests/${id}`;
  const submitted = { request_id: id, status: "IN_QUEUE", response_url: base, status_url: `${base}/status`, cancel_url: `${base}/cancel`, queue_position: 0 };
  p.jobs.set(id, { app, tag, polls: 0, status: "IN_QUEUE", submitted, output });
  return send(res, 200, submitted, { "x-request-id": call.requestId });
}

const APIS = { "/v1/chat/completions": "chat", "/v1/responses": "responses", "/v1/completions": "completions" };

/**
 * Starts the provider double on 127.0.0.1. `calls` records every call ({n, method, path (raw,
 * with its query), tag, json, headers, billed, requestId, at, finished}); `invoice(tag)` is
 * what it billed a tag; `script(tag, behaviour)` (or `script(behaviour)` for every tag) sets
 * how it answers (see `defaultBehaviour`); `idle()` waits until every generation is written.
 */
export async function startProvider() {
  const calls = [];
  const invoices = new Map();
  const scripts = new Map();
  const running = new Set();
  const p = {
    jobs: new Map(),
    // a response's whole conversation in tokens, by its id: what `previous_response_id` adds
    kept: new Map(),
    falPrices: { ...FAL_PRICES },
    base: defaultBehaviour(),
    behaviour: (tag) => ({ ...p.base, ...(scripts.get(tag) ?? {}) }),
    charge(tag, tokens, call) {
      invoices.set(tag, (invoices.get(tag) ?? 0) + tokens);
      call.billed = (call.billed ?? 0) + tokens;
    },
  };

  async function handle(req, res, call) {
    const url = new URL(req.url, "http://provider.double");
    let path = url.pathname;
    try {
      path = decodeURIComponent(path);
    } catch {}
    if (req.method === "GET" && path === "/v1/models") {
      const data = Object.entries(CATALOG).map(([id, offers]) => ({
        id, object: "model", providers: Object.entries(offers).map(([provider, pricing]) => ({ provider, status: "live", pricing })),
      }));
      return send(res, 200, { object: "list", data });
    }
    if (path.startsWith("/fal-ai/")) return falAnswer(p, req, res, call, path, url);
    // an hf-inference task (`/hf-inference/models/{model}`, no API after it): billed by
    // compute time, the whole run from the moment it starts, at COMPUTE_PER_SECOND
    const task = /^\/hf-inference\/models\/(.+)$/.exec(path);
    if (req.method === "POST" && task && !/\/v1\/(chat\/)?completions$/.test(path)) {
      call.tag = path.slice(1);
      const b = p.behaviour(call.tag);
      p.charge(call.tag, Math.ceil((b.computeMs * COMPUTE_PER_SECOND) / 1000), call);
      await sleep(b.computeMs);
      return send(res, 200, [{ label: "positive", score: 0.9 }], { "x-request-id": call.requestId });
    }
    let api = req.method === "POST" ? APIS[path] : undefined;
    // `/{provider}/models/{model}/v1/chat/completions`: the server behind it serves the model
    // the path names, whatever the body's `model` says
    const named = /^\/([^/]+)\/models\/(.+)\/v1\/chat\/completions$/.exec(path);
    if (!api && req.method === "POST" && named) api = "chat";
    if (!api && req.method === "POST" && /^\/[^/]+\/v1\/embeddings$/.test(path)) api = "embeddings";
    if (!api) return send(res, 404, { error: { message: `the provider double has no ${req.method} ${path}`, type: "invalid_request_error", code: "not_found" } });
    const body = call.json;
    if (!body || typeof body !== "object") return send(res, 400, { error: { message: "body must be JSON", type: "invalid_request_error", code: null } });
    const model = named ? named[2] : tagOf(body.model);
    const pin = named ? named[1] : String(body.model ?? "").slice(tagOf(body.model).length + 1) || null;
    const tag = model;
    call.tag = tag;
    const b = p.behaviour(tag);
    if (b.status >= 300) return send(res, b.status, { error: { message: `scripted ${b.status}`, type: "server_error", code: null } }, { "x-request-id": call.requestId });
    // billed in full the moment the generation starts, whatever the caller does next; a
    // response that continues an earlier one is prompted with that one's input and output
    const billed = bill(api, body, b);
    if (api === "responses") {
      billed.prompt += p.kept.get(body.previous_response_id) ?? 0;
      p.kept.set(`resp_${call.n}`, billed.prompt + billed.completion);
    }
    const served = servedBy(model, pin, billed);
    if (served === undefined) return send(res, 400, { error: { message: `${pin} does not serve ${model}`, type: "invalid_request_error", code: null } });
    call.usage = billed;
    call.servedBy = served?.provider;
    p.charge(tag, served ? served.micro : billed.prompt + billed.completion, call);
    if (b.delayMs) await sleep(b.delayMs);
    if (api === "embeddings") {
      const texts = Array.isArray(body.input) ? body.input : [body.input];
      const data = texts.map((_, index) => ({ object: "embedding", index, embedding: [0.6, 0.8] }));
      return send(res, 200, { object: "list", data, model: body.model, usage: { prompt_tokens: billed.prompt, total_tokens: billed.prompt } }, { "x-request-id": call.requestId });
    }
    if (api === "chat") return chatAnswer(res, call, b, billed);
    if (api === "completions") return completionsAnswer(res, call, billed);
    return responsesAnswer(res, call, b, billed);
  }

  const server = http.createServer(async (req, res) => {
    res.on("error", () => {});
    const raw = await collect(req).catch(() => Buffer.alloc(0));
    let json;
    try {
      json = JSON.parse(raw.toString("utf8"));
    } catch {}
    const call = { n: calls.length + 1, method: req.method, path: req.url, tag: null, json, headers: req.headers, billed: 0, at: Date.now(), finished: null, events: 0, broken: false };
    call.requestId = `prov-req-${call.n}`;
    calls.push(call);
    const work = (async () => {
      try {
        await handle(req, res, call);
      } catch (e) {
        try {
          if (!res.headersSent) res.writeHead(599);
          res.end(String(e));
        } catch {}
      } finally {
        call.finished = Date.now();
      }
    })();
    call.done = work;
    running.add(work);
    await work;
    running.delete(work);
  });
  server.keepAliveTimeout = 1000;
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const url = `http://127.0.0.1:${server.address().port}`;
  return {
    url,
    calls,
    /** What the provider billed `tag`, in tokens (micro-USD at $1 per 1M tokens). */
    invoice: (tag) => invoices.get(tag) ?? 0,
    invoices,
    /** Calls for `tag`. */
    callsFor: (tag) => calls.filter((c) => c.tag === tag),
    /** Calls whose raw path (with its query) includes `text`. */
    callsMatching: (text) => calls.filter((c) => c.path.includes(text)),
    /** Scripts `tag` (or, given one argument, every tag) with a behaviour, merged over the defaults. */
    script(tag, behaviour) {
      if (behaviour === undefined) Object.assign(p.base, tag);
      else scripts.set(tag, { ...(scripts.get(tag) ?? {}), ...behaviour });
    },
    falPrices: p.falPrices,
    jobs: p.jobs,
    /** Waits until every generation started so far (for `tag`, if given) has been written out. */
    idle: (tag) => Promise.all(tag === undefined ? [...running] : calls.filter((c) => c.tag === tag).map((c) => c.done)),
    reset() {
      calls.length = 0;
      invoices.clear();
      scripts.clear();
      p.jobs.clear();
      p.base = defaultBehaviour();
    },
    close: () =>
      new Promise((r) => {
        server.close(r);
        server.closeAllConnections();
      }),
  };
}
