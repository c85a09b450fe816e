//! The tokio TCP driver for [`meshfleet_mesh::Node`].
//!
//! The node is a sans-IO state machine; this crate gives it sockets and a clock, and
//! gives the application a cloneable [`MeshHandle`].
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use meshfleet_mesh::{Config, Node, NodeId};
//! use meshfleet_runtime::{Runtime, RuntimeConfig, RuntimeEvent};
//!
//! let node = Node::new(Config::new(NodeId(1001)));
//! let cfg = RuntimeConfig::default()
//!     .with_listen("0.0.0.0:5555".parse()?)
//!     .with_connect("10.0.0.1:5555");
//! let (mesh, task) = Runtime::start(node, cfg).await?;
//! let mut events = mesh.subscribe();
//! while let Ok(e) = events.recv().await {
//!     if let RuntimeEvent::Received { from, msg, .. } = e {
//!         mesh.send_single(from, format!("echo: {msg}")).await?;
//!     }
//! }
//! mesh.shutdown().await;
//! task.await?;
//! # Ok(()) }
//! ```
//!
//! # Tasks
//!
//! * **One owner task** owns the [`meshfleet_mesh::Node`]; no lock guards protocol
//!   state. It waits for the first of: a command from a [`MeshHandle`], an input from a
//!   socket task, or the node's [`poll_timeout`](meshfleet_mesh::Node::poll_timeout).
//!   After *every* one it drains the node's outputs until empty (transmits go to send
//!   queues, events to subscribers; `LinkClosed` closes the socket), then hands idle
//!   writers their next batch. This is the run loop documented on the node.
//! * **A listener task** (optional) accepts connections: they become
//!   [`LinkRole::AccessPoint`](meshfleet_mesh::LinkRole::AccessPoint) links, like the
//!   library's TCP server.
//! * **A connector task per target** keeps one outgoing connection
//!   ([`LinkRole::Station`](meshfleet_mesh::LinkRole::Station)) open: after a failed
//!   attempt or a lost link it waits an exponentially growing, jittered delay (0.5 s
//!   doubling to 30 s, drawn from `[d/2, d]`), reset once a link has stayed up for
//!   15 s ([`BackoffConfig`]).
//! * **A reader and a writer task per link.** The reader hands the owner chunks of at
//!   most 16 KiB, which the owner passes to `handle_bytes`. The writer holds at most
//!   one batch; it asks the owner for the next one when done.
//!
//! Both sides set TCP_NODELAY: the library's AP side does, and with Nagle on either side
//! a frame that follows a small one waits for a delayed ACK (a 40 ms stall).
//!
//! # Time
//!
//! The node's [`Instant`](meshfleet_mesh::Instant) is microseconds since the runtime
//! started, read from [`tokio::time::Instant`], so tests can run the runtime under
//! tokio's paused clock (over [`MeshHandle::attach`]ed in-memory streams).
//!
//! # Send queues
//!
//! Each link has a send queue in the owner task, capped in bytes
//! ([`RuntimeConfig::queue_cap`], default 256 KiB):
//!
//! * **Priority.** Three FIFOs, one per [`meshfleet_mesh::Priority`]: control frames (the
//!   node marks NODE_SYNC_REPLY and TIME_SYNC so, as the library marks them high
//!   priority) go ahead of queued normal frames, and bulk frames (OTA
//!   chunks) go only when nothing else waits, so a campaign never delays the mesh's
//!   upkeep or the application. No frame interrupts one being written: frames are handed
//!   to the writer whole, in batches of at most 16 KiB (a single larger frame goes alone),
//!   so a control frame waits for at most one batch.
//! * **Overflow.** When a normal or bulk frame does not fit, it is dropped and counted
//!   ([`RuntimeStats::queue_dropped`]). When a control frame does not fit, the oldest bulk,
//!   then normal frames are evicted until it does ([`RuntimeStats::queue_evicted`]); if
//!   only control frames are queued, it is dropped
//!   ([`RuntimeStats::queue_dropped_high`]). A frame larger than the cap is accepted
//!   only into an empty queue, so a link's queue never holds more than
//!   `max(queue_cap, one frame)`. Drops are logged at `debug` each and at `warn` at
//!   most once per 5 s per link, with the count of the ones not logged.
//! * **Stalls.** A queue is *full* from the first frame it refuses or evicts until it
//!   drains to half its cap. A link whose queue stays full for
//!   [`RuntimeConfig::stall_timeout`] (30 s) is closed with reason
//!   `send_queue_stalled`: its peer has stopped reading. (A peer that hangs without
//!   filling the queue is caught by the node's node-sync timeout.)
//!
//! # Link slots
//!
//! At most [`RuntimeConfig::max_links`] links (64) are open. A peer that connects and
//! never completes node sync holds a slot until the node's own timeouts close it (20 s
//! on the accepting side, as in the library), so 63 idle peers, or a connection flood,
//! could keep an honest node out. Slots therefore go to nodes before connections:
//!
//! * **Eviction.** When an accepted connection finds every slot taken, the runtime closes
//!   an *evictable* link to make room (reason `evicted_unsynced`): one we accepted that
//!   has not completed node sync, and either has sent nothing at all (an honest station
//!   sends its node sync as it connects) or has been unsynced for longer than
//!   [`RuntimeConfig::unsynced_grace`] (2 s). Silent links go first, then the oldest.
//!   Synced links and links we opened are never evicted. With no evictable link, the
//!   new connection is closed ([`RuntimeStats::accepts_refused`]).
//! * **Per address.** At most [`RuntimeConfig::max_unsynced_per_addr`] (8) unsynced links
//!   accepted from one IP address; a connection over the limit evicts that address's
//!   most evictable one, or is closed ([`RuntimeStats::accepts_refused_per_addr`]). A
//!   flood from one host therefore churns through its own few slots and leaves the rest
//!   alone. Synced links do not count: many honest nodes may share one host.
//!
//! # Bounded memory
//!
//! Nothing grows with a peer's behaviour: send queues as above; the channel from socket
//! tasks to the owner holds at most 64 inputs (64 × 16 KiB of read data), and a reader
//! that finds it full stops reading, so TCP flow control pushes back on the peer; each
//! writer channel holds one batch; handle commands go through a channel of 64; events
//! through a [`tokio::sync::broadcast`] ring of [`RuntimeConfig::event_capacity`] (slow
//! subscribers lose the oldest); at most [`RuntimeConfig::max_links`] links; frames are
//! capped by the node's `max_frame_len` before they are buffered.
//!
//! # Logging
//!
//! With [`tracing`]: link up/down with the reason at `info`, connect failures at `warn`,
//! frames dropped (bad input or full queue) at `debug`, plus a per-link `warn` at most
//! every 5 s so a misbehaving peer cannot flood the log.

