//! The one retry pause of the daemon: capped exponential backoff with full jitter.
//!
//! Attempt `n` (from 0) waits a uniformly random time between zero and
//! `min(max, initial * 2^n)` ("full jitter"): after a failover, every worker of every replica
//! retries at a different moment instead of in lock-step, and the expected pause still doubles
//! until it reaches half the cap. Every retry loop of the daemon waits through a [`Backoff`],
//! so none spins and the log grows by at most one line per pause.

use rand::Rng;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The pauses of one retry loop.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    /// Failed attempts since the last success.
    attempts: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial: initial.max(Duration::from_millis(1)),
            max: max.max(initial),
            attempts: 0,
        }
    }

    /// The longest the next pause may be: `min(max, initial * 2^attempts)`.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempts.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next pause, drawn uniformly from zero to the ceiling; counts one more attempt.
    pub(crate) fn next_pause(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempts = self.attempts.saturating_add(1);
        rand::rng().random_range(Duration::ZERO..=ceiling)
    }

    /// Waits the next pause; `false` when `shutdown` came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let pause = self.next_pause();
        tokio::select! {
            _ = tokio::time::sleep(pause) => true,
            _ = shutdown.cancelled() => false,
        }
    }

    /// After a success: the next failure starts from the initial ceiling again.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_ceiling_doubles_up_to_the_cap_and_pauses_stay_below_it() {
        let mut b = Backoff::new(ms(100), ms(1000));
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            let ceiling = b.ceiling();
            ceilings.push(ceiling.as_millis());
            let pause = b.next_pause();
            assert!(pause <= ceiling, "{pause:?} > {ceiling:?}");
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.attempts, 6);
        b.reset();
        assert_eq!(b.ceiling(), ms(100));
    }

    #[test]
    fn pauses_are_spread_over_the_whole_range() {
        // Full jitter: pauses fill [0, ceiling], not a band near the ceiling.
        let mut b = Backoff::new(ms(1000), ms(1000));
        let pauses: Vec<Duration> = (0..400).map(|_| b.next_pause()).collect();
        let low = pauses.iter().filter(|p| **p < ms(250)).count();
        let high = pauses.iter().filter(|p| **p > ms(750)).count();
        assert!(low > 40 && high > 40, "low {low}, high {high}");
    }

    #[test]
    fn many_attempts_neither_overflow_nor_pass_the_cap() {
        let mut b = Backoff::new(ms(100), Duration::from_secs(30));
        for _ in 0..200 {
            assert!(b.next_pause() <= Duration::from_secs(30));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
    }
}
