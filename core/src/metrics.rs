//! What a node counts, and its Prometheus exposition (OpenMetrics text).
//!
//! Counters are prometheus-client counters, incremented by the stage that does the thing (the publisher
//! when JetStream acknowledges, the database thread after it commits an apply, the transport on an error):
//! a scrape reads them as they are. Gauges describe state — lag, pending changes, the connection — and are
//! read at scrape time from a status at most `STATUS_MAX_AGE` old (`Replicator::recent_status`), so however
//! often a node is scraped it computes at most one status a second.
//!
//! A new counter is a field here, its line in [`Counters::register`], and one increment where it happens.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::error::Error;
use crate::status::{ConnectionState, Status};

/// How old the status behind the gauges (and `/health`) may be.
pub(crate) const STATUS_MAX_AGE: Duration = Duration::from_secs(1);

/// The content type of [`exposition`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Default)]
pub(crate) struct Counters {
    pub published_messages: Counter,
    pub published_rows: Counter,
    pub applied_rows: Counter,
    /// Remote changes that lost to a newer version already here.
    pub kept_rows: Counter,
    pub deferred_rows: Counter,
    /// Rows this node moved off a key another node's row took.
    pub moved_keys: Counter,
    /// Conflict-log entries recorded.
    pub conflicts: Counter,
    /// Received messages parked on the dead-letter subject.
    pub dead_lettered: Counter,
    /// Local changes JetStream refused (too large), kept on this node only.
    pub rejected_local: Counter,
    pub errors: Counter,
    pub last_publish_ms: AtomicU64,
    pub last_apply_ms: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    pub behind_retention: AtomicBool,
    /// When the most recent errors happened (at most `RECENT_ERRORS_KEPT`), for "errors are rising".
    pub recent_errors: Mutex<std::collections::VecDeque<Instant>>,
}

const RECENT_ERRORS_WINDOW: Duration = Duration::from_secs(60);
const RECENT_ERRORS_KEPT: usize = 1024;

