//! The library's one retry policy: pauses that double from a first one up to a ceiling, with jitter (up to
//! the pause again, so that nodes cut off together do not retry in step), for as long as the caller keeps
//! trying. Built on `backon`; whatever waits (a NATS reconnect, a store not up yet, the app's write lock)
//! asks it how long.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The longest a task that talks to NATS (the publisher, a shard's consumer) waits between two attempts:
/// short enough that a node is back within seconds of its server, long enough not to spin while it is down.
pub(crate) const NATS_MAX_PAUSE: Duration = Duration::from_secs(5);

pub(crate) struct Backoff {
    builder: ExponentialBuilder,
    pauses: ExponentialBackoff,
    ceiling: Duration,
}

impl Backoff {
    pub fn new(first: Duration, ceiling: Duration) -> Backoff {
        let builder = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(ceiling)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Backoff {
            builder,
            pauses: builder.build(),
            ceiling,
        }
    }

    /// How long to wait before the next attempt.
    pub fn next_pause(&mut self) -> Duration {
        self.pauses.next().unwrap_or(self.ceiling)
    }

    /// After a success: the next failure waits the first pause again.
    pub fn reset(&mut self) {
        self.pauses = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_ceiling_with_jitter_and_start_over_after_a_reset() {
        let first = Duration::from_millis(10);
        let ceiling = Duration::from_millis(80);
        let mut backoff = Backoff::new(first, ceiling);
        let pauses: Vec<Duration> = (0..8).map(|_| backoff.next_pause()).collect();
        for (i, pause) in pauses.iter().enumerate() {
            let base = (first * 2u32.pow(i as u32)).min(ceiling);
            assert!(
                *pause >= base && *pause <= base * 2,
                "pause {i} was {pause:?}, base {base:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_pause() <= first * 2);
    }
}
