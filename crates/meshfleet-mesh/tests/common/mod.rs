//! A tiny in-process network with virtual time: nodes joined by links with a fixed
//! one-way delay, frames delivered in order. No sockets, no clock.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeMap;

use meshfleet_mesh::{Config, Duration, Event, Instant, LinkId, LinkRole, Node, NodeId};

/// A frame seen on a link.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub from: NodeId,
    pub to: NodeId,
    pub json: serde_json::Value,
}

struct Wire {
    a: (usize, LinkId),
    b: (usize, LinkId),
    up: bool,
    /// When set, frames towards this end are swallowed (a hung peer).
    mute_to: Option<usize>,
}

pub struct Net {
    pub now: Instant,
    pub nodes: Vec<Node>,
    pub events: Vec<Vec<Event>>,
    wires: Vec<Wire>,
    /// (deliver_at, seq) -> (node index, link, frame without NUL)
    queue: BTreeMap<(Instant, u64), (usize, LinkId, Vec<u8>)>,
    seq: u64,
    next_link: u64,
    pub delay: Duration,
    pub trace: Vec<Seen>,
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
        }
    }

    pub fn add(&mut self, config: Config) -> usize {
        self.nodes.push(Node::new(config));
        self.events.push(vec![]);
        self.nodes.len() - 1
    }

    pub fn add_id(&mut self, id: u32, offset: u32) -> usize {
        let mut c = Config::new(NodeId(id));
        c.initial_time_offset = offset;
        self.add(c)
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

    /// Cuts a wire as a TCP reset would: both ends learn at once.
    pub fn cut(&mut self, wire: usize) {
        let w = &mut self.wires[wire];
        if !w.up {
            return;
        }
        w.up = false;
        let (a, b) = (w.a, w.b);
        let now = self.now;
        self.nodes[a.0].handle_link_down(now, a.1);
        self.nodes[b.0].handle_link_down(now, b.1);
        self.drain(a.0);
        self.drain(b.0);
    }

    /// Stops delivering anything to `node` on `wire` (the peer hangs, socket open).
    pub fn mute(&mut self, wire: usize, node: usize) {
        self.wires[wire].mute_to = Some(node);
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
            let frame = t.frame[..t.frame.len() - 1].to_vec();
            self.trace.push(Seen {
                at: self.now,
                from: self.nodes[i].id(),
                to: self.nodes[peer].id(),
                json: serde_json::from_slice(&frame).unwrap(),
            });
            self.seq += 1;
            self.queue
                .insert((self.now + self.delay, self.seq), (peer, plink, frame));
        }
        while let Some(e) = self.nodes[i].poll_event() {
            if let Event::LinkClosed { link, .. } = &e {
                // The node closed the socket: the peer sees the connection drop.
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
                self.nodes[i].handle_frame(now, link, &frame);
                self.drain(i);
            } else {
                let i = next_timer.unwrap().1;
                let now = self.now;
                self.nodes[i].handle_timeout(now);
                self.drain(i);
            }
        }
        self.now = until;
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    pub fn received(&self, i: usize) -> Vec<(NodeId, String, meshfleet_mesh::Delivery)> {
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

    pub fn closed(&self, i: usize) -> Vec<meshfleet_mesh::CloseReason> {
        self.events[i]
            .iter()
            .filter_map(|e| match e {
                Event::LinkClosed { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }
}
