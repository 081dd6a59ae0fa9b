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

/// Whether this handle runs the database's replicator or forwards to the process that does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ReplicaRole {
    Active,
    Attached,
}

/// A loss of stream data on the server, as this node detected it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct BrokerDataLoss {
    pub stream: String,
    /// The shard whose consumer detected it (nil when the stream keeper did).
    pub shard: Option<u32>,
    pub reason: String,
    pub detected_at_ms: u64,
    /// This node's position in the shard was reset to the start of the new stream.
    pub position_reset: bool,
    /// Rows this node published again to repair the loss (nil until it has).
    pub republished_rows: Option<u64>,
}

impl From<harmonylite::BrokerDataLoss> for BrokerDataLoss {
    fn from(loss: harmonylite::BrokerDataLoss) -> BrokerDataLoss {
        // One private field (the replacement stream's identity) stays in the core: no destructuring here.
        BrokerDataLoss {
            stream: loss.stream,
            shard: loss.shard,
            reason: loss.reason,
            detected_at_ms: loss.detected_at_ms,
            position_reset: loss.position_reset,
            republished_rows: loss.republished_rows,
        }
    }
}

/// A table found different from a peer's at identical positions (the divergence check).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Divergence {
    pub table: String,
    /// The node whose checksum differs.
    pub peer_node_id: u64,
    /// When this node first found the difference, ms since the epoch.
    pub since_ms: u64,
    /// Rows of the table here and at the peer, at the latest comparison that found the difference.
    pub rows_here: u64,
    pub rows_at_peer: u64,
    /// When this node last published the table's rows again to repair it (nil: not yet).
    pub republished_at_ms: Option<u64>,
}

