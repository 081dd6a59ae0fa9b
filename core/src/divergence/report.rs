//! What nodes exchange (a [`Report`]: per-table checksums and the positions they were taken at) and how a
//! node judges its peers' reports against its own ([`Tracker`], pure: no I/O, no clock of its own).
//!
//! Two reports are compared only when both were taken at identical applied positions on every shard: the
//! nodes then applied the same messages, and the merge is deterministic, so their tables must be equal. A
//! report taken at other positions says nothing (replication may be under way), and is kept for a while in
//! case this node reaches those positions too.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The report layout; a report of another format is ignored (a mixed-version cluster compares nothing
/// rather than something wrong).
pub const REPORT_FORMAT: u32 = 1;
/// Largest report accepted from the network, before parsing it.
pub const MAX_REPORT_BYTES: usize = 4 * 1024 * 1024;
/// Reports kept per node (this one's and each peer's): enough to meet a peer that reached the same positions
/// a few rounds later.
const REPORTS_KEPT: usize = 16;

/// One round of one node: the positions it had applied and each replicated table's checksum, all read in
/// one read transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub format: u32,
    pub node_id: u64,
    /// Drawn at each start: tells this node's own reports (echoed by NATS) from another process that uses
    /// the same `node_id`, and a peer's restart from its next round.
    pub run: u64,
    /// Counts this run's rounds whose checksums were computed (a round that reused the last one's keeps its
    /// number: nothing changed).
    pub round: u64,
    /// Applied stream position per shard, shard 0 first.
    pub positions: Vec<u64>,
    pub tables: BTreeMap<String, TableSum>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableSum {
    Sum {
        /// Hash of the table's columns (names, declared types, key positions): two nodes whose columns
        /// differ (a migration run on one of them only) hold different rows for a reason that is no
        /// divergence, so their checksums are not compared.
        columns: u64,
        rows: u64,
        /// Sum of the rows' 128-bit hashes, in hex: independent of scan order.
        digest: String,
    },
    /// Not comparable on this node (changes parked or rejected here), and why.
    NotComparable { reason: String },
}

impl Report {
    pub fn encode(&self) -> Vec<u8> {
        // A map of strings and numbers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A report from the network: bounded in size before it is parsed; None when it is not one of ours.
    pub fn decode(bytes: &[u8]) -> Option<Report> {
        if bytes.len() > MAX_REPORT_BYTES {
            return None;
        }
        serde_json::from_slice::<Report>(bytes)
            .ok()
            .filter(|report| report.format == REPORT_FORMAT)
    }
}

/// A table found different from a peer's at identical positions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    since_ms: u64,
    rows_here: u64,
    rows_at_peer: u64,
    /// When a comparison last found the difference: a repair is owed only for evidence newer than the last
    /// repair.
    last_seen: Instant,
    republished_at_ms: Option<u64>,
}

/// What a comparison found about one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Different at identical positions; `new` when it was not known as divergent already.
    Diverged {
        table: String,
        peer: u64,
        rows_here: u64,
        rows_at_peer: u64,
        positions: Vec<u64>,
        new: bool,
    },
    /// Equal again after a divergence.
    Cleared { table: String, peer: u64 },
}

// A divergence as `status()` reports it: declared in `records` (the list the bindings expand too).
pub use crate::records::Divergence;

#[derive(Default)]
struct Peer {
    reports: VecDeque<Report>,
    /// (own round, peer run, peer round) of the last comparison: a report sent again unchanged is not
    /// compared twice.
    last_compared: Option<(u64, u64, u64)>,
}

/// This node's and its peers' recent reports, and the divergences found between them.
#[derive(Default)]
pub struct Tracker {
    own: VecDeque<Report>,
    peers: BTreeMap<u64, Peer>,
    divergent: BTreeMap<(String, u64), Record>,
    comparisons: u64,
    last_repair: Option<Instant>,
}

impl Tracker {
    /// This node's new report: compared with each peer's newest report at the same positions.
    pub fn own_report(&mut self, report: Report, now: Instant, now_ms: u64) -> Vec<Finding> {
        if self.own.back() != Some(&report) {
            self.own.push_back(report);
            while self.own.len() > REPORTS_KEPT {
                self.own.pop_front();
            }
        }
        let Some(own) = self.own.back().cloned() else {
            return Vec::new();
        };
        let peers: Vec<u64> = self.peers.keys().copied().collect();
        let mut findings = Vec::new();
        for peer in peers {
            let matching = self.peers.get(&peer).and_then(|p| {
                p.reports
                    .iter()
                    .rev()
                    .find(|r| r.positions == own.positions)
                    .cloned()
            });
            if let Some(theirs) = matching {
                findings.extend(self.compare(&own, &theirs, now, now_ms));
            }
        }
        findings
    }

