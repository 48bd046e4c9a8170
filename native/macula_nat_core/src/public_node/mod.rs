//! macula-node, the public-node binary: its config file ([`config`]) and
//! its Prometheus metrics endpoint ([`metrics`]). Compiled into the binary
//! only (`#[path]` from `src/bin/macula-node.rs`), not into the library.

pub mod config;
pub mod metrics;
