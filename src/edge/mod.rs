//! The Cloudflare Workers adapter: compiled for wasm32 only. It does I/O (requests, KV,
//! Durable Objects, the clock) and hands every decision to `crate::core`.

pub mod account_do;
pub mod admin;
pub mod auth;
pub mod body_io;
pub mod config;
pub mod cooldown_do;
pub mod entry;
pub mod forward;
pub mod header_edits;
pub mod health;
pub mod hold;
pub mod incoming;
pub mod kv;
pub mod leases;
pub mod meter;
pub mod objects;
pub mod outbox;
pub mod pages;
pub mod platform;
pub mod prices;
pub mod proxy;
pub mod registry_do;
pub mod request_log;
pub mod response;
pub mod routes;
pub mod sandbox;
pub mod sealing;
pub mod stats;
pub mod upstream;
pub mod usage;
