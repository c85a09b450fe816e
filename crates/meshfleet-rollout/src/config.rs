//! Rollout configuration: waves, gates, timeouts and health thresholds, with documented
//! defaults (`docs/rollouts.md` explains each choice). Every struct is serde with
//! `#[serde(default)]`, so a TOML or JSON config names only what it changes.

use alloc::vec;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::fleet::{ImageVersion, Selector};
use crate::time::Duration;

/// Most waves a rollout may have.
pub const MAX_WAVES: usize = 16;

/// How far a wave reaches, counted cumulatively over the targeted fleet: after the wave with
/// `Percent(20)`, 20 % of the targeted nodes have been included in some wave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Cumulative percentage of the targeted nodes (rounded up), 0 to 100.
    Percent(u8),
    /// Cumulative number of nodes (capped at the fleet size).
    Count(u32),
}

/// A threshold as a count of nodes or a percentage of a base (rounded up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Threshold {
    /// Percentage of the base, rounded up.
    Percent(u8),
    /// Absolute number of nodes.
    Count(u32),
}

impl Threshold {
    /// The threshold as a node count for `base` nodes.
    pub fn of(self, base: u32) -> u32 {
        match self {
            Self::Count(c) => c,
            Self::Percent(p) => percent_ceil(p, base),
        }
    }
}

/// `ceil(p % of n)` in integers.
pub(crate) fn percent_ceil(p: u8, n: u32) -> u32 {
    let v = (u64::from(p.min(100)) * u64::from(n)).div_ceil(100);
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// What happens when a wave passes its gate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterWave {
    /// Start the next wave at once.
    #[default]
    Continue,
    /// Wait for an operator's `Approve`.
    PauseForApproval,
}

/// One wave and its gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WaveSpec {
    /// How far the rollout reaches after this wave (cumulative).
    pub until: Target,
    /// Smallest wave size, so a canary on a small mesh is still more than one node (the
    /// wave never exceeds the nodes left).
    pub min_size: u32,
    /// Healthy nodes needed to pass, out of the nodes the wave reached (healthy + failed).
    pub success: Threshold,
    /// Failed nodes that abort the rollout at once, out of the wave's members (at least 1).
    pub failure: Threshold,
    /// What to do once the wave passes.
    pub then: AfterWave,
}

impl Default for WaveSpec {
    fn default() -> Self {
        Self {
            until: Target::Percent(100),
            min_size: 1,
            success: Threshold::Percent(90),
            failure: Threshold::Percent(10),
            then: AfterWave::Continue,
        }
    }
}

impl WaveSpec {
    /// The default canary: 5 % (at least 2 nodes); any failure aborts; all reached nodes
    /// must be healthy.
    pub fn canary() -> Self {
        Self {
            until: Target::Percent(5),
            min_size: 2,
            success: Threshold::Percent(100),
            failure: Threshold::Count(1),
            then: AfterWave::Continue,
        }
    }

    /// A later wave up to `percent` cumulative: 90 % healthy to pass, 10 % failed aborts.
    pub fn up_to(percent: u8) -> Self {
        Self {
            until: Target::Percent(percent),
            ..Self::default()
        }
    }
}

/// Per-node deadlines. A missed deadline is a failure (or a retry while retries remain):
/// no node stays "in progress" forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timeouts {
    /// From the offer to the node's acceptance (default 2 min).
    pub offer: Duration,
    /// From acceptance to "installed" (default 30 min).
    pub download: Duration,
    /// From "installed" to a confirmed boot of the new image (default 10 min); missing it is
    /// a failure without retry: the node took the image and did not come back with it.
    pub reboot: Duration,
    /// Extra time after the health window for a node's missing health reports (default 5 min).
    pub health_reports: Duration,
    /// How long a wave waits for its offline members before deciding without them
    /// (default 15 min); they join a later wave when they return.
    pub offline_grace: Duration,
    /// Interval between repeated rollback orders to a node not yet restored (default 1 min).
    pub rollback_retry: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            offer: Duration::from_mins(2),
            download: Duration::from_mins(30),
            reboot: Duration::from_mins(10),
            health_reports: Duration::from_mins(5),
            offline_grace: Duration::from_mins(15),
            rollback_retry: Duration::from_mins(1),
        }
    }
}

