// The built gateway's Miniflare configuration (workerd, local KV and Durable Objects), as
// wrangler.toml declares it. Shared by the end-to-end tests and the benchmark.

// A Durable Object that is always overloaded: the ledger down, for fail-closed tests.
const BROKEN_LEDGER = `
export class Broken {
  async fetch() { throw new Error("Durable Object is overloaded. Requests queued for too long."); }
}
export default { fetch() { return new Response("broken ledger host"); } };
`;

/**
 * Options for `new Miniflare(...)`. `bindings` are the gateway's settings, as
 * `wrangler dev --var` would give them; `brokenLedger` binds the account Durable Objects to
 * one that always fails; `persist` keeps KV and Durable Object state in a folder.
 */
export function gatewayOptions({ bindings = {}, brokenLedger = false, persist = undefined, ...rest } = {}) {
  const accounts = brokenLedger ? { className: "Broken", scriptName: "broken" } : { className: "Account", useSQLite: true };
  const extra = brokenLedger ? [{ name: "broken", modules: true, script: BROKEN_LEDGER, compatibilityDate: "2026-04-01" }] : [];
  return {
    workers: [
      {
        name: "hf-gate",
        scriptPath: "build/index.js",
        modules: true,
        modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true }],
        compatibilityDate: "2026-04-01",
        kvNamespaces: ["GATEWAY_KV"],
        durableObjects: {
          ACCOUNTS: accounts,
          COOLDOWNS: { className: "Cooldown", useSQLite: true },
          REGISTRY: { className: "Registry", useSQLite: true },
        },
        bindings,
      },
      ...extra,
    ],
    host: "127.0.0.1",
    port: 0,
    cf: false,
    ...(persist ? { kvPersist: `${persist}/kv`, durableObjectsPersist: `${persist}/do` } : {}),
    ...rest,
  };
}
