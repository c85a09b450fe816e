//! Delay-based rate control for chunk sending on one link (after LEDBAT, RFC 6817).
//!
//! A token bucket at a fixed rate keeps one link from hogging its radio, but on a shared
//! medium the limit that matters is the neighbourhood's: thirty nodes within interference
//! range of each other, each pacing its own links to 60% of a link, offer many times what the
//! air can carry. Then every frame waits for the medium (measured in the simulator at 500
//! nodes on the geometric channel: 0.25 to 6 s per frame), painlessMesh's node-sync exchanges
//! (15-30 KB each at these sizes) stop completing within its 10 s timeout, links close,
//! subtrees rejoin, and the update never finishes. Queue-length back-pressure does not help:
//! the queues are short; the air is full.
//!
//! So each link also watches how long its own chunk frames wait in the driver before they
//! leave, a delay that includes waiting for the medium, and backs off when it grows:
//!
//! * Every chunk frame handed to the driver is remembered with its time and the cumulative
//!   byte count it ends at. The driver's backlog report (`Ctx::link_backlog`) tells how many
//!   bytes still wait; whatever was queued before that has left, and its wait is a sample.
//! * Per epoch (500 ms) the **smallest** sample counts: a TCP retransmission timeout stalls
//!   the frames behind a lost one for 200 ms or more, and that is loss, not a crowd; the
//!   minimum over an epoch passes over it, as LEDBAT's base-delay filter does. A frame still
//!   waiting counts with its age.
//! * Above the target (150 ms): rate x 0.7. At or below: rate + 10% of the maximum. Never
//!   below 1/32 of the maximum, so a transfer always moves.
//!
//! With every sender in a neighbourhood doing this, the offered load settles where frames
//! wait about the target, leaving the mesh's own traffic room. On a link that is not shared
//! the samples stay far below the target (4 queued frames are ~40 ms) and the rate stays at
//! the maximum.

use alloc::collections::VecDeque;

use meshfleet_mesh::{Duration, Instant};

/// Length of one control epoch.
const EPOCH: Duration = Duration::from_millis(500);
/// Multiplicative decrease when the epoch's delay is above the target.
const DECREASE: f64 = 0.7;
/// Additive increase per epoch at or below the target, as a fraction of the maximum rate.
const INCREASE: f64 = 0.1;
/// The lowest rate, as a fraction of the maximum.
const FLOOR: f64 = 1.0 / 32.0;
/// Most frames remembered: more than a link's back-pressure limit ever lets queue.
const MAX_OUTSTANDING: usize = 256;

/// The rate controller of one link.
#[derive(Debug)]
pub(crate) struct DelayPacer {
    max_rate: f64,
    rate: f64,
    target: Duration,
    /// Bytes handed to the driver on this link so far.
    queued: u64,
    /// Bytes of those known to have left the driver's queue.
    drained: u64,
    /// Frames not yet seen leaving: (queued at, cumulative bytes at their end).
    outstanding: VecDeque<(Instant, u64)>,
    epoch_start: Instant,
    epoch_min: Option<Duration>,
}

impl DelayPacer {
    /// A controller starting at `max_rate` bytes per second, aiming at frames waiting at
    /// most `target` in the driver.
    pub(crate) fn new(max_rate: f64, target: Duration, now: Instant) -> Self {
        Self {
            max_rate,
            rate: max_rate,
            target,
            queued: 0,
            drained: 0,
            outstanding: VecDeque::new(),
            epoch_start: now,
            epoch_min: None,
        }
    }

    /// The rate to pace at now, bytes per second.
    pub(crate) fn rate(&self) -> f64 {
        self.rate
    }

    /// A frame of `bytes` was handed to the driver.
    pub(crate) fn on_queued(&mut self, now: Instant, bytes: u64) {
        self.queued += bytes;
        if self.outstanding.len() == MAX_OUTSTANDING {
            // Cannot happen under back-pressure; if it did, the oldest entry's sample is
            // lost, which only delays the reaction.
            self.outstanding.pop_front();
        }
        self.outstanding.push_back((now, self.queued));
    }

