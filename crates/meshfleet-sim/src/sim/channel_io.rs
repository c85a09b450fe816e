//! The simulator as the driver of `meshfleet-channel`: frames from nodes go into the
//! [`Channel`], its timers into the event heap, and its outputs back to nodes and metrics.

use super::*;

impl Simulation {
    // ----- channel ----------------------------------------------------------------------

    /// A node's transmit goes to its link's queue.
    pub(super) fn enqueue(&mut self, v: usize, t: Transmit) {
        if let Err(reason) = self
            .channel
            .enqueue(self.now, v, t.link, t.priority, t.frame)
        {
            self.lose(Loss::Channel(reason), 1);
        }
        self.drain_channel();
    }

    /// Acts on everything the channel has to say, in order: its timers go into the event
    /// heap (so they interleave with the nodes' by (time, insertion order)), frames on
    /// the air are counted and traced, arrivals go to their node.
    pub(super) fn drain_channel(&mut self) {
        while let Some(out) = self.channel.poll_output() {
            match out {
                Output::Timer { at, timer } => self.queue.push(at, Ev::Channel(timer)),
                Output::Backlog {
                    node,
                    link,
                    queued_bytes,
                } => {
                    // Like a driver, tell the node what waits in its send queue (plugins
                    // pace on it).
                    if let Some(n) = self.slots[node].node.as_mut() {
                        n.set_link_backlog(link, queued_bytes);
                    }
                }
                Output::Sent(sent) => self.frame_sent(&sent),
                Output::Delivered { link, to, frame } => self.deliver(link, to, frame),
                Output::Dropped { reason, .. } => self.lose(Loss::Channel(reason), 1),
                Output::Reset { link } => self.close_link(
                    link,
                    CloseCause::TcpReset,
                    [Some(Duration::ZERO), Some(Duration::ZERO)],
                ),
            }
        }
    }

    fn frame_sent(&mut self, s: &Sent) {
        let len = s.bytes as u64;
        let d = s.direction.index();
        let ls = &mut self.link_stats[s.link.0 as usize];
        ls.frames[d] += 1;
        ls.bytes[d] += len;
        ls.retransmissions += u64::from(s.cost.retransmissions);
        if !self.traces.is_empty() {
            let frame = self
                .channel
                .in_flight(s.link, s.direction)
                .map_or(&[][..], Vec::as_slice);
            let f = FrameTrace {
                start: s.start,
                arrival: s.arrival,
                from: self.slots[s.from].id,
                to: self.slots[s.to].id,
                link: s.link,
                bytes: s.bytes,
                frame,
                airtime: s.cost.airtime,
                priority: s.priority,
                retransmissions: s.cost.retransmissions,
            };
            for tr in &mut self.traces {
                tr(&f);
            }
        }
        let slot = &mut self.slots[s.from];
        slot.frames_sent += 1;
        slot.bytes_sent += len;
        self.frames_on_air += 1;
        self.bytes_on_air += len;
        self.window.frames += 1;
        self.window.bytes += len;
    }

    /// Switches the channel model now (see [`Simulation::set_channel`]).
    pub(super) fn switch_channel(&mut self, channel: ChannelModel) {
        self.channel
            .set_model(self.now, channel, self.layout.positions.as_deref());
        self.drain_channel();
    }

    fn deliver(&mut self, link: LinkId, to: usize, frame: Vec<u8>) {
        if self.slots[to].hung {
            self.lose(Loss::NodeHung, 1);
            return;
        }
        let local = self.local(to);
        let Some(node) = self.slots[to].node.as_mut() else {
            self.lose(Loss::NodeDown, 1);
            return;
        };
        if frame.first() == Some(&meshfleet_wire::BINARY_FRAME_MARK) {
            // A binary frame (meshfleet OTA chunks) has no NUL: the node's own framer reads
            // its length header. Frames always arrive whole, so the framer starts empty.
            node.handle_bytes(local, link, &frame);
        } else {
            // JSON frames carry their NUL on the air; the node takes them pre-framed without it.
            let body = frame.strip_suffix(&[0]).unwrap_or(&frame);
            node.handle_frame(local, link, body);
        }
        self.after_input(to);
    }
}
