//! Runtime configuration (the node's own [`meshfleet_mesh::Config`] travels inside the
//! [`meshfleet_mesh::Node`] handed to [`crate::Runtime::start`]).

use std::net::SocketAddr;
use std::time::Duration;

/// Default per-link send queue cap: 256 KiB.
pub const DEFAULT_QUEUE_CAP: usize = 256 * 1024;

/// How the runtime reconnects to a target after a failed attempt or a lost link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// First delay (before jitter): 0.5 s.
    pub initial: Duration,
    /// Largest delay: 30 s.
    pub max: Duration,
    /// A link that stayed up this long resets the delay to `initial`: 15 s. Shorter-lived
    /// links keep growing it, so a peer that accepts and then refuses us (duplicate node
    /// id, loop) is not hammered.
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(15),
        }
    }
}

/// Sockets, queues and limits of one runtime. `RuntimeConfig::default()` listens nowhere
/// and connects nowhere; set [`RuntimeConfig::listen`] and/or [`RuntimeConfig::connect`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RuntimeConfig {
    /// Accept connections here (the AP role: accepted links are
    /// [`meshfleet_mesh::LinkRole::AccessPoint`]). Port 0 picks a free port; read it back
    /// with [`crate::MeshHandle::listen_addr`].
    pub listen: Option<SocketAddr>,
    /// Keep a connection open to each of these `host:port` targets (the station role),
    /// reconnecting with [`RuntimeConfig::backoff`]. Names are resolved at every attempt.
    pub connect: Vec<String>,
    /// Per-link send queue cap in bytes (see the crate docs for the policy).
    pub queue_cap: usize,
    /// A link whose send queue stays full this long is closed: the peer has stopped reading.
    pub stall_timeout: Duration,
    /// Reconnect timing.
    pub backoff: BackoffConfig,
    /// Give up on one connection attempt after this long (a black-holed address would
    /// otherwise take the OS's SYN timeout, minutes).
    pub connect_timeout: Duration,
    /// Most links open at once. When they are all taken, an accepted connection takes the
    /// slot of an unsynced link that is evicted (see the crate docs, "Link slots"), or is
    /// closed at once if there is none.
    pub max_links: usize,
    /// Most links from one remote IP address that have not completed node sync, among
    /// the connections we accept (default 8). A new connection over the limit evicts the
    /// address's most evictable unsynced link, or is closed at once. Synced links do not
    /// count: they are identified nodes, and many honest nodes may share one host.
    pub max_unsynced_per_addr: usize,
    /// How long an accepted link that has sent bytes but not completed node sync is
    /// protected from eviction (default 2 s): an honest station sends its node sync as
    /// it connects and is synced within a round trip.
    pub unsynced_grace: Duration,
    /// Events buffered per subscriber before a slow one starts missing them
    /// ([`tokio::sync::broadcast`] semantics).
    pub event_capacity: usize,
    /// Seed of the reconnect jitter; `None` draws one from the OS's hash seed, so nodes
    /// restarted together do not retry in lock step.
    pub jitter_seed: Option<u64>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            listen: None,
            connect: Vec::new(),
            queue_cap: DEFAULT_QUEUE_CAP,
            stall_timeout: Duration::from_secs(30),
            backoff: BackoffConfig::default(),
            connect_timeout: Duration::from_secs(10),
            max_links: 64,
            max_unsynced_per_addr: 8,
            unsynced_grace: Duration::from_secs(2),
            event_capacity: 1024,
            jitter_seed: None,
        }
    }
}

impl RuntimeConfig {
    /// Listen on `addr` (builder style).
    pub fn with_listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Add a `host:port` to connect to (builder style).
    pub fn with_connect(mut self, target: impl Into<String>) -> Self {
        self.connect.push(target.into());
        self
    }

    /// Set the per-link send queue cap in bytes (builder style).
    pub fn with_queue_cap(mut self, bytes: usize) -> Self {
        self.queue_cap = bytes;
        self
    }
}