    /// Reads the driver's backlog for the link (`None`: the driver does not report one, and
    /// the rate stays at the maximum) and runs the epoch's control step when it is due.
    pub(crate) fn observe(&mut self, now: Instant, backlog: Option<usize>) {
        let Some(backlog) = backlog else {
            return;
        };
        // The backlog may include frames that are not ours (node sync, applications):
        // ours waiting can be at most all of ours not yet seen leaving.
        let ours_waiting = (backlog as u64).min(self.queued - self.drained);
        self.drained = self.drained.max(self.queued - ours_waiting);
        while let Some(&(at, end)) = self.outstanding.front() {
            if end > self.drained {
                break;
            }
            self.outstanding.pop_front();
            let wait = now.saturating_since(at);
            self.epoch_min = Some(self.epoch_min.map_or(wait, |m| m.min(wait)));
        }
        if now.saturating_since(self.epoch_start) < EPOCH {
            return;
        }
        let waiting = self
            .outstanding
            .front()
            .map(|&(at, _)| now.saturating_since(at));
        let delay = match (self.epoch_min, waiting) {
            (Some(d), _) => Some(d),
            // Nothing left in the whole epoch: what still waits counts with its age.
            (None, Some(age)) if age >= EPOCH => Some(age),
            _ => None,
        };
        if let Some(d) = delay {
            self.rate = if d > self.target {
                (self.rate * DECREASE).max(self.max_rate * FLOOR)
            } else {
                (self.rate + self.max_rate * INCREASE).min(self.max_rate)
            };
        }
        self.epoch_start = now;
        self.epoch_min = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn at(ms: u64) -> Instant {
        Instant::from_micros(ms * 1000)
    }

    /// Queues a frame every `every` ms and lets each leave `wait` ms after it was queued,
    /// observing every ms; returns the rate after `until` ms.
    fn run(wait: u64, every: u64, until: u64) -> f64 {
        let mut p = DelayPacer::new(100_000.0, Duration::from_millis(150), at(0));
        let mut sent: Vec<u64> = Vec::new();
        for t in 0..until {
            if t % every == 0 {
                p.on_queued(at(t), 1000);
                sent.push(t);
            }
            let waiting = sent.iter().filter(|&&s| s + wait > t).count();
            p.observe(at(t), Some(waiting * 1000));
        }
        p.rate()
    }

    #[test]
    fn short_waits_keep_the_maximum() {
        assert_eq!(run(40, 10, 10_000), 100_000.0);
    }

    #[test]
    fn long_waits_back_off_to_the_floor_and_not_below() {
        let r = run(400, 10, 3_000);
        assert!(r < 100_000.0 * 0.7f64.powi(4), "{r}");
        let r = run(400, 10, 60_000);
        assert_eq!(r, 100_000.0 / 32.0);
    }

    #[test]
    fn a_stall_now_and_then_is_not_congestion() {
        // Frames usually leave after 40 ms, but every 30th waits 300 ms (a retransmission
        // timeout); the epoch minimum ignores them.
        let mut p = DelayPacer::new(100_000.0, Duration::from_millis(150), at(0));
        let mut sent: Vec<(u64, u64)> = Vec::new();
        for t in 0..20_000u64 {
            if t % 10 == 0 {
                p.on_queued(at(t), 1000);
                let wait = if (t / 10) % 30 == 0 { 300 } else { 40 };
                sent.push((t, wait));
            }
            // FIFO: a frame leaves only after every frame before it.
            let mut leave = 0;
            let waiting = sent
                .iter()
                .filter(|&&(s, w)| {
                    leave = leave.max(s + w);
                    leave > t
                })
                .count();
            p.observe(at(t), Some(waiting * 1000));
        }
        assert_eq!(p.rate(), 100_000.0);
    }

    #[test]
    fn without_a_backlog_report_nothing_changes() {
        let mut p = DelayPacer::new(100_000.0, Duration::from_millis(150), at(0));
        p.on_queued(at(0), 1000);
        p.observe(at(10_000), None);
        assert_eq!(p.rate(), 100_000.0);
    }

    #[test]
    fn recovers_when_the_crowd_leaves() {
        let mut p = DelayPacer::new(100_000.0, Duration::from_millis(150), at(0));
        // Congested: one frame waits 1 s.
        for k in 0..10u64 {
            p.on_queued(at(k * 1000), 1000);
            p.observe(at(k * 1000 + 999), Some(1000));
            p.observe(at(k * 1000 + 1000), Some(0));
        }
        let low = p.rate();
        assert!(low < 50_000.0, "{low}");
        // Then frames leave at once.
        let mut t = 10_000;
        for _ in 0..40 {
            p.on_queued(at(t), 1000);
            p.observe(at(t + 10), Some(0));
            t += 500;
            p.observe(at(t), Some(0));
        }
        assert_eq!(p.rate(), 100_000.0);
    }
}
