//! The merge rule, pure. A row's version is `(hlc, node_id)`; the greater version wins, on every node,
//! whatever order the changes arrive in. Deletes carry versions too (tombstones), so a late update cannot
//! resurrect a newer delete and a late delete cannot remove a newer row.

use crate::clock::Hlc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub hlc: Hlc,
    pub node: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The incoming change is newer: write it and store its version.
    Apply,
    /// The stored version is newer or equal (a duplicate): leave the row as it is.
    Keep,
}

pub fn decide(incoming: Version, stored: Option<Version>) -> Decision {
    match stored {
        Some(current) if current >= incoming => Decision::Keep,
        _ => Decision::Apply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn ties_on_clock_break_by_node() {
        let a = Version { hlc: 10, node: 1 };
        let b = Version { hlc: 10, node: 2 };
        assert_eq!(decide(b, Some(a)), Decision::Apply);
        assert_eq!(decide(a, Some(b)), Decision::Keep);
        assert_eq!(decide(a, Some(a)), Decision::Keep);
        assert_eq!(decide(a, None), Decision::Apply);
    }

    /// A replica of a key-value table under the rule: row value (None = deleted) and its version.
    #[derive(Default, Debug, PartialEq)]
    struct Replica {
        rows: BTreeMap<u8, (Option<i32>, Version)>,
    }

    impl Replica {
        fn receive(&mut self, key: u8, value: Option<i32>, version: Version) {
            let stored = self.rows.get(&key).map(|(_, v)| *v);
            if decide(version, stored) == Decision::Apply {
                self.rows.insert(key, (value, version));
            }
        }
        fn visible(&self) -> BTreeMap<u8, i32> {
            self.rows
                .iter()
                .filter_map(|(k, (v, _))| v.map(|v| (*k, v)))
                .collect()
        }
    }

    proptest! {
        /// Random writes (upserts and deletes) on random nodes, delivered to every replica in its own random
        /// order with duplicates: every replica ends identical, and each key holds the highest version.
        #[test]
        fn replicas_converge_whatever_the_delivery(
            ops in proptest::collection::vec((0u64..4, 0u8..6, proptest::option::of(any::<i32>()), 0u64..50), 1..60),
            orders in proptest::collection::vec(proptest::collection::vec(any::<proptest::sample::Index>(), 0..120), 3),
        ) {
            // Each op: (node, key, value or delete, clock). Distinct (clock, node) per op, as a real HLC gives.
            let changes: Vec<(u8, Option<i32>, Version)> = ops
                .iter()
                .enumerate()
                .map(|(i, (node, key, value, clock))| (*key, *value, Version { hlc: clock * 1000 + i as u64, node: *node }))
                .collect();
            let mut replicas: Vec<Replica> = Vec::new();
            for order in &orders {
                let mut replica = Replica::default();
                // Random extra deliveries (duplicates, out of order) first, then everything once, reversed.
                for index in order {
                    let (k, v, ver) = *index.get(&changes);
                    replica.receive(k, v, ver);
                }
                for (k, v, ver) in changes.iter().rev() {
                    replica.receive(*k, *v, *ver);
                }
                replicas.push(replica);
            }
            for pair in replicas.windows(2) {
                prop_assert_eq!(pair[0].visible(), pair[1].visible());
            }
            let mut winner: BTreeMap<u8, (Option<i32>, Version)> = BTreeMap::new();
            for (k, v, ver) in &changes {
                let keep = winner.get(k).map(|(_, w)| *w > *ver).unwrap_or(false);
                if !keep {
                    winner.insert(*k, (*v, *ver));
                }
            }
            let expected: BTreeMap<u8, i32> = winner.iter().filter_map(|(k, (v, _))| v.map(|v| (*k, v))).collect();
            prop_assert_eq!(replicas[0].visible(), expected);
        }
    }
}
