//! Prometheus text exposition of a replica's status, every series labelled with the node id.

use std::fmt::Write;

use harmonylite::{ConnectionState, Status};

pub struct Naming {
    pub namespace: String,
    pub subsystem: String,
}

impl Naming {
    fn name(&self, metric: &str) -> String {
        [self.namespace.as_str(), self.subsystem.as_str(), metric]
            .iter()
            .filter(|part| !part.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("_")
    }
}

struct Writer<'a> {
    out: String,
    naming: &'a Naming,
    node: String,
}

impl Writer<'_> {
    fn metric(&mut self, metric: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
        let name = self.naming.name(metric);
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let extra = if labels.is_empty() {
                String::new()
            } else {
                format!(",{labels}")
            };
            let _ = writeln!(
                self.out,
                "{name}{{node_id=\"{}\"{extra}}} {value}",
                self.node
            );
        }
    }
}

pub fn render(status: &Status, naming: &Naming, snapshot_age_seconds: Option<f64>) -> String {
    let mut w = Writer {
        out: String::new(),
        naming,
        node: status.node_id.to_string(),
    };
    let counter = |v: u64| v as f64;
    w.metric(
        "changes_published_total",
        "counter",
        "Row changes published and acknowledged by JetStream.",
        &[("", counter(status.published_rows))],
    );
    w.metric(
        "messages_published_total",
        "counter",
        "Messages published and acknowledged by JetStream.",
        &[("", counter(status.published_messages))],
    );
    w.metric(
        "changes_applied_total",
        "counter",
        "Remote row changes applied to this database.",
        &[("", counter(status.applied_rows))],
    );
    w.metric(
        "changes_skipped_total",
        "counter",
        "Remote row changes that lost to a newer version already here.",
        &[("", counter(status.skipped_rows))],
    );
    w.metric(
        "changes_pending",
        "gauge",
        "Local row changes not yet acknowledged by JetStream.",
        &[("", counter(status.pending_changes + status.unsent_rows))],
    );
    w.metric(
        "changes_deferred_total",
        "counter",
        "Remote row changes waiting for the local schema.",
        &[("", counter(status.deferred_rows))],
    );
    w.metric(
        "dead_lettered_total",
        "counter",
        "Malformed messages parked on the dead-letter stream.",
        &[("", counter(status.dead_lettered))],
    );
    w.metric(
        "rejected_local_total",
        "counter",
        "Local changes too large for the server, kept on this node only.",
        &[("", counter(status.rejected_local))],
    );
    w.metric(
        "errors_total",
        "counter",
        "Errors met while replicating (each one retried).",
        &[("", counter(status.errors))],
    );
    w.metric(
        "broker_data_loss_total",
        "counter",
        "Times JetStream lost messages this node relied on (a stream deleted or recreated, or holding less than was applied).",
        &[("", counter(status.broker_data_loss_events))],
    );
    w.metric(
        "divergence_comparisons_total",
        "counter",
        "Table checksums compared with a peer's at identical positions (the divergence check).",
        &[("", counter(status.divergence_comparisons))],
    );
    w.metric(
        "divergent_tables",
        "gauge",
        "Tables found different from a peer's at identical positions, until a later comparison matches.",
        &[("", status.divergent_tables.len() as f64)],
    );
    let gauge = |yes: bool| if yes { 1.0 } else { 0.0 };
    w.metric(
        "streams_ready",
        "gauge",
        "1 when every stream exists on the server.",
        &[("", gauge(status.streams_ready))],
    );
    w.metric(
        "behind_retention",
        "gauge",
        "1 when a shard's position is older than the first message its stream keeps.",
        &[("", gauge(status.behind_retention))],
    );
    w.metric(
        "healthy",
        "gauge",
        "1 when the node can make progress (what /health answers).",
        &[("", gauge(status.health().ok))],
    );
    let stalled: Vec<(String, f64)> = status
        .shards
        .iter()
        .map(|s| {
            let seconds = s.stalled_ms.map_or(0.0, |ms| ms as f64 / 1000.0);
            (format!("shard=\"{}\"", s.shard), seconds)
        })
        .collect();
    let stalled_refs: Vec<(&str, f64)> = stalled.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    w.metric(
        "shard_stalled_seconds",
        "gauge",
        "Seconds the shard has had messages waiting without applying any (0 while it keeps up).",
        &stalled_refs,
    );
    let connected = if status.connection == ConnectionState::Connected {
        1.0
    } else {
        0.0
    };
    w.metric(
        "nats_connected",
        "gauge",
        "1 when connected to NATS.",
        &[("", connected)],
    );
    let lag: Vec<(String, f64)> = status
        .shards
        .iter()
        .filter_map(|s| {
            s.lag_messages
                .map(|lag| (format!("shard=\"{}\"", s.shard), lag as f64))
        })
        .collect();
    let lag_refs: Vec<(&str, f64)> = lag.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    w.metric(
        "replication_lag_messages",
        "gauge",
        "Messages in the shard's stream not yet applied here.",
        &lag_refs,
    );
    let applied: Vec<(String, f64)> = status
        .shards
        .iter()
        .map(|s| (format!("shard=\"{}\"", s.shard), s.applied_seq as f64))
        .collect();
    let applied_refs: Vec<(&str, f64)> = applied.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    w.metric(
        "applied_position",
        "gauge",
        "Stream position applied here, per shard.",
        &applied_refs,
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as f64)
        .unwrap_or(0.0);
    if let Some(last) = status.last_apply_ms {
        w.metric(
            "seconds_since_last_apply",
            "gauge",
            "Seconds since this node last applied a remote change.",
            &[("", (now_ms - last as f64) / 1000.0)],
        );
    }
    if let Some(last) = status.last_publish_ms {
        w.metric(
            "seconds_since_last_publish",
            "gauge",
            "Seconds since this node last published.",
            &[("", (now_ms - last as f64) / 1000.0)],
        );
    }
    // Absent until this node saved a snapshot, so dashboards see "no data" rather than a fake 0.
    if let Some(age) = snapshot_age_seconds {
        w.metric(
            "snapshot_age_seconds",
            "gauge",
            "Seconds since this node saved its newest snapshot.",
            &[("", age)],
        );
    }
    w.metric(
        "uptime_seconds",
        "gauge",
        "Seconds since this replica started.",
        &[("", status.uptime_ms as f64 / 1000.0)],
    );
    w.out
}
