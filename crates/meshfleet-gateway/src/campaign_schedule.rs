//! When a campaign may serve: a start time (`start_at`) and a weekly maintenance window
//! ("02:00 on weekends, for 4 hours").
//!
//! Pure functions of a caller-supplied `now` (Unix ms), so the rules are tested without a
//! clock; the engine asks them on every tick. Outside its schedule a `running` campaign is
//! held exactly like a paused one: nothing new is offered or sent, so no node starts, and
//! a node that was mid-transfer when the window closed keeps the chunks it holds and goes
//! on from there when the window opens again (its per-node timeout does not run while
//! held). The campaign's state stays `running`; [`Schedule::next_open`] says when it will
//! serve again.
//!
//! A window is a set of days of the week, a start time of day and a duration, in UTC or a
//! fixed offset from UTC (`"+01:00"`; no daylight-saving rules, so a window keeps its UTC
//! time all year). A window opens on each listed day at `start` and stays open for
//! `duration_min` minutes, so it may run past midnight and past the end of the week
//! (Sunday 23:00 for 3 hours ends Monday 02:00).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::UnixMillis;

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;
/// The longest window: a week (a window that long is always open on its days).
pub const MAX_WINDOW_MIN: u32 = 7 * 24 * 60;
/// The largest offset from UTC, minutes (UTC-12:00 to UTC+14:00 exist; ±18:00 as ISO 8601).
pub const MAX_OFFSET_MIN: i32 = 18 * 60;

/// The days of the week, Monday first (as ISO 8601 numbers them, 1-7).
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A weekly maintenance window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WindowJson", into = "WindowJson")]
pub struct Window {
    /// Bit `i` set: the window opens on day `i` (0 = Monday).
    days: u8,
    /// Minutes after local midnight.
    start_min: u16,
    /// How long it stays open, minutes (1..=[`MAX_WINDOW_MIN`]).
    duration_min: u32,
    /// Local time minus UTC, minutes.
    utc_offset_min: i32,
}

/// The JSON of a [`Window`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowJson {
    /// Days it opens on: `mon`..`sun`, or `weekdays`, `weekends`, `daily`.
    pub days: Vec<String>,
    /// Local time it opens, `HH:MM` (24 h).
    pub start: String,
    /// How long it stays open, minutes (1 to 10080).
    pub duration_min: u32,
    /// Local time's offset from UTC, `+HH:MM` or `-HH:MM` (default `+00:00`, UTC).
    #[serde(default = "utc")]
    pub utc_offset: String,
}

fn utc() -> String {
    "+00:00".into()
}

/// Why a window is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    /// An unknown day name.
    #[error("unknown day {0:?} (mon..sun, weekdays, weekends, daily)")]
    Day(String),
    /// No day given.
    #[error("`days` is empty")]
    NoDays,
    /// Not `HH:MM`.
    #[error("start {0:?} is not HH:MM (00:00-23:59)")]
    Start(String),
    /// Zero or longer than a week.
    #[error("duration_min must be 1 to {MAX_WINDOW_MIN}")]
    Duration,
    /// Not `±HH:MM` or out of range.
    #[error("utc_offset {0:?} is not +HH:MM or -HH:MM within ±18:00")]
    Offset(String),
}

fn hh_mm(s: &str) -> Option<(u16, u16)> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !(h.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((h.parse().ok()?, m.parse().ok()?))
}

impl TryFrom<WindowJson> for Window {
    type Error = WindowError;

