//! The channel side of the engine: send queues, transmitters (one per link direction or one
//! per radio, by channel model), airtime and carrier sense, delivery.

use super::*;

impl Simulation {
    // ----- channel ----------------------------------------------------------------------

    pub(super) fn enqueue(&mut self, v: usize, t: SharedTransmit) {
        let Some(l) = self
            .links
            .get_mut(t.link.0 as usize)
            .and_then(Option::as_mut)
        else {
            self.drop_frame("link_closed", 1);
            return;
        };
        let Some(d) = l.ends.iter().position(|e| *e == v) else {
            self.drop_frame("link_closed", 1);
            return;
        };
        let cap = l.params.queue_cap_bytes;
        let dir = &mut l.dirs[d];
        let len = t.frame.len();
        // A frame larger than the cap still gets through an empty queue, or it never could.
        let control = t.priority == Priority::Control;
        if !control && dir.queued_bytes > 0 && dir.queued_bytes + len > cap {
            self.drop_frame("queue_full", 1);
            return;
        }
        dir.queued_bytes += len;
        match t.priority {
            Priority::Control => dir.hi.push_back(t.frame),
            Priority::Normal => dir.lo.push_back(t.frame),
            Priority::Bulk => dir.bulk.push_back(t.frame),
        }
        let wake = dir.in_flight.is_none() && !dir.ready;
        let unit = dir.unit;
        if wake {
            dir.ready = true;
        }
        let backlog = dir.queued_bytes;
        let s = &mut self.slots[v];
        s.queued_bytes += len as u64;
        s.queued_frames += 1;
        s.queue_peak_bytes = s.queue_peak_bytes.max(s.queued_bytes);
        s.queue_peak_frames = s.queue_peak_frames.max(s.queued_frames);
        // Like a driver, tell the node what waits in its send queue (plugins pace on it).
        if let Some(n) = s.node.as_mut() {
            n.set_link_backlog(t.link, backlog);
        }
        if wake {
            self.radios[unit].ready.push_back((t.link, d as u8));
            self.try_start(unit);
        }
    }

    /// The transmitter a new link direction sent by `sender` uses under the current model.
    pub(super) fn unit_for(&mut self, sender: usize) -> usize {
        match self.channel {
            ChannelModel::Independent => {
                self.radios.push(Radio::new(sender));
                self.radios.len() - 1
            }
            _ => sender,
        }
    }

    /// Switches the channel model now (see [`Simulation::set_channel`]).
    pub(super) fn switch_channel(&mut self, channel: ChannelModel) {
        // Transmissions on the air finish their airtime, but from now on only the new
        // model's transmissions occupy the medium: unmark what the old ones marked.
        for unit in 0..self.radios.len() {
            if std::mem::take(&mut self.radios[unit].carrier) {
                let node = self.radios[unit].node;
                self.carrier_busy[node] -= 1;
                for &j in &self.interferers[node] {
                    self.carrier_busy[j] -= 1;
                }
            }
        }
        debug_assert!(self.carrier_busy.iter().all(|c| *c == 0));
        for r in &mut self.radios {
            r.ready.clear();
            r.waiting = None;
        }
        self.interferers =
            interferers(&channel, self.layout.positions.as_deref(), self.slots.len());
        self.channel = channel;
        // Every link direction moves to its transmitter under the new model; those with
        // frames waiting queue there, in link order (the old rings' order is not kept).
        let mut wake = Vec::new();
        for i in 0..self.links.len() {
            for d in 0..2 {
                let Some(sender) = self.links[i].as_ref().map(|l| l.ends[d]) else {
                    continue;
                };
                let unit = self.unit_for(sender);
                let Some(l) = self.links[i].as_mut() else {
                    continue;
                };
                let id = l.id;
                let dir = &mut l.dirs[d];
                dir.unit = unit;
                if dir.ready {
                    self.radios[unit].ready.push_back((id, d as u8));
                    wake.push(unit);
                }
            }
        }
        wake.sort_unstable();
        wake.dedup();
        for unit in wake {
            self.try_start(unit);
        }
    }

