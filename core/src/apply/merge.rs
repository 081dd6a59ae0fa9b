//! The merge rules, pure (ADR 0011). Given a row's stored state and a received change, decide what the
//! applier writes. Every node decides the same way whatever order changes arrive in:
//!
//! - **Existence** follows the causal length `cl` (odd: the row exists, even: deleted). Each delete and each
//!   insert after a delete adds one; the larger `cl` wins. So a delete beats a concurrent update (the
//!   update carries the older `cl`), a re-insert after a delete beats the delete, and a late update can
//!   never resurrect a deleted row.
//! - **Values** merge per column at equal `cl`: each column keeps the value of its newest version
//!   `(hlc, node)`. Concurrent edits of different columns both survive; a change that lacks a column (an
//!   older schema, or an update that did not touch it) never resets it.
//! - **Lineages** collide when two nodes created the same key independently: the row's `born` is the version
//!   of the insert that first created the key as this node saw it (kept across deletes and re-inserts, which
//!   carry a larger `cl`). On tables whose key is an auto-assigned integer (`INTEGER PRIMARY KEY`) two
//!   lineages are different rows: the earliest creation keeps the key, dead or alive, and the node that
//!   created the other moves it to a fresh key. Two identical creations (the same image, as each node's own
//!   migrations seed) are one row. On other tables the key is the row's identity and lineages merge.
//! - Tables configured `merge = "row"` compare the whole row: the newest change's image wins.

use crate::capture::schema::MergeMode;
use crate::clock::Version;
use crate::log::{Op, RowChange};
use crate::state::rows::RowState;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to write. `lost` lists the change's columns (indices) that lost to newer values; `stale`
    /// says the change belongs to an older life of the row (it was deleted or re-created since).
    Keep { lost: Vec<usize>, stale: bool },
    /// Write the change's columns listed in `write` into the row, and store `state`.
    /// `fresh`: the change starts a new life (or the first one seen here) of the row: the local row, if
    /// any, is replaced rather than updated. `overwritten`: stored values replaced although the writer had
    /// not seen them (concurrent edits that lost). `lost`: columns of the change that lost.
    Write {
        write: Vec<usize>,
        lost: Vec<usize>,
        overwritten: Vec<String>,
        fresh: bool,
        state: RowState,
    },
    /// Delete the row and store the tombstone `state`. `unseen_edits`: the row held changes the deleter
    /// had not seen (they are lost with the row: a conflict).
    Delete { state: RowState, unseen_edits: bool },
    /// Two lineages of one auto-assigned key (created independently on two nodes). `incoming_wins`: the
    /// change's lineage was created first and takes the key.
    Collision { incoming_wins: bool },
}

