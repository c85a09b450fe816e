//! The simulator as the driver of `meshfleet-channel`: frames from nodes go into the
//! [`Channel`], its timers into the event heap, and its outputs back to nodes and metrics.

use meshfleet_channel::Scheduler;

use super::*;

/// The channel's wakeups go into the simulator's one event heap, as they are decided: ties
/// with the nodes' events then run in the order they were scheduled.
pub(super) struct Timers<'a>(pub(super) &'a mut crate::queue::EventQueue<Ev>);

impl Scheduler for Timers<'_> {
    fn schedule(&mut self, at: Instant, timer: Timer) {
        self.0.push(at, Ev::Channel(timer));
    }
}

impl Simulation {
    // ----- channel ----------------------------------------------------------------------

    /// A node's transmit goes to its link's queue.
    pub(super) fn enqueue(&mut self, v: usize, t: SharedTransmit) {
        let mut timers = Timers(&mut self.queue);
        match self
            .channel
            .enqueue(self.now, v, t.link, t.priority, Frame(t.frame), &mut timers)
        {
            // Like a driver, tell the node what waits in its send queue (plugins pace on
            // it); a frame that went on the air at once updates it again below.
            Ok(queued_bytes) => {
                if let Some(n) = self.slots[v].node.as_mut() {
                    n.set_link_backlog(t.link, queued_bytes);
                }
            }
            Err(reason) => self.lose(Loss::Channel(reason), 1),
        }
        self.drain_channel();
    }

    /// Acts on everything the channel has to say, in order: backlogs go to the senders,
    /// frames on the air to the traces (the channel counts them), arrivals to their node.
    pub(super) fn drain_channel(&mut self) {
        while let Some(out) = self.channel.poll_output() {
            match out {
                Output::Backlog {
                    node,
                    link,
                    queued_bytes,
                } => {
                    if let Some(n) = self.slots[node].node.as_mut() {
                        n.set_link_backlog(link, queued_bytes);
                    }
                }
                Output::Sent(sent) => self.trace_frame(&sent),
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

    /// Hands a frame put on the air to the frame traces (the channel outputs `Sent` only
    /// once a trace is set).
    fn trace_frame(&mut self, s: &Sent) {
        let mut scratch = std::mem::take(&mut self.scratch_frame);
        let frame = self
            .channel
            .in_flight(s.link, s.direction)
            .map_or(&[][..], |f| f.bytes(&mut scratch));
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
        self.scratch_frame = scratch;
    }

    /// Switches the channel model now (see [`Simulation::set_channel`]).
    pub(super) fn switch_channel(&mut self, channel: ChannelModel) {
        self.channel.set_model(
            self.now,
            channel,
            self.layout.positions.as_deref(),
            &mut Timers(&mut self.queue),
        );
        self.drain_channel();
    }

    fn deliver(&mut self, link: LinkId, to: usize, frame: Frame) {
        if self.slots[to].hung {
            self.lose(Loss::NodeHung, 1);
            return;
        }
        let local = self.local(to);
        let Some(node) = self.slots[to].node.as_mut() else {
            self.lose(Loss::NodeDown, 1);
            return;
        };
        let mut scratch = std::mem::take(&mut self.scratch_frame);
        match self.tree_text {
            // The node takes the frame as it was made: a node sync in pieces keeps its
            // trees shared, so the receiver holds pointers to the sender's text, not a
            // copy; a frame that must be read is laid out in `scratch`.
            crate::TreeText::Shared => {
                node.handle_shared_frame(local, link, &frame.0, &mut scratch)
            }
            // As a socket delivers it: laid out once, here, in a buffer reused for every
            // delivery.
            crate::TreeText::Copied => {
                let frame = frame.bytes(&mut scratch);
                if frame.first() == Some(&meshfleet_wire::BINARY_FRAME_MARK) {
                    // A binary frame (meshfleet OTA chunks) has no NUL: the node's own
                    // framer reads its length header. Frames always arrive whole, so the
                    // framer starts empty.
                    node.handle_bytes(local, link, frame);
                } else {
                    // JSON frames carry their NUL on the air; the node takes them
                    // pre-framed without it.
                    let body = frame.strip_suffix(&[0]).unwrap_or(frame);
                    node.handle_frame(local, link, body);
                }
            }
        }
        self.scratch_frame = scratch;
        self.after_input(to);
    }
}
