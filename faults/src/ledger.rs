//! Writers' ledgers and the verdict over the nodes' databases.
//!
//! A writer appends `I <ids>` (fsync'd) before it commits a transaction and `C <ids>` (fsync'd) after the
//! commit returned. A row in a `C` line was committed; a row only in an `I` line may or may not be (the
//! writer was killed between the two lines), so it is neither lost when absent nor extra when present.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Debug, Default, Clone)]
pub struct Ledger {
    pub committed: BTreeSet<String>,
    pub uncertain: BTreeSet<String>,
    /// When each committed row's commit returned (ms since the epoch), for "committed after t".
    pub committed_at: BTreeMap<String, u64>,
}

impl Ledger {
    /// Parses ledger text; a torn last line (killed mid-write) is ignored.
    pub fn parse(text: &str) -> Ledger {
        let mut ledger = Ledger::default();
        for line in text.lines() {
            let mut parts = line.splitn(3, ' ');
            let (Some(kind), Some(at), Some(ids)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(at) = at.parse::<u64>() else { continue };
            for id in ids.split(',').filter(|id| !id.is_empty()) {
                match kind {
                    "I" if !ledger.committed.contains(id) => {
                        ledger.uncertain.insert(id.to_string());
                    }
                    "C" => {
                        ledger.uncertain.remove(id);
                        ledger.committed.insert(id.to_string());
                        ledger.committed_at.insert(id.to_string(), at);
                    }
                    _ => {}
                }
            }
        }
        ledger
    }

    pub fn read(path: &Path) -> Ledger {
        Ledger::parse(&std::fs::read_to_string(path).unwrap_or_default())
    }

    pub fn merge(&mut self, other: Ledger) {
        self.committed.extend(other.committed);
        self.uncertain.extend(other.uncertain);
        self.committed_at.extend(other.committed_at);
        let committed = &self.committed;
        self.uncertain.retain(|id| !committed.contains(id));
    }
}

/// What each node holds: the ids of the ledgered table, and a fingerprint of every user table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub ids: BTreeSet<String>,
    /// Rows whose id is NULL (never written by a writer).
    pub null_ids: u64,
    pub fingerprint: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Committed rows every node must hold.
    pub required: usize,
    /// Committed rows missing, per node (index = node - 1).
    pub lost: Vec<usize>,
    /// Rows no writer ever tried to write, per node.
    pub extra: Vec<usize>,
    pub identical: bool,
    /// A few missing ids, for the report.
    pub lost_examples: Vec<String>,
}

impl Verdict {
    pub fn lost_total(&self) -> usize {
        self.lost.iter().sum()
    }
    pub fn extra_total(&self) -> usize {
        self.extra.iter().sum()
    }
}

/// Judges the nodes against the ledger. `required` limits "lost" to the committed rows it accepts
/// (everything, or only rows committed after some instant).
pub fn judge(ledger: &Ledger, views: &[NodeView], required: impl Fn(&str) -> bool) -> Verdict {
    let mut verdict = Verdict {
        identical: views
            .windows(2)
            .all(|w| w[0].fingerprint == w[1].fingerprint),
        required: ledger.committed.iter().filter(|id| required(id)).count(),
        ..Verdict::default()
    };
    for view in views {
        let missing: Vec<&String> = ledger
            .committed
            .iter()
            .filter(|id| required(id) && !view.ids.contains(*id))
            .collect();
        for id in missing.iter().take(3) {
            if verdict.lost_examples.len() < 6 {
                verdict.lost_examples.push((*id).clone());
            }
        }
        verdict.lost.push(missing.len());
        let extra = view
            .ids
            .iter()
            .filter(|id| !ledger.committed.contains(*id) && !ledger.uncertain.contains(*id))
            .count();
        verdict.extra.push(extra + view.null_ids as usize);
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(ids: &[&str], fingerprint: &str) -> NodeView {
        NodeView {
            ids: ids.iter().map(|s| s.to_string()).collect(),
            null_ids: 0,
            fingerprint: fingerprint.into(),
        }
    }

    #[test]
    fn intents_without_commits_are_uncertain_and_torn_lines_ignored() {
        let ledger = Ledger::parse("I 1 a,b\nC 2 a,b\nI 3 c\nC 4 d\nI 5 e,f\nC 6 e");
        assert_eq!(
            ledger.committed,
            ["a", "b", "d", "e"].iter().map(|s| s.to_string()).collect()
        );
        assert_eq!(
            ledger.uncertain,
            ["c", "f"].iter().map(|s| s.to_string()).collect()
        );
        assert_eq!(ledger.committed_at.get("d"), Some(&4));
        assert!(Ledger::parse("C 1").committed.is_empty());
    }

    #[test]
    fn lost_extra_and_identical_are_counted_per_node() {
        let ledger = Ledger::parse("C 1 a,b\nI 2 c\n");
        let views = [view(&["a", "b"], "x"), view(&["a", "c", "z"], "y")];
        let verdict = judge(&ledger, &views, |_| true);
        assert_eq!(verdict.lost, vec![0, 1]);
        assert_eq!(verdict.extra, vec![0, 1], "c is uncertain, z is extra");
        assert!(!verdict.identical);
        assert_eq!(verdict.lost_examples, vec!["b".to_string()]);
        assert_eq!(verdict.required, 2);
        let only_a = judge(&ledger, &views, |id| id == "a");
        assert_eq!(only_a.lost_total(), 0);
        assert_eq!(only_a.required, 1);
    }
}