    /// A peer's report: kept, and compared with this node's newest report at the same positions.
    pub fn peer_report(&mut self, report: Report, now: Instant, now_ms: u64) -> Vec<Finding> {
        let peer = self.peers.entry(report.node_id).or_default();
        if peer.reports.back() != Some(&report) {
            peer.reports.push_back(report.clone());
            while peer.reports.len() > REPORTS_KEPT {
                peer.reports.pop_front();
            }
        }
        let matching = self
            .own
            .iter()
            .rev()
            .find(|own| own.positions == report.positions)
            .cloned();
        match matching {
            Some(own) => self.compare(&own, &report, now, now_ms),
            None => Vec::new(),
        }
    }

    /// Whether this node has a report taken at `positions`.
    pub fn has_own_report_at(&self, positions: &[u64]) -> bool {
        self.own.iter().any(|own| own.positions == positions)
    }

    fn compare(
        &mut self,
        own: &Report,
        theirs: &Report,
        now: Instant,
        now_ms: u64,
    ) -> Vec<Finding> {
        let mut findings = Vec::new();
        if own.positions != theirs.positions {
            return findings;
        }
        let pair = (own.round, theirs.run, theirs.round);
        let Some(peer) = self.peers.get_mut(&theirs.node_id) else {
            return findings;
        };
        if peer.last_compared == Some(pair) {
            return findings;
        }
        peer.last_compared = Some(pair);
        for (table, mine) in &own.tables {
            let (
                TableSum::Sum {
                    columns,
                    rows,
                    digest,
                },
                Some(TableSum::Sum {
                    columns: their_columns,
                    rows: their_rows,
                    digest: their_digest,
                }),
            ) = (mine, theirs.tables.get(table))
            else {
                continue; // not comparable on one side, or the peer does not replicate it
            };
            if columns != their_columns {
                continue; // schema skew: different rows are expected until both migrated
            }
            self.comparisons += 1;
            let key = (table.clone(), theirs.node_id);
            if rows == their_rows && digest == their_digest {
                if self.divergent.remove(&key).is_some() {
                    findings.push(Finding::Cleared {
                        table: table.clone(),
                        peer: theirs.node_id,
                    });
                }
                continue;
            }
            let new = !self.divergent.contains_key(&key);
            let record = self.divergent.entry(key).or_insert(Record {
                since_ms: now_ms,
                rows_here: *rows,
                rows_at_peer: *their_rows,
                last_seen: now,
                republished_at_ms: None,
            });
            record.rows_here = *rows;
            record.rows_at_peer = *their_rows;
            record.last_seen = now;
            findings.push(Finding::Diverged {
                table: table.clone(),
                peer: theirs.node_id,
                rows_here: *rows,
                rows_at_peer: *their_rows,
                positions: own.positions.clone(),
                new,
            });
        }
        findings
    }

    /// The tables to republish now, if a repair is due: a divergence found since the last repair, and at
    /// least `repair_interval` since it (`repair_interval` zero: never). Marks the repair as made.
    pub fn repair_due(
        &mut self,
        now: Instant,
        now_ms: u64,
        repair_interval: Duration,
    ) -> Option<Vec<String>> {
        if repair_interval.is_zero() {
            return None;
        }
        if let Some(last) = self.last_repair {
            if now.saturating_duration_since(last) < repair_interval {
                return None;
            }
        }
        let last = self.last_repair;
        let mut tables: Vec<String> = self
            .divergent
            .iter()
            .filter(|(_, record)| match last {
                None => true,
                Some(last) => record.last_seen > last,
            })
            .map(|((table, _), _)| table.clone())
            .collect();
        tables.dedup();
        if tables.is_empty() {
            return None;
        }
        self.last_repair = Some(now);
        for ((table, _), record) in self.divergent.iter_mut() {
            if tables.contains(table) {
                record.republished_at_ms = Some(now_ms);
            }
        }
        Some(tables)
    }

    /// A repair that could not be queued: the next evidence may try again at once.
    pub fn repair_failed(&mut self) {
        self.last_repair = None;
    }

    pub fn divergences(&self) -> Vec<Divergence> {
        self.divergent
            .iter()
            .map(|((table, peer), record)| Divergence {
                table: table.clone(),
                peer_node_id: *peer,
                since_ms: record.since_ms,
                rows_here: record.rows_here,
                rows_at_peer: record.rows_at_peer,
                republished_at_ms: record.republished_at_ms,
            })
            .collect()
    }

