//! Hybrid logical clock: 48 bits of wall-clock milliseconds and 16 bits of logical counter in one `u64`.
//!
//! Stamps from one node are strictly increasing, survive restarts (the last stamp is persisted with the
//! outbox it stamped), and every received stamp pushes the clock forward, so a change stamped after it has
//! been seen orders after it. Pure: the wall clock is passed in.

use std::time::{SystemTime, UNIX_EPOCH};

/// A stamp: `(millis << 16) | counter`. Ordered as plain integers.
pub type Hlc = u64;

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
            self.last + 1
        };
        self.last
    }

    /// Folds in a stamp received from another node.
    pub fn observe(&mut self, remote: Hlc) {
        if remote > self.last {
            self.last = remote;
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
