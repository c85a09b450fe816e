//! Test harnesses: a tiny in-process network with virtual time (after the mesh crate's
//! `tests/common`), extended with binary frames, frame dropping, byte counters and node
//! reboots; and a reader for the painlessMesh transcripts.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::type_complexity
)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use meshfleet_mesh::{Config, Duration, Event, Instant, LinkId, LinkRole, Node, NodeId};
use meshfleet_ota::OtaEvent;

/// A frame on a wire.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub from: usize,
    pub to: usize,
    /// Bytes on the wire (NUL or binary header included).
    pub len: usize,
    /// The JSON value, for JSON frames.
    pub json: Option<serde_json::Value>,
    /// The binary payload's type tag, for binary frames.
    pub tag: Option<u16>,
}

impl Seen {
    pub fn ty(&self) -> Option<i64> {
        match (&self.json, self.tag) {
            (Some(j), _) => j.get("type").and_then(serde_json::Value::as_i64),
            (None, Some(t)) => Some(i64::from(t)),
            _ => None,
        }
    }
}

struct Wire {
    a: (usize, LinkId),
    b: (usize, LinkId),
    up: bool,
}

pub struct Net {
    pub now: Instant,
    pub nodes: Vec<Node>,
    pub events: Vec<Vec<Event>>,
    wires: Vec<Wire>,
    queue: BTreeMap<(Instant, u64), (usize, LinkId, Vec<u8>)>,
    seq: u64,
    next_link: u64,
    pub delay: Duration,
    pub trace: Vec<Seen>,
    /// Frames for which this returns true are dropped (after being traced as sent).
    pub drop_if: Option<Box<dyn FnMut(&Seen) -> bool>>,
    pub dropped: usize,
}

impl Net {
    pub fn new(delay: Duration) -> Self {
        Self {
            now: Instant::ZERO,
            nodes: vec![],
            events: vec![],
            wires: vec![],
            queue: BTreeMap::new(),
            seq: 0,
            next_link: 1,
            delay,
            trace: vec![],
            drop_if: None,
            dropped: 0,
        }
    }

    pub fn add(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.events.push(vec![]);
        self.nodes.len() - 1
    }

    pub fn add_id(&mut self, id: u32) -> usize {
        self.add(Node::new(Config::new(NodeId(id))))
    }

    /// `station` connects to `ap`. Returns the wire index.
    pub fn connect(&mut self, station: usize, ap: usize) -> usize {
        let (ls, la) = (LinkId(self.next_link), LinkId(self.next_link + 1));
        self.next_link += 2;
        self.wires.push(Wire {
            a: (station, ls),
            b: (ap, la),
            up: true,
        });
        let now = self.now;
        self.nodes[ap].handle_link_up(now, la, LinkRole::AccessPoint);
        self.nodes[station].handle_link_up(now, ls, LinkRole::Station);
        self.drain(ap);
        self.drain(station);
        self.wires.len() - 1
    }

    /// Cuts a wire as a TCP reset would: both ends learn at once; frames in flight are lost.
    pub fn cut(&mut self, wire: usize) {
        if !self.wires[wire].up {
            return;
        }
        self.wires[wire].up = false;
        let (a, b) = (self.wires[wire].a, self.wires[wire].b);
        self.queue
            .retain(|_, (n, l, _)| !((*n, *l) == a || (*n, *l) == b));
        let now = self.now;
        self.nodes[a.0].handle_link_down(now, a.1);
        self.nodes[b.0].handle_link_down(now, b.1);
        self.drain(a.0);
        self.drain(b.0);
    }

    /// Wires touching `node` that are up.
    pub fn wires_of(&self, node: usize) -> Vec<usize> {
        (0..self.wires.len())
            .filter(|&w| {
                self.wires[w].up && (self.wires[w].a.0 == node || self.wires[w].b.0 == node)
            })
            .collect()
    }

