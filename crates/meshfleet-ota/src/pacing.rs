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
//!
//! A sender's own frames see only the medium around the sender. The node a chunk goes to
//! may sit in a busier place (within range of senders the sender cannot hear), and there
//! its frames, node syncs included, wait. So every node also brakes all its OTA links
//! on the one signal painlessMesh does give about its neighbours' surroundings: the round
//! trip of its own node syncs ([`SyncBrake`], reading
//! [`meshfleet_mesh::Ctx::node_sync_timing`]). That exchange is the one whose 10 s
//! timeout closes links, it crosses the medium at both ends, and on an idle mesh it takes
//! the airtime of two node-sync frames (well under a second even at 1,000 nodes).
//!
//! * Per epoch, the worst of: a round trip answered since the last epoch, and the age of
//!   a request still unanswered.
//! * Above the brake target (1 s by default, a tenth of the node timeout): the node's
//!   OTA scale x 0.5, at most once per epoch, never below 1/64. Otherwise: + 1/32 per
//!   epoch, back to 1 in 16 s.
//! * Every link of the node sends at its delay-controlled rate times that scale.

use alloc::collections::{BTreeMap, VecDeque};

use meshfleet_mesh::{Duration, Instant, LinkId, NodeSyncTiming};

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

    /// How long the oldest chunk frame not yet seen leaving the driver has waited (as of
    /// the last [`DelayPacer::observe`]).
    pub(crate) fn oldest_waiting(&self, now: Instant) -> Option<Duration> {
        self.outstanding
            .front()
            .map(|&(at, _)| now.saturating_since(at))
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

/// Multiplicative decrease of the node's scale when its node syncs are slow.
const BRAKE: f64 = 0.5;
/// Additive recovery per epoch otherwise.
const RELEASE: f64 = 1.0 / 32.0;
/// The lowest scale.
const BRAKE_FLOOR: f64 = 1.0 / 64.0;

/// The node-wide brake on OTA sending from the node's own node-sync round trips (module
/// docs).
#[derive(Debug)]
pub(crate) struct SyncBrake {
    target: Duration,
    scale: f64,
    epoch_start: Instant,
    /// Answered count per link at the last look: a round trip is a sample once.
    seen: BTreeMap<LinkId, u32>,
}

impl SyncBrake {
    /// A brake that acts when node syncs take longer than `target`.
    pub(crate) fn new(target: Duration, now: Instant) -> Self {
        Self {
            target,
            scale: 1.0,
            epoch_start: now,
            seen: BTreeMap::new(),
        }
    }

    /// The factor (1/64 to 1) every OTA link's rate is multiplied by.
    pub(crate) fn scale(&self) -> f64 {
        self.scale
    }

    /// Whether an epoch has passed since the last control step: the caller then gathers
    /// the timings and calls [`SyncBrake::observe`].
    pub(crate) fn due(&self, now: Instant) -> bool {
        now.saturating_since(self.epoch_start) >= EPOCH
    }

    /// One control step from the node-sync timings of every link of the node.
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        timings: impl IntoIterator<Item = (LinkId, NodeSyncTiming)>,
    ) {
        let mut worst = Duration::ZERO;
        let mut seen = BTreeMap::new();
        for (link, t) in timings {
            if self.seen.get(&link).is_some_and(|&a| a != t.answered) {
                worst = worst.max(t.last_round_trip.unwrap_or(Duration::ZERO));
            }
            if let Some(at) = t.pending_since {
                worst = worst.max(now.saturating_since(at));
            }
            seen.insert(link, t.answered);
        }
        self.seen = seen;
        self.scale = if worst > self.target {
            (self.scale * BRAKE).max(BRAKE_FLOOR)
        } else {
            (self.scale + RELEASE).min(1.0)
        };
        self.epoch_start = now;
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

    fn timing(pending_since: Option<u64>, rtt_ms: Option<u64>, answered: u32) -> NodeSyncTiming {
        NodeSyncTiming {
            pending_since: pending_since.map(at),
            last_round_trip: rtt_ms.map(Duration::from_millis),
            answered,
        }
    }

    #[test]
    fn a_slow_node_sync_brakes_and_fast_ones_release() {
        let target = Duration::from_secs(1);
        let mut b = SyncBrake::new(target, at(0));
        let (l1, l2) = (LinkId(1), LinkId(2));
        // Idle links with an old slow sample already seen at the first look: no brake.
        b.observe(
            at(500),
            [
                (l1, timing(None, Some(5000), 3)),
                (l2, timing(None, None, 0)),
            ],
        );
        assert_eq!(b.scale(), 1.0);
        // A request on l2 is pending for 300 ms: fine.
        b.observe(
            at(1000),
            [
                (l1, timing(None, Some(5000), 3)),
                (l2, timing(Some(700), None, 0)),
            ],
        );
        assert_eq!(b.scale(), 1.0);
        // ... and for 1.3 s, then 1.8 s: brake twice.
        b.observe(
            at(2000),
            [
                (l1, timing(None, Some(5000), 3)),
                (l2, timing(Some(700), None, 0)),
            ],
        );
        b.observe(
            at(2500),
            [
                (l1, timing(None, Some(5000), 3)),
                (l2, timing(Some(700), None, 0)),
            ],
        );
        assert_eq!(b.scale(), 0.25);
        // Answered after 2 s: the new sample brakes once more, then fast exchanges release.
        b.observe(
            at(3000),
            [
                (l1, timing(None, Some(5000), 3)),
                (l2, timing(None, Some(2000), 1)),
            ],
        );
        assert_eq!(b.scale(), 0.125);
        let mut t = 3000;
        for k in 0..40u32 {
            t += 500;
            b.observe(
                at(t),
                [
                    (l1, timing(None, Some(200), 4 + k)),
                    (l2, timing(None, Some(2000), 1)),
                ],
            );
        }
        assert_eq!(b.scale(), 1.0);
    }

    #[test]
    fn the_brake_has_a_floor() {
        let mut b = SyncBrake::new(Duration::from_secs(1), at(0));
        for k in 1..100u64 {
            b.observe(at(k * 500), [(LinkId(1), timing(Some(0), None, 0))]);
        }
        assert_eq!(b.scale(), 1.0 / 64.0);
    }
}
