// Starts the Portkey gateway (`@portkey-ai/gateway`) for `make bench`, with the one fix its
// streaming needs here: `node bench/portkey-start.mjs --port=N --headless`.
//
// Why the shim: Portkey answers on @hono/node-server, whose lightweight `Response` (since
// 1.14.3, honojs/node-server#242) keeps the `headers` object of the response it is built from.
// A streamed chat completion is rebuilt as `new Response(stream, upstreamResponse)`, so it
// keeps the upstream fetch's headers, which the fetch standard makes immutable (Node 20's
// undici enforces it), and Portkey's `headers.append("x-portkey-...")` then throws
// `TypeError: immutable`: every stream is a 500 "Something went wrong" (Portkey-AI/gateway
// #1389, #1550). Non-streamed answers are rebuilt from their JSON and never hit it. Handing
// Portkey upstream responses whose headers are a mutable copy is the smallest change that
// leaves its own code as published: the copy costs one Headers per call, the body is the
// same stream.
const nativeFetch = globalThis.fetch;
const NativeResponse = globalThis.Response;
globalThis.fetch = async (...args) => {
  const res = await nativeFetch(...args);
  return new NativeResponse(res.body, res);
};

await import("@portkey-ai/gateway/build/start-server.js");
