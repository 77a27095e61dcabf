// A fake Hugging Face Inference Providers router ("router double") on loopback: the price
// book at /v1/models, chat completions that say which provider served them, a fal-ai queue,
// Replicate predictions, a time-billed hf-inference route, a provider's own API (for byok)
// and a dedicated Inference Endpoint. It records every call; `state` scripts it.
import http from "node:http";
import { randomUUID } from "node:crypto";
import { collect, completion, streamCompletion } from "./harness.mjs";

/** The router's `/v1/models`, with the prices the tests compute costs from (USD per 1M tokens). */
export const MODELS = {
  object: "list",
  data: [
    {
      id: "acme/chat-1",
      object: "model",
      created: 0,
      owned_by: "acme",
      providers: [
        { provider: "together", status: "live", context_length: 131072, pricing: { input: 1.0, output: 2.0 }, supports_tools: true },
        { provider: "groq", status: "live", pricing: { input: 0.5, output: 1.0 } },
        { provider: "nebius", status: "error", pricing: { input: 10, output: 10 } },
        { provider: "sambanova", status: "live" },
      ],
    },
    {
      id: "acme/cheap-1",
      object: "model",
      created: 0,
      owned_by: "acme",
      providers: [{ provider: "groq", status: "live", pricing: { input: 0.1, output: 0.1 } }],
    },
    {
      id: "acme/embed-1",
      object: "model",
      created: 0,
      owned_by: "acme",
      providers: [{ provider: "nebius", status: "live", pricing: { input: 0.5, output: 0 } }],
    },
    {
      id: "acme/broke",
      object: "model",
      created: 0,
      owned_by: "acme",
      providers: [{ provider: "together", status: "live", pricing: { input: 1.0, output: 2.0 } }],
    },
  ],
};

export const PAYMENT_REQUIRED = {
  error: "You have exceeded your monthly included credits for Inference Providers. Subscribe to PRO to get 20x more monthly included credits.",
};

export const PROVIDER_SECRET = "tg-provider-secret";
export const ENDPOINT_SECRET = "ep_mine_secret";
export const FAL_IMAGES = { images: [{ url: "https://fal.media/x.png" }] };
export const REPLICATE_OUTPUT = ["https://replicate.delivery/x.png"];
export const EMBEDDING = [[0.1, 0.2]];

const POLICIES = new Set(["fastest", "cheapest", "preferred"]);

