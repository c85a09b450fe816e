//! A test harness shared by the crates' tests: real [`Node`]s joined by in-process
//! links with a fixed one-way delay, frames delivered in order, virtual time. No sockets,
//! no clock. Frames can be traced, dropped, injected; wires cut or muted; nodes replaced
//! (a reboot). Dev-dependency only.
#![allow(clippy::unwrap_used, clippy::type_complexity, missing_docs)]

use std::collections::BTreeMap;

use meshfleet_mesh::{
    CloseReason, Config, Delivery, Duration, Event, Instant, LinkId, LinkRole, Node, NodeId,
};

/// A frame's JSON. Node syncs of deep meshes nest deeper than serde_json's default
/// recursion limit (128; the library allows 255): our own nodes' frames are bounded, and
/// this runs on test threads with 2 MiB stacks.
fn frame_json(body: &[u8]) -> serde_json::Value {
    let mut de = serde_json::Deserializer::from_slice(body);
    de.disable_recursion_limit();
    serde::Deserialize::deserialize(&mut de).unwrap()
}

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
    /// When set, frames towards this end are swallowed (a hung peer, socket still open).
    mute_to: Option<usize>,
}

/// Timer firings of one node at one instant after which [`Net::run_until`] gives up.
pub const MAX_FIRINGS_AT_ONE_INSTANT: u32 = 100_000;

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

    /// A plain node with an initial time offset (mesh time = local time + offset).
    pub fn add_with_offset(&mut self, id: u32, offset: u32) -> usize {
        let mut c = Config::new(NodeId(id));
        c.initial_time_offset = offset;
        self.add(Node::new(c))
    }

    /// Stops delivering anything to `node` on `wire` (the peer hangs, socket open).
    pub fn mute(&mut self, wire: usize, node: usize) {
        self.wires[wire].mute_to = Some(node);
    }

    /// `station` connects to `ap`. Returns the wire index.
    pub fn connect(&mut self, station: usize, ap: usize) -> usize {
        let (ls, la) = (LinkId(self.next_link), LinkId(self.next_link + 1));
        self.next_link += 2;
        self.wires.push(Wire {
            a: (station, ls),
            b: (ap, la),
            up: true,
            mute_to: None,
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
            let Some((wire, peer, plink)) = self.peer_of(i, t.link) else {
                continue;
            };
            if self.wires[wire].mute_to == Some(peer) {
                continue;
            }
            let (json, tag) = if t.frame.first() == Some(&0x01) {
                let tag = t.frame.get(5..7).map(|b| u16::from_le_bytes([b[0], b[1]]));
                (None, tag)
            } else {
                let body = &t.frame[..t.frame.len() - 1];
                (Some(frame_json(body)), None)
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
    ///
    /// Panics when one node's timer fires [`MAX_FIRINGS_AT_ONE_INSTANT`] times in a row
    /// without time moving: a timer its handler does not re-arm would otherwise spin here
    /// for ever (a test then fails instead of hanging).
    pub fn run_until(&mut self, until: Instant) {
        let mut same_instant = (Instant::ZERO, usize::MAX, 0u32);
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
                if same_instant.0 == now && same_instant.1 == i {
                    same_instant.2 += 1;
                    assert!(
                        same_instant.2 < MAX_FIRINGS_AT_ONE_INSTANT,
                        "node {i}'s timer fired {} times at {now:?} without time moving: \
                         a wakeup its handler does not re-arm",
                        same_instant.2
                    );
                } else {
                    same_instant = (now, i, 1);
                }
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

    /// The events of type `T` that node `i`'s plugins reported.
    pub fn plugin_events<T: meshfleet_mesh::PluginEvent + Clone>(&self, i: usize) -> Vec<T> {
        self.events[i]
            .iter()
            .filter_map(|e| match e {
                Event::Plugin { event, .. } => event.downcast_ref::<T>().cloned(),
                _ => None,
            })
            .collect()
    }

    /// Application messages node `i` received.
    pub fn received(&self, i: usize) -> Vec<(NodeId, String, Delivery)> {
        self.events[i]
            .iter()
            .filter_map(|e| match e {
                Event::Received {
                    from,
                    msg,
                    delivery,
                } => Some((*from, msg.clone(), *delivery)),
                _ => None,
            })
            .collect()
    }

    /// Why node `i`'s links closed, in order.
    pub fn closed(&self, i: usize) -> Vec<CloseReason> {
        self.events[i]
            .iter()
            .filter_map(|e| match e {
                Event::LinkClosed { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }
}
