//! The channel's state machine: send queues per link direction, transmitters (one per link
//! direction or one per radio), carrier sense, airtime and delivery.
//!
//! See [`Channel`] for the run loop and its invariants.

use std::collections::VecDeque;

use meshfleet_mesh::{Instant, LinkId, Priority, Rng};

use crate::{interferers, tx_cost, ChannelModel, LinkChange, LinkParams, TxCost};

/// A frame as the channel sees it: only its length on the air matters (NUL included for
/// JSON frames). The simulator uses `Vec<u8>`; a driver that shares frame bodies between
/// links can use its own type.
pub trait Payload {
    /// Bytes on the air.
    fn len(&self) -> usize;

    /// Whether the frame has no bytes (it still costs the per-frame overhead).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Payload for Vec<u8> {
    fn len(&self) -> usize {
        Self::len(self)
    }
}

impl Payload for Box<[u8]> {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

impl Payload for std::rc::Rc<[u8]> {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

impl Payload for std::sync::Arc<[u8]> {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

/// Which way a frame goes on a link. A link joins an access point (`ends()[0]`) and a
/// station (`ends()[1]`); each direction has its own queues and is sent by its own end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Sent by the access point to the station.
    FromAccessPoint,
    /// Sent by the station to the access point.
    FromStation,
}

impl Direction {
    /// Both directions, in index order.
    pub const BOTH: [Self; 2] = [Self::FromAccessPoint, Self::FromStation];

    /// 0 for [`Direction::FromAccessPoint`], 1 for [`Direction::FromStation`]: the index
    /// of the sender in [`Link::ends`].
    pub fn index(self) -> usize {
        match self {
            Self::FromAccessPoint => 0,
            Self::FromStation => 1,
        }
    }

    fn of(index: u8) -> Self {
        if index == 0 {
            Self::FromAccessPoint
        } else {
            Self::FromStation
        }
    }
}

/// Why the channel dropped a frame. Labels are the counters' names in reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The link is not open: it never was, it closed before the frame was queued or
    /// before the frame arrived, or the sender is not one of its ends.
    LinkClosed,
    /// A normal or bulk frame would take the direction's queued bytes past
    /// [`LinkParams::queue_cap_bytes`].
    QueueFull,
}

impl DropReason {
    /// A short stable label for counters and JSON.
    pub fn label(self) -> &'static str {
        match self {
            Self::LinkClosed => "link_closed",
            Self::QueueFull => "queue_full",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::LinkClosed => "the link is not open",
            Self::QueueFull => "the link direction's send queue is full",
        })
    }
}

impl std::error::Error for DropReason {}

/// A wakeup the channel asked for ([`Output::Timer`]); the driver hands it back to
/// [`Channel::handle_timer`] at its time. Small and `Copy`: frames stay in the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timer(TimerKind);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerKind {
    RadioFree { radio: u32 },
    TxDone { link: LinkId, dir: u8 },
    TcpReset { link: LinkId },
    Arrival { link: LinkId, dir: u8 },
}

/// Why a [`Timer`] wakes the channel (for traces and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimerReason {
    /// A transmitter's airtime ends: it may start its next frame, and under the geometric
    /// model the sender's neighbourhood may transmit again.
    RadioFree,
    /// A link direction's frame is done (airtime and retransmission stalls): the frame
    /// propagates to the receiver and the direction may send its next one.
    TxDone,
    /// TCP gave up on the frame being sent: the connection resets.
    TcpReset,
    /// A frame reaches its receiver.
    Arrival,
}

impl Timer {
    /// Why this wakeup happens.
    pub fn reason(&self) -> TimerReason {
        match self.0 {
            TimerKind::RadioFree { .. } => TimerReason::RadioFree,
            TimerKind::TxDone { .. } => TimerReason::TxDone,
            TimerKind::TcpReset { .. } => TimerReason::TcpReset,
            TimerKind::Arrival { .. } => TimerReason::Arrival,
        }
    }

