// The worker's entry module: worker-build's output (worker.js here, once bundled), with two
// changes that worker-build 0.8.7 does not make itself (scripts/build.sh bundles this).
//
// 1. Its Durable Object classes become subclasses of DurableObject: workerd offers Workers RPC
//    only on such classes, and the worker reaches its objects over RPC, their `op` method,
//    one JSON string in and one out (src/edge/objects.rs: about a fifth of the cost of a
//    fetch with JSON bodies). worker-build exports each class as a Proxy with only a
//    `construct` trap, so the prototypes set here are the classes' own.
// 2. Error.stackTraceLimit goes back from worker-build's 100 to 10. The runtime builds an
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

export * from "./worker.js";
export { default } from "./worker.js";