    /// Table checksums compared with a peer's at identical positions (since open).
    pub fn comparisons(&self) -> u64 {
        self.comparisons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(columns: u64, rows: u64, digest: &str) -> TableSum {
        TableSum::Sum {
            columns,
            rows,
            digest: digest.into(),
        }
    }

    fn report(node_id: u64, round: u64, positions: &[u64], tables: &[(&str, TableSum)]) -> Report {
        Report {
            format: REPORT_FORMAT,
            node_id,
            run: node_id * 100,
            round,
            positions: positions.to_vec(),
            tables: tables
                .iter()
                .map(|(name, sum)| (name.to_string(), sum.clone()))
                .collect(),
        }
    }

    #[test]
    fn reports_round_trip_and_foreign_bytes_are_refused() {
        let original = report(7, 3, &[4, 0], &[("t", sum(1, 2, "ff"))]);
        assert_eq!(Report::decode(&original.encode()), Some(original.clone()));
        let mut other_format = original.clone();
        other_format.format = 99;
        assert_eq!(Report::decode(&other_format.encode()), None);
        assert_eq!(Report::decode(b"{\"format\": 1"), None);
        assert_eq!(Report::decode(&vec![b' '; MAX_REPORT_BYTES + 1]), None);
    }

    #[test]
    fn only_identical_positions_are_compared() {
        let now = Instant::now();
        let mut tracker = Tracker::default();
        tracker.own_report(report(1, 1, &[5, 2], &[("t", sum(1, 3, "a"))]), now, 10);
        let found = tracker.peer_report(report(2, 1, &[5, 3], &[("t", sum(1, 4, "b"))]), now, 11);
        assert!(found.is_empty());
        assert_eq!(tracker.comparisons(), 0);
        // This node reaches the peer's positions later: compared then.
        let found = tracker.own_report(report(1, 2, &[5, 3], &[("t", sum(1, 3, "a"))]), now, 12);
        assert_eq!(found.len(), 1);
        assert!(
            matches!(&found[0], Finding::Diverged { table, peer: 2, new: true, .. } if table == "t")
        );
        assert_eq!(tracker.comparisons(), 1);
        let divergences = tracker.divergences();
        assert_eq!(divergences.len(), 1);
        assert_eq!(divergences[0].since_ms, 12);
        assert_eq!(
            (divergences[0].rows_here, divergences[0].rows_at_peer),
            (3, 4)
        );
    }

    #[test]
    fn schema_skew_and_parked_tables_are_not_compared() {
        let now = Instant::now();
        let mut tracker = Tracker::default();
        tracker.own_report(
            report(
                1,
                1,
                &[9],
                &[
                    ("skewed", sum(1, 3, "a")),
                    (
                        "parked",
                        TableSum::NotComparable {
                            reason: "parked".into(),
                        },
                    ),
                    ("same", sum(5, 1, "c")),
                    ("only_here", sum(5, 1, "c")),
                ],
            ),
            now,
            1,
        );
        let found = tracker.peer_report(
            report(
                2,
                1,
                &[9],
                &[
                    ("skewed", sum(2, 3, "b")),
                    ("parked", sum(5, 1, "x")),
                    ("same", sum(5, 1, "c")),
                ],
            ),
            now,
            2,
        );
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(tracker.comparisons(), 1);
        assert!(tracker.divergences().is_empty());
    }

    #[test]
    fn a_divergence_clears_on_a_later_match_and_repairs_are_rate_limited() {
        let start = Instant::now();
        let minute = Duration::from_secs(60);
        let mut tracker = Tracker::default();
        tracker.own_report(report(1, 1, &[3], &[("t", sum(1, 3, "a"))]), start, 1);
        tracker.peer_report(report(2, 1, &[3], &[("t", sum(1, 2, "b"))]), start, 1);
        assert_eq!(
            tracker.repair_due(start, 1, Duration::ZERO),
            None,
            "0: never repair"
        );
        assert_eq!(
            tracker.repair_due(start, 1, minute),
            Some(vec!["t".to_string()])
        );
        assert_eq!(tracker.divergences()[0].republished_at_ms, Some(1));
        // Still different after the repair, but the rate limit holds.
        let later = start + Duration::from_secs(1);
        tracker.own_report(report(1, 2, &[8], &[("t", sum(1, 3, "a"))]), later, 2);
        let found = tracker.peer_report(report(2, 2, &[8], &[("t", sum(1, 2, "b"))]), later, 2);
        assert!(matches!(&found[0], Finding::Diverged { new: false, .. }));
        assert_eq!(tracker.repair_due(later, 2, minute), None);
        // A minute after the last repair, with evidence newer than it: due again.
        let after = start + minute;
        assert!(tracker.repair_due(after, 3, minute).is_some());
        // No new evidence since: not due, however long it waits.
        assert_eq!(tracker.repair_due(after + minute * 5, 4, minute), None);
        // The same peer report sent again is not compared twice.
        let before = tracker.comparisons();
        tracker.peer_report(report(2, 2, &[8], &[("t", sum(1, 2, "b"))]), after, 5);
        assert_eq!(tracker.comparisons(), before);
        // Equal at later positions: cleared.
        tracker.own_report(report(1, 3, &[12], &[("t", sum(1, 3, "a"))]), after, 6);
        let found = tracker.peer_report(report(2, 3, &[12], &[("t", sum(1, 3, "a"))]), after, 6);
        assert_eq!(
            found,
            vec![Finding::Cleared {
                table: "t".into(),
                peer: 2
            }]
        );
        assert!(tracker.divergences().is_empty());
    }
}