    pub(super) fn try_start(&mut self, unit: usize) {
        if self.radios[unit].busy {
            return;
        }
        let node = self.radios[unit].node;
        let geometric = matches!(self.channel, ChannelModel::Geometric { .. });
        if geometric && self.carrier_busy[node] > 0 {
            if self.radios[unit].waiting.is_none() && !self.radios[unit].ready.is_empty() {
                self.wait_seq += 1;
                self.radios[unit].waiting = Some(self.wait_seq);
            }
            return;
        }
        // The node's transmitter serves its links in turn, but a link with a control frame
        // waiting (node sync, time sync) goes before links with only other frames, and one
        // with normal frames before links with only bulk (OTA) ones: the driver's share of
        // "control traffic ahead of OTA in every queue the node controls". Rings are a few
        // links long.
        let urgent = {
            let ring = &self.radios[unit].ready;
            let class = |&(link, d): &(LinkId, u8)| {
                self.links
                    .get(link.0 as usize)
                    .and_then(Option::as_ref)
                    .map_or(0, |l| {
                        let dir = &l.dirs[d as usize];
                        if !dir.hi.is_empty() {
                            0
                        } else if !dir.lo.is_empty() {
                            1
                        } else {
                            2
                        }
                    })
            };
            ring.iter()
                .enumerate()
                .min_by_key(|(i, e)| (class(e), *i))
                .map_or(0, |(i, _)| i)
        };
        if urgent > 0 {
            let ring = &mut self.radios[unit].ready;
            if let Some(e) = ring.remove(urgent) {
                ring.push_front(e);
            }
        }
        while let Some((link, d)) = self.radios[unit].ready.pop_front() {
            let now = self.now;
            let Some(l) = self.links.get_mut(link.0 as usize).and_then(Option::as_mut) else {
                continue;
            };
            let dir = &mut l.dirs[d as usize];
            dir.ready = false;
            let (frame, priority) = match dir.hi.pop_front() {
                Some(f) => (f, Priority::Control),
                None => match dir.lo.pop_front() {
                    Some(f) => (f, Priority::Normal),
                    None => match dir.bulk.pop_front() {
                        Some(f) => (f, Priority::Bulk),
                        None => continue,
                    },
                },
            };
            let len = frame.len();
            dir.queued_bytes -= len;
            let cost = tx_cost(len, &l.params, &mut l.rng);
            let done = now + cost.airtime + cost.stall;
            let arrival = (done + l.params.latency).max(dir.last_arrival);
            dir.last_arrival = arrival;
            let (from, to) = (l.ends[d as usize], l.ends[1 - d as usize]);
            let ls = &mut self.link_stats[link.0 as usize];
            ls.frames[d as usize] += 1;
            ls.bytes[d as usize] += len as u64;
            ls.retransmissions += u64::from(cost.retransmissions);
            if !self.traces.is_empty() {
                let mut flat = std::mem::take(&mut self.scratch_frame);
                flat.clear();
                let bytes = match frame.as_contiguous() {
                    Some(b) => b,
                    None => {
                        frame.write_to(&mut flat);
                        &flat
                    }
                };
                let f = FrameTrace {
                    start: now,
                    arrival,
                    from: self.slots[from].id,
                    to: self.slots[to].id,
                    link,
                    bytes: len,
                    frame: bytes,
                    airtime: cost.airtime,
                    priority,
                    retransmissions: cost.retransmissions,
                };
                for tr in &mut self.traces {
                    tr(&f);
                }
                self.scratch_frame = flat;
            }
            let backlog = dir.queued_bytes;
            dir.in_flight = Some((frame, arrival));
            let s = &mut self.slots[from];
            if let Some(n) = s.node.as_mut() {
                n.set_link_backlog(link, backlog);
            }
            s.queued_bytes -= len as u64;
            s.queued_frames -= 1;
            s.frames_sent += 1;
            s.bytes_sent += len as u64;
            self.frames_on_air += 1;
            self.bytes_on_air += len as u64;
            self.window.frames += 1;
            self.window.bytes += len as u64;
            self.radios[unit].busy = true;
            self.radios[unit].waiting = None;
            if geometric {
                self.radios[unit].carrier = true;
                self.carrier_busy[node] += 1;
                for i in 0..self.interferers[node].len() {
                    let j = self.interferers[node][i];
                    self.carrier_busy[j] += 1;
                }
            }
            self.queue.push(now + cost.airtime, Ev::RadioFree { unit });
            if cost.reset {
                self.queue.push(done, Ev::TcpReset { link });
            } else {
                self.queue.push(done, Ev::DirDone { link, dir: d });
            }
            return;
        }
    }

