//! Per-node local clocks: a boot offset and a constant drift.
//!
//! Real ESP crystals are specified to about ±20 ppm (ESP32 datasheet, 40 MHz crystal
//! tolerance; ESP8266 likewise), and `micros()` restarts at power-on. Giving every node its
//! own rate and origin means painlessMesh time sync has the work it has on hardware: its
//! offsets are real, and residual drift between syncs shows up in the reported spread.
//!
//! Local time `L(g) = boot_local + e + floor(e * drift_ppb / 1e9)` with `e = g - boot_global`.
//! It is non-decreasing in `g` for any drift above -1e9 ppb, which is all the node needs.

use meshfleet_mesh::Instant;

const PPB: i128 = 1_000_000_000;

/// One node's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LocalClock {
    boot_global: u64,
    boot_local: u64,
    drift_ppb: i64,
}

impl LocalClock {
    /// A clock that reads `boot_local` at global time `boot_global` and runs
    /// `drift_ppb` parts per billion fast (negative: slow).
    pub(crate) fn new(boot_global: Instant, boot_local: u64, drift_ppb: i64) -> Self {
        Self {
            boot_global: boot_global.as_micros(),
            boot_local,
            drift_ppb,
        }
    }

    fn local_at(self, elapsed: i128) -> i128 {
        let skew = (elapsed * i128::from(self.drift_ppb)).div_euclid(PPB);
        i128::from(self.boot_local) + elapsed + skew
    }

    /// Local time at global time `g` (clamped to the boot reading before boot).
    pub(crate) fn to_local(self, g: Instant) -> Instant {
        let e = i128::from(g.as_micros().saturating_sub(self.boot_global));
        Instant::from_micros(clamp_u64(self.local_at(e)))
    }

    /// The earliest global time at which the local clock reads at least `l`.
    /// Timers are set in local time; scheduling them at this instant guarantees that
    /// `to_local(to_global(l)) >= l`, so a wakeup never arrives "too early" for the node.
    pub(crate) fn to_global(self, l: Instant) -> Instant {
        let target = i128::from(l.as_micros());
        if target <= i128::from(self.boot_local) {
            return Instant::from_micros(self.boot_global);
        }
        let d = target - i128::from(self.boot_local);
        // Invert the linear part, then walk the last microsecond or two exactly.
        let mut e =
            (d * PPB + (PPB + i128::from(self.drift_ppb)) - 1) / (PPB + i128::from(self.drift_ppb));
        while e > 0 && self.local_at(e - 1) >= target {
            e -= 1;
        }
        while self.local_at(e) < target {
            e += 1;
        }
        Instant::from_micros(clamp_u64(i128::from(self.boot_global) + e))
    }
}

fn clamp_u64(v: i128) -> u64 {
    u64::try_from(v.max(0)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn to_global_is_the_earliest_instant_reaching_the_local_time(
            boot in 0u64..1_000_000_000,
            boot_local in 0u64..5_000_000_000,
            drift in -100_000i64..100_000,
            offset in 0u64..4_000_000_000,
        ) {
            let c = LocalClock::new(Instant::from_micros(boot), boot_local, drift);
            let l = Instant::from_micros(boot_local + offset);
            let g = c.to_global(l);
            prop_assert!(c.to_local(g) >= l);
            if g.as_micros() > boot {
                prop_assert!(c.to_local(Instant::from_micros(g.as_micros() - 1)) < l);
            }
        }

        #[test]
        fn local_time_is_monotonic(
            drift in -100_000i64..100_000,
            a in 0u64..1_000_000_000_000,
            step in 0u64..10_000,
        ) {
            let c = LocalClock::new(Instant::ZERO, 17, drift);
            prop_assert!(c.to_local(Instant::from_micros(a + step)) >= c.to_local(Instant::from_micros(a)));
        }
    }

    #[test]
    fn twenty_ppm_fast_gains_twelve_hundred_microseconds_a_minute() {
        let c = LocalClock::new(Instant::ZERO, 0, 20_000);
        assert_eq!(
            c.to_local(Instant::from_micros(60_000_000)).as_micros(),
            60_001_200
        );
    }
}
