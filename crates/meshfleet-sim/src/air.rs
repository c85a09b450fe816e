//! Bytes on the air by traffic class: what the mesh spends its airtime on.
//!
//! A frame's class comes from its package type ([`crate::ota::frame_type`]): node sync (5,
//! 6: the mesh's own topology exchange, whole trees on every layout change), time sync (3,
//! 4), OTA (stock 10-12, meshfleet 700-709 and its binary chunks) and everything else as
//! application (BROADCAST/SINGLE payloads, status 604, telemetry 710/711, …). `run_scenario`
//! installs the log as a frame trace and puts one entry per time-series sample into
//! [`crate::SimReport::air_by_class`].

use std::cell::RefCell;
use std::rc::Rc;

use meshfleet_mesh::Duration;
use meshfleet_wire::types;
use serde::Serialize;

use crate::ota::frame_type;
use crate::sim::{FrameTrace, Simulation};

/// What a frame on the air is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrafficClass {
    /// Node sync (NODE_SYNC_REQUEST / NODE_SYNC_REPLY).
    NodeSync,
    /// Time sync (TIME_SYNC, TIME_DELAY).
    TimeSync,
    /// Firmware distribution (stock and meshfleet OTA packages).
    Ota,
    /// Everything else: the application's messages and other plugins.
    Application,
}

impl TrafficClass {
    /// Every class, in plot order.
    pub const ALL: [Self; 4] = [Self::NodeSync, Self::TimeSync, Self::Ota, Self::Application];

    /// A short name for tables and legends.
    pub fn label(self) -> &'static str {
        match self {
            Self::NodeSync => "node sync",
            Self::TimeSync => "time sync",
            Self::Ota => "OTA",
            Self::Application => "application",
        }
    }

    /// The class of a frame as it goes on the air (NUL included, or a binary frame).
    pub fn of_frame(frame: &[u8]) -> Self {
        // Node syncs put `"type"` after their (long) `subs`: look at the tail too.
        match frame_type(frame).or_else(|| tail_type(frame)) {
            Some(types::NODE_SYNC_REQUEST | types::NODE_SYNC_REPLY) => Self::NodeSync,
            Some(types::TIME_SYNC | types::TIME_DELAY) => Self::TimeSync,
            Some(10..=12 | 700..=709) => Self::Ota,
            _ => Self::Application,
        }
    }
}

/// The last `"type":` of a JSON frame, in its final 64 bytes (node syncs end
/// with `"type":5,"dest":D,"from":F}`).
fn tail_type(frame: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"type\":";
    let tail = &frame[frame.len().saturating_sub(64)..];
    let at = tail.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let digits = tail[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'-')
        .count();
    std::str::from_utf8(&tail[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// Bytes put on the air, by class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ClassBytes {
    /// Node-sync bytes.
    pub node_sync: u64,
    /// Time-sync bytes.
    pub time_sync: u64,
    /// OTA bytes.
    pub ota: u64,
    /// Application (and other plugins') bytes.
    pub application: u64,
}

impl ClassBytes {
    /// The bytes of one class.
    pub fn of(&self, class: TrafficClass) -> u64 {
        match class {
            TrafficClass::NodeSync => self.node_sync,
            TrafficClass::TimeSync => self.time_sync,
            TrafficClass::Ota => self.ota,
            TrafficClass::Application => self.application,
        }
    }

    fn add(&mut self, class: TrafficClass, bytes: u64) {
        match class {
            TrafficClass::NodeSync => self.node_sync += bytes,
            TrafficClass::TimeSync => self.time_sync += bytes,
            TrafficClass::Ota => self.ota += bytes,
            TrafficClass::Application => self.application += bytes,
        }
    }

    /// All classes together.
    pub fn total(&self) -> u64 {
        self.node_sync + self.time_sync + self.ota + self.application
    }
}

/// Bytes by class per sample interval, by the start time of each transmission.
pub(crate) struct AirLog {
    interval_us: u64,
    bins: Vec<ClassBytes>,
}

impl AirLog {
    /// Installs a log on `sim` binned like its time series (`interval`).
    pub(crate) fn install(sim: &mut Simulation, interval: Duration) -> Rc<RefCell<Self>> {
        let log = Rc::new(RefCell::new(Self {
            interval_us: interval.as_micros().max(1),
            bins: Vec::new(),
        }));
        let l = log.clone();
        sim.set_frame_trace(move |f: &FrameTrace<'_>| {
            let mut l = l.borrow_mut();
            // Bin k holds transmissions started in [k·I, (k+1)·I): the sample at (k+1)·I.
            let k = (f.start.as_micros() / l.interval_us) as usize;
            if l.bins.len() <= k {
                l.bins.resize(k + 1, ClassBytes::default());
            }
            l.bins[k].add(TrafficClass::of_frame(f.frame), f.bytes as u64);
        });
        log
    }

    /// One entry per sample (`samples` of them; transmissions after the last sample are
    /// left out, as the time series leaves them out).
    pub(crate) fn per_sample(&self, samples: usize) -> Vec<ClassBytes> {
        (0..samples)
            .map(|k| self.bins.get(k).copied().unwrap_or_default())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_classed_by_package_type() {
        let c = |s: &str| TrafficClass::of_frame(s.as_bytes());
        assert_eq!(
            c("{\"dest\":1,\"from\":2,\"type\":5,\"subs\":[]}\0"),
            TrafficClass::NodeSync
        );
        assert_eq!(c("{\"type\":6,\"dest\":1}\0"), TrafficClass::NodeSync);
        // The library's key order: a long `subs` first, then type, dest and from.
        let long = format!(
            "{{\"nodeId\":3000000002,\"subs\":[{}],\"type\":6,\"dest\":3000000001,\"from\":3000000002}}\0",
            "{\"nodeId\":3,\"subs\":[]},".repeat(20)
        );
        assert_eq!(c(&long), TrafficClass::NodeSync);
        assert_eq!(c("{\"type\":4,\"dest\":1}\0"), TrafficClass::TimeSync);
        assert_eq!(c("{\"type\":8,\"msg\":\"x\"}\0"), TrafficClass::Application);
        assert_eq!(c("{\"type\":711}\0"), TrafficClass::Application);
        assert_eq!(c("{\"type\":11,\"md5\":\"x\"}\0"), TrafficClass::Ota);
        let chunk =
            meshfleet_wire::binary_frame(&meshfleet_ota::proto::encode_binary_chunk(1, 2, b"abc"));
        assert_eq!(TrafficClass::of_frame(&chunk), TrafficClass::Ota);
        assert_eq!(c("garbage"), TrafficClass::Application);
    }
}
