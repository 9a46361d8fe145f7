//! ringmta: a thread-per-core io_uring mail transfer agent with a durable mmap spool.
//!
//! Layers, bottom up: `smtp` (sans-IO protocol), `spool` (durable records), `config`, `auth`,
//! `message` (headers added at acceptance), `content` (validation, scanners, DKIM), `delivery`,
//! `net` (io_uring glue: listeners and SMTP connections), `server` (start-up and shutdown).
//! Sockets live in `net`, plus the two scanner clients in `content` (tokio-uring streams with
//! timeouts). See `docs/architecture.md`.

#![warn(missing_docs)]
// `unsafe` lives in two modules that allow it: the spool's segment mapping and the signal mask.
#![deny(unsafe_code)]

// Spool offsets and lengths are read from disk as u32/u64 and used as `usize` (a damaged length
// near u32::MAX must not overflow an address computation), and segments are mapped whole.
#[cfg(not(target_pointer_width = "64"))]
compile_error!("ringmta needs a 64-bit target");

pub mod auth;
pub mod autoconfig;
pub mod bounce;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod content;
pub mod control;
pub mod delivery;
pub mod feedback;
pub mod fsutil;
pub mod http;
pub mod http_client;
pub mod ids;
pub mod message;
pub mod metrics;
pub mod net;
pub mod queue;
pub mod ratelimit;
pub mod rfc5322;
pub mod server;
pub mod smtp;
pub mod spool;
pub mod suppress;
#[doc(hidden)]
pub mod testkit;
pub mod time;
pub mod top;
pub mod webhook;
pub mod worker;
