//! The pages the worker serves (`edge::pages`) go into the bundle from `pages/`, or, when the
//! release build made a minified copy of them (`scripts/pages.mjs`), from `HFGATE_PAGES`.

use std::{env, fs, io};

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-env-changed=HFGATE_PAGES");
    let from = env::var("HFGATE_PAGES").unwrap_or_else(|_| "pages".into());
    let out = env::var("OUT_DIR").map_err(io::Error::other)?;
    for name in ["admin.html", "playground.html"] {
        println!("cargo:rerun-if-changed={from}/{name}");
        fs::copy(format!("{from}/{name}"), format!("{out}/{name}"))?;
    }
    Ok(())
}
