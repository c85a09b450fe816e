//! Least-squares trend of a sampled series (the heap): used by the gateway's leak detector
//! over reported values and by the node's own producer over its local samples.

use alloc::collections::VecDeque;

use meshfleet_mesh::{Duration, Instant};

/// Seconds in `d`, as a float.
pub(crate) fn secs(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e6
}

/// Slope (units per hour), r² and covered span (s) of the samples of the last `window`
/// before `now`; `None` with fewer than five samples or no spread in time.
pub(crate) fn trend(
    samples: &VecDeque<(Instant, i64)>,
    now: Instant,
    window: Duration,
) -> Option<(f64, f64, f64)> {
    let recent = || {
        samples
            .iter()
            .filter(|(t, _)| now.saturating_since(*t) <= window)
    };
    let count = recent().count();
    if count < 5 {
        return None;
    }
    let t0 = recent().next()?.0;
    let last = recent().next_back()?.0;
    let n = count as f64;
    let (mut sx, mut sy, mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (t, y) in recent() {
        let x = secs(t.saturating_since(t0)) / 3600.0;
        let y = *y as f64;
        sx += x;
        sy += y;
        sxx += x * x;
        sxy += x * y;
        syy += y * y;
    }
    let vx = sxx - sx * sx / n;
    let vy = syy - sy * sy / n;
    if vx <= 0.0 {
        return None;
    }
    let cov = sxy - sx * sy / n;
    let slope = cov / vx;
    let r2 = if vy <= 0.0 {
        0.0
    } else {
        cov * cov / (vx * vy)
    };
    let span = secs(last.saturating_since(t0));
    Some((slope, r2, span))
}

/// Appends `(now, v)` if the last sample is at least `spacing` old, keeping at most `cap`.
pub(crate) fn push_spaced(
    samples: &mut VecDeque<(Instant, i64)>,
    now: Instant,
    v: i64,
    spacing: Duration,
    cap: usize,
) {
    let due = samples
        .back()
        .map_or(true, |(t, _)| now.saturating_since(*t) >= spacing);
    if due {
        samples.push_back((now, v));
        while samples.len() > cap.max(2) {
            samples.pop_front();
        }
    }
}
