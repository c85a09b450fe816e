//! Health gates: a node's reports after its confirmed boot, judged against its own
//! pre-update baseline.
//!
//! Each report is a [`HealthSample`] (the monitoring crate's status package maps onto it).
//! The gate fails a node on the first of: more reboots than allowed (a boot counter that
//! grew, or an uptime that went backwards), free heap below the baseline by more than the
//! allowed share, a free-heap trend that would cross that line within the leak horizon,
//! free heap under the absolute floor, too many alerts, or the application flag down for
//! several reports in a row. Rejoin time and absence are judged by the controller, which
//! sees the node come and go.

use serde::{Deserialize, Serialize};

use crate::config::HealthThresholds;
use crate::time::{Duration, Instant};

/// One health report of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSample {
    /// Time since the node's last boot.
    pub uptime: Duration,
    /// The node's boot counter (persisted across reboots; 0 if the node has none).
    pub reboots: u32,
    /// Free heap in bytes.
    pub free_heap: u32,
    /// The node's cumulative alert counter (a decrease is read as a counter reset).
    pub alerts: u32,
    /// The application's own health flag, if it reports one.
    pub app_ok: Option<bool>,
}

/// Why a node failed its health gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HealthFailure {
    /// More reboots (or uptime resets) in the window than allowed.
    RebootLoop {
        /// Reboots seen.
        reboots: u32,
    },
    /// Free heap fell below the allowed share of the pre-update baseline.
    MemoryRegression {
        /// Baseline free heap (bytes).
        baseline: u32,
        /// Free heap now (bytes).
        free: u32,
    },
    /// The free-heap trend would cross the allowed drop within the leak horizon.
    MemoryLeak {
        /// Baseline free heap (bytes).
        baseline: u32,
        /// Heap lost per hour by the trend (bytes).
        bytes_per_hour: u32,
    },
    /// Free heap under the absolute floor.
    LowMemory {
        /// Free heap now (bytes).
        free: u32,
    },
    /// Too many alerts in the window.
    Alerts {
        /// Alerts seen.
        count: u32,
    },
    /// The application health flag was down for too many reports in a row.
    AppUnhealthy {
        /// Consecutive reports with the flag down.
        reports: u32,
    },
    /// The node took too long from "installed" to its confirmed boot.
    SlowRejoin {
        /// Time it took.
        took: Duration,
    },
    /// The node left the mesh in its health window and did not come back in time.
    LostAfterUpdate {
        /// Time it had been away.
        away: Duration,
    },
    /// Too few health reports by the end of the window and its grace.
    NoHealthReports {
        /// Reports received.
        received: u32,
        /// Reports needed.
        needed: u32,
    },
}

/// Most reports fed into the heap trend; later ones still go through every other check.
/// Keeps the integer sums far from overflow whatever a node sends.
const MAX_TREND_SAMPLES: u64 = 10_000;

/// Health tracking of one node in its window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HealthTrack {
    pub(crate) samples: u32,
    last: Option<HealthSample>,
    boot_counter: Option<u32>,
    uptime_resets: u32,
    alerts: u32,
    app_down: u32,
    // Least-squares sums over (seconds since boot, free heap); integers so a persisted
    // rollout resumes bit for bit.
    n: u64,
    st: u64,
    sy: u64,
    stt: u64,
    sty: u64,
    first_t: u64,
    last_t: u64,
}

