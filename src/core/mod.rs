//! The pure core: every decision the gateway makes, with time, randomness and I/O passed in.
//!
//! Nothing here names `worker` or `js_sys`, so it builds and tests natively with fake clocks
//! and scripted randomness.

pub mod account;
pub mod admin_input;
pub mod alerts;
pub mod body;
pub mod call;
pub mod call_line;
pub mod caller;
pub mod cors;
pub mod decimal;
pub mod edits;
pub mod endpoints;
pub mod error;
pub mod gcra;
pub mod headers;
pub mod isolate_lease;
pub mod jobs;
pub mod keys;
pub mod lease;
pub mod ledger;
pub mod listing;
pub mod paths;
pub mod price_book;
pub mod pricing;
pub mod protocol;
pub mod rand;
pub mod record_cache;
pub mod request_log;
pub mod retry;
pub mod route_prices;
pub mod sandbox;
pub mod setting_json;
pub mod settings;
pub mod sort;
pub mod sorted;
pub mod spend;
pub mod sse;
pub mod store;
pub mod time;
pub mod wire;
