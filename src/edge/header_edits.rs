//! Header edits in one call to the runtime each (`core::headers::Edits`). Building a response's
//! headers one `set` at a time crossed into JS for each header, with both strings decoded each
//! time, and reading a `Headers`' names took a crossing per name: about twenty crossings per
//! call, now two. (In a CPU profile of the metered path, one hot key at c=16, the response's
//! headers were 14 % of the isolate's time; most of what is left is the runtime's own copy
//! and name iterator, which this does not change. README, "Where a metered call's time goes".)

use crate::core::headers::Edits;
use wasm_bindgen::prelude::wasm_bindgen;

#[wasm_bindgen(inline_js = r#"
export function header_names(h) {
  let names = "";
  for (const name of h.keys()) names += name + "\n";
  return names;
}
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
export function edited_copy(h, text) {
  let copy;
  try {
    copy = new Headers(h);
  } catch {
    copy = new Headers();
  }
  edit_headers(copy, text);
  return copy;
}
"#)]
extern "C" {
    fn header_names(h: &web_sys::Headers) -> String;
    fn edit_headers(h: &web_sys::Headers, text: &str);
    fn edited_copy(h: &web_sys::Headers, text: &str) -> web_sys::Headers;
}

/// The names of `h`, lower-case, one per line (a name that repeats, as `set-cookie` does,
/// comes once per value).
pub fn names(h: &web_sys::Headers) -> String {
    header_names(h)
}

/// Applies `edits` to `h`.
pub fn apply(h: &web_sys::Headers, edits: &Edits) {
    if !edits.text().is_empty() {
        edit_headers(h, edits.text());
    }
}

/// A copy of `h` with `edits` applied.
pub fn copy_with(h: &web_sys::Headers, edits: &Edits) -> web_sys::Headers {
    edited_copy(h, edits.text())
}