    fn try_from(j: WindowJson) -> Result<Self, WindowError> {
        let mut days = 0u8;
        for d in &j.days {
            let lower = d.to_ascii_lowercase();
            days |= match lower.as_str() {
                "weekdays" => 0b001_1111,
                "weekends" => 0b110_0000,
                "daily" => 0b111_1111,
                _ => {
                    let i = DAYS
                        .iter()
                        .position(|x| *x == lower)
                        .ok_or_else(|| WindowError::Day(d.clone()))?;
                    1 << i
                }
            };
        }
        if days == 0 {
            return Err(WindowError::NoDays);
        }
        let start_min = match hh_mm(&j.start) {
            Some((h, m)) if h < 24 && m < 60 => h * 60 + m,
            _ => return Err(WindowError::Start(j.start)),
        };
        if j.duration_min == 0 || j.duration_min > MAX_WINDOW_MIN {
            return Err(WindowError::Duration);
        }
        let bad = || WindowError::Offset(j.utc_offset.clone());
        let (sign, rest) = match j.utc_offset.as_bytes().first() {
            Some(b'+') => (1, &j.utc_offset[1..]),
            Some(b'-') => (-1, &j.utc_offset[1..]),
            _ => return Err(bad()),
        };
        let (h, m) = hh_mm(rest).ok_or_else(bad)?;
        let utc_offset_min = sign * (i32::from(h) * 60 + i32::from(m));
        if m >= 60 || utc_offset_min.abs() > MAX_OFFSET_MIN {
            return Err(bad());
        }
        Ok(Self {
            days,
            start_min,
            duration_min: j.duration_min,
            utc_offset_min,
        })
    }
}

impl From<Window> for WindowJson {
    fn from(w: Window) -> Self {
        let off = w.utc_offset_min.abs();
        Self {
            days: DAYS
                .iter()
                .enumerate()
                .filter(|(i, _)| w.days & (1 << i) != 0)
                .map(|(_, d)| (*d).to_owned())
                .collect(),
            start: format!("{:02}:{:02}", w.start_min / 60, w.start_min % 60),
            duration_min: w.duration_min,
            utc_offset: format!(
                "{}{:02}:{:02}",
                if w.utc_offset_min < 0 { '-' } else { '+' },
                off / 60,
                off % 60
            ),
        }
    }
}

impl Window {
    /// Local day number (days since 1970-01-01 local) of `local_ms`.
    fn day(local_ms: i64) -> i64 {
        local_ms.div_euclid(DAY_MS)
    }

    /// Day of the week of local day `day`, 0 = Monday (1970-01-01 was a Thursday).
    fn weekday(day: i64) -> u32 {
        (day + 3).rem_euclid(7) as u32
    }

    fn offset_ms(&self) -> i64 {
        i64::from(self.utc_offset_min) * MINUTE_MS
    }

    /// The UTC ms at which the window of local day `day` opens, if it opens that day.
    fn opening(&self, day: i64) -> Option<i64> {
        (self.days & (1 << Self::weekday(day)) != 0)
            .then(|| day * DAY_MS + i64::from(self.start_min) * MINUTE_MS - self.offset_ms())
    }

    fn len_ms(&self) -> i64 {
        i64::from(self.duration_min) * MINUTE_MS
    }

    /// Whether the window is open at `now` (Unix ms).
    pub fn contains(&self, now: UnixMillis) -> bool {
        let today = Self::day(now + self.offset_ms());
        // An opening up to a week (plus a day for the start time) back may still be open.
        (today - 8..=today)
            .filter_map(|d| self.opening(d))
            .any(|open| open <= now && now < open + self.len_ms())
    }

    /// The first moment at or after `now` that the window is open (`now` itself if open).
    pub fn next_open(&self, now: UnixMillis) -> UnixMillis {
        if self.contains(now) {
            return now;
        }
        let today = Self::day(now + self.offset_ms());
        (today..=today + 8)
            .filter_map(|d| self.opening(d))
            .find(|open| *open > now)
            // At least one day is set, so an opening comes within 8 days.
            .unwrap_or(now + 8 * DAY_MS)
    }
}

/// When a campaign may serve: not before `start_at`, and inside `window` if it has one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule<'a> {
    /// Not before this (Unix ms).
    pub start_at: Option<UnixMillis>,
    /// Only inside this window.
    pub window: Option<&'a Window>,
}

