//! What this node knows about its JetStream streams and whether its shards make progress: streams found
//! missing (the stream keeper recreates them), broker data loss (a stream deleted, recreated, or holding
//! less than this node already applied), and shards that have messages waiting but apply none.
//!
//! A stream's identity (its creation time) is kept in `<db>.harmonylite/streams.json`, so a node that was
//! down while the server lost its store still notices, at its next start, that the stream it reads is not
//! the one its stored positions refer to.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tracing::warn;

// JetStream lost data this node relied on: the record `status()` reports, declared in `records` (the list the
// bindings expand too).
pub use crate::records::BrokerDataLoss;

/// A loss as this node keeps it: the reported record, and what tells one lost incarnation from the next.
#[derive(Debug, Clone)]
struct Loss {
    report: BrokerDataLoss,
    /// Creation time (ns since the epoch) of the stream that replaced the lost one, once known.
    replacement_created_ns: Option<u64>,
}

/// Which incarnation of a stream a node's positions refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StreamIdentity {
    /// Creation time of the stream, ns since the epoch (JetStream keeps it for the stream's life).
    pub created_ns: u64,
    /// Highest last sequence this node saw in it (in memory; persisted as of the last write).
    pub last_seq: u64,
}

/// What a stream's current state says about the position a node holds in it.
pub(crate) fn judge(
    known: Option<StreamIdentity>,
    current: StreamIdentity,
    position: u64,
) -> Option<String> {
    if position > current.last_seq {
        return Some(format!(
            "this node's stored position {position} is beyond the stream's last sequence {}",
            current.last_seq
        ));
    }
    let known = known?;
    if known.created_ns != current.created_ns {
        return Some(format!(
            "the stream was recreated (created at {} ns, this node's positions refer to one created at {} ns)",
            current.created_ns, known.created_ns
        ));
    }
    if current.last_seq < known.last_seq {
        return Some(format!(
            "the stream's last sequence went backwards ({}, this node saw {})",
            current.last_seq, known.last_seq
        ));
    }
    None
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StreamsFile {
    streams: BTreeMap<String, StreamIdentity>,
}

#[derive(Debug, Default)]
struct Incarnations {
    /// The incarnation each stream's consumer positions refer to (persisted).
    identities: BTreeMap<String, StreamIdentity>,
    /// Incarnations found lost while running, by creation time.
    lost: BTreeSet<(String, u64)>,
}

#[derive(Debug, Default)]
struct ShardProgress {
    /// Applying has failed since then (the batch is being retried).
    apply_failing_since: Option<Instant>,
    /// Seen by `status()` with messages waiting and this applied position, since then.
    lagging: Option<(u64, Instant)>,
}

pub(crate) struct StreamHealth {
    /// Asks the stream keeper to check (and recreate) the streams now.
    recheck: Notify,
    missing: Mutex<BTreeSet<String>>,
    losses: Mutex<Vec<Loss>>,
    loss_events: AtomicU64,
    incarnations: Mutex<Incarnations>,
    file: Option<PathBuf>,
    shards: Mutex<BTreeMap<u32, ShardProgress>>,
    /// Since when NATS could not be reached (set by the stream keeper while it waits for it).
    unreachable_since: Mutex<Option<Instant>>,
    /// Shards whose consumer has checked its stored position against the stream it reads: only then does
    /// that position answer `wait_for` (after broker data loss the stored one refers to a lost stream).
    verified: watch::Sender<BTreeSet<u32>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding one of these cannot leave them inconsistent (plain inserts).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StreamHealth {
    /// `file`: where stream identities persist (None keeps them in memory only).
    pub fn new(file: Option<PathBuf>) -> StreamHealth {
        let identities = file
            .as_ref()
            .and_then(|path| std::fs::read(path).ok())
            .and_then(|bytes| match serde_json::from_slice::<StreamsFile>(&bytes) {
                Ok(parsed) => Some(parsed.streams),
                Err(err) => {
                    warn!(error = %err, "ignoring an unreadable streams.json; stream identities start afresh");
                    None
                }
            })
            .unwrap_or_default();
        StreamHealth {
            recheck: Notify::new(),
            missing: Mutex::new(BTreeSet::new()),
            losses: Mutex::new(Vec::new()),
            loss_events: AtomicU64::new(0),
            incarnations: Mutex::new(Incarnations {
                identities,
                lost: BTreeSet::new(),
            }),
            file,
            shards: Mutex::new(BTreeMap::new()),
            unreachable_since: Mutex::new(None),
            verified: watch::Sender::new(BTreeSet::new()),
        }
    }

    /// Someone found a stream missing (or a publish had no stream to land in): check now.
    pub fn request_recheck(&self) {
        self.recheck.notify_one();
    }

    pub async fn recheck_requested(&self) {
        self.recheck.notified().await;
    }

    pub fn set_missing(&self, stream: &str, missing: bool) {
        let mut set = lock(&self.missing);
        if missing {
            set.insert(stream.to_string());
        } else {
            set.remove(stream);
        }
    }

    pub fn missing(&self) -> Vec<String> {
        lock(&self.missing).iter().cloned().collect()
    }

    pub fn set_unreachable(&self, unreachable: bool) {
        let mut since = lock(&self.unreachable_since);
        match (unreachable, since.is_some()) {
            (true, false) => *since = Some(Instant::now()),
            (false, true) => *since = None,
            _ => {}
        }
    }

    pub fn unreachable_for(&self) -> Option<Duration> {
        lock(&self.unreachable_since).map(|since| since.elapsed())
    }

    /// Records a loss of `stream`'s data; one event per lost incarnation, whoever reports it first
    /// (the keeper finding it missing, then the consumer finding its replacement, count once).
    /// Returns true when this is a new event.
    pub fn record_loss(
        &self,
        stream: &str,
        shard: Option<u32>,
        reason: &str,
        replacement_created_ns: Option<u64>,
    ) -> bool {
        let mut losses = lock(&self.losses);
        if let Some(last) = losses.iter_mut().rev().find(|l| l.report.stream == stream) {
            let same = match (last.replacement_created_ns, replacement_created_ns) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
            if same {
                if last.replacement_created_ns.is_none() {
                    last.replacement_created_ns = replacement_created_ns;
                }
                if last.report.shard.is_none() {
                    last.report.shard = shard;
                }
                return false;
            }
        }
        losses.push(Loss {
            report: BrokerDataLoss {
                stream: stream.to_string(),
                shard,
                reason: reason.to_string(),
                detected_at_ms: crate::clock::wall_millis(),
                position_reset: false,
                republished_rows: None,
            },
            replacement_created_ns,
        });
        self.loss_events.fetch_add(1, Ordering::Relaxed);
        true
    }

    pub fn mark_position_reset(&self, stream: &str) {
        if let Some(last) = lock(&self.losses)
            .iter_mut()
            .rev()
            .find(|l| l.report.stream == stream)
        {
            last.report.position_reset = true;
        }
    }

    /// This node published its rows of `stream` again (see `ShardConsumer::republish_after_broker_loss`).
    pub fn mark_republished(&self, stream: &str, rows: u64) {
        if let Some(last) = lock(&self.losses)
            .iter_mut()
            .rev()
            .find(|l| l.report.stream == stream)
        {
            last.report.republished_rows = Some(rows);
        }
    }

    /// The reason of `stream`'s latest loss while this node has not republished its rows after it.
    pub fn unrepaired_loss(&self, stream: &str) -> Option<String> {
        lock(&self.losses)
            .iter()
            .rev()
            .map(|l| &l.report)
            .find(|l| l.stream == stream)
            .filter(|l| l.republished_rows.is_none())
            .map(|l| l.reason.clone())
    }

    pub fn losses(&self) -> Vec<BrokerDataLoss> {
        lock(&self.losses)
            .iter()
            .map(|l| l.report.clone())
            .collect()
    }

    pub fn loss_events(&self) -> u64 {
        self.loss_events.load(Ordering::Relaxed)
    }

    pub fn identity(&self, stream: &str) -> Option<StreamIdentity> {
        lock(&self.incarnations).identities.get(stream).copied()
    }

    /// Raises the highest last sequence seen (in memory only: the stored position covers restarts).
    pub fn saw_last_seq(&self, stream: &str, last_seq: u64) {
        if let Some(known) = lock(&self.incarnations).identities.get_mut(stream) {
            known.last_seq = known.last_seq.max(last_seq);
        }
    }

    /// The incarnation of `stream` created at `created_ns` was lost (found missing or replaced): if
    /// `shard`'s position still refers to it, that position answers no `wait_for` until its consumer reset it.
    pub fn incarnation_lost(&self, shard: Option<u32>, stream: &str, created_ns: u64) {
        let mut incarnations = lock(&self.incarnations);
        incarnations.lost.insert((stream.to_string(), created_ns));
        let refers_to_it = incarnations
            .identities
            .get(stream)
            .is_none_or(|known| known.created_ns == created_ns);
        if let Some(shard) = shard.filter(|_| refers_to_it) {
            self.verified
                .send_if_modified(|shards| shards.remove(&shard));
        }
    }

    /// `shard`'s consumer checked its position against the incarnation created at `created_ns`: it answers
    /// `wait_for` from now on, unless that incarnation is already known lost (then false: reopen).
    pub fn verify(&self, shard: u32, stream: &str, created_ns: u64) -> bool {
        let incarnations = lock(&self.incarnations);
        if incarnations
            .lost
            .contains(&(stream.to_string(), created_ns))
        {
            return false;
        }
        self.verified
            .send_if_modified(|shards| shards.insert(shard));
        true
    }

    /// Records the incarnation a node's positions now refer to, and persists it (write, then rename).
    pub fn remember(&self, stream: &str, identity: StreamIdentity) {
        let snapshot = {
            let mut incarnations = lock(&self.incarnations);
            incarnations.identities.insert(stream.to_string(), identity);
            StreamsFile {
                streams: incarnations.identities.clone(),
            }
        };
        let Some(path) = &self.file else { return };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let temp = path.with_extension("json.tmp");
            let bytes = serde_json::to_vec_pretty(&snapshot).map_err(std::io::Error::other)?;
            {
                use std::io::Write;
                let mut file = std::fs::File::create(&temp)?;
                file.write_all(&bytes)?;
                file.sync_all()?;
            }
            std::fs::rename(&temp, path)
        };
        if let Err(err) = write() {
            warn!(file = %path.display(), error = %err, "cannot record the stream's identity; a recreation of it while this node is down may go unnoticed");
        }
    }

    pub fn verified_shards(&self) -> watch::Receiver<BTreeSet<u32>> {
        self.verified.subscribe()
    }

    pub fn apply_failing(&self, shard: u32, failing: bool) {
        let mut shards = lock(&self.shards);
        let progress = shards.entry(shard).or_default();
        match (failing, progress.apply_failing_since.is_some()) {
            (true, false) => progress.apply_failing_since = Some(Instant::now()),
            (false, true) => progress.apply_failing_since = None,
            _ => {}
        }
    }

    /// How long `shard` has had messages waiting without applying any: since its apply started failing, or
    /// since `status()` first saw it lagging at this position (so a burst that just arrived is not a stall).
    pub fn stalled_for(&self, shard: u32, applied: u64, lag: Option<u64>) -> Option<Duration> {
        let mut shards = lock(&self.shards);
        let progress = shards.entry(shard).or_default();
        let failing = progress.apply_failing_since.map(|since| since.elapsed());
        let lagging = match lag {
            Some(waiting) if waiting > 0 => match progress.lagging {
                Some((seen_at, since)) if seen_at == applied => Some(since.elapsed()),
                _ => {
                    progress.lagging = Some((applied, Instant::now()));
                    Some(Duration::ZERO)
                }
            },
            // Unknown (NATS not answering) keeps what was seen; caught up clears it.
            None => progress
                .lagging
                .filter(|(seen_at, _)| *seen_at == applied)
                .map(|(_, since)| since.elapsed()),
            Some(_) => {
                progress.lagging = None;
                None
            }
        };
        match (failing, lagging) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(created_ns: u64, last_seq: u64) -> StreamIdentity {
        StreamIdentity {
            created_ns,
            last_seq,
        }
    }

    #[test]
    fn a_position_beyond_the_last_sequence_is_loss_even_without_history() {
        assert!(judge(None, id(5, 10), 10).is_none());
        assert!(judge(None, id(5, 0), 0).is_none());
        let reason = judge(None, id(5, 10), 237).expect("loss");
        assert!(reason.contains("237") && reason.contains("10"), "{reason}");
    }

    #[test]
    fn a_recreated_stream_or_a_shrinking_one_is_loss() {
        assert!(judge(Some(id(5, 10)), id(5, 12), 3).is_none());
        let recreated = judge(Some(id(5, 10)), id(6, 400), 3).expect("recreated");
        assert!(recreated.contains("recreated"), "{recreated}");
        let shrunk = judge(Some(id(5, 10)), id(5, 4), 3).expect("backwards");
        assert!(shrunk.contains("backwards"), "{shrunk}");
    }

    #[test]
    fn one_lost_incarnation_counts_once_whoever_reports_it() {
        let health = StreamHealth::new(None);
        assert!(health.record_loss("s-0", None, "missing", None));
        assert!(!health.record_loss("s-0", Some(0), "recreated", Some(7)));
        assert!(!health.record_loss("s-0", Some(0), "recreated", Some(7)));
        assert_eq!(health.loss_events(), 1);
        // A later loss of the replacement is a new event.
        assert!(health.record_loss("s-0", Some(0), "recreated", Some(9)));
        assert!(health.record_loss("s-1", None, "missing", None));
        assert_eq!(health.loss_events(), 3);
        health.mark_position_reset("s-0");
        health.mark_republished("s-0", 12);
        let losses = health.losses();
        assert!(losses[1].position_reset && !losses[0].position_reset);
        assert_eq!(losses[1].republished_rows, Some(12));
        assert_eq!(
            losses[0].republished_rows, None,
            "the older loss was never repaired"
        );
        assert_eq!(losses[2].republished_rows, None);
    }

    #[test]
    fn identities_survive_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("state").join("streams.json");
        let health = StreamHealth::new(Some(file.clone()));
        health.remember("s-0", id(42, 3));
        health.saw_last_seq("s-0", 9);
        let again = StreamHealth::new(Some(file.clone()));
        assert_eq!(again.identity("s-0"), Some(id(42, 3)));
        std::fs::write(&file, b"{ not json").expect("corrupt");
        assert_eq!(StreamHealth::new(Some(file)).identity("s-0"), None);
    }

    #[test]
    fn a_position_answers_wait_for_only_for_an_incarnation_not_lost() {
        let health = StreamHealth::new(None);
        let verified = health.verified_shards();
        health.remember("s-0", id(1, 5));
        assert!(health.verify(0, "s-0", 1));
        assert!(verified.borrow().contains(&0));
        // The consumer already moved on to incarnation 2: a late report of 1's loss changes nothing.
        health.remember("s-0", id(2, 0));
        health.incarnation_lost(Some(0), "s-0", 1);
        assert!(verified.borrow().contains(&0));
        // Incarnation 2 lost while the consumer refers to it: revoked, and it cannot be verified again.
        health.incarnation_lost(Some(0), "s-0", 2);
        assert!(!verified.borrow().contains(&0));
        assert!(!health.verify(0, "s-0", 2));
        assert!(health.verify(0, "s-0", 3));
    }

    #[test]
    fn a_shard_stalls_only_when_lag_stays_at_one_position() {
        let health = StreamHealth::new(None);
        assert_eq!(health.stalled_for(0, 5, Some(0)), None);
        assert_eq!(health.stalled_for(0, 5, Some(3)), Some(Duration::ZERO));
        assert!(health.stalled_for(0, 5, Some(3)).is_some());
        assert_eq!(
            health.stalled_for(0, 6, Some(2)),
            Some(Duration::ZERO),
            "progress restarts the clock"
        );
        assert_eq!(health.stalled_for(0, 8, Some(0)), None, "caught up");
        health.apply_failing(1, true);
        assert!(health.stalled_for(1, 0, None).is_some());
        health.apply_failing(1, false);
        assert_eq!(health.stalled_for(1, 0, None), None);
    }
}