mod backoff;
mod config;
mod event;
mod handle;
mod io;
mod owner;
mod queue;
mod ratelimit;

use std::hash::{BuildHasher, RandomState};
use std::io as stdio;
use std::net::SocketAddr;

use meshfleet_mesh::{Node, NodeId, Rng};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tracing::info;

pub use config::{BackoffConfig, RuntimeConfig, DEFAULT_QUEUE_CAP};
pub use event::{DropKind, JsonEvent, LinkEnd, MessageKind, PluginData, RuntimeEvent};
pub use handle::{MeshHandle, RuntimeStats, SendError, Stopped};

use crate::io::{accept_loop, Connector};
use crate::owner::{Owner, OwnerChannels};

/// Inputs buffered between the socket tasks and the owner. Times [`io::READ_CHUNK`],
/// this bounds the read data in flight.
const INPUT_CAPACITY: usize = 64;

/// Commands buffered between handles and the owner.
const COMMAND_CAPACITY: usize = 64;

/// Why [`Runtime::start`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The node's id is 0, which painlessMesh reserves for "not synced yet".
    #[error("node id 0 is reserved (it means \"unknown\" on the wire); pick another")]
    ZeroNodeId,
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS's reason.
        source: stdio::Error,
    },
    /// The node's plugins could not be composed (two claim one package type).
    #[error("{0}")]
    Plugin(meshfleet_mesh::AddPluginError),
}

impl From<meshfleet_mesh::AddPluginError> for StartError {
    fn from(e: meshfleet_mesh::AddPluginError) -> Self {
        Self::Plugin(e)
    }
}

/// Starts runtimes; see the crate docs.
#[derive(Debug)]
#[non_exhaustive]
pub struct Runtime;

impl Runtime {
    /// Binds the listener (if any), starts the connectors and the owner task, and
    /// returns the handle and the owner task's join handle (it finishes after
    /// [`MeshHandle::shutdown`] or when every handle has been dropped).
    ///
    /// The caller builds the node, so plugins can be added before it starts. Must be
    /// called within a tokio runtime.
    pub async fn start(
        node: Node,
        cfg: RuntimeConfig,
    ) -> Result<(MeshHandle, JoinHandle<()>), StartError> {
        let node_id = node.id();
        if node_id == NodeId::UNKNOWN {
            return Err(StartError::ZeroNodeId);
        }
        let epoch = tokio::time::Instant::now();
        let (events_tx, first_events) = broadcast::channel(cfg.event_capacity.max(1));
        let (commands_tx, commands) = mpsc::channel(COMMAND_CAPACITY);
        let (inputs_tx, inputs) = mpsc::channel(INPUT_CAPACITY);

        let mut background = Vec::new();
        let mut listen_addr = None;
        if let Some(addr) = cfg.listen {
            let bind_err = |source| StartError::Bind { addr, source };
            let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
            let bound = listener.local_addr().map_err(bind_err)?;
            info!(node = %node_id, addr = %bound, "listening");
            let _ = events_tx.send(RuntimeEvent::Listening {
                addr: bound,
                port: bound.port(),
            });
            listen_addr = Some(bound);
            background.push(tokio::spawn(accept_loop(listener, inputs_tx.clone())).abort_handle());
        }

        let mut rng = Rng::new(cfg.jitter_seed.unwrap_or_else(os_seed));
        for (i, target) in cfg.connect.iter().enumerate() {
            let connector = Connector {
                target: target.clone(),
                backoff: cfg.backoff,
                connect_timeout: cfg.connect_timeout,
                rng: rng.derive(i as u64),
                inputs: inputs_tx.clone(),
                events: events_tx.clone(),
            };
            background.push(tokio::spawn(connector.run()).abort_handle());
        }

        let handle = MeshHandle::new(
            commands_tx,
            events_tx.clone(),
            first_events,
            listen_addr,
            node_id,
        );
        let channels = OwnerChannels {
            inputs_tx,
            inputs,
            commands,
            events: events_tx,
        };
        let owner = Owner::new(node, cfg, epoch, channels, background);
        Ok((handle, tokio::spawn(owner.run())))
    }

    /// [`Runtime::start`] with a plain node built from `config` (no plugins).
    pub async fn start_with(
        config: meshfleet_mesh::Config,
        cfg: RuntimeConfig,
    ) -> Result<(MeshHandle, JoinHandle<()>), StartError> {
        Self::start(Node::new(config), cfg).await
    }
}

/// A seed that differs between processes (std's per-process hash keys) and over time.
fn os_seed() -> u64 {
    RandomState::new().hash_one(std::time::SystemTime::now())
}