    /// The link it concerns (`None` for a transmitter's timer, which serves several).
    pub fn link(&self) -> Option<LinkId> {
        match self.0 {
            TimerKind::RadioFree { .. } => None,
            TimerKind::TxDone { link, .. }
            | TimerKind::TcpReset { link }
            | TimerKind::Arrival { link, .. } => Some(link),
        }
    }
}

/// A frame that went on the air ([`Output::Sent`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sent {
    /// The link.
    pub link: LinkId,
    /// Which way.
    pub direction: Direction,
    /// Sender (the caller's node index).
    pub from: usize,
    /// Receiver.
    pub to: usize,
    /// When its transmission started.
    pub start: Instant,
    /// When it will reach the receiver (unless the link closes first).
    pub arrival: Instant,
    /// Bytes on the air.
    pub bytes: usize,
    /// The queue class it came from.
    pub priority: Priority,
    /// Airtime, retransmission stalls and retransmissions it cost; `cost.reset`: TCP
    /// gives up on it ([`Output::Reset`] follows at `start + airtime + stall`).
    pub cost: TxCost,
}

/// What the channel tells its driver. Drain with [`Channel::poll_output`] after every
/// input, in order.
#[derive(Debug)]
pub enum Output<F> {
    /// Call [`Channel::handle_timer`] with `timer` at `at`. Timers due at the same instant
    /// must be handed back in the order they were output (a FIFO among equal times).
    Timer {
        /// When.
        at: Instant,
        /// What to hand back.
        timer: Timer,
    },
    /// The bytes waiting in one link direction changed (a frame was queued or went on the
    /// air): what a driver reports to the sending node, which may pace on it.
    Backlog {
        /// The sender (the caller's node index).
        node: usize,
        /// The link.
        link: LinkId,
        /// Bytes waiting in that direction, the frame on the air not included.
        queued_bytes: usize,
    },
    /// A frame went on the air. [`Channel::in_flight`] shows its bytes until its
    /// [`TimerReason::TxDone`] timer.
    Sent(Sent),
    /// A frame reached its receiver.
    Delivered {
        /// The link it came over.
        link: LinkId,
        /// The receiver (the caller's node index).
        to: usize,
        /// The frame.
        frame: F,
    },
    /// A frame that had left the queue was lost ([`DropReason::LinkClosed`]: the link
    /// closed while it propagated).
    Dropped {
        /// The link.
        link: LinkId,
        /// Why.
        reason: DropReason,
    },
    /// TCP gave up on the link after [`LinkParams::max_retransmits`] consecutive losses.
    /// The link stays open in the channel (its frames waiting) until the driver closes it
    /// with [`Channel::close_link`], telling both ends as a real reset would.
    Reset {
        /// The link.
        link: LinkId,
    },
}

/// What waits in one node's send queues, over all its link directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeBacklog {
    /// Bytes waiting now.
    pub bytes: u64,
    /// Frames waiting now.
    pub frames: u64,
    /// The most bytes ever waiting at once.
    pub peak_bytes: u64,
    /// The most frames ever waiting at once.
    pub peak_frames: u64,
}

/// What [`Channel::close_link`] removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClosedLink {
    /// `[access point, station]`.
    pub ends: [usize; 2],
    /// Frames lost: queued, and the ones being sent. Frames already propagating are lost
    /// later, at their arrival time ([`Output::Dropped`]).
    pub lost_frames: u64,
}

/// Queue index of a priority: the order frames leave a direction.
fn class(p: Priority) -> usize {
    match p {
        Priority::Control => 0,
        Priority::Normal => 1,
        Priority::Bulk => 2,
    }
}

const PRIORITIES: [Priority; 3] = [Priority::Control, Priority::Normal, Priority::Bulk];