/// Decides how `change` from `origin` merges into the row `stored` (None: never seen here).
/// `hashes[i]` is the hash of `change.columns[i]`'s value. `movable`: the key is an auto-assigned integer,
/// so independent creations are different rows.
pub fn plan(
    stored: Option<&RowState>,
    change: &RowChange,
    origin: u64,
    hashes: &[u64],
    mode: MergeMode,
    movable: bool,
) -> Plan {
    let version = Version {
        hlc: change.hlc,
        node: origin,
    };
    let all: Vec<usize> = (0..change.columns.len()).collect();
    let Some(stored) = stored else {
        return match change.op {
            Op::Delete => Plan::Delete {
                state: tombstone(change, version),
                unseen_edits: false,
            },
            Op::Insert | Op::Update => Plan::Write {
                write: all,
                lost: Vec::new(),
                overwritten: Vec::new(),
                fresh: true,
                state: new_life(change, version, hashes),
            },
        };
    };
    let same_lineage = change.born == stored.born || change.born_hash == stored.born_hash;
    if movable && !same_lineage {
        // Two rows created independently under one auto-assigned key: the earliest creation keeps the key,
        // whether it still exists or was deleted since (every node must decide alike).
        return Plan::Collision {
            incoming_wins: change.born < stored.born,
        };
    }
    // Two lives of one lineage (the key deleted, then created again on two nodes that both saw the
    // delete) are one row that merges per column: an app that writes a key it chose (`INSERT OR REPLACE`
    // by id) means the same row. A rowid SQLite hands out again after deleting the highest one is the same
    // case and merges the same way (ADR 0011).
    if change.cl < stored.cl {
        return Plan::Keep {
            lost: all,
            stale: true,
        };
    }
    if change.cl > stored.cl {
        return match change.op {
            Op::Delete => Plan::Delete {
                state: tombstone(change, version),
                unseen_edits: stored.exists() && change.seen.is_some_and(|s| stored.newest() > s),
            },
            Op::Insert | Op::Update => Plan::Write {
                write: all,
                lost: Vec::new(),
                overwritten: Vec::new(),
                fresh: true,
                state: new_life(change, version, hashes),
            },
        };
    }
    // Same life of the row.
    if !stored.exists() || change.op == Op::Delete {
        // Both deleted (or a malformed delete that claims an odd length): nothing left to merge.
        return Plan::Keep {
            lost: Vec::new(),
            stale: false,
        };
    }
    let mut state = stored.clone();
    if !same_lineage || change.born < state.born {
        // Identical creations on two nodes are one row: both keep the earliest as its identity.
        state.born = state.born.min(change.born);
    }
    let mut write = Vec::new();
    let mut lost = Vec::new();
    let mut overwritten = Vec::new();
    match mode {
        MergeMode::Column => {
            for (i, (name, _)) in change.columns.iter().enumerate() {
                let current = stored.column(name);
                let current_version = stored.column_version(name);
                if version > current_version {
                    let differs = current.is_none_or(|c| c.hash != hashes[i]);
                    let unseen = change.seen.is_none_or(|seen| current_version > seen);
                    if differs && unseen && current_version.node != origin && current.is_some() {
                        overwritten.push(name.clone());
                    }
                    write.push(i);
                } else if version < current_version && current.is_none_or(|c| c.hash != hashes[i]) {
                    lost.push(i);
                }
                // Equal versions: a duplicate of what is stored.
            }
        }
        MergeMode::Row => {
            let newest = stored.newest();
            if version > newest {
                write = (0..change.columns.len()).collect();
                let unseen = change.seen.is_none_or(|seen| newest > seen);
                if unseen && newest.node != origin {
                    overwritten = change
                        .columns
                        .iter()
                        .enumerate()
                        .filter(|(i, (name, _))| {
                            stored.column(name).is_some_and(|c| c.hash != hashes[*i])
                        })
                        .map(|(_, (name, _))| name.clone())
                        .collect();
                }
            } else if version < newest {
                lost = (0..change.columns.len())
                    .filter(|i| {
                        stored
                            .column(&change.columns[*i].0)
                            .is_none_or(|c| c.hash != hashes[*i])
                    })
                    .collect();
            }
        }
    }
    if write.is_empty() {
        return Plan::Keep { lost, stale: false };
    }
    for i in &write {
        state.set_column(&change.columns[*i].0, version, hashes[*i]);
    }
    state.last = state.last.max(version);
    Plan::Write {
        write,
        lost,
        overwritten,
        fresh: false,
        state,
    }
}

/// The state of a row that starts a new life with this change.
fn new_life(change: &RowChange, version: Version, hashes: &[u64]) -> RowState {
    let mut state = RowState {
        cl: change.cl,
        born: change.born,
        born_hash: change.born_hash,
        life: change.life,
        last: version,
        columns: Vec::with_capacity(change.columns.len()),
    };
    for (i, (name, _)) in change.columns.iter().enumerate() {
        state.set_column(name, version, hashes[i]);
    }
    state
}