impl From<harmonylite::Divergence> for Divergence {
    fn from(divergence: harmonylite::Divergence) -> Divergence {
        let harmonylite::Divergence {
            table,
            peer_node_id,
            since_ms,
            rows_here,
            rows_at_peer,
            republished_at_ms,
        } = divergence;
        Divergence {
            table,
            peer_node_id,
            since_ms,
            rows_here,
            rows_at_peer,
            republished_at_ms,
        }
    }
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
    /// How long this shard has had messages waiting without applying any; nil while it keeps up.
    pub stalled_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PausedTable {
    pub table: String,
    pub waiting_changes: u64,
    /// Why the oldest waiting change waits, in words.
    pub reason: String,
    /// What it waits for: `schema` (a table or column this node lacks), `constraint` (a local UNIQUE /
    /// NOT NULL / CHECK refuses it until the blocking data changes), `invalid` (a value this schema cannot
    /// hold), `clock` (stamped ahead of this node's clock), `queued` (behind an earlier change of its row).
    pub kind: String,
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
    /// `active`: this process runs the replicator; `attached`: it forwards to the process that does.
    pub role: ReplicaRole,
    /// The process that runs this database's replicator (this one when `role` is `active`).
    pub replicator_pid: u32,
    /// Handles (other processes, or other opens) attached to that replicator.
    pub attached_handles: u32,
    pub db_path: String,
    pub connection: ConnectionState,
    /// The JetStream streams exist (created or checked since open).
    pub streams_ready: bool,
    /// Streams this node expects that the server does not have (lost, or not created yet).
    pub missing_streams: Vec<String>,
    /// How long NATS has been unreachable, while it is.
    pub nats_unreachable_ms: Option<u64>,
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
    /// Entries in the conflict log (bounded; see `Replica.conflicts`).
    pub conflicts: u64,
    /// Conflicts recorded since open: merge losers, moved keys, constraint resolutions.
    pub conflicts_recorded: u64,
    /// Rows this node moved to a fresh key since open, because another node created a different row under
    /// the same auto-assigned key first.
    pub moved_keys: u64,
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
    /// The server lost messages this node had seen (its JetStream store was wiped or replaced).
    pub broker_data_loss_detected: bool,
    pub broker_data_loss_events: u64,
    pub broker_data_loss: Vec<BrokerDataLoss>,
    /// Tables whose checksum differs from a peer's although both nodes applied the same changes; each stays
    /// until a later comparison matches.
    pub divergent_tables: Vec<Divergence>,
    /// Table checksums compared with a peer's at identical positions since open.
    pub divergence_comparisons: u64,
    pub errors_last_minute: u64,
    pub snapshot: SnapshotProgress,
    pub uptime_ms: u64,
}

// The core's structs are destructured without `..`: a field added to them stops this crate compiling
// until it is converted here (`StatusFieldTests` also compares the records with the core's serde output).
impl From<harmonylite::Status> for Status {
    fn from(s: harmonylite::Status) -> Status {
        let harmonylite::Status {
            node_id,
            role,
            replicator_pid,
            attached_handles,
            db_path,
            connection,
            streams_ready,
            missing_streams,
            nats_unreachable_ms,
            nats_urls,
            embedded_server,
            publish,
            replicate,
            replicated_tables,
            shards,
            pending_changes,
            unsent_messages,
            unsent_rows,
            published_messages,
            published_rows,
            applied_rows,
            skipped_rows,
            deferred_rows,
            conflicts,
            conflicts_recorded,
            moved_keys,
            dead_lettered,
            rejected_local,
            paused_tables,
            last_publish_ms,
            last_apply_ms,
            errors,
            last_error,
            behind_retention,
            broker_data_loss_detected,
            broker_data_loss_events,
            broker_data_loss,
            divergent_tables,
            divergence_comparisons,
            errors_last_minute,
            snapshot,
            uptime_ms,
        } = s;
        Status {
            node_id,
            role: match role {
                harmonylite::ReplicaRole::Active => ReplicaRole::Active,
                harmonylite::ReplicaRole::Attached => ReplicaRole::Attached,
            },
            replicator_pid,
            attached_handles,
            db_path,
            connection: match connection {
                harmonylite::ConnectionState::Connected => ConnectionState::Connected,
                harmonylite::ConnectionState::Disconnected => ConnectionState::Disconnected,
                harmonylite::ConnectionState::Connecting => ConnectionState::Connecting,
            },
            streams_ready,
            missing_streams,
            nats_unreachable_ms,
            nats_urls,
            embedded_server,
            publish,
            replicate,
            replicated_tables,
            shards: shards.into_iter().map(ShardStatus::from).collect(),
            pending_changes,
            unsent_messages,
            unsent_rows,
            published_messages,
            published_rows,
            applied_rows,
            skipped_rows,
            deferred_rows,
            conflicts,
            conflicts_recorded,
            moved_keys,
            dead_lettered,
            rejected_local,
            paused_tables: paused_tables.into_iter().map(PausedTable::from).collect(),
            last_publish_ms,
            last_apply_ms,
            errors,
            last_error,
            behind_retention,
            broker_data_loss_detected,
            broker_data_loss_events,
            broker_data_loss: broker_data_loss
                .into_iter()
                .map(BrokerDataLoss::from)
                .collect(),
            divergent_tables: divergent_tables.into_iter().map(Divergence::from).collect(),
            divergence_comparisons,
            errors_last_minute,
            snapshot: snapshot.into(),
            uptime_ms,
        }
    }
}

impl From<harmonylite::ShardStatus> for ShardStatus {
    fn from(shard: harmonylite::ShardStatus) -> ShardStatus {
        let harmonylite::ShardStatus {
            shard,
            applied_seq,
            published_seq,
            stream_last_seq,
            lag_messages,
            stalled_ms,
        } = shard;
        ShardStatus {
            shard,
            applied_seq,
            published_seq,
            stream_last_seq,
            lag_messages,
            stalled_ms,
        }
    }
}

impl From<harmonylite::PausedTable> for PausedTable {
    fn from(paused: harmonylite::PausedTable) -> PausedTable {
        let harmonylite::PausedTable {
            table,
            waiting_changes,
            reason,
            kind,
        } = paused;
        PausedTable {
            table,
            waiting_changes,
            reason,
            kind,
        }
    }
}

impl From<harmonylite::snapshot::SnapshotProgress> for SnapshotProgress {
    fn from(progress: harmonylite::snapshot::SnapshotProgress) -> SnapshotProgress {
        let harmonylite::snapshot::SnapshotProgress {
            phase,
            bytes_done,
            bytes_total,
            restored,
            saved,
            saved_at_ms,
        } = progress;
        SnapshotProgress {
            phase,
            bytes_done,
            bytes_total,
            restored,
            saved,
            saved_at_ms,
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
    /// With a cluster key (`[signing]`): the manifest's signature.
    pub signature: Option<String>,
}

impl From<harmonylite::snapshot::Manifest> for SnapshotManifest {
    fn from(m: harmonylite::snapshot::Manifest) -> SnapshotManifest {
        // Destructured without `..`: a field added to the core's manifest fails to compile here until this
        // record has it.
        let harmonylite::snapshot::Manifest {
            format,
            object,
            created_ms,
            node_id,
            hlc,
            positions,
            schema_hash,
            bytes,
            sha256,
            raw_bytes,
            signature,
        } = m;
        SnapshotManifest {
            format,
            object,
            created_ms,
            node_id,
            hlc,
            positions: positions.into_iter().collect(),
            schema_hash,
            bytes,
            sha256,
            raw_bytes,
            signature,
        }
    }
}
