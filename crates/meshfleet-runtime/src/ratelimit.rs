//! Rate limiting for log lines a peer can trigger at will (bad frames, queue overflow).

use std::time::Duration;

use tokio::time::Instant;

/// Allows one log line per `every`, counting the ones it suppressed in between so the
/// next allowed line can report them ("... and 812 more since").
#[derive(Debug)]
pub(crate) struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub(crate) const fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` if a line may be logged now, `n` being how many were suppressed since
    /// the previous one; `None` (and one more suppressed) otherwise.
    pub(crate) fn check(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_window_with_a_count() {
        let mut l = LogLimiter::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(l.check(t0), Some(0));
        assert_eq!(l.check(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.check(t0 + Duration::from_secs(4)), None);
        assert_eq!(l.check(t0 + Duration::from_secs(5)), Some(2));
        assert_eq!(l.check(t0 + Duration::from_secs(6)), None);
    }
}
