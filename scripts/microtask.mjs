// Bundled in place of the runtime's global `queueMicrotask` wherever worker-build's glue calls
// it (scripts/build.sh, esbuild's --inject): only this module's calls change, not the global.
//
// wasm-bindgen-futures queues a microtask each time a future it polls wakes: 6 to 9 per
// metered call (counted), more with leases' background sends. The runtime's own
// queueMicrotask wraps every task in a new JS function bound to its async context: about
// 4 µs a task, against 0.2 for a reaction on a promise already resolved
// (bench/runtime-costs.mjs), which runs in the same microtask queue, in the same order.
// A task that throws (a wasm trap, which no request path of the gateway hits) then surfaces
// as an unhandled rejection instead of a reported error; the runtime logs either.
const resolved = Promise.resolve();

export function queueMicrotask(task) {
  resolved.then(task);
}
