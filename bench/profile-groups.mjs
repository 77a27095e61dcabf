// A profile from bench/profile.mjs grouped by what the time was for, from each sample's whole
// stack (async Rust frames show the future being polled): self % of busy time and µs per call,
// and the top functions by self time. Also a command:
//   node bench/profile-groups.mjs PROFILE.cpuprofile CALLS [TOP]
//   node bench/profile-groups.mjs PROFILE.cpuprofile CALLS --stacks REGEX   (heaviest stacks
//     whose leaf matches REGEX: to see where a function is called from)
//   node bench/profile-groups.mjs PROFILE.cpuprofile CALLS --group REGEX   (inside the groups
//     whose name matches: the heaviest innermost gateway/workers-rs frame -> leaf pairs)
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

// First match wins, on (leaf name, stack root->leaf joined by ";"). The order matters: a
// sample is put under the most specific thing it is doing.
export const RULES = [
  ["idle", (l) => l === "(idle)"],
  ["GC", (l) => l === "(garbage collector)"],
  ["native/program ((program), runtime callbacks without JS frames)", (l, s) => l === "(program)" || s === "(root);anon" || s === "(root)"],
  ["logging", (l, s) => /console_(log|error)|__wbg_log_|__wbg_error_/.test(s)],
  // the object's side
  ["account DO: storage (SQL exec, setAlarm, row reads)", (l, s) => /Account::write|Account::load|Account::schedule|SqlStorage|sql::|__wbg_exec_|__wbg_raw_|setAlarm|set_alarm/.test(s)],
  ["account DO: op logic (ledger, throttle, JSON of rows)", (l, s) => /core::store::|core::account::|core::ledger|core::gcra|core::edits|account_do::Account::apply|AccountState/.test(s)],
  ["DO round trip, callee side (RPC: decode message, encode reply, dispatch)", (l, s) => /rpc_op|account_do::Account::answer|objects::serve|cooldown_do::Cooldown|Account_op|Cooldown_op|^op$|;op;|;op$/.test(s)],
  // the worker's side
  ["DO round trip, caller side (stub, encode, op(), decode reply; admit + settle)", (l, s) => /objects::send|objects::call|account_do::call|account_do::admit|hold::drain|hold::send|cooldown_do::remaining|cooldown_do::ask|idFromName|id_from_name|get_stub|__wbg_op_|into_rpc/.test(s)],
  ["body reads (request arrayBuffer, upstream response arrayBuffer, copies)", (l, s) => /body_io::|read_request|response_body|read_capped|meter::whole_body.*(whole|array_buffer|__wbg_arrayBuffer)|__wbg_arrayBuffer|Uint8Array.*to_vec/.test(s)],
  ["response headers (header_edits::drop_then_edit, Meta::apply)", (l, s) => !/upstream_headers/.test(s) && /drop_then_edit|;drop_and_edit(;|$)|header_edits::drop_and_edit|Meta::apply|response::Meta/.test(s)],
  ["upstream: header copies (upstream_headers, send_once's copy + authorization)", (l, s) => /upstream::upstream_headers|upstream::send_once.*worker::headers|upstream::send_once.*Headers|upstream::send_once.*format/.test(s)],
  ["upstream: Request construction (RequestInit, new Request)", (l, s) => /Request::new_with_init|RequestInit|new_with_str_and_init/.test(s)],
  ["upstream: fetch() call, abort signal, timer, retries", (l, s) => /upstream::|send_with_retries|send_once|__wbg_fetch_|Fetch::send|AbortController/.test(s)],
  ["Response/Request conversions (workers-rs)", (l, s) => /worker::response|worker::request|ResponseBuilder|From<worker::response::Response>|worker::headers|worker::http|worker::body|worker::fetch|web_sys::/.test(s)],
  ["body inspection + metering (core::body, usage)", (l, s) => /core::body|usage_of_body|meter::|core::call/.test(s)],
  ["auth + KV + routing + config", (l, s) => /auth::|kv::|routes::|config::|paths::|core::settings|core::keys|core::cors/.test(s)],
  ["serde_json (elsewhere)", (l, s) => /serde_json|serde_core|serde::/.test(s)],
  ["wasm-bindgen futures + glue (queueMicrotask, closures, JsFuture)", (l, s) => /queueMicrotask|js_sys::futures|JsFuture|future_to_promise|wasm_bindgen_futures|closures|__wbg_|__wbindgen|wasm-to-js|js-to-wasm|wasm_bindgen::/.test(s)],
  ["other", () => true],
];