impl HealthTrack {
    /// Takes one report at `now` (the boot was confirmed at `boot`) and judges it.
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        boot: Instant,
        s: HealthSample,
        baseline: Option<HealthSample>,
        th: &HealthThresholds,
    ) -> Option<HealthFailure> {
        self.samples = self.samples.saturating_add(1);
        if let Some(last) = self.last {
            if s.uptime < last.uptime {
                self.uptime_resets = self.uptime_resets.saturating_add(1);
            }
            self.alerts = self.alerts.saturating_add(if s.alerts >= last.alerts {
                s.alerts - last.alerts
            } else {
                s.alerts
            });
        }
        let counter_ref = *self.boot_counter.get_or_insert(s.reboots);
        self.last = Some(s);
        let t = now.saturating_since(boot).as_secs();
        if self.n < MAX_TREND_SAMPLES {
            if self.n == 0 {
                self.first_t = t;
            }
            self.n += 1;
            self.st = self.st.saturating_add(t);
            self.sy = self.sy.saturating_add(u64::from(s.free_heap));
            self.stt = self.stt.saturating_add(t.saturating_mul(t));
            self.sty = self
                .sty
                .saturating_add(t.saturating_mul(u64::from(s.free_heap)));
            self.last_t = t;
        }

        let reboots = s
            .reboots
            .saturating_sub(counter_ref)
            .max(self.uptime_resets);
        if reboots > th.max_reboots {
            return Some(HealthFailure::RebootLoop { reboots });
        }
        if s.free_heap < th.min_free_heap {
            return Some(HealthFailure::LowMemory { free: s.free_heap });
        }
        let base = baseline.map(|b| b.free_heap);
        let line = base.map(|b| u64::from(b) * u64::from(100 - th.max_heap_drop_percent.min(100)));
        if let (Some(b), Some(line)) = (base, line) {
            if u64::from(s.free_heap) * 100 < line {
                return Some(HealthFailure::MemoryRegression {
                    baseline: b,
                    free: s.free_heap,
                });
            }
        }
        if let Some(f) = self.leak(th, base) {
            return Some(f);
        }
        if self.alerts > th.max_alerts {
            return Some(HealthFailure::Alerts { count: self.alerts });
        }
        if s.app_ok == Some(false) {
            self.app_down = self.app_down.saturating_add(1);
        } else {
            self.app_down = 0;
        }
        if th.app_unhealthy_reports > 0 && self.app_down >= th.app_unhealthy_reports {
            return Some(HealthFailure::AppUnhealthy {
                reports: self.app_down,
            });
        }
        None
    }

    /// The heap-trend check: a least-squares line through the window's reports, projected
    /// `leak_horizon` past the latest one, against the allowed drop from the baseline (or
    /// from the first report if the node had no baseline).
    fn leak(&self, th: &HealthThresholds, base: Option<u32>) -> Option<HealthFailure> {
        let span = self.last_t.saturating_sub(self.first_t);
        if self.n < 4 || span < th.window.half().as_secs() || span == 0 {
            return None;
        }
        let n = i128::from(self.n);
        let (st, sy, stt, sty) = (
            i128::from(self.st),
            i128::from(self.sy),
            i128::from(self.stt),
            i128::from(self.sty),
        );
        let den = n * stt - st * st;
        if den <= 0 {
            return None;
        }
        let slope = (n * sty - st * sy) as f64 / den as f64; // bytes per second
        if slope >= 0.0 {
            return None;
        }
        let intercept = (sy as f64 - slope * st as f64) / n as f64;
        let horizon = th.leak_horizon.as_secs() as f64;
        let projected = intercept + slope * (self.last_t as f64 + horizon);
        let reference = match base {
            Some(b) => b,
            None => {
                // No pre-update baseline: the fitted value at the window's start.
                let v = intercept + slope * self.first_t as f64;
                if v <= 0.0 {
                    return None;
                }
                v as u32
            }
        };
        let line =
            f64::from(reference) * f64::from(100 - th.max_heap_drop_percent.min(100)) / 100.0;
        if projected < line {
            let per_hour = (-slope * 3600.0).min(f64::from(u32::MAX));
            Some(HealthFailure::MemoryLeak {
                baseline: reference,
                bytes_per_hour: per_hour as u32,
            })
        } else {
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample(uptime_s: u64, heap: u32) -> HealthSample {
        HealthSample {
            uptime: Duration::from_secs(uptime_s),
            reboots: 5,
            free_heap: heap,
            alerts: 0,
            app_ok: Some(true),
        }
    }

    fn at(s: u64) -> Instant {
        Instant::from_secs(s)
    }

    fn feed(
        track: &mut HealthTrack,
        samples: &[(u64, HealthSample)],
        base: Option<HealthSample>,
    ) -> Option<HealthFailure> {
        let th = HealthThresholds::default();
        samples
            .iter()
            .find_map(|&(t, s)| track.observe(at(t), at(0), s, base, &th))
    }

    #[test]
    fn a_steady_node_with_heap_noise_passes() {
        let base = sample(1000, 200_000);
        // +-2 KB of noise around the baseline, one report every 30 s for 10 min.
        let samples: alloc::vec::Vec<_> = (1..=20u64)
            .map(|i| {
                let noise = if i % 2 == 0 { 2_000 } else { 0 };
                (i * 30, sample(i * 30, 198_000 + noise))
            })
            .collect();
        assert_eq!(
            feed(&mut HealthTrack::default(), &samples, Some(base)),
            None
        );
    }

    #[test]
    fn an_uptime_reset_is_a_reboot() {
        let s = [(30, sample(30, 200_000)), (60, sample(5, 200_000))];
        assert_eq!(
            feed(&mut HealthTrack::default(), &s, None),
            Some(HealthFailure::RebootLoop { reboots: 1 })
        );
    }

    #[test]
    fn a_grown_boot_counter_is_a_reboot_even_if_uptime_was_missed() {
        let mut later = sample(90, 200_000);
        later.reboots = 7;
        let s = [(30, sample(30, 200_000)), (90, later)];
        assert_eq!(
            feed(&mut HealthTrack::default(), &s, None),
            Some(HealthFailure::RebootLoop { reboots: 2 })
        );
    }

    #[test]
    fn heap_is_judged_against_the_nodes_own_baseline() {
        let s = [(30, sample(30, 150_000))];
        // 25 % below a 200 KB baseline fails; the same value is fine for a node that had
        // 160 KB before.
        assert!(matches!(
            feed(&mut HealthTrack::default(), &s, Some(sample(1, 200_000))),
            Some(HealthFailure::MemoryRegression { .. })
        ));
        assert_eq!(
            feed(&mut HealthTrack::default(), &s, Some(sample(1, 160_000))),
            None
        );
    }

    #[test]
    fn a_slow_leak_is_caught_by_the_trend_before_it_crosses_the_line() {
        // 1 KB per 30 s = 120 KB/h: after 6 min the heap is only 6 % down, but the trend
        // crosses the 20 % line well within the hour.
        let s: alloc::vec::Vec<_> = (1..=12u64)
            .map(|i| (i * 30, sample(i * 30, 200_000 - (i as u32) * 1_000)))
            .collect();
        let f = feed(&mut HealthTrack::default(), &s, Some(sample(1, 200_000)));
        assert!(
            matches!(f, Some(HealthFailure::MemoryLeak { bytes_per_hour, .. }) if (110_000..130_000).contains(&bytes_per_hour)),
            "{f:?}"
        );
    }

    #[test]
    fn alerts_and_the_app_flag() {
        let mut s1 = sample(30, 200_000);
        s1.alerts = 10;
        let mut s2 = sample(60, 200_000);
        s2.alerts = 14; // 4 new alerts > 3
        assert_eq!(
            feed(&mut HealthTrack::default(), &[(30, s1), (60, s2)], None),
            Some(HealthFailure::Alerts { count: 4 })
        );
        let mut down = sample(30, 200_000);
        down.app_ok = Some(false);
        let mut down2 = down;
        down2.uptime = Duration::from_secs(60);
        let ok = sample(45, 200_000);
        // One bad report is tolerated, and a good one resets the streak.
        assert_eq!(
            feed(
                &mut HealthTrack::default(),
                &[(30, down), (45, ok), (60, down2)],
                None
            ),
            None
        );
        let mut down3 = down2;
        down3.uptime = Duration::from_secs(90);
        assert_eq!(
            feed(
                &mut HealthTrack::default(),
                &[(30, down), (60, down2), (90, down3)],
                None
            ),
            Some(HealthFailure::AppUnhealthy { reports: 2 })
        );
    }
}
