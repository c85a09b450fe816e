//! Integer-microsecond time supplied by the driver: the sans-IO core never reads a clock.
//!
//! One pair of types for every core crate (the mesh node, the rollout controller and the
//! crates above them), so a driver hands the same `now` to all of them without converting.
//! Arithmetic saturates: a peer's absurd timestamp or a far deadline cannot overflow.
//! Serde is transparent (a bare number of microseconds), because a rollout's deadlines are
//! part of its persisted state.

#![no_std]

use core::ops::{Add, AddAssign, Sub};

use serde::{Deserialize, Serialize};

/// A point in time, in microseconds since the driver's epoch (the simulator starts at 0).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Instant(u64);

/// A span of time in microseconds.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Duration(u64);

impl Instant {
    /// The epoch.
    pub const ZERO: Self = Self(0);

    /// From microseconds since the epoch.
    pub const fn from_micros(us: u64) -> Self {
        Self(us)
    }

    /// From seconds since the epoch.
    pub const fn from_secs(s: u64) -> Self {
        Self(s.saturating_mul(1_000_000))
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Time since `earlier`, zero if `earlier` is later.
    pub const fn saturating_since(self, earlier: Self) -> Duration {
        Duration(self.0.saturating_sub(earlier.0))
    }
}

impl Duration {
    /// Zero.
    pub const ZERO: Self = Self(0);

    /// From microseconds.
    pub const fn from_micros(us: u64) -> Self {
        Self(us)
    }

    /// From milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms.saturating_mul(1_000))
    }

    /// From seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self(s.saturating_mul(1_000_000))
    }

    /// From minutes.
    pub const fn from_mins(m: u64) -> Self {
        Self(m.saturating_mul(60_000_000))
    }

    /// Microseconds.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Milliseconds, rounded down.
    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000
    }

    /// Whole seconds, rounded down.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1_000_000
    }

    /// Seconds as a float (for reports).
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }

    /// Half of this span (rounded down).
    pub const fn half(self) -> Self {
        Self(self.0 / 2)
    }
}

impl Add<Duration> for Instant {
    type Output = Self;
    fn add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d.0))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub for Instant {
    type Output = Duration;
    fn sub(self, earlier: Self) -> Duration {
        self.saturating_since(earlier)
    }
}

impl Add for Duration {
    type Output = Self;
    fn add(self, d: Self) -> Self {
        Self(self.0.saturating_add(d.0))
    }
}

impl core::fmt::Display for Duration {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0 >= 1_000_000 {
            write!(f, "{:.3}s", self.as_secs_f64())
        } else if self.0 >= 1_000 {
            write!(f, "{:.3}ms", self.0 as f64 / 1e3)
        } else {
            write!(f, "{}us", self.0)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_overflowing() {
        let far = Instant::from_micros(u64::MAX - 1);
        assert_eq!((far + Duration::from_secs(1)).as_micros(), u64::MAX);
        assert_eq!(Instant::ZERO - far, Duration::ZERO);
        assert_eq!(Duration::from_mins(u64::MAX).as_micros(), u64::MAX);
        assert_eq!(Duration::from_millis(u64::MAX / 10).as_micros(), u64::MAX);
        let mut t = Instant::from_secs(1);
        t += Duration::from_millis(500);
        assert_eq!(t.as_micros(), 1_500_000);
        assert_eq!((t - Instant::from_secs(1)).as_millis(), 500);
    }

    #[test]
    fn display_picks_a_readable_unit() {
        assert_eq!(Duration::from_micros(12).to_string(), "12us");
        assert_eq!(Duration::from_micros(1_500).to_string(), "1.500ms");
        assert_eq!(Duration::from_secs(90).to_string(), "90.000s");
    }

    #[test]
    fn serde_is_a_bare_number_of_microseconds() {
        let d = Duration::from_millis(3);
        assert_eq!(serde_json::to_string(&d).unwrap(), "3000");
        let i: Instant = serde_json::from_str("42").unwrap();
        assert_eq!(i, Instant::from_micros(42));
    }
}
