//! [`MeshHandle`]: the application's side of a running runtime.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use meshfleet_mesh::{Instant, LinkId, LinkRole, Node, NodeId, NodeTree, Stats};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::event::RuntimeEvent;
use crate::owner::Command;

/// The runtime has stopped (after [`MeshHandle::shutdown`], or because its task ended).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the mesh runtime has stopped")]
pub struct Stopped;

/// Why [`MeshHandle::send_single`] or [`MeshHandle::start_delay_measurement`] failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No link leads to the destination (the library's `sendSingle` returning false).
    /// Nothing was sent.
    #[error("no route to node {0}")]
    NoRoute(NodeId),
    /// The node refused for another reason.
    #[error("{0}")]
    Refused(meshfleet_mesh::SendError),
    /// The runtime has stopped.
    #[error(transparent)]
    Stopped(#[from] Stopped),
}

impl From<meshfleet_mesh::SendError> for SendError {
    fn from(e: meshfleet_mesh::SendError) -> Self {
        match e {
            meshfleet_mesh::SendError::NoRoute(id) => Self::NoRoute(id),
            other => Self::Refused(other),
        }
    }
}

/// Counters of the node and of the runtime around it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeStats {
    /// The node's own counters (frames, drops by reason, closes by reason, ...).
    pub node: Stats,
    /// Links open now (synced or not).
    pub links: usize,
    /// Bytes waiting in all send queues now.
    pub queued_bytes: usize,
    /// Normal-priority frames refused because their link's send queue was full.
    pub queue_dropped: u64,
    /// Normal-priority frames evicted from a full queue by high-priority ones.
    pub queue_evicted: u64,
    /// High-priority frames refused (the queue held only high-priority frames).
    pub queue_dropped_high: u64,
    /// Links closed because their send queue stayed full for the stall timeout.
    pub closed_stalled: u64,
    /// Accepted connections refused because `max_links` links were open and none could
    /// be evicted.
    pub accepts_refused: u64,
    /// Accepted connections refused because their address had `max_unsynced_per_addr`
    /// unsynced links and none could be evicted.
    pub accepts_refused_per_addr: u64,
    /// Unsynced links closed to make room for a new connection.
    pub links_evicted: u64,
    /// Transmits for a link that had already closed (normal during teardown).
    pub transmits_after_close: u64,
}

/// Shared by all clones of one handle.
struct Shared {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<RuntimeEvent>,
    /// Subscribed before the runtime started; handed to the first `subscribe` call so
    /// the application can see the very first events (listening, early connections).
    first_events: Mutex<Option<broadcast::Receiver<RuntimeEvent>>>,
    listen_addr: Option<SocketAddr>,
    node_id: NodeId,
}