struct DirState<F> {
    /// One FIFO per [`Priority`], in sending order (control, normal, bulk).
    queues: [VecDeque<F>; 3],
    queued_bytes: usize,
    /// Frame being sent (or waiting out retransmission timeouts) and its arrival time.
    in_flight: Option<(F, Instant)>,
    /// Frames done sending, on their way to the receiver, in arrival order.
    arriving: VecDeque<F>,
    /// In its transmitter's ready ring.
    ready: bool,
    radio: u32,
    last_arrival: Instant,
}

impl<F> DirState<F> {
    fn new(radio: u32) -> Self {
        Self {
            queues: [VecDeque::new(), VecDeque::new(), VecDeque::new()],
            queued_bytes: 0,
            in_flight: None,
            arriving: VecDeque::new(),
            ready: false,
            radio,
            last_arrival: Instant::ZERO,
        }
    }

    fn has_queued(&self) -> bool {
        self.queues.iter().any(|q| !q.is_empty())
    }

    fn queued_frames(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }
}

/// One open link: its ends, parameters, loss generator and two directions.
pub struct Link<F> {
    id: LinkId,
    ends: [usize; 2],
    params: LinkParams,
    rng: Rng,
    dirs: [DirState<F>; 2],
}

impl<F> Link<F> {
    /// Its id.
    pub fn id(&self) -> LinkId {
        self.id
    }

    /// `[access point, station]` (the caller's node indices); direction `d` is sent by
    /// `ends()[d.index()]`.
    pub fn ends(&self) -> [usize; 2] {
        self.ends
    }

    /// Its parameters now.
    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// Bytes waiting in one direction (the frame being sent not included).
    pub fn queued_bytes(&self, direction: Direction) -> usize {
        self.dirs[direction.index()].queued_bytes
    }

    /// Frames waiting in one direction (the frame being sent not included).
    pub fn queued_frames(&self, direction: Direction) -> usize {
        self.dirs[direction.index()].queued_frames()
    }
}

struct Radio {
    busy: bool,
    /// Link directions with frames waiting for this transmitter, in turn order.
    ready: VecDeque<(LinkId, u8)>,
    node: usize,
    /// Geometric model: queue position while waiting for a clear channel.
    waiting: Option<u64>,
    /// Its transmission on the air marks the sender's neighbourhood busy (it started under
    /// the geometric model, and no model switch happened since): its end must unmark it.
    carrier: bool,
}

impl Radio {
    fn new(node: usize) -> Self {
        Self {
            busy: false,
            ready: VecDeque::new(),
            node,
            waiting: None,
            carrier: false,
        }
    }
}

/// The channel: every link's send queues, the transmitters and the air between them.
///
/// # Run loop
///
/// Inputs are calls with the caller's current time `now` (never earlier than the previous
/// call's): [`Channel::open_link`], [`Channel::enqueue`] (a node hands a frame to its link),
/// [`Channel::handle_timer`] (a wakeup the channel asked for is due),
/// [`Channel::close_link`], [`Channel::set_model`] and the parameter changes. After every
/// input the driver drains [`Channel::poll_output`] until it returns `None`, in order:
///
/// * [`Output::Timer`]: schedule the timer; hand it back at its time. Unlike a single
///   `poll_timeout`, every wakeup is its own output, so a driver with one event heap
///   ordered by (time, insertion order) for everything (the simulator) interleaves the
///   channel's wakeups with its nodes' exactly as if the channel were part of its loop:
///   runs stay reproducible bit for bit.
/// * [`Output::Backlog`], [`Output::Sent`]: tell the sending node its backlog; count and
///   trace the frame.
/// * [`Output::Delivered`]: give the frame to the receiver (whose outputs may be more
///   [`Channel::enqueue`] calls: fine while draining).
/// * [`Output::Dropped`], [`Output::Reset`]: count the loss; close the reset link.
///
/// # Model
///
/// Each link direction is a send queue with one FIFO per [`Priority`]: control before
/// normal before bulk, never interrupting the frame being sent. Normal and bulk frames
/// that would take the direction past [`LinkParams::queue_cap_bytes`] are refused
/// ([`DropReason::QueueFull`]); control frames and a frame into an empty queue always
/// pass (nothing is evicted). The [`ChannelModel`] decides what a transmitter is: one per
/// link direction, or one per node shared by its links in turn (a direction with a
/// control frame waiting first, then one with normal frames), plus carrier sense under
/// the geometric model. A frame costs [`tx_cost`] on its link: the transmitter is busy
/// for its airtime; the direction is busy for airtime and retransmission stalls; the
/// frame arrives one latency later, never before the direction's previous frame.
///
/// Nothing here reads a clock or draws an unseeded random number: each link's losses come
/// from the [`Rng`] the caller gives [`Channel::open_link`].
pub struct Channel<F> {
    model: ChannelModel,
    /// By link id; id 0 is never used.
    links: Vec<Option<Link<F>>>,
    /// Radios `0..nodes` are the nodes' own (airtime and geometric models); the
    /// independent model adds one per link direction after them. Keeping the node radios
    /// under every model lets the model change at run time.
    radios: Vec<Radio>,
    nodes: Vec<NodeBacklog>,
    interferers: Vec<Vec<usize>>,
    /// Per node: transmissions on the air within interference range (geometric model).
    carrier_busy: Vec<u32>,
    wait_seq: u64,
    out: VecDeque<Output<F>>,
}

