//! Whether a node can make progress, and if not, why — from one [`Status`]. The sidecar's `/health`
//! answers with it; an app can call [`Status::health`] itself.

use std::time::Duration;

use serde::Serialize;

use crate::status::{ConnectionState, Status};

/// When a node stops being "ok".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthLimits {
    /// A shard with messages waiting and none applied for this long is stuck.
    pub max_stall: Duration,
    /// This many errors within the last minute means errors are rising.
    pub max_errors_per_minute: u64,
}

impl Default for HealthLimits {
    fn default() -> Self {
        HealthLimits {
            max_stall: Duration::from_secs(30),
            max_errors_per_minute: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub ok: bool,
    /// Why not, one line per problem (empty when ok).
    pub problems: Vec<String>,
}

impl Status {
    /// `ok` only when the node can make progress: NATS reachable, every stream there, no broker data loss,
    /// no table found divergent from a peer's, not behind retention, no shard stuck with messages waiting, errors not rising.
    pub fn health(&self) -> Health {
        self.health_with(&HealthLimits::default())
    }

    pub fn health_with(&self, limits: &HealthLimits) -> Health {
        let mut problems = Vec::new();
        let urls = self.nats_urls.join(", ");
        if self.connection != ConnectionState::Connected {
            let down = self
                .nats_unreachable_ms
                .map(|ms| format!(" for {} s", ms / 1000))
                .unwrap_or_default();
            problems.push(format!("NATS at {urls} cannot be reached{down}"));
        }
        if !self.missing_streams.is_empty() {
            problems.push(format!(
                "streams missing on the server (being created again): {}",
                self.missing_streams.join(", ")
            ));
        } else if !self.streams_ready {
            problems.push("streams not created yet".to_string());
        }
        // Repaired from this node's side once it has published its rows again.
        for loss in self
            .broker_data_loss
            .iter()
            .filter(|l| l.republished_rows.is_none())
        {
            problems.push(format!(
                "broker data loss on stream {}: {}; this node has not published its rows again yet",
                loss.stream, loss.reason
            ));
        }
        // Until a later comparison at identical positions matches: the repair may still be on its way.
        for divergence in &self.divergent_tables {
            let repair = match divergence.republished_at_ms {
                Some(_) => "its rows were published again",
                None => "not repaired yet",
            };
            problems.push(format!(
                "table {} differs from node {} at identical positions ({} rows here, {} there); {repair}",
                divergence.table,
                divergence.peer_node_id,
                divergence.rows_here,
                divergence.rows_at_peer
            ));
        }
        if self.behind_retention {
            problems.push(
                "behind the stream's retention: rows changed in the gap are stale (restart to restore a snapshot)"
                    .to_string(),
            );
        }
        let max_stall_ms = limits.max_stall.as_millis() as u64;
        for shard in &self.shards {
            if let Some(stalled) = shard.stalled_ms.filter(|ms| *ms >= max_stall_ms) {
                let waiting = shard
                    .lag_messages
                    .map(|lag| format!("{lag} messages waiting"))
                    .unwrap_or_else(|| "messages waiting".to_string());
                problems.push(format!(
                    "shard {}: {waiting}, applied position stuck at {} for {} s{}",
                    shard.shard,
                    shard.applied_seq,
                    stalled / 1000,
                    self.last_error
                        .as_ref()
                        .map(|err| format!(" (last error: {err})"))
                        .unwrap_or_default()
                ));
            }
        }
        if self.errors_last_minute >= limits.max_errors_per_minute {
            problems.push(format!(
                "{} errors in the last minute{}",
                self.errors_last_minute,
                self.last_error
                    .as_ref()
                    .map(|err| format!(" (last: {err})"))
                    .unwrap_or_default()
            ));
        }
        Health {
            ok: problems.is_empty(),
            problems,
        }
    }
}
