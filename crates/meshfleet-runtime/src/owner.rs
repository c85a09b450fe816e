//! The owner task: the only place the [`Node`] lives. It turns socket inputs, commands
//! and timer expiries into node inputs, drains the node's outputs after each, and keeps
//! the per-link send queues.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use meshfleet_mesh::{Event, Instant, LinkId, LinkRole, Node, NodeId, Priority, Transmit};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use crate::config::RuntimeConfig;
use crate::event::{DisconnectReason, DropKind, MessageKind, PluginData, RuntimeEvent};
use crate::handle::RuntimeStats;
use crate::io::{read_loop, write_loop, Input};
use crate::queue::{Push, SendQueue};
use crate::ratelimit::LogLimiter;

/// Most bytes handed to a writer at once. Several small frames go out in one write (one
/// syscall, one segment with TCP_NODELAY); a high-priority frame waits at most for one
/// batch (or one frame, if that frame alone is bigger).
const WRITE_BATCH: usize = 16 * 1024;

/// How often a peer-triggered warning may be logged per link.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// A closure run on the node by [`crate::MeshHandle::with_node`].
pub(crate) type NodeJob = Box<dyn FnOnce(&mut Node, Instant) + Send>;

/// Any byte stream [`crate::MeshHandle::attach`] accepts.
pub(crate) trait LinkStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> LinkStream for T {}

/// What [`crate::MeshHandle`] asks of the owner.
pub(crate) enum Command {
    Node(NodeJob),
    Stats(oneshot::Sender<RuntimeStats>),
    Attach {
        stream: Box<dyn LinkStream>,
        role: LinkRole,
        label: String,
        reply: oneshot::Sender<LinkId>,
    },
    Shutdown(oneshot::Sender<()>),
}

/// One open connection, as the owner sees it.
struct Link {
    role: LinkRole,
    /// Address or label, for events and logs.
    peer: String,
    /// Set by the node's `NewConnection`.
    node_id: Option<NodeId>,
    /// The remote address of a connection we accepted (the per-address limit's key).
    accepted_from: Option<IpAddr>,
    /// When the connection was opened.
    opened: tokio::time::Instant,
    /// Whether any bytes have arrived on it.
    heard: bool,
    queue: SendQueue,
    /// To the writer task; capacity 1, and only used when `writing` is false, so a send
    /// never fails for lack of room.
    writer: mpsc::Sender<Vec<u8>>,
    /// The writer holds a batch.
    writing: bool,
    /// Bytes of the batch the writer is writing now (0 when idle).
    in_flight: usize,
    tasks: [AbortHandle; 2],
    /// Since when the queue has been full (refused or evicted a frame), until it drains
    /// to half its cap.
    full_since: Option<tokio::time::Instant>,
    overflow_log: LogLimiter,
    bad_frame_log: LogLimiter,
    /// Why the runtime is closing it, when the runtime knows better than the node.
    close_reason: Option<DisconnectReason>,
    /// Dropped with the link: tells its connector to reconnect.
    _connector: Option<oneshot::Sender<()>>,
}

impl Link {
    fn mark_full(&mut self, now: tokio::time::Instant) {
        self.full_since.get_or_insert(now);
    }

    /// How readily this link gives its slot to a new connection: `None` if never (synced,
    /// or one we opened, or talking and within `grace`); otherwise lower is sooner.
    /// Silent links go first (an honest station speaks as it connects), oldest first.
    fn eviction_rank(
        &self,
        now: tokio::time::Instant,
        grace: Duration,
    ) -> Option<(bool, tokio::time::Instant)> {
        if self.node_id.is_some() || self.accepted_from.is_none() {
            return None;
        }
        if self.heard && now.duration_since(self.opened) < grace {
            return None;
        }
        Some((self.heard, self.opened))
    }

