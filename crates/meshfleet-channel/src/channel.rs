//! The channel's state machine: send queues per link direction, transmitters (one per link
//! direction or one per radio), carrier sense, airtime and delivery.
//!
//! See [`Channel`] for the run loop and its invariants.

use std::collections::VecDeque;

use meshfleet_mesh::{Duration, Instant, LinkId, Priority, Rng};

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

/// A wakeup the channel asks its driver for ([`Scheduler::schedule`]); the driver hands
/// it back to [`Channel::handle_timer`] at its time. Small and `Copy`: frames stay in the
/// channel.
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

/// Where the channel puts its wakeups: the driver's timer queue.
///
/// Every wakeup is scheduled on its own, at the moment the channel decides it, so a
/// driver with one event heap ordered by (time, insertion order) for everything (the
/// simulator) interleaves the channel's wakeups with its nodes' exactly as if the channel
/// were part of its own loop: runs stay reproducible bit for bit. (A single
/// `poll_timeout`, as in str0m's `netem`, would reorder ties between the channel and the
/// rest.) Timers go straight to the scheduler rather than through [`Output`]: the
/// simulator handles millions of them, three per frame.
pub trait Scheduler {
    /// Call [`Channel::handle_timer`] with `timer` at `at`. Timers due at the same instant
    /// must be handed back in the order they were scheduled.
    fn schedule(&mut self, at: Instant, timer: Timer);
}

/// A list of pending timers in scheduling order, for simple drivers and tests: take the
/// earliest (the first among equal times) next.
impl Scheduler for Vec<(Instant, Timer)> {
    fn schedule(&mut self, at: Instant, timer: Timer) {
        self.push((at, timer));
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
    /// The bytes waiting in one link direction went down: a frame went on the air. What a
    /// driver reports to the sending node, which may pace on it ([`Channel::enqueue`]
    /// returns the new backlog when it goes up).
    Backlog {
        /// The sender (the caller's node index).
        node: usize,
        /// The link.
        link: LinkId,
        /// Bytes waiting in that direction, the frame on the air not included.
        queued_bytes: usize,
    },
    /// A frame went on the air (only with [`Channel::set_sent_outputs`]: the counters
    /// ([`Channel::air`], [`Channel::link_air`], [`Channel::node_air`]) need no output).
    /// [`Channel::in_flight`] shows its bytes until its [`TimerReason::TxDone`] timer.
    Sent(Box<Sent>),
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

/// What went on the air: of one link direction, one node or the whole channel. Kept after
/// a link closes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AirCounters {
    /// Frames put on the air.
    pub frames: u64,
    /// Their bytes (retransmitted segments not counted again).
    pub bytes: u64,
    /// TCP segments retransmitted.
    pub retransmissions: u64,
    /// Transmitter time they took (overhead, bytes, retransmitted segments).
    pub airtime: Duration,
}

impl AirCounters {
    fn add(&mut self, bytes: usize, cost: &TxCost) {
        self.frames += 1;
        self.bytes += bytes as u64;
        self.retransmissions += u64::from(cost.retransmissions);
        self.airtime = self.airtime + cost.airtime;
    }
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
/// [`Channel::close_link`], [`Channel::set_model`] and the parameter changes. Inputs that
/// can start a transmission take the driver's [`Scheduler`], into which the channel puts
/// its wakeups as it decides them. After every input the driver drains
/// [`Channel::poll_output`] until it returns `None`, in order:
///
/// * [`Output::Backlog`]: tell the sending node its backlog (after applying the one
///   [`Channel::enqueue`] returned, which is older).
/// * [`Output::Sent`] (if asked for): trace the frame.
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
    /// By link id (closed links included): what each direction put on the air.
    link_air: Vec<[AirCounters; 2]>,
    /// By node: what it put on the air.
    node_air: Vec<AirCounters>,
    air: AirCounters,
    sent_outputs: bool,
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
            link_air: vec![[AirCounters::default(); 2]],
            node_air: vec![AirCounters::default(); nodes],
            air: AirCounters::default(),
            sent_outputs: false,
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
    #[inline]
    pub fn poll_output(&mut self) -> Option<Output<F>> {
        self.out.pop_front()
    }

