// Bundled in place of the runtime's global `queueMicrotask` wherever worker-build's glue calls
// it (scripts/build.sh, esbuild's --inject): only this module's calls change, not the global.
//
// wasm-bindgen-futures queues a microtask each time a future it polls wakes: about six per
// metered call, more with leases' background sends. The runtime's own queueMicrotask wraps
// every task in a new JS function bound to its async context, and in a CPU profile that was
// a sixth of the isolate's "futures glue" time. A reaction on a promise already resolved runs
// in the same microtask queue, in the same order, and costs V8 nothing but the job itself.
// A task that throws then surfaces as an unhandled rejection instead of a reported error:
// both are logged by the runtime, and the glue's tasks do not throw (a panic is a trap, and
// the gateway does not panic on a request path).
const resolved = Promise.resolve();

export function queueMicrotask(task) {
  resolved.then(task);
}
