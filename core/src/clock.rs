//! Hybrid logical clock: 48 bits of wall-clock milliseconds and 16 bits of logical counter in one `u64`.
//!
//! Stamps from one node are strictly increasing, survive restarts (the last stamp is persisted with the
//! outbox it stamped), and every received stamp pushes the clock forward, so a change stamped after it has
//! been seen orders after it. Pure: the wall clock is passed in.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A stamp: `(millis << 16) | counter`. Ordered as plain integers.
pub type Hlc = u64;

/// The version of a change: its stamp and the node that made it. Ordered by stamp, then node, so every
/// node orders any two changes the same way.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    pub hlc: Hlc,
    pub node: u64,
}

/// Stamps at or above this are refused: versions are stored as SQLite integers (i64).
pub const MAX_HLC: Hlc = (1 << 63) - 1;

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;

pub fn physical_millis(stamp: Hlc) -> u64 {
    stamp >> LOGICAL_BITS
}

pub fn from_millis(millis: u64) -> Hlc {
    millis << LOGICAL_BITS
}

/// Milliseconds since the Unix epoch from the system clock (0 if the clock is before 1970).
pub fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    last: Hlc,
}

impl Clock {
    /// A clock that will never stamp at or below `last` (the persisted high-water mark).
    pub fn resume(last: Hlc) -> Clock {
        Clock { last }
    }

    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A new stamp, greater than every stamp issued or observed so far.
    pub fn tick(&mut self, wall_millis: u64) -> Hlc {
        let wall = from_millis(wall_millis);
        // When the counter would overflow the next millisecond is borrowed; the stamp stays monotonic.
        self.last = if wall > self.last {
            wall
        } else {
            self.last.saturating_add(1).min(MAX_HLC)
        };
        self.last
    }

    /// Raises the clock to a stamp issued from a commit time (see [`commit_stamp`]).
    pub fn note(&mut self, stamp: Hlc) {
        self.last = self.last.max(stamp.min(MAX_HLC));
    }

    /// Folds in a stamp received from another node.
    pub fn observe(&mut self, remote: Hlc) {
        if remote > self.last && remote <= MAX_HLC {
            self.last = remote;
        }
    }
}

/// The stamp of a local change committed at `commit_millis` (recorded by the capture trigger, in the app's
/// transaction): its commit time, unless causality needs more — it must exceed `causal_floor`, the clock of
/// everything the app could have seen when it wrote (see [`ClockHistory`]) and every version the row held.
/// A change made while the replica was closed is therefore ordered by when it was made, not by when it was
/// noticed.
pub fn commit_stamp(commit_millis: u64, causal_floor: Hlc) -> Hlc {
    from_millis(commit_millis.min(physical_millis(MAX_HLC)))
        .max(causal_floor.saturating_add(1))
        .min(MAX_HLC)
}

/// The clock of this node's database over time: after each transaction that applied received changes, the
/// wall time just before its commit and the clock then. The app can only have read what was committed, so a
/// local change committed at time t was written against at most the clock of the last entry at or before t.
#[derive(Debug, Clone)]
pub struct ClockHistory {
    entries: VecDeque<(u64, Hlc)>,
}

impl ClockHistory {
    /// History of a database opened with this persisted clock (it covers everything committed before).
    pub fn new(base: Hlc) -> ClockHistory {
        ClockHistory {
            entries: VecDeque::from([(0, base)]),
        }
    }

    /// A transaction that moved the clock to `clock` is about to commit at `wall_millis`.
    pub fn record(&mut self, wall_millis: u64, clock: Hlc) {
        let (last_wall, last_clock) = self.entries.back().copied().unwrap_or((0, 0));
        if clock <= last_clock {
            return;
        }
        // Entries stay ordered by wall time even if the system clock steps back.
        self.entries.push_back((wall_millis.max(last_wall), clock));
    }

    /// The clock of everything committed at or before `commit_millis`.
    pub fn floor_at(&self, commit_millis: u64) -> Hlc {
        let after = self
            .entries
            .partition_point(|(wall, _)| *wall <= commit_millis);
        match after {
            0 => self.entries.front().map(|(_, c)| *c).unwrap_or(0),
            n => self.entries[n - 1].1,
        }
    }

    /// Nothing older than the newest entry is needed once every local change up to now is stamped.
    pub fn compact(&mut self) {
        while self.entries.len() > 1 {
            self.entries.pop_front();
        }
        if let Some(first) = self.entries.front_mut() {
            first.0 = 0;
        }
    }
}

/// Logical part of a stamp (for display).
pub fn logical(stamp: Hlc) -> u64 {
    stamp & LOGICAL_MASK
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ticks_are_strictly_increasing_when_wall_clock_stalls() {
        let mut clock = Clock::default();
        let a = clock.tick(1000);
        let b = clock.tick(1000);
        let c = clock.tick(999);
        assert!(a < b && b < c);
        assert_eq!(physical_millis(a), 1000);
        assert_eq!(logical(b), 1);
    }

    #[test]
    fn observe_moves_the_clock_past_remote_stamps() {
        let mut clock = Clock::default();
        clock.observe(from_millis(5000) + 7);
        let next = clock.tick(1000);
        assert!(next > from_millis(5000) + 7);
    }

    #[test]
    fn ticks_never_overflow_and_forged_clocks_are_capped() {
        // A clock persisted beyond the valid range (a forged stamp observed by an older version) comes back
        // into it instead of overflowing.
        let mut clock = Clock::resume(u64::MAX);
        assert_eq!(clock.tick(1), MAX_HLC);
        clock.observe(u64::MAX);
        assert_eq!(clock.last(), MAX_HLC, "an invalid stamp is not observed");
        let mut clock = Clock::resume(MAX_HLC - 1);
        assert_eq!(clock.tick(1), MAX_HLC);
        assert_eq!(clock.tick(1), MAX_HLC);
        assert_eq!(commit_stamp(u64::MAX, 0), MAX_HLC & !0xffff);
        assert_eq!(commit_stamp(0, u64::MAX), MAX_HLC);
    }

    #[test]
    fn commit_stamps_follow_commit_time_above_what_could_be_seen() {
        let mut history = ClockHistory::new(from_millis(100));
        // Applied at wall 200 with a remote clock from the future (wall 900).
        history.record(200, from_millis(900));
        // Written offline at 150: ordered by its commit time, above the clock the database had then.
        assert_eq!(commit_stamp(150, history.floor_at(150)), from_millis(150));
        // Written at 250, after the apply: it could have read the future-stamped row.
        assert_eq!(
            commit_stamp(250, history.floor_at(250)),
            from_millis(900) + 1
        );
        history.compact();
        assert_eq!(history.floor_at(0), from_millis(900));
    }

    proptest! {
        #[test]
        fn monotonic_under_any_sequence(events in proptest::collection::vec((any::<bool>(), 0u64..1_000_000, 0u64..u32::MAX as u64), 1..200)) {
            let mut clock = Clock::resume(0);
            let mut last = 0;
            for (is_tick, wall, remote) in events {
                if is_tick {
                    let stamp = clock.tick(wall);
                    prop_assert!(stamp > last);
                    last = stamp;
                } else {
                    clock.observe(remote);
                    last = last.max(remote);
                }
            }
        }
    }
}
