//! Reconnect delays: exponential backoff with jitter.

use std::time::Duration;

use meshfleet_mesh::Rng;

use crate::config::BackoffConfig;

/// Delays between connection attempts to one target.
///
/// Each delay is drawn uniformly from `[base/2, base]` ("equal jitter"), and `base`
/// doubles after every failure up to `max`. The jitter spreads out the stations of a mesh
/// whose AP just restarted, so they do not all reconnect in the same millisecond; keeping
/// half of `base` fixed keeps the growth exponential.
#[derive(Debug)]
pub(crate) struct Backoff {
    cfg: BackoffConfig,
    base: Duration,
    rng: Rng,
}

impl Backoff {
    pub(crate) fn new(cfg: BackoffConfig, rng: Rng) -> Self {
        Self {
            base: cfg.initial,
            cfg,
            rng,
        }
    }

    /// The delay before the next attempt; grows the base for the one after.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.base.min(self.cfg.max);
        let half = base / 2;
        let spread = u64::try_from((base - half).as_micros()).unwrap_or(u64::MAX);
        let delay = half + Duration::from_micros(self.rng.below(spread.saturating_add(1)));
        self.base = base.saturating_mul(2).min(self.cfg.max);
        delay
    }

    /// Back to the initial delay (after a link stayed up for `reset_after`).
    pub(crate) fn reset(&mut self) {
        self.base = self.cfg.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(15),
        }
    }

    #[test]
    fn doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new(cfg(), Rng::new(7));
        let mut base = Duration::from_millis(500);
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(
                d >= base / 2 && d <= base,
                "{d:?} not in [{:?}, {base:?}]",
                base / 2
            );
            base = (base * 2).min(Duration::from_secs(30));
        }
        assert!(b.next_delay() >= Duration::from_secs(15));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(cfg(), Rng::new(1));
        for _ in 0..10 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }

    #[test]
    fn jitter_differs_between_seeds() {
        let a: Vec<_> = {
            let mut b = Backoff::new(cfg(), Rng::new(1));
            (0..5).map(|_| b.next_delay()).collect()
        };
        let c: Vec<_> = {
            let mut b = Backoff::new(cfg(), Rng::new(2));
            (0..5).map(|_| b.next_delay()).collect()
        };
        assert_ne!(a, c);
    }
}
