//! HarmonyLite: leaderless SQLite replication over NATS JetStream, in-process.
//!
//! ```no_run
//! # async fn demo() -> harmonylite::Result<()> {
//! use std::time::Duration;
//! let replica = harmonylite::open_replicated("app.db", harmonylite::Config::default()).await?;
//! // ... the app writes to app.db with its own SQLite connection ...
//! let token = replica.sync(Duration::from_secs(10)).await?; // published and acknowledged
//! println!("{token}");
//! replica.close().await?;
//! # Ok(()) }
//! ```
//!
//! The pipeline (see ARCHITECTURE.md): capture triggers → change log → stamping into the outbox → publisher
//! → JetStream → each node's consumer → applier (column-level last-writer-wins by hybrid logical clock,
//! key collisions and constraint conflicts resolved and logged) → change events.

pub mod apply;
mod attach;
pub mod capture;
pub mod clock;
pub mod config;
mod connection;
mod db_thread;
pub mod divergence;
mod engine;
pub mod error;
pub mod events;
pub mod health;
pub mod log;
mod metrics;
pub mod publish;
pub mod records;
mod relay;
mod replica;
mod retry;
pub mod snapshot;
pub mod sqlite_locks;
pub mod state;
mod status;
pub mod transport;

pub use config::Config;
pub use divergence::Divergence;
pub use engine::{block_on, check_not_forked, is_forked_child, on_runtime, runtime};
pub use error::{Error, ErrorCode, Result};
pub use events::{ChangeEvent, ChangeOp, ConflictSubscription, Listener, Subscription};
pub use health::{Health, HealthLimits};
pub use log::Value;
pub use metrics::CONTENT_TYPE as METRICS_CONTENT_TYPE;
pub use replica::{cleanup_database, open_replicated, Replica};
pub use state::conflicts::{Conflict, ConflictKind, ConflictSide};
pub use status::{ConnectionState, PausedTable, ReplicaRole, ShardStatus, Status, Token};
pub use transport::stream_health::BrokerDataLoss;