impl Counters {
    pub fn record_error(&self, err: &Error) {
        self.errors.inc();
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(err.to_string());
        }
        if let Ok(mut recent) = self.recent_errors.lock() {
            if recent.len() >= RECENT_ERRORS_KEPT {
                recent.pop_front();
            }
            recent.push_back(Instant::now());
        }
    }

    /// Errors counted in the last minute.
    pub fn errors_last_minute(&self) -> u64 {
        let Ok(mut recent) = self.recent_errors.lock() else {
            return 0;
        };
        while recent
            .front()
            .is_some_and(|at| at.elapsed() > RECENT_ERRORS_WINDOW)
        {
            recent.pop_front();
        }
        recent.len() as u64
    }

    /// Registers every counter (a handle on the same value) under its exposed name (`_total` is added).
    fn register(&self, registry: &mut Registry) {
        let counters: [(&str, &str, &Counter); 10] = [
            (
                "changes_published",
                "Row changes published and acknowledged by JetStream",
                &self.published_rows,
            ),
            (
                "messages_published",
                "Messages published and acknowledged by JetStream",
                &self.published_messages,
            ),
            (
                "changes_applied",
                "Remote row changes applied to this database",
                &self.applied_rows,
            ),
            (
                "changes_skipped",
                "Remote row changes that lost to a newer version already here",
                &self.kept_rows,
            ),
            (
                "changes_deferred",
                "Remote row changes that had to wait (for the local schema, a constraint, or an earlier change)",
                &self.deferred_rows,
            ),
            (
                "keys_moved",
                "Rows of this node moved to a fresh key because a row created earlier elsewhere took theirs",
                &self.moved_keys,
            ),
            (
                "conflicts",
                "Conflicts resolved and recorded in the conflict log (overwritten concurrent changes, moved keys, constraint resolutions)",
                &self.conflicts,
            ),
            (
                "dead_lettered",
                "Received messages that could not be applied, parked on the dead-letter subject",
                &self.dead_lettered,
            ),
            (
                "rejected_local",
                "Local row changes too large for the server, kept on this node only",
                &self.rejected_local,
            ),
            (
                "errors",
                "Errors met while replicating (each one retried)",
                &self.errors,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
    }
}

/// The metric name prefix of `[prometheus] namespace` and `subsystem` (empty parts left out).
pub(crate) fn prefix(namespace: &str, subsystem: &str) -> String {
    [namespace, subsystem]
        .iter()
        .filter(|part| !part.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("_")
}

/// The node's metrics as OpenMetrics text, every series labelled with its node id: the counters as they
/// are now, the gauges from `status`.
pub(crate) fn exposition(counters: &Counters, status: &Status, prefix: &str) -> String {
    let labels = [(
        Cow::Borrowed("node_id"),
        Cow::Owned(status.node_id.to_string()),
    )];
    let mut registry = if prefix.is_empty() {
        Registry::with_labels(labels.into_iter())
    } else {
        Registry::with_prefix_and_labels(prefix, labels.into_iter())
    };
    counters.register(&mut registry);
    register_state(&mut registry, status);
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

/// The gauges (and the counters kept outside [`Counters`]) read from a status.
fn register_state(registry: &mut Registry, status: &Status) {
    let count = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    let flag = |yes: bool| ConstGauge::new(i64::from(yes));
    registry.register(
        "broker_data_loss",
        "Times JetStream lost messages this node relied on (a stream deleted or recreated, or holding less than was applied)",
        ConstCounter::new(status.broker_data_loss_events),
    );
    registry.register(
        "divergence_comparisons",
        "Table checksums compared with a peer's at identical positions (the divergence check)",
        ConstCounter::new(status.divergence_comparisons),
    );
    registry.register(
        "changes_pending",
        "Local row changes not yet acknowledged by JetStream",
        count(status.pending_changes + status.unsent_rows),
    );
    let waiting: u64 = status.paused_tables.iter().map(|t| t.waiting_changes).sum();
    registry.register(
        "changes_waiting",
        "Remote row changes kept waiting here (for a column, a table, a constraint or an earlier change)",
        count(waiting),
    );
    registry.register(
        "divergent_tables",
        "Tables found different from a peer's at identical positions, until a later comparison matches",
        count(status.divergent_tables.len() as u64),
    );
    registry.register(
        "streams_ready",
        "1 when every stream exists on the server",
        flag(status.streams_ready),
    );
    registry.register(
        "behind_retention",
        "1 when a shard's position is older than the first message its stream keeps",
        flag(status.behind_retention),
    );
    registry.register(
        "healthy",
        "1 when the node can make progress (what /health answers)",
        flag(status.health().ok),
    );
    registry.register(
        "nats_connected",
        "1 when connected to NATS",
        flag(status.connection == ConnectionState::Connected),
    );
    let per_shard = |values: &mut dyn Iterator<Item = (u32, f64)>| {
        let family = Family::<[(&'static str, u32); 1], Gauge<f64, AtomicU64>>::default();
        for (shard, value) in values {
            family.get_or_create(&[("shard", shard)]).set(value);
        }
        family
    };
    registry.register(
        "shard_stalled_seconds",
        "Seconds the shard has had messages waiting without applying any (0 while it keeps up)",
        per_shard(
            &mut status
                .shards
                .iter()
                .map(|s| (s.shard, s.stalled_ms.map_or(0.0, |ms| ms as f64 / 1000.0))),
        ),
    );
    registry.register(
        "replication_lag_messages",
        "Messages in the shard's stream not yet applied here",
        per_shard(
            &mut status
                .shards
                .iter()
                .filter_map(|s| s.lag_messages.map(|lag| (s.shard, lag as f64))),
        ),
    );
    registry.register(
        "applied_position",
        "Stream position applied here, per shard",
        per_shard(
            &mut status
                .shards
                .iter()
                .map(|s| (s.shard, s.applied_seq as f64)),
        ),
    );
    let now_ms = crate::clock::wall_millis();
    let seconds_since = |at_ms: u64| ConstGauge::new(now_ms.saturating_sub(at_ms) as f64 / 1000.0);
    // Absent until it first happens, so that dashboards show "no data" rather than a made-up 0.
    if let Some(at) = status.last_apply_ms {
        registry.register(
            "seconds_since_last_apply",
            "Seconds since this node last applied a remote change",
            seconds_since(at),
        );
    }
    if let Some(at) = status.last_publish_ms {
        registry.register(
            "seconds_since_last_publish",
            "Seconds since this node last published",
            seconds_since(at),
        );
    }
    if let Some(at) = status.snapshot.saved_at_ms {
        registry.register(
            "snapshot_age_seconds",
            "Seconds since this node saved its newest snapshot",
            seconds_since(at),
        );
    }
    registry.register(
        "uptime_seconds",
        "Seconds since this replica started",
        ConstGauge::new(status.uptime_ms as f64 / 1000.0),
    );
}
