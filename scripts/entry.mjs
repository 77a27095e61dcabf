// The worker's entry module: worker-build's output (worker.js here, once bundled), with two
// changes that worker-build 0.8.7 does not make itself (scripts/build.sh bundles this).
//
// 1. Its Durable Object classes become subclasses of DurableObject: workerd offers Workers RPC
//    only on such classes, and the worker reaches its objects over RPC, their `op` method,
//    one JSON string in and one out (src/edge/objects.rs: about a fifth of the cost of a
//    fetch with JSON bodies). worker-build exports each class as a Proxy with only a
//    `construct` trap, so the prototypes set here are the classes' own.
// 2. A request body for upstream that tells whether upstream's connection took all of it
//    (`hfgateBody`, used by src/edge/upstream.rs). The runtime says "Network connection lost"
//    whether a connection was refused or dropped after the request went out; only a request
//    whose body was wholly sent can have been received, and billed. The stream is pulled
//    only as the connection takes it (highWaterMark 0), and `expectedLength` keeps the
//    Content-Length the plain bytes would have sent.
// 3. Error.stackTraceLimit goes back from worker-build's 100 to 10. The runtime builds an
//    Error each time a stream reader's lock is released, and with a limit of 100 capturing
//    its stack (through the wasm frames) was the single most expensive call on the metered
//    path in a CPU profile: 9 % of the isolate's time.
import { DurableObject } from "cloudflare:workers";
import { Account, Cooldown, Registry } from "./worker.js";

for (const cls of [Account, Cooldown, Registry]) {
  Object.setPrototypeOf(cls.prototype, DurableObject.prototype);
  Object.setPrototypeOf(cls, DurableObject);
}
Error.stackTraceLimit = 10;

globalThis.hfgateBody = (bytes) => {
  let given = false;
  const stream = new ReadableStream(
    {
      type: "bytes",
      expectedLength: bytes.byteLength,
      pull(controller) {
        if (!given && bytes.byteLength > 0) {
          given = true;
          // a copy: enqueuing hands the buffer over, and a retry sends the same bytes again
          controller.enqueue(new Uint8Array(bytes));
        } else {
          stream.hfgateSent = true;
          controller.close();
        }
      },
    },
    { highWaterMark: 0 },
  );
  return stream;
};

export * from "./worker.js";
export { default } from "./worker.js";
