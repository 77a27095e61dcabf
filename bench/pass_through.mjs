// The pass-through worker of bench/run.mjs and bench/distance.mjs: what any gateway on workerd
// must do at least, as the script Miniflare runs (bindings UPSTREAM, the fake upstream's base
// URL, and TOKEN). It reads the whole
// call (the gateway reads it to bound it), sends it to the upstream with the token in place of
// the caller's key, and answers with the upstream's status, the headers a client reads, and
// the body as a stream (SSE events go out as they come).
export const PASS_THROUGH = `
const DROP = new Set(["authorization", "host", "content-length", "connection", "accept-encoding"]);
const KEEP = ["content-type", "x-request-id", "retry-after", "retry-after-ms", "ratelimit", "ratelimit-policy"];
export default {
  async fetch(req, env) {
    const url = new URL(req.url);
    const headers = new Headers();
    for (const [name, value] of req.headers) if (!DROP.has(name)) headers.set(name, value);
    headers.set("authorization", "Bearer " + env.TOKEN);
    const body = req.method === "GET" || req.method === "HEAD" ? undefined : await req.arrayBuffer();
    const up = await fetch(env.UPSTREAM + url.pathname + url.search, { method: req.method, headers, body });
    const out = new Headers();
    for (const name of KEEP) { const v = up.headers.get(name); if (v !== null) out.set(name, v); }
    return new Response(up.body, { status: up.status, headers: out });
  },
};`;