    /// Replaces node `i` (a reboot): its wires are cut first, the new node is put in place.
    pub fn replace(&mut self, i: usize, node: Node) {
        for w in self.wires_of(i) {
            self.cut(w);
        }
        self.nodes[i] = node;
    }

    /// Injects raw bytes as if `wire`'s other end had sent them to `node`.
    pub fn inject(&mut self, wire: usize, node: usize, bytes: &[u8]) {
        let w = &self.wires[wire];
        let link = if w.a.0 == node { w.a.1 } else { w.b.1 };
        let now = self.now;
        self.nodes[node].handle_bytes(now, link, bytes);
        self.drain(node);
    }

    fn peer_of(&self, node: usize, link: LinkId) -> Option<(usize, usize, LinkId)> {
        self.wires.iter().enumerate().find_map(|(i, w)| {
            if !w.up {
                None
            } else if w.a == (node, link) {
                Some((i, w.b.0, w.b.1))
            } else if w.b == (node, link) {
                Some((i, w.a.0, w.a.1))
            } else {
                None
            }
        })
    }

    pub fn drain(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].poll_transmit() {
            let Some((_wire, peer, plink)) = self.peer_of(i, t.link) else {
                continue;
            };
            let (json, tag) = if t.frame.first() == Some(&0x01) {
                let tag = t.frame.get(5..7).map(|b| u16::from_le_bytes([b[0], b[1]]));
                (None, tag)
            } else {
                let body = &t.frame[..t.frame.len() - 1];
                (Some(serde_json::from_slice(body).unwrap()), None)
            };
            let seen = Seen {
                at: self.now,
                from: i,
                to: peer,
                len: t.frame.len(),
                json,
                tag,
            };
            let drop = self.drop_if.as_mut().is_some_and(|f| f(&seen));
            self.trace.push(seen);
            if drop {
                self.dropped += 1;
                continue;
            }
            self.seq += 1;
            self.queue
                .insert((self.now + self.delay, self.seq), (peer, plink, t.frame));
        }
        while let Some(e) = self.nodes[i].poll_event() {
            if let Event::LinkClosed { link, .. } = &e {
                if let Some((wire, peer, plink)) = self.peer_of(i, *link) {
                    self.wires[wire].up = false;
                    let now = self.now;
                    self.nodes[peer].handle_link_down(now, plink);
                    self.events[i].push(e);
                    self.drain(peer);
                    continue;
                }
            }
            self.events[i].push(e);
        }
    }

    /// Runs until `until`, delivering frames and firing timers in time order.
    pub fn run_until(&mut self, until: Instant) {
        loop {
            let next_frame = self.queue.keys().next().map(|k| k.0);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.poll_timeout().map(|t| (t, i)))
                .min();
            let frame_first = match (next_frame, next_timer) {
                (Some(f), Some((t, _))) => f <= t,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let at = if frame_first {
                next_frame.unwrap()
            } else {
                next_timer.unwrap().0
            };
            if at > until {
                break;
            }
            self.now = self.now.max(at);
            if frame_first {
                let key = *self.queue.keys().next().unwrap();
                let (i, link, frame) = self.queue.remove(&key).unwrap();
                let now = self.now;
                self.nodes[i].handle_bytes(now, link, &frame);
                self.drain(i);
            } else {
                let i = next_timer.unwrap().1;
                let now = self.now;
                self.nodes[i].handle_timeout(now);
                self.drain(i);
            }
        }
        self.now = self.now.max(until);
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Runs in steps of `step` until `done` holds or `limit` passes. Returns whether done.
    pub fn run_until_cond(
        &mut self,
        step: Duration,
        limit: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.run_for(step);
        }
        done(self)
    }

    /// The OTA events node `i` reported.
    pub fn ota_events(&self, i: usize) -> Vec<OtaEvent> {
        self.events[i]
            .iter()
            .filter_map(|e| match e {
                Event::Plugin { event, .. } => event.as_any().downcast_ref::<OtaEvent>().cloned(),
                _ => None,
            })
            .collect()
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
