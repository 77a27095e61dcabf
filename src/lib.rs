//! hf-gate: an edge gateway in front of Hugging Face Inference Providers.
//!
//! `core` is pure (no `worker`, no `js_sys`) and is tested natively; `edge` is the thin
//! Cloudflare Workers adapter and exists only when compiled for wasm32.

pub mod core;

#[cfg(target_arch = "wasm32")]
pub mod edge;