/// A cloneable handle to a running [`crate::Runtime`].
///
/// Every method talks to the task that owns the node, over a bounded channel: calls wait
/// when the owner is busy, never queue without bound. The runtime stops when
/// [`MeshHandle::shutdown`] is called or when every handle has been dropped.
#[derive(Clone)]
pub struct MeshHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MeshHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshHandle")
            .field("node_id", &self.shared.node_id)
            .field("listen_addr", &self.shared.listen_addr)
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl MeshHandle {
    pub(crate) fn new(
        commands: mpsc::Sender<Command>,
        events: broadcast::Sender<RuntimeEvent>,
        first_events: broadcast::Receiver<RuntimeEvent>,
        listen_addr: Option<SocketAddr>,
        node_id: NodeId,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                commands,
                events,
                first_events: Mutex::new(Some(first_events)),
                listen_addr,
                node_id,
            }),
        }
    }

    /// Our node id.
    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    /// The address the listener is bound to (with the real port if 0 was configured).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.shared.listen_addr
    }

    /// Whether the runtime has stopped.
    pub fn is_stopped(&self) -> bool {
        self.shared.commands.is_closed()
    }

    /// Events from now on.
    ///
    /// The *first* call returns a receiver that was subscribed before the runtime
    /// started, so it also holds the first events (up to `event_capacity` of them);
    /// later calls see events from the moment of the call. A receiver that falls more
    /// than `event_capacity` events behind gets [`broadcast::error::RecvError::Lagged`]
    /// and loses the oldest ones: events never queue without bound.
    pub fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        let first = self
            .shared
            .first_events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        first.unwrap_or_else(|| self.shared.events.subscribe())
    }

    /// Runs `f` in the task that owns the node, with the current time, then carries out
    /// whatever it produced (frames, events). This is how plugins are driven
    /// (`node.with_plugin::<Ota, _>(now, |ota, ctx| ...)`).
    ///
    /// `f` runs between two inputs, so it sees a consistent node; it must be quick
    /// (it holds up all links) and must not panic (a panic stops the runtime).
    pub async fn with_node<R, F>(&self, f: F) -> Result<R, Stopped>
    where
        F: FnOnce(&mut Node, Instant) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(move |node: &mut Node, now: Instant| {
            // The caller may have given up waiting; the result is then of no use.
            let _ = tx.send(f(node, now));
        });
        self.command(Command::Node(job)).await?;
        rx.await.map_err(|_| Stopped)
    }

    /// Sends `text` to node `dest` (SINGLE, routed along the tree).
    ///
    /// Fails with [`SendError::NoRoute`] when no link leads there, like the library's
    /// `sendSingle` returning false. Success means the frame was handed to the first
    /// hop's send queue, not that it arrived.
    pub async fn send_single(
        &self,
        dest: NodeId,
        text: impl Into<String>,
    ) -> Result<(), SendError> {
        let text = text.into();
        self.with_node(move |node, now| node.send_single(now, dest, &text))
            .await?
            .map_err(SendError::from)
    }

    /// Sends `text` to every node (BROADCAST). Returns the number of links it left on
    /// (0 when we have no synced neighbour).
    pub async fn broadcast(&self, text: impl Into<String>) -> Result<usize, Stopped> {
        let text = text.into();
        self.with_node(move |node, now| node.send_broadcast(now, &text))
            .await
    }

    /// Starts a TIME_DELAY measurement to `dest`; the result arrives as
    /// [`RuntimeEvent::Delay`].
    pub async fn start_delay_measurement(&self, dest: NodeId) -> Result<(), SendError> {
        self.with_node(move |node, now| node.start_delay_measurement(now, dest))
            .await?
            .map_err(SendError::from)
    }

    /// Every other node we can reach, sorted (`getNodeList`).
    pub async fn nodes(&self) -> Result<Vec<NodeId>, Stopped> {
        self.with_node(|node, _| node.nodes()).await
    }

    /// Our view of the mesh (`subConnectionJson`; serialize it with serde for the
    /// library's JSON shape).
    pub async fn topology(&self) -> Result<NodeTree, Stopped> {
        self.with_node(|node, _| node.topology()).await
    }

    /// Mesh time now (µs; wraps like the library's uint32 `getNodeTime`).
    pub async fn mesh_time(&self) -> Result<u32, Stopped> {
        self.with_node(|node, now| node.mesh_time(now)).await
    }

    /// Counters.
    pub async fn stats(&self) -> Result<RuntimeStats, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Stats(tx)).await?;
        rx.await.map_err(|_| Stopped)
    }

    /// Adds an already connected byte stream as a link (any transport: a serial port,
    /// TLS, or `tokio::io::duplex` in tests). `role` says which side we are; `label`
    /// names the peer in events and logs. The runtime closes the stream when the link
    /// ends. Returns the link id.
    pub async fn attach<S>(
        &self,
        stream: S,
        role: LinkRole,
        label: impl Into<String>,
    ) -> Result<LinkId, Stopped>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Attach {
            stream: Box::new(stream),
            role,
            label: label.into(),
            reply: tx,
        })
        .await?;
        rx.await.map_err(|_| Stopped)
    }

    /// Stops the runtime: stops listening and reconnecting, closes every link (the
    /// peers see a FIN and report the node gone at once), and returns when that is done.
    /// Calling it again, or on a stopped runtime, returns at once.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.command(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn command(&self, c: Command) -> Result<(), Stopped> {
        self.shared.commands.send(c).await.map_err(|_| Stopped)
    }
}