/// Health gate thresholds, judged per node after its confirmed boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthThresholds {
    /// How long a node must stay healthy after its confirmed boot (default 10 min).
    pub window: Duration,
    /// Health reports needed within the window (default 3).
    pub min_samples: u32,
    /// Reboots tolerated in the window (default 0: any reboot or uptime reset fails it).
    pub max_reboots: u32,
    /// Largest drop of free heap against the node's own pre-update baseline, in percent
    /// (default 20).
    pub max_heap_drop_percent: u8,
    /// Leak horizon: the node fails if the least-squares trend of its free heap over the
    /// window would cross the `max_heap_drop_percent` line within this time after the
    /// latest report (default 1 h). Needs 4 reports spanning half the window.
    pub leak_horizon: Duration,
    /// Absolute free-heap floor in bytes (default 0: off).
    pub min_free_heap: u32,
    /// Longest time from "installed" to the confirmed boot (the node rejoining with the new
    /// image), and longest absence in the window (default 3 min).
    pub max_rejoin: Duration,
    /// Alerts tolerated in the window (default 3).
    pub max_alerts: u32,
    /// Consecutive reports with the application health flag down that fail the node
    /// (default 2).
    pub app_unhealthy_reports: u32,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        Self {
            window: Duration::from_mins(10),
            min_samples: 3,
            max_reboots: 0,
            max_heap_drop_percent: 20,
            leak_horizon: Duration::from_mins(60),
            min_free_heap: 0,
            max_rejoin: Duration::from_mins(3),
            max_alerts: 3,
            app_unhealthy_reports: 2,
        }
    }
}

/// Whether the first wave starts when the rollout is created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartMode {
    /// Start the first wave at once.
    #[default]
    Immediately,
    /// Wait for an operator's `Approve`.
    AwaitApproval,
}

/// A rollout's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutConfig {
    /// The image being rolled out.
    pub target: ImageVersion,
    /// The image nodes run now, and go back to on rollback.
    pub previous: ImageVersion,
    /// Seed of the canary selection.
    #[serde(default)]
    pub seed: u64,
    /// The waves (default 5 % canary, then 20 %, 75 %, 100 %).
    #[serde(default = "default_waves")]
    pub waves: Vec<WaveSpec>,
    /// Which nodes are targeted (default: all).
    #[serde(default)]
    pub selector: Selector,
    /// Most nodes with an update in flight (offered, downloading or installed but not yet
    /// booted) at once, so a wave cannot flood the mesh's airtime (default 10).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Re-offers after a failed or timed-out transfer, before the node counts as failed
    /// (default 2).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Rollback orders per node before it is reported stuck (default 10). A stuck node still
    /// gets a new order whenever it rejoins.
    #[serde(default = "default_max_rollback_orders")]
    pub max_rollback_orders: u32,
    /// Order a node back to the previous image as soon as it fails after taking the update,
    /// without waiting for the wave's verdict (default true). Off, only an abort rolls back.
    #[serde(default = "yes")]
    pub rollback_failed_nodes: bool,
    /// Per-node deadlines.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Health gate thresholds.
    #[serde(default)]
    pub health: HealthThresholds,
    /// Whether the first wave waits for approval.
    #[serde(default)]
    pub start: StartMode,
}

fn default_waves() -> Vec<WaveSpec> {
    vec![
        WaveSpec::canary(),
        WaveSpec::up_to(20),
        WaveSpec::up_to(75),
        WaveSpec::up_to(100),
    ]
}

fn yes() -> bool {
    true
}

fn default_max_in_flight() -> u32 {
    10
}

fn default_max_retries() -> u32 {
    2
}

fn default_max_rollback_orders() -> u32 {
    10
}

impl RolloutConfig {
    /// The default configuration for rolling `previous` forward to `target`.
    pub fn new(target: ImageVersion, previous: ImageVersion) -> Self {
        Self {
            target,
            previous,
            seed: 0,
            waves: default_waves(),
            selector: Selector::default(),
            max_in_flight: default_max_in_flight(),
            max_retries: default_max_retries(),
            max_rollback_orders: default_max_rollback_orders(),
            rollback_failed_nodes: true,
            timeouts: Timeouts::default(),
            health: HealthThresholds::default(),
            start: StartMode::Immediately,
        }
    }