    fn abort_tasks(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

enum Step {
    Command(Option<Command>),
    Input(Input),
    Timer,
}

pub(crate) struct Owner {
    node: Node,
    /// `Instant::ZERO` of the node.
    epoch: tokio::time::Instant,
    cfg: RuntimeConfig,
    links: BTreeMap<LinkId, Link>,
    next_link: u64,
    inputs_tx: mpsc::Sender<Input>,
    inputs: mpsc::Receiver<Input>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<RuntimeEvent>,
    counters: RuntimeStats,
    /// Listener and connector tasks.
    background: Vec<AbortHandle>,
    refused_log: LogLimiter,
}

impl Drop for Owner {
    /// Whatever way the owner ends (shutdown, last handle dropped, a panicking
    /// `with_node` closure), no socket task outlives it.
    fn drop(&mut self) {
        for t in &self.background {
            t.abort();
        }
        for l in self.links.values() {
            l.abort_tasks();
        }
    }
}

/// The channels the owner is built from.
pub(crate) struct OwnerChannels {
    pub(crate) inputs_tx: mpsc::Sender<Input>,
    pub(crate) inputs: mpsc::Receiver<Input>,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) events: broadcast::Sender<RuntimeEvent>,
}

impl Owner {
    pub(crate) fn new(
        node: Node,
        cfg: RuntimeConfig,
        epoch: tokio::time::Instant,
        ch: OwnerChannels,
        background: Vec<AbortHandle>,
    ) -> Self {
        Self {
            node,
            epoch,
            cfg,
            links: BTreeMap::new(),
            next_link: 1,
            inputs_tx: ch.inputs_tx,
            inputs: ch.inputs,
            commands: ch.commands,
            events: ch.events,
            counters: RuntimeStats::default(),
            background,
            refused_log: LogLimiter::new(LOG_EVERY),
        }
    }

    /// Node time: microseconds since the runtime started (tokio's clock, so paused-time
    /// tests control it).
    fn now(&self) -> Instant {
        let us = self.epoch.elapsed().as_micros();
        Instant::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
    }

    fn to_tokio(&self, t: Instant) -> tokio::time::Instant {
        self.epoch + Duration::from_micros(t.as_micros())
    }

    fn emit(&self, e: RuntimeEvent) {
        // No subscriber is not an error: events are for whoever listens.
        let _ = self.events.send(e);
    }

    pub(crate) async fn run(mut self) {
        let sleep = tokio::time::sleep_until(self.epoch);
        tokio::pin!(sleep);
        loop {
            let deadline = self.next_deadline();
            if let Some(d) = deadline {
                sleep.as_mut().reset(d);
            }
            let step = tokio::select! {
                c = self.commands.recv() => Step::Command(c),
                Some(i) = self.inputs.recv() => Step::Input(i),
                () = &mut sleep, if deadline.is_some() => Step::Timer,
            };
            match step {
                Step::Command(Some(Command::Shutdown(done))) => {
                    self.teardown();
                    let _ = done.send(());
                    return;
                }
                // Every handle is gone: nobody can use or stop the mesh any more.
                Step::Command(None) => {
                    self.teardown();
                    return;
                }
                Step::Command(Some(c)) => self.on_command(c),
                Step::Input(i) => self.on_input(i),
                Step::Timer => self.on_timer(),
            }
            self.drain();
        }
    }

    /// The earliest of the node's timeout and the stall deadlines.
    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        let node = self.node.poll_timeout().map(|t| self.to_tokio(t));
        let stall = self
            .links
            .values()
            .filter_map(|l| l.full_since)
            .min()
            .map(|t| t + self.cfg.stall_timeout);
        match (node, stall) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Node(job) => {
                let now = self.now();
                job(&mut self.node, now);
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            Command::Attach {
                stream,
                role,
                label,
                reply,
            } => {
                let (r, w) = tokio::io::split(stream);
                let id = self.add_link(r, w, role, label, None);
                let _ = reply.send(id);
            }
            // Handled in `run`.
            Command::Shutdown(_) => {}
        }
    }

