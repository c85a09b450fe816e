//! One link: its parameters, run-time changes, and what a frame costs on it.

use meshfleet_mesh::{Duration, Rng};

/// Parameters of one link (both directions), defaults calibrated to painlessMesh on ESP8266
/// (Yoppy et al., J. Phys.: Conf. Ser. 1230 (2019) 012023): 2.49 ms one-way delay on one hop,
/// 461 messages/s with 10-byte payloads and 28 messages/s (123 KB/s) with 4400-byte ones.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkParams {
    /// Bytes per second once a frame is on the air (TCP goodput, headers excluded).
    pub goodput_bytes_per_s: f64,
    /// Fixed cost of every frame on the sender's transmitter: the library handles one frame
    /// per scheduler pass and JSON work dominates small messages (the 461 messages/s limit).
    pub frame_overhead: Duration,
    /// Propagation and receive processing after the last byte is sent.
    pub latency: Duration,
    /// Probability that one TCP segment is lost on the air (0..=1).
    pub loss: f64,
    /// TCP maximum segment size: a frame is sent as `ceil(len / mss)` segments.
    pub mss: usize,
    /// Retransmission timeout after the first loss of a segment (RFC 6298's 200 ms floor
    /// as lwIP uses it); it doubles with each consecutive loss of the same segment.
    pub min_rto: Duration,
    /// Upper bound of the retransmission timeout (RFC 6298: at least 60 s).
    pub max_rto: Duration,
    /// Consecutive losses of one segment after which TCP gives up and resets the
    /// connection (lwIP `TCP_MAXRTX` = 12).
    pub max_retransmits: u32,
    /// Bytes queued per link direction (frames waiting, not the one on the air) beyond
    /// which new normal and bulk frames are dropped ("queue_full"). Control frames
    /// (NODE_SYNC_REPLY, TIME_SYNC) are always queued.
    pub queue_cap_bytes: usize,
}

impl Default for LinkParams {
    fn default() -> Self {
        Self {
            goodput_bytes_per_s: 131_000.0,
            frame_overhead: Duration::from_micros(1_665),
            latency: Duration::from_micros(320),
            loss: 0.0,
            mss: 1460,
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(60),
            max_retransmits: 12,
            queue_cap_bytes: 256 * 1024,
        }
    }
}

/// A change of link parameters at run time (fields left `None` keep their value).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct LinkChange {
    /// New segment loss probability.
    pub loss: Option<f64>,
    /// New goodput in bytes per second.
    pub goodput_bytes_per_s: Option<f64>,
    /// New propagation latency.
    pub latency: Option<Duration>,
}

impl LinkChange {
    /// A change of the loss probability only.
    pub fn loss(loss: f64) -> Self {
        Self {
            loss: Some(loss),
            ..Self::default()
        }
    }

    /// A change of the goodput only.
    pub fn goodput(bytes_per_s: f64) -> Self {
        Self {
            goodput_bytes_per_s: Some(bytes_per_s),
            ..Self::default()
        }
    }

    /// A change of the latency only.
    pub fn latency(latency: Duration) -> Self {
        Self {
            latency: Some(latency),
            ..Self::default()
        }
    }

    /// Applies the change to `p`.
    pub fn apply(&self, p: &mut LinkParams) {
        if let Some(l) = self.loss {
            p.loss = l;
        }
        if let Some(g) = self.goodput_bytes_per_s {
            p.goodput_bytes_per_s = g;
        }
        if let Some(l) = self.latency {
            p.latency = l;
        }
    }
}

/// What sending one frame costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TxCost {
    /// Time the transmitter is busy (overhead, first transmission, retransmissions).
    pub airtime: Duration,
    /// Time the connection waits in retransmission timeouts (the transmitter is free).
    pub stall: Duration,
    /// Segments retransmitted.
    pub retransmissions: u32,
    /// TCP gave up: the connection resets after `airtime + stall`.
    pub reset: bool,
}

fn micros_for(bytes: usize, goodput: f64) -> u64 {
    // Round up so that a non-empty frame always takes time.
    (bytes as f64 * 1e6 / goodput).ceil() as u64
}