impl<F: Payload> Channel<F> {
    /// A channel between `nodes` nodes (indices `0..nodes`) with no links yet.
    /// `positions` (metres, by node index) are needed by [`ChannelModel::Geometric`];
    /// without them it has no interferers and acts as [`ChannelModel::Airtime`].
    pub fn new(model: ChannelModel, nodes: usize, positions: Option<&[(f64, f64)]>) -> Self {
        Self {
            interferers: interferers(&model, positions, nodes),
            model,
            links: vec![None],
            radios: (0..nodes).map(Radio::new).collect(),
            nodes: vec![NodeBacklog::default(); nodes],
            carrier_busy: vec![0; nodes],
            wait_seq: 0,
            out: VecDeque::new(),
        }
    }

    /// The model in force.
    pub fn model(&self) -> &ChannelModel {
        &self.model
    }

    /// The next output, if any. Drain after every input.
    pub fn poll_output(&mut self) -> Option<Output<F>> {
        self.out.pop_front()
    }

    /// The id the next [`Channel::open_link`] returns (ids count up from 1 and are never
    /// reused), so that a caller can derive the link's seed from it first.
    pub fn next_link_id(&self) -> LinkId {
        LinkId(self.links.len() as u64)
    }

    /// Opens a link between access point `ap` and station `sta` (node indices below the
    /// `nodes` given to [`Channel::new`]) with `params`, drawing its losses from `rng`.
    ///
    /// # Panics
    ///
    /// If a node index is out of range, or under [`ChannelModel::Independent`] the radio
    /// count passes `u32::MAX` (two billion links).
    pub fn open_link(&mut self, ap: usize, sta: usize, params: LinkParams, rng: Rng) -> LinkId {
        assert!(
            ap < self.nodes.len() && sta < self.nodes.len(),
            "node index"
        );
        let id = self.next_link_id();
        let dirs = [
            DirState::new(self.radio_for(ap)),
            DirState::new(self.radio_for(sta)),
        ];
        self.links.push(Some(Link {
            id,
            ends: [ap, sta],
            params,
            rng,
            dirs,
        }));
        id
    }

    /// The open link `id`.
    pub fn link(&self, id: LinkId) -> Option<&Link<F>> {
        self.links.get(id.0 as usize)?.as_ref()
    }

    /// Every open link, by id.
    pub fn links(&self) -> impl Iterator<Item = &Link<F>> {
        self.links.iter().flatten()
    }