    fn stats(&self) -> RuntimeStats {
        RuntimeStats {
            node: self.node.stats().clone(),
            links: self.links.len(),
            queued_bytes: self.links.values().map(|l| l.queue.bytes()).sum(),
            ..self.counters.clone()
        }
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Accepted { stream, addr } => {
                if !self.make_room(addr) {
                    return; // dropping the stream closes it
                }
                let (r, w) = stream.into_split();
                let id = self.add_link(r, w, LinkRole::AccessPoint, addr.to_string(), None);
                if let Some(l) = self.links.get_mut(&id) {
                    l.accepted_from = Some(addr.ip());
                }
            }
            Input::Connected { stream, addr, done } => {
                let (r, w) = stream.into_split();
                self.add_link(r, w, LinkRole::Station, addr.to_string(), Some(done));
            }
            Input::Bytes { link, data } => {
                // Bytes from a link we already closed are stale: the node must not see them.
                if let Some(l) = self.links.get_mut(&link) {
                    l.heard = true;
                    let now = self.now();
                    self.node.handle_bytes(now, link, &data);
                }
            }
            Input::Written { link } => {
                if let Some(l) = self.links.get_mut(&link) {
                    l.writing = false;
                    l.in_flight = 0;
                }
            }
            Input::Closed { link, reason } => {
                if let Some(l) = self.links.get_mut(&link) {
                    l.close_reason.get_or_insert(reason);
                    let now = self.now();
                    self.node.handle_link_down(now, link);
                    self.finish_unless_closed(link);
                }
            }
        }
    }

    /// Finds a slot for a connection accepted from `addr` under the per-address and total
    /// limits, evicting unsynced links if need be. Returns false (and counts and logs it)
    /// if the connection must be refused.
    fn make_room(&mut self, addr: std::net::SocketAddr) -> bool {
        let ip = addr.ip();
        let pending = self
            .links
            .values()
            .filter(|l| l.accepted_from == Some(ip) && l.node_id.is_none())
            .count();
        if pending >= self.cfg.max_unsynced_per_addr && !self.evict(Some(ip)) {
            self.counters.accepts_refused_per_addr += 1;
            if let Some(suppressed) = self.refused_log.check(tokio::time::Instant::now()) {
                warn!(peer = %addr, max = self.cfg.max_unsynced_per_addr, suppressed,
                    "refusing connection: too many unsynced links from this address");
            }
            return false;
        }
        if self.links.len() >= self.cfg.max_links && !self.evict(None) {
            self.counters.accepts_refused += 1;
            if let Some(suppressed) = self.refused_log.check(tokio::time::Instant::now()) {
                warn!(peer = %addr, max_links = self.cfg.max_links, suppressed,
                    "refusing connection: too many links");
            }
            return false;
        }
        true
    }

    /// Closes the most evictable unsynced link (from `ip`, if given); false if none is.
    fn evict(&mut self, ip: Option<IpAddr>) -> bool {
        let now = tokio::time::Instant::now();
        let grace = self.cfg.unsynced_grace;
        let victim = self
            .links
            .iter()
            .filter(|(_, l)| ip.is_none() || l.accepted_from == ip)
            .filter_map(|(id, l)| l.eviction_rank(now, grace).map(|r| (r, *id)))
            .min()
            .map(|(_, id)| id);
        let Some(id) = victim else {
            return false;
        };
        if let Some(l) = self.links.get(&id) {
            debug!(link = id.0, peer = %l.peer, heard = l.heard, "evicting unsynced link");
        }
        self.counters.links_evicted += 1;
        self.close(id, DisconnectReason::Evicted);
        true
    }

    fn add_link<R, W>(
        &mut self,
        reader: R,
        writer: W,
        role: LinkRole,
        peer: String,
        connector: Option<oneshot::Sender<()>>,
    ) -> LinkId
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let id = LinkId(self.next_link);
        self.next_link += 1;
        let (writer_tx, writer_rx) = mpsc::channel(1);
        let reader_task = tokio::spawn(read_loop(id, reader, self.inputs_tx.clone()));
        let writer_task = tokio::spawn(write_loop(id, writer, writer_rx, self.inputs_tx.clone()));
        info!(link = id.0, %peer, ?role, "connection open");
        self.emit(RuntimeEvent::Connected {
            link: id,
            peer: peer.clone(),
            role,
        });
        self.links.insert(
            id,
            Link {
                role,
                peer,
                node_id: None,
                accepted_from: None,
                opened: tokio::time::Instant::now(),
                heard: false,
                queue: SendQueue::new(self.cfg.queue_cap),
                writer: writer_tx,
                writing: false,
                in_flight: 0,
                tasks: [reader_task.abort_handle(), writer_task.abort_handle()],
                full_since: None,
                overflow_log: LogLimiter::new(LOG_EVERY),
                bad_frame_log: LogLimiter::new(LOG_EVERY),
                close_reason: None,
                _connector: connector,
            },
        );
        let now = self.now();
        self.node.handle_link_up(now, id, role);
        id
    }

    fn on_timer(&mut self) {
        let now = self.now();
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now);
        }
        let wall = tokio::time::Instant::now();
        let stalled: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| {
                l.full_since
                    .is_some_and(|t| wall.duration_since(t) >= self.cfg.stall_timeout)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stalled {
            if let Some(l) = self.links.get(&id) {
                warn!(link = id.0, peer = %l.peer, queued = l.queue.bytes(),
                    "closing link: peer has not read for {:?}", self.cfg.stall_timeout);
            }
            self.counters.closed_stalled += 1;
            self.close(id, DisconnectReason::Stalled);
        }
    }

    /// Closes a link on the runtime's initiative, through the node so that it updates
    /// its layout and tells the rest of the mesh.
    fn close(&mut self, link: LinkId, reason: DisconnectReason) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        l.close_reason = Some(reason);
        let now = self.now();
        self.node.close_link(now, link);
        self.finish_unless_closed(link);
    }

    /// Processes the node's events now (the node reports the closure as `LinkClosed`),
    /// and tears the link down here if the node did not know it.
    fn finish_unless_closed(&mut self, link: LinkId) {
        self.drain_outputs();
        if self.links.contains_key(&link) {
            // Both callers set `close_reason`, which takes precedence over this one.
            self.finish_link(link, DisconnectReason::Shutdown, None);
        }
    }

    fn teardown(&mut self) {
        for t in self.background.drain(..) {
            t.abort();
        }
        let ids: Vec<LinkId> = self.links.keys().copied().collect();
        for id in ids {
            self.close(id, DisconnectReason::Shutdown);
        }
        info!("runtime stopped");
    }

    /// Drains the node's outputs, then feeds idle writers.
    fn drain(&mut self) {
        self.drain_outputs();
        let ids: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| !l.writing && !l.queue.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.pump(id);
        }
    }

    fn drain_outputs(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(t) = self.node.poll_transmit() {
                progressed = true;
                self.enqueue(t);
            }
            while let Some(e) = self.node.poll_event() {
                progressed = true;
                self.on_node_event(e);
            }
            if !progressed {
                self.report_backlogs();
                return;
            }
        }
    }

    /// Tells the node how many bytes wait on each link (queued + being written), so
    /// plugins that pace bulk data (OTA) back off before the queue fills.
    fn report_backlogs(&mut self) {
        for (id, l) in &self.links {
            self.node
                .set_link_backlog(*id, l.queue.bytes() + l.in_flight);
        }
    }

    fn enqueue(&mut self, t: Transmit) {
        let Some(l) = self.links.get_mut(&t.link) else {
            self.counters.transmits_after_close += 1;
            return;
        };
        let len = t.frame.len();
        let outcome = l.queue.push(t.frame, t.priority);
        let wall = tokio::time::Instant::now();
        match outcome {
            Push::Queued => return,
            Push::QueuedAfterEvicting(n) => {
                self.counters.queue_evicted += n as u64;
                debug!(
                    link = t.link.0,
                    evicted = n,
                    "high-priority frame evicted queued frames"
                );
            }
            Push::Dropped if t.priority == Priority::Control => {
                self.counters.queue_dropped_high += 1;
                debug!(
                    link = t.link.0,
                    len, "send queue full: high-priority frame dropped"
                );
            }
            Push::Dropped => {
                self.counters.queue_dropped += 1;
                debug!(link = t.link.0, len, "send queue full: frame dropped");
            }
        }
        l.mark_full(wall);
        if let Some(suppressed) = l.overflow_log.check(wall) {
            warn!(link = t.link.0, peer = %l.peer, queued = l.queue.bytes(), cap = l.queue.cap(),
                suppressed, "send queue full: dropping frames (peer too slow)");
        }
    }

    /// Hands the writer of `link` its next batch, if it is idle.
    fn pump(&mut self, link: LinkId) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if l.writing {
            return;
        }
        let Some(mut batch) = l.queue.pop() else {
            return;
        };
        while let Some(next) = l.queue.peek_len() {
            if batch.len() + next > WRITE_BATCH {
                break;
            }
            if let Some(f) = l.queue.pop() {
                batch.extend_from_slice(&f);
            }
        }
        // Cannot be full (see `Link::writer`); if the writer has ended, its `Closed`
        // input is on its way and the batch is moot.
        let len = batch.len();
        if l.writer.try_send(batch).is_ok() {
            l.writing = true;
            l.in_flight = len;
        }
        if l.full_since.is_some() && l.queue.bytes() <= l.queue.cap() / 2 {
            l.full_since = None;
        }
    }

    fn on_node_event(&mut self, e: Event) {
        match e {
            Event::NewConnection { link, peer } => {
                if let Some(l) = self.links.get_mut(&link) {
                    l.node_id = Some(peer);
                    info!(link = link.0, node = %peer, addr = %l.peer, "link up");
                }
                self.emit(RuntimeEvent::NewConnection {
                    node_id: peer,
                    link,
                });
            }
            Event::LinkClosed { link, peer, reason } => {
                self.finish_link(link, DisconnectReason::Node(reason), peer);
            }
            Event::NodeListChanged { nodes } => {
                debug!(?nodes, "node list changed");
                self.emit(RuntimeEvent::Nodes { nodes });
            }
            Event::Received {
                from,
                msg,
                delivery,
            } => {
                let kind = match delivery {
                    meshfleet_mesh::Delivery::Single => MessageKind::Single,
                    meshfleet_mesh::Delivery::Broadcast => MessageKind::Broadcast,
                };
                self.emit(RuntimeEvent::Received { from, msg, kind });
            }
            Event::TimeAdjusted { offset, mesh_time } => {
                debug!(offset, mesh_time, "time adjusted");
                self.emit(RuntimeEvent::TimeAdjusted { offset, mesh_time });
            }
            Event::DelayMeasured { node, delay_us } => {
                self.emit(RuntimeEvent::Delay {
                    node_id: node,
                    us: delay_us,
                });
            }
            Event::FrameDropped { link, reason } => {
                debug!(link = link.0, %reason, "frame dropped");
                if let Some(l) = self.links.get_mut(&link) {
                    if let Some(suppressed) = l.bad_frame_log.check(tokio::time::Instant::now()) {
                        warn!(link = link.0, peer = %l.peer, node = ?l.node_id, %reason,
                            suppressed, "dropping frame from peer");
                    }
                }
                self.emit(RuntimeEvent::FrameDropped {
                    link,
                    reason: DropKind::from(&reason),
                    detail: reason.to_string(),
                });
            }
            Event::Plugin { plugin, event } => {
                self.emit(RuntimeEvent::Plugin {
                    plugin: plugin.to_owned(),
                    data: PluginData::new(event),
                });
            }
            other => debug!(event = ?other, "node event not forwarded"),
        }
    }

    /// Removes a link the node has closed: stops its tasks (which closes the socket),
    /// tells subscribers, and, by dropping it, wakes its connector.
    fn finish_link(&mut self, link: LinkId, node_reason: DisconnectReason, peer: Option<NodeId>) {
        let Some(mut l) = self.links.remove(&link) else {
            return;
        };
        l.abort_tasks();
        let reason = l.close_reason.take().unwrap_or(node_reason);
        let node_id = peer.or(l.node_id);
        let detail = reason.to_string();
        match node_id {
            Some(node) => {
                info!(link = link.0, %node, addr = %l.peer, role = ?l.role, %reason, "link down");
            }
            None => {
                info!(link = link.0, addr = %l.peer, role = ?l.role, %reason, "connection closed")
            }
        }
        self.emit(RuntimeEvent::Disconnected {
            link,
            peer: l.peer.clone(),
            node_id,
            reason: reason.end(),
            detail: detail.clone(),
        });
        // Like the library, only a neighbour that had synced is reported as dropped.
        if let Some(node_id) = peer {
            self.emit(RuntimeEvent::DroppedConnection {
                node_id,
                link,
                reason: reason.end(),
                detail,
            });
        }
    }
}
