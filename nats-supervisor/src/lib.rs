//! Finds, configures, starts and supervises `nats-server` processes.
//!
//! Two ways to run one:
//!
//! - [`EmbeddedServer`]: the supervisor HarmonyLite's embedded mode uses (DESIGN §6,
//!   `docs/embedded-nats.md`). [`EmbeddedServer::start`] finds a binary ([`resolve_binary`]), writes
//!   a generated configuration into the store folder, starts the process and returns once
//!   `/healthz?js-server-only=true` answers (never after a fixed sleep). A tokio task then restarts
//!   the process with backoff on the same client port and store folder; [`EmbeddedServer::stop`] ends
//!   supervision first, then stops the process gracefully; dropping the handle kills it.
//! - [`NatsProcess`]: one process from the same generated configuration, started, waited for and
//!   stopped, without supervision, for tests, benchmarks and the fault harness that kill, pause and
//!   restart servers on purpose. Blocking, so it works from plain threads and async tests alike.
//!
//! Ports: the client port is the configured one, or (port 0 / empty) one that `nats-server`
//! picks itself (`-1`). The monitoring port is picked by `nats-server` on loopback unless a user
//! config sets it, and is read back from the ports file the server writes into its folder. Nothing
//! here picks a "free" port and hopes it stays free.
//!
//! This crate knows nothing of HarmonyLite's engine: its options are plain values and its
//! [`Error`] is its own (the engine maps it onto its error codes).

mod binary;
mod error;
mod files;
mod launcher;
mod monitor;
mod plan;
mod supervisor;
mod user_config;

pub use binary::{check_configured_binary, resolve_binary, NATS_SERVER_ENV};
pub use error::{Error, Result};
pub use launcher::{NatsProcess, ProcessOptions, Readiness};
pub use supervisor::{EmbeddedOptions, EmbeddedServer, DEFAULT_MAX_PAYLOAD};
