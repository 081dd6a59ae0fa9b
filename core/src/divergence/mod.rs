//! The divergence check (ADR 0017): a cheap way to notice that nodes which applied the same changes do not
//! hold the same rows — messages lost by the broker before some node applied them, a position that skipped
//! messages, rows changed behind the engine's back — and to repair it the way broker data loss is repaired.
//!
//! Each node periodically checksums its replicated tables together with the positions it applied
//! (`checksum.rs`, one read transaction on a connection of its own), publishes the result on core NATS
//! (`<subject_prefix>-checksums`), and compares its peers' results with its own when both were taken at
//! identical positions (`report.rs`). A difference is reported in `status().divergent_tables` and by
//! `/health`, logged, and repaired by republishing the divergent tables' rows with their stored versions
//! (`publish::republish`), at most once per `divergence_check.repair_interval`.

pub mod checksum;
pub mod report;

mod checker;

pub(crate) use checker::{DivergenceChecker, DivergenceMonitor};
pub use report::Divergence;