    pub(super) fn radio_free(&mut self, unit: usize) {
        self.radios[unit].busy = false;
        // Only a transmission that marked the neighbourhood unmarks it: one that started
        // before a channel switch did not, or was unmarked by the switch.
        if std::mem::take(&mut self.radios[unit].carrier) {
            let node = self.radios[unit].node;
            self.carrier_busy[node] -= 1;
            let mut waiting: Vec<(u64, usize)> = Vec::new();
            for i in 0..self.interferers[node].len() {
                let j = self.interferers[node][i];
                self.carrier_busy[j] -= 1;
                if let Some(seq) = self.radios[j].waiting {
                    waiting.push((seq, j));
                }
            }
            // Longest-waiting first; the sender itself goes after everyone who waited.
            waiting.sort_unstable();
            for (_, j) in waiting {
                self.try_start(j);
            }
        }
        self.try_start(unit);
    }

    pub(super) fn dir_done(&mut self, link: LinkId, d: u8) {
        let Some(l) = self.links.get_mut(link.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        let dir = &mut l.dirs[d as usize];
        let Some((frame, arrival)) = dir.in_flight.take() else {
            return;
        };
        self.queue.push(
            arrival,
            Ev::Deliver {
                link,
                dir: d,
                frame,
            },
        );
        if !dir.hi.is_empty() || !dir.lo.is_empty() || !dir.bulk.is_empty() {
            dir.ready = true;
            let unit = dir.unit;
            self.radios[unit].ready.push_back((link, d));
            self.try_start(unit);
        }
    }

    pub(super) fn deliver(&mut self, link: LinkId, d: u8, frame: SharedFrame) {
        let Some(l) = self.link(link) else {
            self.drop_frame("link_closed", 1);
            return;
        };
        let to = l.ends[1 - d as usize];
        if self.slots[to].hung {
            self.drop_frame("node_hung", 1);
            return;
        }
        let local = self.local(to);
        let Some(node) = self.slots[to].node.as_mut() else {
            self.drop_frame("node_down", 1);
            return;
        };
        // A frame in pieces is laid out once, here, in a buffer reused for every delivery.
        let mut flat = std::mem::take(&mut self.scratch_frame);
        let frame = match frame.as_contiguous() {
            Some(b) => b,
            None => {
                flat.clear();
                frame.write_to(&mut flat);
                &flat
            }
        };
        if frame.first() == Some(&meshfleet_wire::BINARY_FRAME_MARK) {
            // A binary frame (meshfleet OTA chunks) has no NUL: the node's own framer reads
            // its length header. Frames always arrive whole, so the framer starts empty.
            node.handle_bytes(local, link, frame);
        } else {
            // JSON frames carry their NUL on the air; the node takes them pre-framed without it.
            let body = frame.strip_suffix(&[0]).unwrap_or(frame);
            node.handle_frame(local, link, body);
        }
        self.scratch_frame = flat;
        self.after_input(to);
    }
}