    /// Whether to output [`Output::Sent`] for every frame put on the air (off at first):
    /// for a driver that traces frames. Counting needs no outputs.
    pub fn set_sent_outputs(&mut self, on: bool) {
        self.sent_outputs = on;
    }

    /// What the whole channel put on the air.
    pub fn air(&self) -> AirCounters {
        self.air
    }

    /// What link `id` put on the air, by [`Direction::index`] (also after it closed;
    /// `None` for an id never opened).
    pub fn link_air(&self, id: LinkId) -> Option<[AirCounters; 2]> {
        self.link_air.get(id.0 as usize).copied()
    }

    /// What node `node` put on the air (zero for an unknown node).
    pub fn node_air(&self, node: usize) -> AirCounters {
        self.node_air.get(node).copied().unwrap_or_default()
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
        self.link_air.push([AirCounters::default(); 2]);
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

    /// Node `from` hands `frame` to link `link` with `priority`. Returns the bytes now
    /// waiting in that link direction (the frame may already be on the air: then an
    /// [`Output::Backlog`] follows with less), for the sender's pacing.
    ///
    /// # Errors
    ///
    /// [`DropReason::LinkClosed`] if the link is not open or `from` is not one of its ends;
    /// [`DropReason::QueueFull`] for a normal or bulk frame over the queue cap. The frame is
    /// dropped then.
    pub fn enqueue<S: Scheduler>(
        &mut self,
        now: Instant,
        from: usize,
        link: LinkId,
        priority: Priority,
        frame: F,
        timers: &mut S,
    ) -> Result<usize, DropReason> {
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
        if wake {
            self.radios[radio].ready.push_back((link, d as u8));
            self.try_start(now, radio, timers);
        }
        Ok(queued_bytes)
    }

    /// A timer the channel scheduled is due.
    pub fn handle_timer<S: Scheduler>(&mut self, now: Instant, timer: Timer, timers: &mut S) {
        match timer.0 {
            TimerKind::RadioFree { radio } => self.radio_free(now, radio as usize, timers),
            TimerKind::TxDone { link, dir } => self.tx_done(now, link, dir, timers),
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
    pub fn set_model<S: Scheduler>(
        &mut self,
        now: Instant,
        model: ChannelModel,
        positions: Option<&[(f64, f64)]>,
        timers: &mut S,
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
            self.try_start(now, radio, timers);
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

    fn try_start<S: Scheduler>(&mut self, now: Instant, radio: usize, timers: &mut S) {
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
            self.link_air[link.0 as usize][d as usize].add(len, &cost);
            self.node_air[from].add(len, &cost);
            self.air.add(len, &cost);
            if self.sent_outputs {
                self.out.push_back(Output::Sent(Box::new(Sent {
                    link,
                    direction: Direction::of(d),
                    from,
                    to,
                    start: now,
                    arrival,
                    bytes: len,
                    priority,
                    cost,
                })));
            }
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
            timers.schedule(
                now + cost.airtime,
                Timer(TimerKind::RadioFree {
                    radio: radio as u32,
                }),
            );
            let timer = if cost.reset {
                TimerKind::TcpReset { link }
            } else {
                TimerKind::TxDone { link, dir: d }
            };
            timers.schedule(done, Timer(timer));
            return;
        }
    }

    fn radio_free<S: Scheduler>(&mut self, now: Instant, radio: usize, timers: &mut S) {
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
                self.try_start(now, j, timers);
            }
        }
        self.try_start(now, radio, timers);
    }

    fn tx_done<S: Scheduler>(&mut self, now: Instant, link: LinkId, d: u8, timers: &mut S) {
        let Some(l) = self.links.get_mut(link.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        let dir = &mut l.dirs[d as usize];
        let Some((frame, arrival)) = dir.in_flight.take() else {
            return;
        };
        dir.arriving.push_back(frame);
        timers.schedule(arrival, Timer(TimerKind::Arrival { link, dir: d }));
        if dir.has_queued() {
            dir.ready = true;
            let radio = dir.radio as usize;
            self.radios[radio].ready.push_back((link, d));
            self.try_start(now, radio, timers);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meshfleet_mesh::Duration;

    /// A driver for one channel: pending timers in scheduling order, outputs collected.
    struct Harness {
        ch: Channel<Vec<u8>>,
        timers: Vec<(Instant, Timer)>,
        now: Instant,
        /// (arrival time, link, receiver, frame)
        delivered: Vec<(Instant, LinkId, usize, Vec<u8>)>,
        sent: Vec<Sent>,
        backlog: Vec<(usize, LinkId, usize)>,
        dropped: Vec<(LinkId, DropReason)>,
        resets: Vec<LinkId>,
    }

    impl Harness {
        fn new(model: ChannelModel, nodes: usize, positions: Option<&[(f64, f64)]>) -> Self {
            let mut ch = Channel::new(model, nodes, positions);
            ch.set_sent_outputs(true);
            Self {
                ch,
                timers: Vec::new(),
                now: Instant::ZERO,
                delivered: Vec::new(),
                sent: Vec::new(),
                backlog: Vec::new(),
                dropped: Vec::new(),
                resets: Vec::new(),
            }
        }

        fn open(&mut self, ap: usize, sta: usize, params: LinkParams) -> LinkId {
            let seed = self.ch.next_link_id().0;
            self.ch.open_link(ap, sta, params, Rng::new(seed))
        }

        fn send(
            &mut self,
            from: usize,
            link: LinkId,
            p: Priority,
            len: usize,
            tag: u8,
        ) -> Result<usize, DropReason> {
            let r = self
                .ch
                .enqueue(self.now, from, link, p, vec![tag; len], &mut self.timers);
            self.drain();
            r
        }

        fn drain(&mut self) {
            while let Some(o) = self.ch.poll_output() {
                match o {
                    Output::Backlog {
                        node,
                        link,
                        queued_bytes,
                    } => {
                        self.backlog.push((node, link, queued_bytes));
                    }
                    Output::Sent(s) => self.sent.push(*s),
                    Output::Delivered { link, to, frame } => {
                        self.delivered.push((self.now, link, to, frame));
                    }
                    Output::Dropped { link, reason } => self.dropped.push((link, reason)),
                    Output::Reset { link } => self.resets.push(link),
                }
            }
        }

        /// Runs every timer due up to `until`, in (time, scheduling) order.
        fn run_until(&mut self, until: Instant) {
            while let Some(i) = (0..self.timers.len())
                .filter(|&i| self.timers[i].0 <= until)
                .min_by_key(|&i| (self.timers[i].0, i))
            {
                let (at, timer) = self.timers.remove(i);
                assert!(at >= self.now, "timers never go back in time");
                self.now = at;
                self.ch.handle_timer(at, timer, &mut self.timers);
                self.drain();
            }
            self.now = self.now.max(until);
        }

        fn run(&mut self) {
            self.run_until(Instant::ZERO + Duration::from_secs(3600));
            assert!(self.timers.is_empty());
        }

        fn tags(&self) -> Vec<u8> {
            self.delivered.iter().map(|d| d.3[0]).collect()
        }
    }

    fn lossless() -> LinkParams {
        LinkParams::default()
    }

    fn at_us(us: u64) -> Instant {
        Instant::ZERO + Duration::from_micros(us)
    }

    #[test]
    fn one_frame_costs_overhead_bytes_and_latency() {
        let mut h = Harness::new(ChannelModel::Independent, 2, None);
        let l = h.open(0, 1, lossless());
        assert_eq!(h.send(1, l, Priority::Normal, 131, 7), Ok(131));
        // It went on the air at once: the direction's backlog is back to zero.
        assert_eq!(h.backlog, vec![(1, l, 0)]);
        assert_eq!(h.sent.len(), 1);
        let s = h.sent[0];
        assert_eq!(
            (s.from, s.to, s.bytes, s.direction),
            (1, 0, 131, Direction::FromStation)
        );
        // 1 665 µs overhead + 131 B at 131 kB/s (1 000 µs); arrival 320 µs later.
        assert_eq!(s.cost.airtime, Duration::from_micros(2_665));
        assert_eq!(s.arrival, at_us(2_985));
        assert_eq!(
            h.ch.in_flight(l, Direction::FromStation),
            Some(&vec![7; 131])
        );
        h.run();
        assert_eq!(h.delivered, vec![(at_us(2_985), l, 0, vec![7; 131])]);
        let air = h.ch.air();
        assert_eq!(
            (air.frames, air.bytes, air.airtime),
            (1, 131, Duration::from_micros(2_665))
        );
        assert_eq!(h.ch.link_air(l).map(|a| a[1].frames), Some(1));
        assert_eq!(h.ch.node_air(1).bytes, 131);
        assert_eq!(h.ch.node_air(0).frames, 0);
    }

    #[test]
    fn control_before_normal_before_bulk_without_preempting_the_frame_on_the_air() {
        let mut h = Harness::new(ChannelModel::Independent, 2, None);
        let l = h.open(0, 1, lossless());
        // The first frame (bulk) goes on the air at once; the rest wait and leave by class.
        for (p, tag) in [
            (Priority::Bulk, 1),
            (Priority::Bulk, 2),
            (Priority::Normal, 3),
            (Priority::Bulk, 4),
            (Priority::Control, 5),
            (Priority::Normal, 6),
            (Priority::Control, 7),
        ] {
            h.send(0, l, p, 100, tag).unwrap();
        }
        h.run();
        assert_eq!(h.tags(), vec![1, 5, 7, 3, 6, 2, 4]);
        let prios: Vec<Priority> = h.sent.iter().map(|s| s.priority).collect();
        assert_eq!(prios[1], Priority::Control);
        assert_eq!(prios[6], Priority::Bulk);
    }

    #[test]
    fn the_cap_refuses_normal_and_bulk_frames_but_never_control_or_into_an_empty_queue() {
        let mut h = Harness::new(ChannelModel::Independent, 2, None);
        let l = h.open(
            0,
            1,
            LinkParams {
                queue_cap_bytes: 1000,
                ..lossless()
            },
        );
        // Queued, then on the air at once (the backlog output says so); the frame on the
        // air never counts against the cap.
        assert_eq!(h.send(0, l, Priority::Normal, 5000, 1), Ok(5000));
        assert_eq!(h.backlog.last(), Some(&(0, l, 0)));
        // Bigger than the cap, into an empty queue: accepted, or it could never be sent.
        assert_eq!(h.send(0, l, Priority::Bulk, 3000, 2), Ok(3000));
        assert_eq!(
            h.send(0, l, Priority::Normal, 10, 3),
            Err(DropReason::QueueFull)
        );
        assert_eq!(
            h.send(0, l, Priority::Bulk, 10, 4),
            Err(DropReason::QueueFull)
        );
        // Control frames always pass (the mesh's upkeep); nothing is evicted for them.
        assert_eq!(h.send(0, l, Priority::Control, 900, 5), Ok(3900));
        assert_eq!(
            h.ch.link(l)
                .map(|k| k.queued_frames(Direction::FromAccessPoint)),
            Some(2)
        );
        // The peak counts the first frame too: it was queued for an instant.
        let b = h.ch.node_backlog(0);
        assert_eq!(
            (b.bytes, b.frames, b.peak_bytes, b.peak_frames),
            (3900, 2, 5000, 2)
        );
        // The other direction has its own queue.
        assert_eq!(h.send(1, l, Priority::Normal, 10, 6), Ok(10));
        h.run();
        assert_eq!(h.tags(), vec![6, 1, 5, 2]);
        assert_eq!(DropReason::QueueFull.label(), "queue_full");
        assert_eq!(h.ch.node_backlog(0).bytes, 0);
    }

    #[test]
    fn unknown_links_and_strangers_are_refused_as_link_closed() {
        let mut h = Harness::new(ChannelModel::Independent, 3, None);
        let l = h.open(0, 1, lossless());
        assert_eq!(
            h.send(2, l, Priority::Normal, 10, 1),
            Err(DropReason::LinkClosed)
        );
        assert_eq!(
            h.send(0, LinkId(99), Priority::Normal, 10, 1),
            Err(DropReason::LinkClosed)
        );
        assert_eq!(DropReason::LinkClosed.label(), "link_closed");
        assert!(h.sent.is_empty() && h.timers.is_empty());
    }

    #[test]
    fn closing_loses_queued_and_sending_frames_now_and_propagating_ones_on_arrival() {
        let mut h = Harness::new(ChannelModel::Independent, 2, None);
        let l = h.open(0, 1, lossless());
        h.send(0, l, Priority::Normal, 100, 1).unwrap(); // on the air until 2 429 µs
        h.send(0, l, Priority::Normal, 100, 2).unwrap(); // waits
                                                         // At 2 429 µs frame 1 is done and propagates (arrives at 2 749 µs); frame 2 starts.
        h.run_until(at_us(2_500));
        let closed = h.ch.close_link(l).unwrap();
        assert_eq!((closed.ends, closed.lost_frames), ([0, 1], 1));
        h.send(0, l, Priority::Normal, 100, 3).unwrap_err();
        h.run();
        assert!(h.delivered.is_empty());
        assert_eq!(h.dropped, vec![(l, DropReason::LinkClosed)]);
        assert_eq!(h.ch.node_backlog(0).bytes, 0);
        assert!(h.ch.link(l).is_none() && h.ch.close_link(l).is_none());
        // Counters outlive the link.
        assert_eq!(h.ch.link_air(l).map(|a| a[0].frames), Some(2));
    }

    #[test]
    fn frames_of_one_direction_arrive_in_order_even_when_latency_drops() {
        let mut h = Harness::new(ChannelModel::Independent, 2, None);
        let l = h.open(
            0,
            1,
            LinkParams {
                latency: Duration::from_millis(50),
                ..lossless()
            },
        );
        for tag in 1..=3 {
            h.send(0, l, Priority::Normal, 10, tag).unwrap();
        }
        // Frame 1 is done at 1 742 µs; frame 2 goes on the air with the 50 ms latency.
        h.run_until(at_us(1_800));
        assert!(h.ch.change_link(l, &LinkChange::latency(Duration::ZERO)));
        h.run();
        assert_eq!(h.tags(), vec![1, 2, 3]);
        let arrivals: Vec<Instant> = h.delivered.iter().map(|d| d.0).collect();
        assert_eq!(arrivals[0], at_us(51_742));
        assert_eq!(arrivals[1], at_us(53_484));
        // Frame 3 leaves at 3 484 µs with no latency, but TCP keeps order: it cannot
        // arrive before frame 2.
        assert_eq!(arrivals[2], arrivals[1]);
    }

    #[test]
    fn one_radio_per_node_serialises_its_links_and_serves_control_first() {
        // Node 0 is the access point of stations 1, 2 and 3.
        for model in [ChannelModel::Independent, ChannelModel::Airtime] {
            let mut h = Harness::new(model.clone(), 4, None);
            let links: Vec<LinkId> = (1..4).map(|s| h.open(0, s, lossless())).collect();
            h.send(0, links[0], Priority::Bulk, 1000, 1).unwrap();
            h.send(0, links[1], Priority::Bulk, 1000, 2).unwrap();
            h.send(0, links[2], Priority::Control, 100, 3).unwrap();
            h.run();
            // Link k carries frame k + 1: (frame, start) in the order they went on the air.
            let starts: Vec<(usize, Instant)> = h
                .sent
                .iter()
                .map(|s| {
                    (
                        links.iter().position(|l| *l == s.link).unwrap_or(9) + 1,
                        s.start,
                    )
                })
                .collect();
            if model == ChannelModel::Independent {
                // Three transmitters: all start at once.
                assert!(
                    starts.iter().all(|(_, t)| *t == Instant::ZERO),
                    "{starts:?}"
                );
            } else {
                // One: frame 1 was already on the air; then the control frame jumps the
                // ring ahead of link 2's bulk frame, which had waited longer.
                let order: Vec<usize> = starts.iter().map(|(frame, _)| *frame).collect();
                assert_eq!(order, vec![1, 3, 2]);
                assert_eq!(starts[1].1, Instant::ZERO + h.sent[0].cost.airtime);
                assert_eq!(starts[2].1, starts[1].1 + h.sent[1].cost.airtime);
            }
            assert_eq!(h.delivered.len(), 3);
        }
    }

    #[test]
    fn carrier_sense_defers_neighbours_and_serves_the_longest_waiting_first() {
        // A line 30 m apart, interference range 40 m: 1 silences 0 and 2, not 3.
        let pos = [
            (0.0, 0.0),
            (30.0, 0.0),
            (60.0, 0.0),
            (90.0, 0.0),
            (120.0, 0.0),
        ];
        let geo = ChannelModel::Geometric {
            interference_range_m: 40.0,
        };
        let mut h = Harness::new(geo, 5, Some(&pos));
        let l01 = h.open(0, 1, lossless());
        let l12 = h.open(1, 2, lossless());
        let l23 = h.open(2, 3, lossless());
        let l34 = h.open(3, 4, lossless());
        h.send(1, l12, Priority::Normal, 1000, 1).unwrap(); // 1 transmits: 0 and 2 must wait
        h.send(2, l23, Priority::Normal, 1000, 2).unwrap(); // deferred (2 waits first)
        h.send(0, l01, Priority::Normal, 1000, 3).unwrap(); // deferred (0 waits second)
        h.send(3, l34, Priority::Normal, 1000, 4).unwrap(); // 3 is 60 m from 1: starts now
        let t1 = h.sent[0].cost.airtime;
        assert_eq!(h.sent.len(), 2);
        assert_eq!((h.sent[1].from, h.sent[1].start), (3, Instant::ZERO));
        h.run();
        let start_of = |from: usize| h.sent.iter().find(|s| s.from == from).map(|s| s.start);
        // 3's transmission silences 2 as well, until the same instant (same frame size).
        assert_eq!(start_of(2), Some(Instant::ZERO + t1));
        // 2 waited first and, once on the air, silences 1 and 3 but not 0 (60 m away):
        // 0 starts at the same moment.
        assert_eq!(start_of(0), Some(Instant::ZERO + t1));
        assert_eq!(h.delivered.len(), 4);

        // Without positions the geometric model has no interferers: all start at once.
        let mut h = Harness::new(
            ChannelModel::Geometric {
                interference_range_m: 40.0,
            },
            3,
            None,
        );
        let a = h.open(0, 1, lossless());
        let b = h.open(1, 2, lossless());
        h.send(0, a, Priority::Normal, 1000, 1).unwrap();
        h.send(1, b, Priority::Normal, 1000, 2).unwrap();
        assert!(h.sent.iter().all(|s| s.start == Instant::ZERO));
    }

    #[test]
    fn waiting_nodes_start_in_the_order_they_began_to_wait() {
        // 1 in the middle of 0 and 2 (30 m each side, 35 m range): 0 and 2 hear 1 but not
        // each other. 1 sends; 2, then 0 start to wait; when 1 ends they start in that
        // order, and 1's next frame waits until both are done.
        let pos = [(0.0, 0.0), (30.0, 0.0), (60.0, 0.0)];
        let geo = ChannelModel::Geometric {
            interference_range_m: 35.0,
        };
        let mut h = Harness::new(geo, 3, Some(&pos));
        let a = h.open(1, 0, lossless());
        let b = h.open(1, 2, lossless());
        h.send(1, a, Priority::Normal, 1000, 1).unwrap();
        h.send(2, b, Priority::Normal, 10, 2).unwrap();
        h.send(0, a, Priority::Normal, 10, 3).unwrap();
        // 1 also has a second frame waiting: it goes after everyone who waited.
        h.send(1, b, Priority::Normal, 10, 4).unwrap();
        h.run();
        let order: Vec<usize> = h.sent.iter().map(|s| s.from).collect();
        assert_eq!(order, vec![1, 2, 0, 1]);
        let t = h.sent[0].cost.airtime;
        assert_eq!(h.sent[1].start, Instant::ZERO + t);
        assert_eq!(h.sent[2].start, Instant::ZERO + t);
        // 1 must wait for both 0 and 2 to finish.
        assert!(h.sent[3].start >= h.sent[1].start + h.sent[1].cost.airtime);
    }

    #[test]
    fn loss_costs_retransmissions_and_a_hopeless_link_resets() {
        let mut h = Harness::new(ChannelModel::Independent, 2, None);
        let l = h.open(
            0,
            1,
            LinkParams {
                loss: 1.0,
                ..lossless()
            },
        );
        h.send(0, l, Priority::Normal, 100, 1).unwrap();
        h.send(0, l, Priority::Normal, 100, 2).unwrap();
        assert!(h.sent[0].cost.reset);
        assert_eq!(h.sent[0].cost.retransmissions, 12);
        h.run();
        // The reset comes after the timeouts; the link stays open until the driver closes it.
        assert_eq!(h.resets, vec![l]);
        assert!(h.delivered.is_empty());
        assert_eq!(h.ch.close_link(l).map(|c| c.lost_frames), Some(2));
        assert_eq!(h.ch.link_air(l).map(|a| a[0].retransmissions), Some(12));
    }

    #[test]
    fn switching_the_model_moves_waiting_frames_to_the_new_transmitters() {
        let mut h = Harness::new(ChannelModel::Airtime, 3, None);
        let a = h.open(0, 1, lossless());
        let b = h.open(0, 2, lossless());
        h.send(0, a, Priority::Normal, 1000, 1).unwrap();
        h.send(0, b, Priority::Normal, 1000, 2).unwrap(); // waits for node 0's radio
        h.send(0, a, Priority::Normal, 1000, 3).unwrap(); // waits behind frame 1
        assert_eq!(h.sent.len(), 1);
        h.ch.set_model(h.now, ChannelModel::Independent, None, &mut h.timers);
        h.drain();
        // Link b's direction has its own transmitter now and starts at once; link a's
        // waits for its frame on the air as before.
        assert_eq!(h.sent.len(), 2);
        assert_eq!((h.sent[1].link, h.sent[1].start), (b, Instant::ZERO));
        assert_eq!(h.ch.model(), &ChannelModel::Independent);
        h.run();
        assert_eq!(h.delivered.len(), 3);
    }

    #[test]
    fn timers_say_why_they_wake() {
        let mut h = Harness::new(ChannelModel::Independent, 2, None);
        let l = h.open(0, 1, lossless());
        h.send(0, l, Priority::Normal, 10, 1).unwrap();
        let reasons: Vec<TimerReason> = h.timers.iter().map(|(_, t)| t.reason()).collect();
        assert_eq!(reasons, vec![TimerReason::RadioFree, TimerReason::TxDone]);
        assert_eq!(h.timers[0].1.link(), None);
        assert_eq!(h.timers[1].1.link(), Some(l));
        assert_eq!(Payload::len(&vec![0u8; 3]), 3);
        assert!(Payload::is_empty(&std::rc::Rc::<[u8]>::from(&[][..])));
    }
}
