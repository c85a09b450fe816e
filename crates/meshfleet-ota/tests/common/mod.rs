//! Test helpers: the shared virtual-time harness (`meshfleet-testkit`) with OTA event
//! access, and a reader for the painlessMesh transcripts.
#![allow(
    dead_code,
    unreachable_pub,
    unused_imports,
    clippy::unwrap_used,
    clippy::type_complexity
)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use meshfleet_mesh::Instant;
use meshfleet_ota::OtaEvent;
pub use meshfleet_testkit::{Net, Seen};

/// OTA events on the shared harness.
pub trait OtaEvents {
    /// The OTA events node `i` reported.
    fn ota_events(&self, i: usize) -> Vec<OtaEvent>;
}

impl OtaEvents for Net {
    fn ota_events(&self, i: usize) -> Vec<OtaEvent> {
        self.plugin_events(i)
    }
}

// ---------------------------------------------------------------- transcripts

/// One line of a transcript.
#[derive(Clone, Debug)]
pub enum Line {
    Frame {
        t: f64,
        link: String,
        dir: String,
        src: String,
        text: String,
    },
    Note {
        t: f64,
        text: String,
    },
}

pub fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

pub fn transcript(name: &str) -> Vec<Line> {
    let path = shared_dir().join("painlessmesh/transcripts").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut lines: Vec<Line> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let t = v["t"].as_f64().unwrap();
            match v["kind"].as_str() {
                Some("frame") => Some(Line::Frame {
                    t,
                    link: v["link"].as_str().unwrap().into(),
                    dir: v["dir"].as_str().unwrap().into(),
                    src: v["src"].as_str().unwrap().into(),
                    text: v["text"].as_str().unwrap().into(),
                }),
                Some("note") => Some(Line::Note {
                    t,
                    text: v["text"].as_str().unwrap().into(),
                }),
                _ => None,
            }
        })
        .collect();
    // Lines are written by several threads of the proxy; order by time.
    lines.sort_by(|a, b| line_t(a).total_cmp(&line_t(b)));
    lines
}

fn line_t(l: &Line) -> f64 {
    match l {
        Line::Frame { t, .. } | Line::Note { t, .. } => *t,
    }
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

pub fn ty(v: &serde_json::Value) -> i64 {
    v["type"].as_i64().unwrap_or(-1)
}

/// The firmware a transcript's sender served on `link` (`dir`): its Data parts, in order.
pub fn firmware_from(lines: &[Line], link: &str, dir: &str) -> Vec<u8> {
    use base64::Engine as _;
    let mut parts: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for l in lines {
        if let Line::Frame {
            link: fl,
            dir: fd,
            text,
            ..
        } = l
        {
            let v = json(text);
            if fl == link && fd == dir && ty(&v) == 12 {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(v["data"].as_str().unwrap())
                    .unwrap();
                parts.insert(v["partNo"].as_u64().unwrap(), data);
            }
        }
    }
    parts.into_values().flatten().collect()
}

/// Instant of a transcript time relative to `t0`.
pub fn at(t: f64, t0: f64) -> Instant {
    Instant::from_micros(((t - t0).max(0.0) * 1e6) as u64)
}

/// Q12: painlessMeshBoost's MD5 with each 32-bit word byte-reversed.
pub fn md5_word_swapped(md5: &str) -> String {
    md5.as_bytes()
        .chunks(8)
        .flat_map(|w| {
            let pairs: Vec<&[u8]> = w.chunks(2).collect();
            pairs
                .into_iter()
                .rev()
                .flatten()
                .copied()
                .collect::<Vec<u8>>()
        })
        .map(char::from)
        .collect()
}
