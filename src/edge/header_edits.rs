//! Header edits in one call to the runtime each (`core::headers::Edits`). Building a response's
//! headers one `set` at a time crossed into JS for each header, with both strings decoded each
//! time, and reading a `Headers`' names took a crossing per name: about twenty crossings per
//! call, then two (the names out, the edits in), now one: the runtime also drops the names a
//! list of `core::headers` says stay behind, the list handed over once per isolate. A
//! response's headers are edited in the response itself, upstream's copied into it by the
//! runtime, not copied first and then copied again into the response. (README, "Where a
//! metered call's time goes".)

use crate::core::headers::{Edits, DROP_DOWNSTREAM, DROP_UPSTREAM};
use std::cell::Cell;
use wasm_bindgen::prelude::wasm_bindgen;

#[wasm_bindgen(inline_js = r#"
export function edit_headers(h, text) {
  const p = text.split("\n");
  for (let i = 0; i + 2 < p.length; i += 3) {
    try {
      if (p[i] === "d") h.delete(p[i + 1]);
      else if (p[i] === "s") h.set(p[i + 1], p[i + 2]);
      else if (p[i] === "a") h.append(p[i + 1], p[i + 2]);
    } catch {
      // a name or value the runtime refuses is left out, as one set call would leave it
    }
  }
}
const lists = [];
export function define_list(id, text) {
  const list = { names: new Set(), prefixes: [] };
  for (const n of text.split("\n")) {
    if (n.endsWith("*")) list.prefixes.push(n.slice(0, -1));
    else list.names.add(n);
  }
  lists[id] = list;
}
export function drop_and_edit(h, id, text) {
  const list = lists[id];
  const gone = [];
  for (const name of h.keys()) {
    if (list.names.has(name) || list.prefixes.some((p) => name.startsWith(p))) gone.push(name);
  }
  for (const name of gone) {
    try {
      h.delete(name);
    } catch {
      // headers the runtime will not change (none the gateway edits)
    }
  }
  edit_headers(h, text);
}
export function copy_dropping(h, id, text) {
  let copy;
  try {
    copy = new Headers(h);
  } catch {
    copy = new Headers();
  }
  drop_and_edit(copy, id, text);
  return copy;
}
"#)]
extern "C" {
    fn edit_headers(h: &web_sys::Headers, text: &str);
    fn define_list(id: u32, text: &str);
    fn drop_and_edit(h: &web_sys::Headers, id: u32, text: &str);
    fn copy_dropping(h: &web_sys::Headers, id: u32, text: &str) -> web_sys::Headers;
}

/// Which way headers cross, and so which names stay behind.
#[derive(Clone, Copy)]
pub enum Direction {
    /// The caller's, on the way upstream (`DROP_UPSTREAM`).
    Upstream = 0,
    /// Upstream's, on the way back (`DROP_DOWNSTREAM`).
    Downstream = 1,
}

thread_local! {
    /// Which lists the runtime has been handed, a bit each.
    static DEFINED: Cell<u32> = const { Cell::new(0) };
}

fn list(way: Direction) -> u32 {
    let id = way as u32;
    if DEFINED.with(|d| d.replace(d.get() | 1 << id)) & (1 << id) == 0 {
        let names = match way {
            Direction::Upstream => DROP_UPSTREAM,
            Direction::Downstream => DROP_DOWNSTREAM,
        };
        define_list(id, &names.join("\n"));
    }
    id
}

/// Applies `edits` to `h`.
pub fn apply(h: &web_sys::Headers, edits: &Edits) {
    if !edits.text().is_empty() {
        edit_headers(h, edits.text());
    }
}

/// Drops from `h` the names that do not cross `way`, then applies `edits`.
pub fn drop_then_edit(h: &web_sys::Headers, way: Direction, edits: &Edits) {
    drop_and_edit(h, list(way), edits.text());
}

/// A copy of `h` without the names that do not cross `way`, with `edits` applied.
pub fn copy_dropping_then_edit(h: &web_sys::Headers, way: Direction, edits: &Edits) -> web_sys::Headers {
    copy_dropping(h, list(way), edits.text())
}
