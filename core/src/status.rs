//! The records a replica reports about itself: `status()`, its shards, its role, and the read-your-writes
//! token. Plain data, shared by the engine, the attach protocol, health and metrics.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::snapshot;

/// A read-your-writes token: per shard, the stream position a node must have applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub positions: BTreeMap<u32, u64>,
}

impl Token {
    /// Combines two tokens: waiting for the result waits for both.
    pub fn merge(&mut self, other: &Token) {
        for (shard, seq) in &other.positions {
            let entry = self.positions.entry(*shard).or_insert(0);
            *entry = (*entry).max(*seq);
        }
    }

    pub(crate) fn reached_by(&self, applied: &BTreeMap<u32, u64>) -> bool {
        self.positions
            .iter()
            .all(|(shard, seq)| applied.get(shard).copied().unwrap_or(0) >= *seq)
    }
}

/// Text form `shard:seq,shard:seq` so tokens can travel between processes and languages.
impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .positions
            .iter()
            .map(|(s, q)| format!("{s}:{q}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for Token {
    type Err = Error;
    fn from_str(text: &str) -> Result<Token> {
        let mut positions = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let parsed = part
                .split_once(':')
                .and_then(|(s, q)| Some((s.parse::<u32>().ok()?, q.parse::<u64>().ok()?)));
            let Some((shard, seq)) = parsed else {
                return Err(Error::config(
                    "token",
                    format!("`{text}` is not a token (shard:seq,...)"),
                ));
            };
            positions.insert(shard, seq);
        }
        Ok(Token { positions })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionState {
    Connected,
    Disconnected,
    Connecting,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardStatus {
    pub shard: u32,
    /// Stream position applied on this node.
    pub applied_seq: u64,
    /// Highest stream position of a message this node published (this run).
    pub published_seq: u64,
    /// Last position in the shard's stream (None when NATS cannot be asked right now).
    pub stream_last_seq: Option<u64>,
    /// Messages in the stream this node has not applied yet.
    pub lag_messages: Option<u64>,
    /// How long this shard has had messages waiting without applying any (its apply failing, or its
    /// position not moving while the stream holds more); None while it keeps up.
    pub stalled_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// Whether a handle runs the node's replicator or forwards to the process that does (ADR 0010).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaRole {
    /// This handle runs the replicator (capture, publishing, applying, the embedded nats-server).
    Active,
    /// Another process (or another open in this process) runs it; this handle forwards to it and takes
    /// over when it goes away.
    Attached,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub node_id: u64,
    /// `active` or `attached` (ADR 0010).
    pub role: ReplicaRole,
    /// Pid of the process that runs this database's replicator (this process when `role` is `active`).
    pub replicator_pid: u32,
    /// Handles attached to that replicator (other processes, or other opens in the same process).
    pub attached_handles: u32,
    pub db_path: String,
    pub connection: ConnectionState,
    /// The JetStream streams exist (created or checked since open, and none found missing since).
    pub streams_ready: bool,
    /// Streams this node found missing on the server; the stream keeper is creating them again.
    pub missing_streams: Vec<String>,
    /// How long NATS has been unreachable (None while connected).
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
    /// Entries in the conflict log (bounded; see `Replica::conflicts`).
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
    /// A shard's position is older than the first message its stream still holds: rows changed in the gap
    /// are stale until they change again. Restart the node to restore a snapshot.
    pub behind_retention: bool,
    /// JetStream lost messages this node relied on (a stream deleted or recreated, or holding less than
    /// this node had applied). Positions were reset to the new stream; rows that only the lost messages
    /// carried are missing on the nodes that had not applied them until every node has published its rows
    /// again (`broker_data_loss[].republished_rows`); this stays true for the rest of the run, as a record.
    pub broker_data_loss_detected: bool,
    /// Losses detected since open (one per lost stream incarnation).
    pub broker_data_loss_events: u64,
    pub broker_data_loss: Vec<crate::transport::stream_health::BrokerDataLoss>,
    /// Tables whose checksum differs from a peer's although both nodes had applied the same changes
    /// (identical positions on every shard, nothing unsent): the divergence check (ADR 0017). This node
    /// republishes such a table's rows (at most once per `divergence_check.repair_interval`); an entry
    /// stays until a later comparison at identical positions matches.
    #[serde(default)]
    pub divergent_tables: Vec<crate::divergence::Divergence>,
    /// Table checksums compared with a peer's at identical positions since open: zero while the check is
    /// off, before the first round, or while no peer has been at this node's positions.
    #[serde(default)]
    pub divergence_comparisons: u64,
    /// Errors counted in the last minute (`errors` counts since open).
    pub errors_last_minute: u64,
    /// Snapshot save/restore progress.
    pub snapshot: snapshot::SnapshotProgress,
    pub uptime_ms: u64,
}

/// What has been published so far, for read-your-writes tokens.
#[derive(Debug, Clone, Default)]
pub struct PublishProgress {
    /// Every outbox id up to this one is acknowledged.
    pub acked_through: i64,
    /// Highest acknowledged stream sequence per shard.
    pub shard_seqs: BTreeMap<u32, u64>,
}
