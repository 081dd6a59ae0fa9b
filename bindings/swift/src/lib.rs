//! The Swift binding's native library: uniffi exports over the `harmonylite` core.
//!
//! This crate only converts types, maps errors (on [`harmonylite::ErrorCode`]) and plumbs callbacks; the
//! idiomatic Swift API is the hand-written layer in `Sources/HarmonyLite/`, over the generated
//! `harmonylite.swift` (see `scripts/regen.sh`). Every async export awaits a future that runs on the core's
//! one tokio runtime (`harmonylite::on_runtime`), so uniffi's executor only ever waits on a join handle and
//! no second runtime exists.
//!
//! Names here are the generated Swift names: the objects are `Native*` so the hand-written `Replica`,
//! `Config` and `HarmonyLiteError` can wrap them; the records (`ChangeEvent`, `Token`, `Status`, ...) are
//! used by the Swift API as they are.

uniffi::setup_scaffolding!("harmonylite");

mod config;
mod conflicts;
mod errors;
mod events;
mod logging;
mod records;
mod replica;
mod sqlite_link;
mod status;

pub use config::{config_from_json, config_from_toml, config_from_toml_file};
pub use conflicts::{conflict_kind_name, NativeConflictListener};
pub use errors::{error_codes, error_sample, NativeError};
pub use events::{NativeChangeListener, NativeListener, Value};
pub use logging::enable_logging;
pub use records::{
    BrokerDataLoss, ChangeEvent, ChangeOp, Conflict, ConflictKind, ConflictSide, ConnectionState,
    Divergence, PausedTable, ReplicaRole, ShardStatus, SnapshotProgress, Status,
};
pub use replica::{live_replica_count, metrics_content_type, open_replicated, NativeReplica};
pub use sqlite_link::{sqlite_library, SqliteLibrary};
pub use status::{token_from_string, token_merge, token_to_string, SnapshotManifest, Token};
