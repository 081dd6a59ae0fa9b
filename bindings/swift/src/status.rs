//! Plain data handed to Swift: read-your-writes tokens, `status()` and snapshot manifests.

use std::collections::{BTreeMap, HashMap};

use crate::errors::NativeError;

/// A read-your-writes token: per shard, the stream position a node must have applied. Its text form
/// (`"0:15,1:20"`) travels between processes and languages.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct Token {
    pub positions: HashMap<u32, u64>,
}

impl From<harmonylite::Token> for Token {
    fn from(token: harmonylite::Token) -> Token {
        Token {
            positions: token.positions.into_iter().collect(),
        }
    }
}

impl From<Token> for harmonylite::Token {
    fn from(token: Token) -> harmonylite::Token {
        harmonylite::Token {
            positions: token.positions.into_iter().collect::<BTreeMap<_, _>>(),
        }
    }
}

/// The token's text form, `shard:seq,shard:seq`.
#[uniffi::export(name = "native_token_to_string")]
pub fn token_to_string(token: Token) -> String {
    harmonylite::Token::from(token).to_string()
}

/// Parses a token's text form; an error names the `token` key.
#[uniffi::export(name = "native_token_from_string")]
pub fn token_from_string(text: String) -> Result<Token, NativeError> {
    Ok(text.parse::<harmonylite::Token>()?.into())
}

/// A token that waits for both.
#[uniffi::export(name = "native_token_merge")]
pub fn token_merge(a: Token, b: Token) -> Token {
    let mut merged = harmonylite::Token::from(a);
    merged.merge(&b.into());
    merged.into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ConnectionState {
    Connected,
    Disconnected,
    Connecting,
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ShardStatus {
    pub shard: u32,
    /// Stream position applied on this node.
    pub applied_seq: u64,
    /// Highest stream position of a message this node published (this run).
    pub published_seq: u64,
    /// Last position in the shard's stream (nil when NATS cannot be asked right now).
    pub stream_last_seq: Option<u64>,
    /// Messages in the stream this node has not applied yet.
    pub lag_messages: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PausedTable {
    pub table: String,
    pub waiting_changes: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SnapshotProgress {
    /// `idle`, `creating`, `uploading`, `downloading`, `verifying`, `installing`.
    pub phase: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// The newest snapshot this node restored (manifest object key), if any.
    pub restored: Option<String>,
    /// The newest snapshot this node saved, if any.
    pub saved: Option<String>,
    pub saved_at_ms: Option<u64>,
}

/// What a replica is doing: connection, streams, per-shard positions, counters, snapshot progress.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Status {
    pub node_id: u64,
    pub db_path: String,
    pub connection: ConnectionState,
    /// The JetStream streams exist (created or checked since open).
    pub streams_ready: bool,
    pub nats_urls: Vec<String>,
    pub embedded_server: bool,
    pub publish: bool,
    pub replicate: bool,
    pub replicated_tables: Vec<String>,
    pub shards: Vec<ShardStatus>,
    /// Captured local changes not yet stamped.
    pub pending_changes: u64,
    /// Stamped local messages (and their rows) not yet acknowledged by JetStream.
    pub unsent_messages: u64,
    pub unsent_rows: u64,
    pub published_messages: u64,
    pub published_rows: u64,
    pub applied_rows: u64,
    /// Received changes that lost to a newer version already here.
    pub skipped_rows: u64,
    pub deferred_rows: u64,
    pub dead_lettered: u64,
    /// Local changes that could not be published (larger than the server's max payload).
    pub rejected_local: u64,
    pub paused_tables: Vec<PausedTable>,
    pub last_publish_ms: Option<u64>,
    pub last_apply_ms: Option<u64>,
    pub errors: u64,
    pub last_error: Option<String>,
    /// A shard's position is older than the first message its stream still holds (restart to restore a
    /// snapshot).
    pub behind_retention: bool,
    pub snapshot: SnapshotProgress,
    pub uptime_ms: u64,
}

impl From<harmonylite::Status> for Status {
    fn from(s: harmonylite::Status) -> Status {
        Status {
            node_id: s.node_id,
            db_path: s.db_path,
            connection: match s.connection {
                harmonylite::ConnectionState::Connected => ConnectionState::Connected,
                harmonylite::ConnectionState::Disconnected => ConnectionState::Disconnected,
                harmonylite::ConnectionState::Connecting => ConnectionState::Connecting,
            },
            streams_ready: s.streams_ready,
            nats_urls: s.nats_urls,
            embedded_server: s.embedded_server,
            publish: s.publish,
            replicate: s.replicate,
            replicated_tables: s.replicated_tables,
            shards: s
                .shards
                .into_iter()
                .map(|shard| ShardStatus {
                    shard: shard.shard,
                    applied_seq: shard.applied_seq,
                    published_seq: shard.published_seq,
                    stream_last_seq: shard.stream_last_seq,
                    lag_messages: shard.lag_messages,
                })
                .collect(),
            pending_changes: s.pending_changes,
            unsent_messages: s.unsent_messages,
            unsent_rows: s.unsent_rows,
            published_messages: s.published_messages,
            published_rows: s.published_rows,
            applied_rows: s.applied_rows,
            skipped_rows: s.skipped_rows,
            deferred_rows: s.deferred_rows,
            dead_lettered: s.dead_lettered,
            rejected_local: s.rejected_local,
            paused_tables: s
                .paused_tables
                .into_iter()
                .map(|paused| PausedTable {
                    table: paused.table,
                    waiting_changes: paused.waiting_changes,
                    reason: paused.reason,
                })
                .collect(),
            last_publish_ms: s.last_publish_ms,
            last_apply_ms: s.last_apply_ms,
            errors: s.errors,
            last_error: s.last_error,
            behind_retention: s.behind_retention,
            snapshot: SnapshotProgress {
                phase: s.snapshot.phase,
                bytes_done: s.snapshot.bytes_done,
                bytes_total: s.snapshot.bytes_total,
                restored: s.snapshot.restored,
                saved: s.snapshot.saved,
                saved_at_ms: s.snapshot.saved_at_ms,
            },
            uptime_ms: s.uptime_ms,
        }
    }
}

/// A saved snapshot: where it is in the store and which stream positions and clock its data covers.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SnapshotManifest {
    pub format: u32,
    /// Key of the compressed database in the store.
    pub object: String,
    pub created_ms: u64,
    /// The node that made it.
    pub node_id: u64,
    /// The creating node's clock when it was taken.
    pub hlc: u64,
    /// Stream position per shard that the data includes.
    pub positions: HashMap<u32, u64>,
    pub schema_hash: String,
    /// Compressed size and its SHA-256 (hex).
    pub bytes: u64,
    pub sha256: String,
    pub raw_bytes: u64,
}

impl From<harmonylite::snapshot::Manifest> for SnapshotManifest {
    fn from(m: harmonylite::snapshot::Manifest) -> SnapshotManifest {
        SnapshotManifest {
            format: m.format,
            object: m.object,
            created_ms: m.created_ms,
            node_id: m.node_id,
            hlc: m.hlc,
            positions: m.positions.into_iter().collect(),
            schema_hash: m.schema_hash,
            bytes: m.bytes,
            sha256: m.sha256,
            raw_bytes: m.raw_bytes,
        }
    }
}