const fname = (n) => n.callFrame.functionName || (n.callFrame.url ? `(anon ${n.callFrame.url.split("/").pop()}:${n.callFrame.lineNumber})` : "anon");

export function analyse(p) {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const self = new Map(), fnSelf = new Map(), stacks = new Map();
  let busy = 0, all = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const dt = p.timeDeltas[i + 1] ?? 0; // the delta after a sample is the time it stands for
    all += dt;
    const names = [];
    for (let id = p.samples[i]; id !== undefined; id = parent.get(id)) names.push(byId.get(id).callFrame.functionName || "anon");
    const leaf = names[0], s = names.reverse().join(";");
    const g = RULES.find(([, f]) => f(leaf, s))[0];
    if (g === "idle") continue;
    busy += dt;
    self.set(g, (self.get(g) ?? 0) + dt);
    const fn = fname(byId.get(p.samples[i]));
    fnSelf.set(fn, (fnSelf.get(fn) ?? 0) + dt);
    stacks.set(s, (stacks.get(s) ?? 0) + dt);
  }
  return { self, fnSelf, stacks, busy, all };
}

export function printAnalysis(a, calls, top = 15) {
  const pct = (x) => ((100 * x) / a.busy).toFixed(1);
  const us = (x) => (x / calls).toFixed(1);
  console.log(`profiled ${(a.all / 1e6).toFixed(2)} s, busy (not idle) ${(a.busy / 1e6).toFixed(2)} s, ${calls} calls: ${us(a.busy)} µs of isolate-thread time per call`);
  console.log(`${"group".padEnd(82)}${"%".padStart(6)}${"µs/call".padStart(9)}`);
  for (const [g] of RULES) if (a.self.get(g)) console.log(`${g.padEnd(82)}${pct(a.self.get(g)).padStart(6)}${us(a.self.get(g)).padStart(9)}`);
  console.log(`\ntop ${top} functions by self time:`);
  for (const [f, v] of [...a.fnSelf].sort((x, y) => y[1] - x[1]).slice(0, top)) console.log(`  ${pct(v).padStart(5)} % ${us(v).padStart(6)} µs  ${f.slice(0, 150)}`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const p = JSON.parse(readFileSync(process.argv[2]));
  const calls = Number(process.argv[3] ?? 1);
  const a = analyse(p);
  if (process.argv[4] === "--group") {
    // handled below, once groupDetail is defined
  } else if (process.argv[4] === "--stacks") {
    const re = new RegExp(process.argv[5]);
    const rows = [...a.stacks].filter(([s]) => re.test(s.split(";").pop())).sort((x, y) => y[1] - x[1]).slice(0, Number(process.argv[6] ?? 12));
    for (const [s, v] of rows) console.log(`${((100 * v) / a.busy).toFixed(2)} %  ${s.split(";").slice(-14).join(" < ".replace(/^/, "")).slice(0, 1200)}\n`);
  } else {
    printAnalysis(a, calls, Number(process.argv[4] ?? 15));
  }
}

// `--group NAME_REGEX`: inside the groups whose name matches, the heaviest (innermost gateway
// or workers-rs frame, leaf) pairs: what the group's time was spent on, and from where.
export function groupDetail(p, re, top = 15) {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const rows = new Map();
  let busy = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const dt = p.timeDeltas[i + 1] ?? 0;
    const names = [];
    for (let id = p.samples[i]; id !== undefined; id = parent.get(id)) names.push(byId.get(id).callFrame.functionName || "anon");
    const leaf = names[0];
    const s = [...names].reverse().join(";");
    const g = RULES.find(([, f]) => f(leaf, s))[0];
    if (g === "idle") continue;
    busy += dt;
    if (!re.test(g)) continue;
    const from = names.find((n) => /hf_gate::|worker::|web_sys::/.test(n)) ?? "-";
    const k = `${from.replace(/::h[0-9a-f]{16}/, "").slice(0, 90)}  ->  ${leaf.replace(/::h[0-9a-f]{16}/, "").slice(0, 70)}`;
    rows.set(k, (rows.get(k) ?? 0) + dt);
  }
  return [...rows].sort((x, y) => y[1] - x[1]).slice(0, top).map(([k, v]) => [k, (100 * v) / busy]);
}
if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[4] === "--group") {
  const p = JSON.parse(readFileSync(process.argv[2]));
  for (const [k, v] of groupDetail(p, new RegExp(process.argv[5]), Number(process.argv[6] ?? 15))) console.log(`${v.toFixed(2).padStart(6)} %  ${k}`);
}
