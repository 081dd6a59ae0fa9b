//! The checker task: takes rounds on its interval (and when a peer reports the positions this node is at,
//! so that nodes that write every few seconds still meet at identical positions), publishes them, listens
//! to its peers' reports, and triggers the repair.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use tokio::sync::{oneshot, watch};
use tracing::{debug, error, info, warn};

use super::checksum::{ChecksumSource, Round};
use super::report::{Divergence, Finding, Report, Tracker, REPORT_FORMAT};
use crate::config::Config;
use crate::db_thread::Command;
use crate::error::{Error, Result};
use crate::status::PublishProgress;
use crate::transport::Names;

/// How long one question to the server (a stream's last sequence) may take before the round is skipped.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// What `status()` reads: the divergences found and how many comparisons were made.
#[derive(Default)]
pub(crate) struct DivergenceMonitor {
    tracker: Mutex<Tracker>,
}

impl DivergenceMonitor {
    pub fn divergences(&self) -> Vec<Divergence> {
        self.tracker
            .lock()
            .map(|t| t.divergences())
            .unwrap_or_default()
    }

    pub fn comparisons(&self) -> u64 {
        self.tracker.lock().map(|t| t.comparisons()).unwrap_or(0)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Tracker) -> T) -> Option<T> {
        self.tracker.lock().ok().map(|mut t| f(&mut t))
    }
}

pub(crate) struct DivergenceChecker {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub names: Names,
    pub config: Config,
    pub node_id: u64,
    pub db_path: PathBuf,
    pub db: std_mpsc::Sender<Command>,
    /// The publisher's acknowledged sequences (None on a read replica, which publishes nothing).
    pub progress: Option<watch::Receiver<PublishProgress>>,
    /// Applied positions as they move: a peer's report at exactly these is worth a round now.
    pub positions: watch::Receiver<BTreeMap<u32, u64>>,
    pub monitor: Arc<DivergenceMonitor>,
}

/// The subject reports travel on: beside the streams' subjects (`<prefix>.<shard>`), never captured by them.
pub(crate) fn subject(names: &Names) -> String {
    format!("{}-checksums", names.subject_prefix)
}

struct State {
    run: u64,
    round: u64,
    source: Option<ChecksumSource>,
    last_round: Option<Instant>,
}