    /// Applies `change` to link `id` (frames already on the air keep their cost).
    /// Returns whether the link is open.
    pub fn change_link(&mut self, id: LinkId, change: &LinkChange) -> bool {
        match self.links.get_mut(id.0 as usize).and_then(Option::as_mut) {
            Some(l) => {
                change.apply(&mut l.params);
                true
            }
            None => false,
        }
    }

    /// Applies `change` to every open link.
    pub fn change_all_links(&mut self, change: &LinkChange) {
        for l in self.links.iter_mut().flatten() {
            change.apply(&mut l.params);
        }
    }

    /// What waits in node `node`'s send queues (zero for an unknown node).
    pub fn node_backlog(&self, node: usize) -> NodeBacklog {
        self.nodes.get(node).copied().unwrap_or_default()
    }

    /// The frame link direction `direction` is sending now (from its [`Output::Sent`] to
    /// its [`TimerReason::TxDone`] timer).
    pub fn in_flight(&self, link: LinkId, direction: Direction) -> Option<&F> {
        let l = self.link(link)?;
        l.dirs[direction.index()].in_flight.as_ref().map(|(f, _)| f)
    }

    /// Node `from` hands `frame` to link `link` with `priority`.
    ///
    /// # Errors
    ///
    /// [`DropReason::LinkClosed`] if the link is not open or `from` is not one of its ends;
    /// [`DropReason::QueueFull`] for a normal or bulk frame over the queue cap. The frame is
    /// dropped then.
    pub fn enqueue(
        &mut self,
        now: Instant,
        from: usize,
        link: LinkId,
        priority: Priority,
        frame: F,
    ) -> Result<(), DropReason> {
        let Some(l) = self.links.get_mut(link.0 as usize).and_then(Option::as_mut) else {
            return Err(DropReason::LinkClosed);
        };
        let Some(d) = l.ends.iter().position(|e| *e == from) else {
            return Err(DropReason::LinkClosed);
        };
        let cap = l.params.queue_cap_bytes;
        let dir = &mut l.dirs[d];
        let len = frame.len();
        // A frame larger than the cap still gets through an empty queue, or it never could;
        // control frames (the mesh's upkeep) always pass.
        if priority != Priority::Control && dir.queued_bytes > 0 && dir.queued_bytes + len > cap {
            return Err(DropReason::QueueFull);
        }
        dir.queued_bytes += len;
        dir.queues[class(priority)].push_back(frame);
        let wake = dir.in_flight.is_none() && !dir.ready;
        if wake {
            dir.ready = true;
        }
        let radio = dir.radio as usize;
        let queued_bytes = dir.queued_bytes;
        let n = &mut self.nodes[from];
        n.bytes += len as u64;
        n.frames += 1;
        n.peak_bytes = n.peak_bytes.max(n.bytes);
        n.peak_frames = n.peak_frames.max(n.frames);
        self.out.push_back(Output::Backlog {
            node: from,
            link,
            queued_bytes,
        });
        if wake {
            self.radios[radio].ready.push_back((link, d as u8));
            self.try_start(now, radio);
        }
        Ok(())
    }

    /// A timer from [`Output::Timer`] is due.
    pub fn handle_timer(&mut self, now: Instant, timer: Timer) {
        match timer.0 {
            TimerKind::RadioFree { radio } => self.radio_free(now, radio as usize),
            TimerKind::TxDone { link, dir } => self.tx_done(now, link, dir),
            TimerKind::TcpReset { link } => self.out.push_back(Output::Reset { link }),
            TimerKind::Arrival { link, dir } => self.arrival(link, dir),
        }
    }