fn tombstone(change: &RowChange, version: Version) -> RowState {
    RowState {
        cl: change.cl,
        born: change.born,
        born_hash: change.born_hash,
        life: change.life,
        last: version,
        columns: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{value_hash, Value};

    fn change(op: Op, hlc: u64, cl: u64, born: (u64, u64), columns: &[(&str, i64)]) -> RowChange {
        RowChange {
            table: "t".into(),
            op,
            hlc,
            cl,
            born: Version {
                hlc: born.0,
                node: born.1,
            },
            born_hash: born.0 ^ born.1,
            life: Version {
                hlc: born.0,
                node: born.1,
            },
            seen: None,
            pk: vec![Value::Integer(1)],
            columns: columns
                .iter()
                .map(|(n, v)| (n.to_string(), Value::Integer(*v)))
                .collect(),
        }
    }

    fn hashes(change: &RowChange) -> Vec<u64> {
        change.columns.iter().map(|(_, v)| value_hash(v)).collect()
    }

    fn apply(stored: Option<&RowState>, c: &RowChange, origin: u64) -> Plan {
        plan(stored, c, origin, &hashes(c), MergeMode::Column, false)
    }

    fn written_state(plan: Plan) -> RowState {
        match plan {
            Plan::Write { state, .. } | Plan::Delete { state, .. } => state,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn concurrent_edits_of_different_columns_both_survive() {
        let insert = change(Op::Insert, 10, 1, (10, 1), &[("id", 1), ("a", 0), ("b", 0)]);
        let base = written_state(apply(None, &insert, 1));
        let edit_a = change(Op::Update, 20, 1, (10, 1), &[("a", 5)]);
        let edit_b = change(Op::Update, 21, 1, (10, 1), &[("b", 7)]);
        let one = written_state(apply(Some(&base), &edit_a, 2));
        let one = written_state(apply(Some(&one), &edit_b, 3));
        let two = written_state(apply(Some(&base), &edit_b, 3));
        let two = written_state(apply(Some(&two), &edit_a, 2));
        assert_eq!(one.column_version("a"), two.column_version("a"));
        assert_eq!(one.column_version("b"), two.column_version("b"));
        assert_eq!(one.column_version("a").node, 2);
        assert_eq!(one.column_version("b").node, 3);
    }

    #[test]
    fn delete_beats_concurrent_update_and_reinsert_beats_delete() {
        let insert = change(Op::Insert, 10, 1, (10, 1), &[("id", 1), ("a", 0)]);
        let base = written_state(apply(None, &insert, 1));
        let delete = change(Op::Delete, 20, 2, (10, 1), &[]);
        let update = change(Op::Update, 30, 1, (10, 1), &[("a", 9)]);
        let deleted = written_state(apply(Some(&base), &delete, 2));
        assert!(matches!(
            apply(Some(&deleted), &update, 3),
            Plan::Keep { stale: true, .. }
        ));
        let updated = written_state(apply(Some(&base), &update, 3));
        assert!(matches!(
            apply(Some(&updated), &delete, 2),
            Plan::Delete { .. }
        ));
        let reinsert = change(Op::Insert, 40, 3, (40, 2), &[("id", 1), ("a", 1)]);
        assert!(matches!(
            apply(Some(&deleted), &reinsert, 2),
            Plan::Write { fresh: true, .. }
        ));
    }

    #[test]
    fn independent_creations_of_an_auto_key_collide_and_the_first_keeps_it() {
        let first = change(Op::Insert, 10, 1, (10, 1), &[("id", 1), ("a", 1)]);
        let second = change(Op::Insert, 11, 1, (11, 2), &[("id", 1), ("a", 2)]);
        let holds_first = written_state(apply(None, &first, 1));
        let holds_second = written_state(apply(None, &second, 2));
        let movable = |stored: &RowState, c: &RowChange, origin| {
            plan(Some(stored), c, origin, &hashes(c), MergeMode::Column, true)
        };
        assert_eq!(
            movable(&holds_first, &second, 2),
            Plan::Collision {
                incoming_wins: false
            }
        );
        assert_eq!(
            movable(&holds_second, &first, 1),
            Plan::Collision {
                incoming_wins: true
            }
        );
        // Identical images (same hash): one row, whatever the creation versions.
        let mut twin = second.clone();
        twin.born_hash = first.born_hash;
        assert!(matches!(
            movable(&holds_first, &twin, 2),
            Plan::Write { .. } | Plan::Keep { .. }
        ));
    }

    #[test]
    fn a_change_without_a_column_leaves_it_alone() {
        let insert = change(
            Op::Insert,
            10,
            1,
            (10, 1),
            &[("id", 1), ("a", 3), ("new", 4)],
        );
        let base = written_state(apply(None, &insert, 1));
        let old_schema = change(Op::Update, 20, 1, (10, 1), &[("a", 5)]);
        match apply(Some(&base), &old_schema, 2) {
            Plan::Write { write, state, .. } => {
                assert_eq!(write, vec![0]);
                assert_eq!(state.column_version("new").hlc, 10);
            }
            other => panic!("{other:?}"),
        }
    }
}