impl DivergenceChecker {
    pub async fn run(self, mut ready: watch::Receiver<bool>, mut shutdown: watch::Receiver<bool>) {
        let interval = self.config.divergence_check.interval.0;
        if interval.is_zero() {
            return;
        }
        if !*ready.borrow() {
            tokio::select! {
                _ = ready.wait_for(|r| *r) => {}
                _ = shutdown.changed() => return,
            }
        }
        let subject = subject(&self.names);
        let mut state = State {
            run: rand::random::<u64>(),
            round: 0,
            source: None,
            last_round: None,
        };
        let mut reports = loop {
            match self.client.subscribe(subject.clone()).await {
                Ok(subscription) => break subscription,
                Err(err) => {
                    warn!(subject = %subject, error = %err, "cannot subscribe to the divergence checks; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        };
        let mut next_round = tokio::time::Instant::now() + interval;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_round) => {
                    self.round(&mut state, &subject).await;
                    next_round = tokio::time::Instant::now() + interval;
                }
                message = reports.next() => {
                    let Some(message) = message else {
                        // The client only ends a subscription when it closes: the replica is closing.
                        return;
                    };
                    if self.peer_report(&message.payload, state.run).await {
                        // A peer at the positions this node is at now, with no round of ours there: take one
                        // now, at most every half interval (a peer cannot make this node hash continuously).
                        let due = match state.last_round {
                            None => true,
                            Some(at) => at.elapsed() >= interval / 2,
                        };
                        if due {
                            self.round(&mut state, &subject).await;
                            next_round = tokio::time::Instant::now() + interval;
                        }
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Handles a peer's report; true when it was taken at the positions this node has applied now and this
    /// node has no report there yet.
    async fn peer_report(&self, payload: &[u8], run: u64) -> bool {
        let Some(report) = Report::decode(payload) else {
            debug!("ignored a message on the divergence-check subject that is not a report");
            return false;
        };
        if report.node_id == self.node_id {
            if report.run != run {
                debug!(
                    node_id = report.node_id,
                    "ignored a divergence report of another process using this node's id"
                );
            }
            return false;
        }
        let positions = report.positions.clone();
        let findings = self
            .monitor
            .with(|t| t.peer_report(report, Instant::now(), crate::clock::wall_millis()))
            .unwrap_or_default();
        self.act_on(findings).await;
        let here = self.applied_now();
        positions == here
            && !self
                .monitor
                .with(|t| t.has_own_report_at(&here))
                .unwrap_or(true)
    }

    fn applied_now(&self) -> Vec<u64> {
        let applied = self.positions.borrow();
        (0..self.config.replication_log.shards)
            .map(|shard| applied.get(&shard).copied().unwrap_or(0))
            .collect()
    }

    /// One round: ask the server where each stream ends, checksum (off the async workers), publish, compare.
    async fn round(&self, state: &mut State, subject: &str) {
        state.last_round = Some(Instant::now());
        let stream_last = match self.stream_last_sequences().await {
            Ok(last) => last,
            Err(err) => {
                debug!(error = %err, "divergence check skipped: the streams' ends are not known");
                return;
            }
        };
        let source = match state.source.take() {
            Some(source) => source,
            None => {
                let (db, config) = (self.db_path.clone(), self.config.clone());
                match tokio::task::spawn_blocking(move || ChecksumSource::open(&db, &config)).await
                {
                    Ok(Ok(source)) => source,
                    Ok(Err(err)) => {
                        warn!(error = %err, "divergence check skipped: cannot open the database");
                        return;
                    }
                    Err(err) => {
                        warn!(error = %err, "divergence check skipped");
                        return;
                    }
                }
            }
        };
        let progress = self.progress.clone();
        let taken = tokio::task::spawn_blocking(move || {
            let mut source = source;
            let round = source.take(&stream_last, || {
                progress
                    .map(|p| p.borrow().shard_seqs.clone())
                    .unwrap_or_default()
            });
            (source, round)
        })
        .await;
        let (positions, tables, reused) = match taken {
            Ok((source, round)) => {
                state.source = Some(source);
                match round {
                    Ok(Round::Taken {
                        positions,
                        tables,
                        reused,
                    }) => (positions, tables, reused),
                    Ok(Round::Skipped(reason)) => {
                        debug!(reason = %reason, "divergence check round skipped");
                        return;
                    }
                    Err(err) => {
                        warn!(error = %err, "divergence check round failed; will retry");
                        return;
                    }
                }
            }
            // The source is dropped with a failed task; the next round opens another.
            Err(err) => {
                warn!(error = %err, "divergence check round failed; will retry");
                return;
            }
        };
        if !reused {
            state.round += 1;
        }
        let report = Report {
            format: REPORT_FORMAT,
            node_id: self.node_id,
            run: state.run,
            round: state.round,
            positions,
            tables,
        };
        let payload = report.encode();
        let max_payload = self.client.server_info().max_payload;
        if max_payload > 0 && payload.len() > max_payload {
            warn!(
                bytes = payload.len(),
                max_payload, "divergence report larger than the server's max payload; not sent"
            );
        } else if let Err(err) = self
            .client
            .publish(subject.to_string(), payload.into())
            .await
        {
            debug!(error = %err, "divergence report not sent");
        }
        let findings = self
            .monitor
            .with(|t| t.own_report(report, Instant::now(), crate::clock::wall_millis()))
            .unwrap_or_default();
        self.act_on(findings).await;
    }

    async fn stream_last_sequences(&self) -> Result<BTreeMap<u32, u64>> {
        let mut last = BTreeMap::new();
        for shard in 0..self.config.replication_log.shards {
            let name = self.names.stream(shard);
            let stream = tokio::time::timeout(ASK_TIMEOUT, self.js.get_stream(&name))
                .await
                .map_err(|_| Error::transport(format!("asking for stream {name}"), "timed out"))?
                .map_err(|err| Error::transport(format!("asking for stream {name}"), err))?;
            last.insert(shard, stream.cached_info().state.last_sequence);
        }
        Ok(last)
    }

    /// Logs what comparisons found, and republishes the divergent tables when a repair is due.
    async fn act_on(&self, findings: Vec<Finding>) {
        for finding in &findings {
            match finding {
                Finding::Diverged {
                    table,
                    peer,
                    rows_here,
                    rows_at_peer,
                    positions,
                    new: true,
                } => error!(
                    table = %table,
                    peer_node_id = peer,
                    rows_here,
                    rows_at_peer,
                    positions = ?positions,
                    "table {table} differs between this node and node {peer} although both applied the same \
                     changes; its rows will be published again"
                ),
                Finding::Diverged { .. } => {}
                Finding::Cleared { table, peer } => info!(
                    table = %table,
                    peer_node_id = peer,
                    "table {table} is identical on this node and node {peer} again"
                ),
            }
        }
        let repair_interval = self.config.divergence_check.repair_interval.0;
        let Some(tables) = self
            .monitor
            .with(|t| t.repair_due(Instant::now(), crate::clock::wall_millis(), repair_interval))
            .flatten()
        else {
            return;
        };
        let (reply, answer) = oneshot::channel();
        let asked = self.db.send(Command::RepublishTables {
            tables: tables.clone(),
            reply,
        });
        let outcome = match asked {
            Ok(()) => answer.await.map_err(|_| Error::Closed).and_then(|r| r),
            Err(_) => Err(Error::Closed),
        };
        match outcome {
            Ok(rows) => info!(
                tables = ?tables,
                rows,
                "republished this node's rows of divergent tables"
            ),
            Err(Error::Closed) => {}
            Err(err) => {
                warn!(tables = ?tables, error = %err, "republishing divergent tables failed; will retry");
                self.monitor.with(|t| t.repair_failed());
            }
        }
    }
}
