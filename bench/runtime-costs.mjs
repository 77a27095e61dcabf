// `node bench/runtime-costs.mjs`: what the runtime's own primitives cost on this machine, in
// µs each, measured inside workerd (Miniflare) by a throwaway worker and object, so that a
// profile's line can be read as "N calls of something that costs M": the primitives the
// gateway's glue calls per request (microtasks, timers, waitUntil, Headers, TextDecoder), a
// response on upstream's headers with and without a metered answer's header edits, a
// Durable Object RPC round trip with and without the writes a settle batch makes, and SQL
// `exec` one row a statement against several.
//
// Inside a request the runtime's clock only moves across I/O, so each loop is bracketed by
// `scheduler.wait(1)` and that millisecond is taken off. Each item runs twice, interleaved;
// both figures are printed (the first round's trips also wake the 64 objects). Env: N (loop
// count for the primitives, default 20000), TRIPS (object round trips, default 2000),
// PERSIST_ROOT (where the objects' SQLite lives, default /dev/shm as in bench/ab.mjs; /tmp
// is ext4 here, where each commit waits for the disk).
import { rmSync } from "node:fs";
import { join } from "node:path";
import { Miniflare } from "miniflare";

const N = Number(process.env.N ?? 20_000);
const TRIPS = Number(process.env.TRIPS ?? 2_000);
const ROOT = process.env.PERSIST_ROOT ?? "/dev/shm";

const script = `
import { DurableObject } from "cloudflare:workers";

const ROW = JSON.stringify({ ledger: { spent: 123456789, held: 0 }, tat: 1733400000000, policy: { rpm: 600, burst: 10, version: 3 } });

// the clock moves only across I/O: a loop's time is read after a 1 ms wait on each side
async function timed(times, body) {
  await scheduler.wait(1);
  const t0 = Date.now();
  await body();
  await scheduler.wait(1);
  return ((Date.now() - t0 - 1) * 1000) / times;
}

export class Probe extends DurableObject {
  constructor(state, env) {
    super(state, env);
    this.sql = state.storage.sql;
    this.sql.exec("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)");
  }
  echo(m) {
    return m;
  }
  // about what a settle batch writes: six rows, then the commit at the end of the event
  write(m) {
    for (let j = 0; j < 6; j++) this.sql.exec("INSERT OR REPLACE INTO t (id, body) VALUES (?, ?)", j, m);
    return m;
  }
  async sql_rows(n, per) {
    const one = () => { for (let j = 0; j < per; j++) this.sql.exec("INSERT OR REPLACE INTO t (id, body) VALUES (?, ?)", j, ROW); };
    const values = Array(per).fill("(?, ?)").join(", ");
    const args = Array.from({ length: per }, (_, j) => [j, ROW]).flat();
    const many = () => this.sql.exec("INSERT OR REPLACE INTO t (id, body) VALUES " + values, ...args);
    const out = {};
    for (const [name, f] of [["sql exec, a row a statement", one], ["sql exec, " + per + " rows a statement", many]]) {
      out[name] = await timed(n * per, async () => { for (let i = 0; i < n; i++) { f(); await Promise.resolve(); } });
    }
    return out;
  }
}

export default {
  async fetch(req, env, ctx) {
    const n = Number(new URL(req.url).searchParams.get("n"));
    const trips = Number(new URL(req.url).searchParams.get("trips"));
    const nothing = () => {};
    const resolved = Promise.resolve();
    const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
    const bytes = new TextEncoder().encode("application/json; charset=utf-8");
    const body = new Uint8Array(312);
    const upstream = new Headers({ server: "nginx", date: new Date(0).toUTCString(), "content-type": "application/json", "content-length": "312", connection: "keep-alive", "x-request-id": "abc123" });
    const dropped = new Set(["content-length", "connection", "keep-alive", "transfer-encoding", "set-cookie", "server"]);
    const edits = [["x-request-id", "5295cca86ddaf4ee"], ["ratelimit-policy", '"rpm";q=600;w=60;burst=50'], ["ratelimit", '"rpm";r=49;t=1'], ["server-timing", "admit;dur=0, upstream;dur=1"], ["x-hfgate-max-tokens", "16"]];
    const message = JSON.stringify({ batch: [{ settle: { reservation: 123, actual: 4567 } }, { acquire: { calls: 4, per_call: 1000, ttl_ms: 1000 } }] });
    const primitives = {
      "queueMicrotask(f)": () => queueMicrotask(nothing),
      "resolved.then(f)": () => resolved.then(nothing),
      "setTimeout + clearTimeout": () => clearTimeout(setTimeout(nothing, 60_000)),
      "ctx.waitUntil(resolved)": () => ctx.waitUntil(resolved),
      "new Headers + set": () => new Headers().set("content-type", "application/json"),
      "TextDecoder.decode (31 B)": () => decoder.decode(bytes),
      "new Response(bytes, upstream's headers)": () => new Response(body, { status: 200, headers: upstream }),
      "the same + a metered answer's header edits": () => {
        const h = new Response(body, { status: 200, headers: upstream }).headers;
        // what header_edits::drop_and_edit does: names dropped, the gateway's own set
        for (const name of [...h.keys()]) if (dropped.has(name)) h.delete(name);
        for (const [name, value] of edits) h.set(name, value);
        h.append("vary", "Origin");
      },
      "Date.now()": () => Date.now(),
    };
    const trip = (method) => async () => {
      for (let i = 0; i < trips; i++) await env.PROBE.get(env.PROBE.idFromName("account-" + (i % 64)))[method](message);
    };
    const objects = {
      "object RPC round trip (64 objects)": trip("echo"),
      "object RPC round trip + 6 row writes": trip("write"),
    };
    const out = {};
    const note = (name, us) => (out[name] ??= []).push(Math.round(us * 100) / 100);
    for (let round = 0; round < 2; round++) {
      for (const [name, f] of Object.entries(primitives)) note(name, await timed(n, async () => { for (let i = 0; i < n; i++) f(); }));
      for (const [name, f] of Object.entries(objects)) note(name, await timed(trips, f));
      const rows = await env.PROBE.get(env.PROBE.idFromName("sql")).sql_rows(Math.max(1, trips / 2), 5);
      for (const [name, us] of Object.entries(rows)) note(name, us);
    }
    return Response.json(out);
  },
};`;

const persist = join(ROOT, `hfg-runtime-costs-${process.pid}`);
const mf = new Miniflare({
  modules: true,
  script,
  compatibilityDate: "2024-09-23",
  durableObjects: { PROBE: { className: "Probe", useSQLite: true } },
  durableObjectsPersist: persist,
});
try {
  const resp = await mf.dispatchFetch(`http://bench/?n=${N}&trips=${TRIPS}`);
  const out = await resp.json();
  console.log(`the runtime's primitives, µs each (two interleaved runs), workerd via Miniflare, storage under ${ROOT}`);
  const width = Math.max(...Object.keys(out).map((k) => k.length));
  for (const [name, runs] of Object.entries(out)) console.log(`  ${name.padEnd(width)}  ${runs.map((v) => v.toFixed(2).padStart(8)).join("  ")}`);
} finally {
  await mf.dispose();
  rmSync(persist, { recursive: true, force: true });
}