    /// Checks the configuration for values that would make the rollout meaningless.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.target == self.previous {
            return Err(ConfigError::SameImage);
        }
        if self.waves.is_empty() || self.waves.len() > MAX_WAVES {
            return Err(ConfigError::WaveCount {
                count: self.waves.len(),
            });
        }
        for (i, w) in self.waves.iter().enumerate() {
            let pct = |t| matches!(t, Threshold::Percent(p) if p > 100);
            if matches!(w.until, Target::Percent(p) if p > 100) || pct(w.success) || pct(w.failure)
            {
                return Err(ConfigError::PercentOver100 { wave: i });
            }
            if matches!(w.failure, Threshold::Count(0) | Threshold::Percent(0)) {
                // "Abort after 0 failures" would abort before anything happens: say so
                // rather than clamp silently.
                return Err(ConfigError::ZeroFailureThreshold { wave: i });
            }
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::ZeroConcurrency);
        }
        if self.health.window == Duration::ZERO {
            return Err(ConfigError::ZeroHealthWindow);
        }
        Ok(())
    }
}

/// Why a configuration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `target` and `previous` are the same version: a rollback could not be told apart.
    SameImage,
    /// Not between 1 and [`MAX_WAVES`] waves.
    WaveCount {
        /// Waves configured.
        count: usize,
    },
    /// A percentage above 100.
    PercentOver100 {
        /// Wave index (0 = first).
        wave: usize,
    },
    /// A failure threshold of zero.
    ZeroFailureThreshold {
        /// Wave index (0 = first).
        wave: usize,
    },
    /// `max_in_flight` is 0: nothing could ever be offered.
    ZeroConcurrency,
    /// The health window is zero: success would mean nothing more than a boot.
    ZeroHealthWindow,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::SameImage => f.write_str("target and previous image versions are the same"),
            Self::WaveCount { count } => {
                write!(f, "{count} waves configured, 1 to {MAX_WAVES} are allowed")
            }
            Self::PercentOver100 { wave } => write!(f, "wave {wave}: a percentage above 100"),
            Self::ZeroFailureThreshold { wave } => write!(
                f,
                "wave {wave}: failure threshold 0 would abort at once; use at least 1"
            ),
            Self::ZeroConcurrency => f.write_str("max_in_flight must be at least 1"),
            Self::ZeroHealthWindow => f.write_str("the health window must be longer than 0"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn v(s: &str) -> ImageVersion {
        ImageVersion::new(s).unwrap()
    }

    #[test]
    fn percent_rounds_up() {
        assert_eq!(percent_ceil(5, 100), 5);
        assert_eq!(percent_ceil(5, 21), 2);
        assert_eq!(percent_ceil(5, 0), 0);
        assert_eq!(percent_ceil(100, 7), 7);
        assert_eq!(Threshold::Percent(10).of(3), 1);
        assert_eq!(Threshold::Count(4).of(3), 4);
    }

    #[test]
    fn validate_rejects_meaningless_configs() {
        let ok = RolloutConfig::new(v("2"), v("1"));
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(
            RolloutConfig::new(v("1"), v("1")).validate(),
            Err(ConfigError::SameImage)
        );
        let mut c = ok.clone();
        c.waves.clear();
        assert_eq!(c.validate(), Err(ConfigError::WaveCount { count: 0 }));
        let mut c = ok.clone();
        c.waves[1].failure = Threshold::Count(0);
        assert_eq!(
            c.validate(),
            Err(ConfigError::ZeroFailureThreshold { wave: 1 })
        );
        let mut c = ok.clone();
        c.waves[2].until = Target::Percent(101);
        assert_eq!(c.validate(), Err(ConfigError::PercentOver100 { wave: 2 }));
        let mut c = ok;
        c.max_in_flight = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroConcurrency));
    }

    #[test]
    fn a_minimal_json_config_gets_the_documented_defaults() {
        let c: RolloutConfig =
            serde_json::from_str(r#"{"target":"2.0","previous":"1.0"}"#).unwrap();
        assert_eq!(c, RolloutConfig::new(v("2.0"), v("1.0")));
        assert_eq!(c.waves.len(), 4);
        assert_eq!(c.waves[0].until, Target::Percent(5));
        assert_eq!(c.waves[3].until, Target::Percent(100));
    }
}