    /// Removes link `id`: frames queued and the ones being sent are lost (counted in the
    /// result); frames propagating are lost at their arrival time. The transmitters finish
    /// their current airtime. `None` if the link was not open.
    pub fn close_link(&mut self, id: LinkId) -> Option<ClosedLink> {
        let l = self.links.get_mut(id.0 as usize).and_then(Option::take)?;
        let mut lost = 0;
        for (d, dir) in l.dirs.iter().enumerate() {
            let frames = dir.queued_frames() as u64;
            let n = &mut self.nodes[l.ends[d]];
            n.bytes -= dir.queued_bytes as u64;
            n.frames -= frames;
            lost += frames + u64::from(dir.in_flight.is_some());
        }
        // Its entries in the transmitters' rings are skipped when their turn comes.
        Some(ClosedLink {
            ends: l.ends,
            lost_frames: lost,
        })
    }

    /// Switches the channel model now: transmissions that start from now on follow
    /// `model`; those on the air finish their airtime but stop counting for carrier sense,
    /// and frames waiting move to their transmitter under the new model (in link order).
    /// Links, queues and loss stay.
    pub fn set_model(
        &mut self,
        now: Instant,
        model: ChannelModel,
        positions: Option<&[(f64, f64)]>,
    ) {
        // Only the new model's transmissions occupy the medium: unmark what the old ones
        // marked.
        for radio in 0..self.radios.len() {
            if std::mem::take(&mut self.radios[radio].carrier) {
                let node = self.radios[radio].node;
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
        self.interferers = interferers(&model, positions, self.nodes.len());
        self.model = model;
        let mut wake = Vec::new();
        for i in 0..self.links.len() {
            for d in 0..2 {
                let Some(sender) = self.links[i].as_ref().map(|l| l.ends[d]) else {
                    continue;
                };
                let radio = self.radio_for(sender);
                let Some(l) = self.links[i].as_mut() else {
                    continue;
                };
                let id = l.id;
                let dir = &mut l.dirs[d];
                dir.radio = radio;
                if dir.ready {
                    self.radios[radio as usize].ready.push_back((id, d as u8));
                    wake.push(radio as usize);
                }
            }
        }
        wake.sort_unstable();
        wake.dedup();
        for radio in wake {
            self.try_start(now, radio);
        }
    }

    /// The transmitter a new link direction sent by `sender` uses under the current model.
    fn radio_for(&mut self, sender: usize) -> u32 {
        let radio = match self.model {
            ChannelModel::Independent => {
                self.radios.push(Radio::new(sender));
                self.radios.len() - 1
            }
            _ => sender,
        };
        #[allow(clippy::expect_used)]
        u32::try_from(radio).expect("fewer than 2^32 transmitters")
    }

    fn try_start(&mut self, now: Instant, radio: usize) {
        if self.radios[radio].busy {
            return;
        }
        let node = self.radios[radio].node;
        let geometric = matches!(self.model, ChannelModel::Geometric { .. });
        if geometric && self.carrier_busy[node] > 0 {
            if self.radios[radio].waiting.is_none() && !self.radios[radio].ready.is_empty() {
                self.wait_seq += 1;
                self.radios[radio].waiting = Some(self.wait_seq);
            }
            return;
        }
        // The node's transmitter serves its links in turn, but a link with a control frame
        // waiting (node sync, time sync) goes before links with only other frames, and one
        // with normal frames before links with only bulk (OTA) ones: control traffic ahead
        // of OTA in every queue the node controls. Rings are a few links long. A closed
        // link counts as urgent: it is popped and skipped at once.
        let urgent = {
            let ring = &self.radios[radio].ready;
            let links = &self.links;
            let rank = |&(link, d): &(LinkId, u8)| {
                links
                    .get(link.0 as usize)
                    .and_then(Option::as_ref)
                    .map_or(0, |l| {
                        let dir = &l.dirs[d as usize];
                        dir.queues
                            .iter()
                            .position(|q| !q.is_empty())
                            .unwrap_or(PRIORITIES.len() - 1)
                    })
            };
            ring.iter()
                .enumerate()
                .min_by_key(|(i, e)| (rank(e), *i))
                .map_or(0, |(i, _)| i)
        };
        if urgent > 0 {
            let ring = &mut self.radios[radio].ready;
            if let Some(e) = ring.remove(urgent) {
                ring.push_front(e);
            }
        }
        while let Some((link, d)) = self.radios[radio].ready.pop_front() {
            let Some(l) = self.links.get_mut(link.0 as usize).and_then(Option::as_mut) else {
                continue;
            };
            let dir = &mut l.dirs[d as usize];
            dir.ready = false;
            let Some((frame, priority)) = dir
                .queues
                .iter_mut()
                .zip(PRIORITIES)
                .find_map(|(q, p)| q.pop_front().map(|f| (f, p)))
            else {
                continue;
            };
            let len = frame.len();
            dir.queued_bytes -= len;
            let cost = tx_cost(len, &l.params, &mut l.rng);
            let done = now + cost.airtime + cost.stall;
            let arrival = (done + l.params.latency).max(dir.last_arrival);
            dir.last_arrival = arrival;
            let queued_bytes = dir.queued_bytes;
            dir.in_flight = Some((frame, arrival));
            let (from, to) = (l.ends[d as usize], l.ends[1 - d as usize]);
            let n = &mut self.nodes[from];
            n.bytes -= len as u64;
            n.frames -= 1;
            self.out.push_back(Output::Sent(Sent {
                link,
                direction: Direction::of(d),
                from,
                to,
                start: now,
                arrival,
                bytes: len,
                priority,
                cost,
            }));
            self.out.push_back(Output::Backlog {
                node: from,
                link,
                queued_bytes,
            });
            let r = &mut self.radios[radio];
            r.busy = true;
            r.waiting = None;
            if geometric {
                r.carrier = true;
                self.carrier_busy[node] += 1;
                for &j in &self.interferers[node] {
                    self.carrier_busy[j] += 1;
                }
            }
            self.out.push_back(Output::Timer {
                at: now + cost.airtime,
                timer: Timer(TimerKind::RadioFree {
                    radio: radio as u32,
                }),
            });
            let timer = if cost.reset {
                TimerKind::TcpReset { link }
            } else {
                TimerKind::TxDone { link, dir: d }
            };
            self.out.push_back(Output::Timer {
                at: done,
                timer: Timer(timer),
            });
            return;
        }
    }

    fn radio_free(&mut self, now: Instant, radio: usize) {
        self.radios[radio].busy = false;
        // Only a transmission that marked the neighbourhood unmarks it: one that started
        // before a model switch did not, or was unmarked by the switch.
        if std::mem::take(&mut self.radios[radio].carrier) {
            let node = self.radios[radio].node;
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
                self.try_start(now, j);
            }
        }
        self.try_start(now, radio);
    }

    fn tx_done(&mut self, now: Instant, link: LinkId, d: u8) {
        let Some(l) = self.links.get_mut(link.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        let dir = &mut l.dirs[d as usize];
        let Some((frame, arrival)) = dir.in_flight.take() else {
            return;
        };
        dir.arriving.push_back(frame);
        self.out.push_back(Output::Timer {
            at: arrival,
            timer: Timer(TimerKind::Arrival { link, dir: d }),
        });
        if dir.has_queued() {
            dir.ready = true;
            let radio = dir.radio as usize;
            self.radios[radio].ready.push_back((link, d));
            self.try_start(now, radio);
        }
    }

    fn arrival(&mut self, link: LinkId, d: u8) {
        let Some(l) = self.links.get_mut(link.0 as usize).and_then(Option::as_mut) else {
            self.out.push_back(Output::Dropped {
                link,
                reason: DropReason::LinkClosed,
            });
            return;
        };
        // Arrival timers of one direction come due in the order their frames finished
        // (arrival times never decrease, ties keep their order), so the head is this one.
        if let Some(frame) = l.dirs[d as usize].arriving.pop_front() {
            let to = l.ends[1 - d as usize];
            self.out.push_back(Output::Delivered { link, to, frame });
        }
    }
}