/// The cost of one frame of `len` bytes (NUL included), drawing segment losses from `rng`.
/// With `loss == 0` no random numbers are drawn, so lossless runs do not depend on frame
/// sizes through the RNG stream.
pub fn tx_cost(len: usize, p: &LinkParams, rng: &mut Rng) -> TxCost {
    let mut airtime = p.frame_overhead.as_micros() + micros_for(len, p.goodput_bytes_per_s);
    let mut stall = 0u64;
    let mut retransmissions = 0;
    if p.loss > 0.0 {
        let mss = p.mss.max(1);
        let mut left = len;
        while left > 0 {
            let seg = left.min(mss);
            left -= seg;
            let mut rto = p.min_rto.as_micros();
            let mut tries = 0;
            while rng.unit() < p.loss {
                tries += 1;
                if tries > p.max_retransmits {
                    return TxCost {
                        airtime: Duration::from_micros(airtime),
                        stall: Duration::from_micros(stall),
                        retransmissions,
                        reset: true,
                    };
                }
                stall += rto;
                rto = (rto * 2).min(p.max_rto.as_micros());
                airtime += micros_for(seg, p.goodput_bytes_per_s);
                retransmissions += 1;
            }
        }
    }
    TxCost {
        airtime: Duration::from_micros(airtime),
        stall: Duration::from_micros(stall),
        retransmissions,
        reset: false,
    }
}

/// Expected cost of one frame of `bytes` bytes under the simulator's TCP model
/// ([`tx_cost`]): `(link, radio)` seconds, where `radio` is the transmitter's busy
/// time (overhead, first transmission and retransmitted segments) and `link` adds the
/// retransmission timeouts, during which the connection stalls but the radio is free.
pub fn expected_frame_cost(bytes: u64, p: &LinkParams) -> (f64, f64) {
    let g = p.goodput_bytes_per_s;
    let mut radio = secs(p.frame_overhead) + bytes as f64 / g;
    let mut stall = 0.0;
    if p.loss > 0.0 {
        let mss = p.mss.max(1) as u64;
        let mut left = bytes;
        while left > 0 {
            let seg = left.min(mss);
            left -= seg;
            // The k-th consecutive loss of a segment (k <= max_retransmits) costs its
            // airtime again and the k-th timeout; it happens with probability p^k.
            let mut pk = 1.0;
            let mut rto = secs(p.min_rto);
            for _ in 0..p.max_retransmits {
                pk *= p.loss;
                radio += pk * seg as f64 / g;
                stall += pk * rto;
                rto = (rto * 2.0).min(secs(p.max_rto));
            }
        }
    }
    (radio + stall, radio)
}

/// Seed of the stochastic bounds' Monte Carlo: fixed, so that a bound depends only on the
fn secs(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_reproduce_the_published_message_rates() {
        let p = LinkParams::default();
        let mut rng = Rng::new(1);
        // A SINGLE with 10-digit ids is 56 bytes plus the payload (NUL included).
        let small = tx_cost(66, &p, &mut rng).airtime.as_micros() as f64;
        let large = tx_cost(4456, &p, &mut rng).airtime.as_micros() as f64;
        assert!((1e6 / small - 461.0).abs() < 5.0, "{}", 1e6 / small);
        assert!((1e6 / large - 28.0).abs() < 0.5, "{}", 1e6 / large);
        let one_hop = small + p.latency.as_micros() as f64;
        assert!((one_hop - 2490.0).abs() < 20.0, "{one_hop}");
    }

    #[test]
    fn losses_cost_rto_and_airtime_and_can_reset() {
        let mut p = LinkParams {
            loss: 0.5,
            ..LinkParams::default()
        };
        let mut rng = Rng::new(7);
        let clean = tx_cost(3000, &LinkParams::default(), &mut rng);
        let mut total_stall = 0;
        for _ in 0..200 {
            let c = tx_cost(3000, &p, &mut rng);
            assert!(c.airtime >= clean.airtime);
            total_stall += c.stall.as_micros();
            if c.retransmissions == 0 {
                assert_eq!(c.stall, Duration::ZERO);
            } else {
                assert!(c.stall >= p.min_rto);
            }
        }
        assert!(total_stall > 0);
        p.loss = 1.0;
        assert!(tx_cost(10, &p, &mut rng).reset);
    }

    #[test]
    fn loss_costs_retransmissions_and_timeouts() {
        let p = LinkParams {
            loss: 0.05,
            ..LinkParams::default()
        };
        let (link, radio) = expected_frame_cost(1000, &p);
        let clean = 1.665e-3 + 1000.0 / 131_000.0;
        assert!(radio > clean && radio < clean * 1.06);
        // ≈ 0.05 * 200 ms + 0.0025 * 400 ms + …
        assert!((link - radio - 0.01111).abs() < 1e-4, "{}", link - radio);
    }
}