function defaults() {
  return {
    // x-inference-provider for a model with no suffix or a policy suffix; null omits the header
    provider: "groq",
    usage: { prompt_tokens: 1000, completion_tokens: 500 },
    endpointUsage: { prompt_tokens: 100, completion_tokens: 50 },
    embeddingTokensEach: 20,
    broke402: true, // acme/broke answers 402 while this is on
    embedDelayMs: 100,
    endpointDelayMs: 0,
    falPollsToComplete: 3, // the status poll that answers COMPLETED
    // one-off scripted answers, each used once by the first call it matches:
    // {match?: path prefix | (call) => bool, status?, headers?, body?, delayMs?}. With no
    // `match` an entry matches any call but GET /v1/models. A 2xx entry with no body adds its
    // headers to the normal answer.
    next: [],
    jobs: new Map(), // fal-ai request id -> {app, polls, submitted (the JSON answered)}
    predictions: new Map(), // replicate id -> the prediction
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function send(res, status, body, headers = {}) {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(text);
}

/** The provider a model suffix pins (`m:groq`), or null for none or a policy (`m:fastest`). */
export function pinned(model) {
  const at = String(model ?? "").lastIndexOf(":");
  if (at < 0) return null;
  const suffix = model.slice(at + 1);
  return POLICIES.has(suffix) ? null : suffix;
}

function matches(entry, call) {
  if (entry.match === undefined) return !(call.method === "GET" && call.path.split("?")[0] === "/v1/models");
  if (typeof entry.match === "function") return entry.match(call);
  return call.path.startsWith(entry.match);
}

async function chatAnswer(state, res, body, usage) {
  if (body.stream) return streamCompletion(res, body, usage);
  res.writeHead(200, { "content-type": "application/json", "x-request-id": "router-req-1" });
  res.end(JSON.stringify(completion(body.model, usage)));
}

async function route(state, req, res, call, url) {
  const path = url.pathname;
  const queue = url.searchParams.get("_subdomain") === "queue";
  const body = call.json ?? {};

  if (req.method === "GET" && path === "/v1/models") return send(res, 200, MODELS);
  if (req.method === "GET" && path.startsWith("/v1/models/")) {
    const m = MODELS.data.find((d) => d.id === decodeURIComponent(path.slice("/v1/models/".length)));
    return m ? send(res, 200, m) : send(res, 404, { error: "Model not found" });
  }

  if (req.method === "POST" && path === "/v1/chat/completions") {
    const model = String(body.model ?? "");
    if (model.split(":")[0] === "acme/broke" && state.broke402) return send(res, 402, PAYMENT_REQUIRED);
    const provider = pinned(model) ?? state.provider;
    if (provider) res.setHeader("x-inference-provider", provider);
    return chatAnswer(state, res, body, state.usage);
  }

  // embeddings on a provider's route: a vector a text, the input's tokens as the usage
  if (req.method === "POST" && path === "/nebius/v1/embeddings") {
    const texts = Array.isArray(body.input) ? body.input : [body.input];
    const data = texts.map((_, index) => ({ object: "embedding", index, embedding: [0.1, 0.2] }));
    const tokens = state.embeddingTokensEach * texts.length;
    return send(res, 200, { object: "list", data, model: body.model, usage: { prompt_tokens: tokens, total_tokens: tokens } });
  }

  // a provider's own API, as byok keys reach it: its key, never the HF token
  if (req.method === "POST" && path === "/provider/together/v1/chat/completions") {
    if (req.headers.authorization !== `Bearer ${PROVIDER_SECRET}`) return send(res, 401, { error: { message: "invalid api key" } });
    return chatAnswer(state, res, body, state.usage);
  }

  // a dedicated Inference Endpoint (TGI-like): its own token
  if (path.startsWith("/endpoint/mine/")) {
    if (req.headers.authorization !== `Bearer ${ENDPOINT_SECRET}`) return send(res, 401, { error: "Unauthorized" });
    if (req.method === "POST" && path === "/endpoint/mine/v1/chat/completions") {
      if (state.endpointDelayMs) await sleep(state.endpointDelayMs);
      return chatAnswer(state, res, body, state.endpointUsage);
    }
    return send(res, 404, { error: "Not Found" });
  }

  // fal-ai's queue through the router: /fal-ai/<app>/<endpoint>?_subdomain=queue
  if (path.startsWith("/fal-ai/")) {
    const rest = path.slice("/fal-ai/".length).split("/");
    const at = rest.indexOf("requests");
    if (at >= 0) {
      const id = rest[at + 1];
      const job = state.jobs.get(id);
      const app = rest.slice(0, at).join("/");
      const tail = rest.slice(at + 2).join("/");
      if (!queue || !job || job.app !== app || (req.method !== "GET" && !(req.method === "PUT" && tail === "cancel"))) {
        return send(res, 404, { detail: "Request not found" });
      }
      if (tail === "status") {
        job.polls += 1;
        const status = job.polls >= state.falPollsToComplete ? "COMPLETED" : job.polls === 1 ? "IN_QUEUE" : "IN_PROGRESS";
        job.status = status;
        return send(res, 200, { status, request_id: id, response_url: job.submitted.response_url });
      }
      if (tail === "cancel") return send(res, 200, { status: "CANCELLATION_REQUESTED" });
      if (tail === "") {
        if (job.status !== "COMPLETED") return send(res, 400, { detail: "Request is still in progress" });
        return send(res, 200, FAL_IMAGES);
      }
      return send(res, 404, { detail: "Not Found" });
    }
    if (req.method !== "POST") return send(res, 405, { detail: "Method Not Allowed" });
    if (body.fail === true) return send(res, 422, { detail: [{ loc: ["body", "prompt"], msg: "field required", type: "value_error.missing" }] });
    if (!queue) return send(res, 200, FAL_IMAGES); // fal.run, not the queue: answered at once
    const app = rest.slice(0, 2).join("/");
    const id = randomUUID();
    const base = `https://queue.fal.run/${app}/requests/${id}`;
    const submitted = { request_id: id, status: "IN_QUEUE", response_url: base, status_url: `${base}/status`, cancel_url: `${base}/cancel`, queue_position: 0 };
    state.jobs.set(id, { app, polls: 0, status: "IN_QUEUE", submitted });
    return send(res, 200, submitted);
  }

  // Replicate through the router
  if (req.method === "POST" && /^\/replicate\/v1\/(models\/[^/]+\/[^/]+\/)?predictions$/.test(path)) {
    const n = state.predictions.size + 1;
    const id = `p${n}`;
    const wait = /\bwait\b/.test(req.headers.prefer ?? "");
    const prediction = {
      id,
      model: path.startsWith("/replicate/v1/models/") ? path.split("/").slice(4, 6).join("/") : body.version ?? null,
      input: body.input ?? null,
      status: wait ? "succeeded" : "starting",
      output: wait ? REPLICATE_OUTPUT : null,
      urls: { get: `https://api.replicate.com/v1/predictions/${id}`, cancel: `https://api.replicate.com/v1/predictions/${id}/cancel` },
    };
    state.predictions.set(id, prediction);
    return send(res, 201, prediction);
  }
  if (req.method === "GET" && path.startsWith("/replicate/v1/predictions/")) {
    const p = state.predictions.get(path.slice("/replicate/v1/predictions/".length));
    if (!p) return send(res, 404, { detail: "Not found." });
    return send(res, 200, { ...p, status: "succeeded", output: REPLICATE_OUTPUT });
  }

  // a time-billed route: answers after a delay
  if (req.method === "POST" && path.startsWith("/hf-inference/models/acme/embed")) {
    await sleep(state.embedDelayMs);
    return send(res, 200, EMBEDDING);
  }

  return send(res, 404, { error: `the router double has no ${req.method} ${path}` });
}

/**
 * Starts the router double on 127.0.0.1. `calls` records every call ({method, path (with its
 * query), headers, raw, json, at}); `state` scripts it (see `defaults`); `reset()` clears both.
 */
export async function startRouter() {
  const calls = [];
  const state = defaults();
  const server = http.createServer(async (req, res) => {
    const raw = await collect(req);
    let json;
    try {
      json = JSON.parse(raw.toString("utf8"));
    } catch {}
    const call = { method: req.method, path: req.url, headers: req.headers, raw, json, at: Date.now() };
    calls.push(call);
    try {
      const url = new URL(req.url, "http://router.double");
      const i = state.next.findIndex((e) => matches(e, call));
      if (i >= 0) {
        const [entry] = state.next.splice(i, 1);
        if (entry.delayMs) await sleep(entry.delayMs);
        const status = entry.status ?? 200;
        if (status < 300 && entry.body === undefined) {
          for (const [k, v] of Object.entries(entry.headers ?? {})) res.setHeader(k, v);
          return await route(state, req, res, call, url);
        }
        const body = entry.body ?? (status === 429 ? { error: "Rate limit reached, slow down" } : { error: `status ${status}` });
        return send(res, status, body, entry.headers);
      }
      await route(state, req, res, call, url);
    } catch (e) {
      if (!res.headersSent) res.writeHead(599);
      res.end(String(e));
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const url = `http://127.0.0.1:${server.address().port}`;
  return {
    url,
    host: new URL(url).host,
    calls,
    state,
    /** Calls whose path (query left off) is `path`, or starts with it when it ends in `*`. */
    callsTo(path, method) {
      const prefix = path.endsWith("*");
      const p = prefix ? path.slice(0, -1) : path;
      return calls.filter((c) => (!method || c.method === method) && (prefix ? c.path.startsWith(p) : c.path.split("?")[0] === p));
    },
    reset() {
      calls.length = 0;
      Object.assign(state, defaults());
    },
    close: () => new Promise((r) => server.close(r)),
  };
}