impl Schedule<'_> {
    /// Whether the campaign may serve at `now`.
    pub fn allows(&self, now: UnixMillis) -> bool {
        self.start_at.map_or(true, |t| now >= t) && self.window.map_or(true, |w| w.contains(now))
    }

    /// The first moment at or after `now` it may serve.
    pub fn next_open(&self, now: UnixMillis) -> UnixMillis {
        let from = self.start_at.map_or(now, |t| t.max(now));
        self.window.map_or(from, |w| w.next_open(from))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Unix ms of a UTC date and time (proleptic Gregorian; days from civil).
    fn at(y: i64, mo: i64, d: i64, h: i64, mi: i64) -> i64 {
        let (y, m) = if mo <= 2 {
            (y - 1, mo + 9)
        } else {
            (y, mo - 3)
        };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * m + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * DAY_MS + h * 3_600_000 + mi * MINUTE_MS
    }

    fn window(days: &[&str], start: &str, duration_min: u32, off: &str) -> Window {
        Window::try_from(WindowJson {
            days: days.iter().map(|d| (*d).to_owned()).collect(),
            start: start.into(),
            duration_min,
            utc_offset: off.into(),
        })
        .unwrap()
    }

    #[test]
    fn weekdays_are_right() {
        // 2026-12-05 is a Saturday, 2026-12-07 a Monday.
        assert_eq!(Window::weekday(Window::day(at(2026, 12, 5, 12, 0))), 5);
        assert_eq!(Window::weekday(Window::day(at(2026, 12, 7, 0, 0))), 0);
        assert_eq!(Window::weekday(Window::day(at(1970, 1, 1, 0, 0))), 3);
        assert_eq!(Window::weekday(Window::day(at(1969, 12, 29, 0, 0))), 0);
    }

    #[test]
    fn two_am_on_weekends() {
        let w = window(&["weekends"], "02:00", 240, "+00:00");
        // Friday night: closed; Saturday 01:59 closed, 02:00 open, 05:59 open, 06:00 closed.
        assert!(!w.contains(at(2026, 12, 4, 23, 0)));
        assert!(!w.contains(at(2026, 12, 5, 1, 59)));
        assert!(w.contains(at(2026, 12, 5, 2, 0)));
        assert!(w.contains(at(2026, 12, 5, 5, 59)));
        assert!(!w.contains(at(2026, 12, 5, 6, 0)));
        assert!(w.contains(at(2026, 12, 6, 3, 0)));
        // Monday 02:00: not a weekend.
        assert!(!w.contains(at(2026, 12, 7, 2, 30)));
        // Asked on Sunday at 07:00, it opens next Saturday 02:00.
        assert_eq!(w.next_open(at(2026, 12, 6, 7, 0)), at(2026, 12, 12, 2, 0));
        assert_eq!(w.next_open(at(2026, 12, 5, 3, 0)), at(2026, 12, 5, 3, 0));
    }

    #[test]
    fn a_window_crossing_midnight_and_the_week_end() {
        // Sunday 23:00 for 3 h: open Sunday 23:xx and Monday 00:00-01:59 (the next week).
        let w = window(&["sun"], "23:00", 180, "+00:00");
        assert!(!w.contains(at(2026, 12, 6, 22, 59)));
        assert!(w.contains(at(2026, 12, 6, 23, 0)));
        assert!(w.contains(at(2026, 12, 7, 0, 0)));
        assert!(w.contains(at(2026, 12, 7, 1, 59)));
        assert!(!w.contains(at(2026, 12, 7, 2, 0)));
        // Across a year end too: Sunday 2028-12-31 23:30 → Monday 2029-01-01 01:00.
        assert!(w.contains(at(2029, 1, 1, 1, 0)));
        assert_eq!(w.next_open(at(2026, 12, 7, 2, 0)), at(2026, 12, 13, 23, 0));
        // "02:00 on weekends" with 23 h: Saturday's runs into Sunday's; Sunday's into Monday.
        let long = window(&["sat", "sun"], "02:00", 23 * 60, "+00:00");
        assert!(long.contains(at(2026, 12, 6, 0, 30)));
        assert!(long.contains(at(2026, 12, 7, 0, 59)));
        assert!(!long.contains(at(2026, 12, 7, 1, 0)));
        assert!(!long.contains(at(2026, 12, 5, 1, 0)));
    }

    #[test]
    fn a_fixed_offset_moves_the_window() {
        // 02:00 at UTC+01:00 is 01:00 UTC; Saturday 00:30 local is Friday 23:30 UTC.
        let w = window(&["sat"], "02:00", 60, "+01:00");
        assert!(w.contains(at(2026, 12, 5, 1, 0)));
        assert!(!w.contains(at(2026, 12, 5, 2, 0)));
        // UTC-05:00: Saturday 02:00 local is Saturday 07:00 UTC.
        let w = window(&["sat"], "02:00", 60, "-05:00");
        assert!(w.contains(at(2026, 12, 5, 7, 30)));
        assert!(!w.contains(at(2026, 12, 5, 2, 30)));
        // Saturday 23:00 at UTC+02:00 runs to Sunday 01:00 local = Saturday 23:00 UTC.
        let w = window(&["sat"], "23:00", 120, "+02:00");
        assert!(w.contains(at(2026, 12, 5, 21, 0)));
        assert!(w.contains(at(2026, 12, 5, 22, 59)));
        assert!(!w.contains(at(2026, 12, 5, 23, 0)));
    }

    #[test]
    fn start_at_and_window_together() {
        let w = window(&["weekends"], "02:00", 60, "+00:00");
        let s = Schedule {
            start_at: Some(at(2026, 12, 5, 2, 30)),
            window: Some(&w),
        };
        assert!(!s.allows(at(2026, 12, 5, 2, 10)), "before start_at");
        assert!(s.allows(at(2026, 12, 5, 2, 40)));
        assert!(!s.allows(at(2026, 12, 5, 4, 0)), "window closed");
        assert_eq!(s.next_open(at(2026, 12, 5, 1, 0)), at(2026, 12, 5, 2, 30));
        assert_eq!(s.next_open(at(2026, 12, 5, 4, 0)), at(2026, 12, 6, 2, 0));
        let none = Schedule::default();
        assert!(none.allows(0));
    }

    #[test]
    fn windows_round_trip_and_bad_ones_are_refused() {
        let j = r#"{"days":["weekends"],"start":"02:00","duration_min":240}"#;
        let w: Window = serde_json::from_str(j).unwrap();
        assert_eq!(
            serde_json::to_string(&w).unwrap(),
            r#"{"days":["sat","sun"],"start":"02:00","duration_min":240,"utc_offset":"+00:00"}"#
        );
        for bad in [
            r#"{"days":[],"start":"02:00","duration_min":60}"#,
            r#"{"days":["someday"],"start":"02:00","duration_min":60}"#,
            r#"{"days":["mon"],"start":"24:00","duration_min":60}"#,
            r#"{"days":["mon"],"start":"2:00","duration_min":60}"#,
            r#"{"days":["mon"],"start":"02:00","duration_min":0}"#,
            r#"{"days":["mon"],"start":"02:00","duration_min":10081}"#,
            r#"{"days":["mon"],"start":"02:00","duration_min":60,"utc_offset":"01:00"}"#,
            r#"{"days":["mon"],"start":"02:00","duration_min":60,"utc_offset":"+19:00"}"#,
            r#"{"days":["mon"],"start":"02:00","duration_min":60,"colour":"red"}"#,
        ] {
            assert!(serde_json::from_str::<Window>(bad).is_err(), "{bad}");
        }
    }
}
