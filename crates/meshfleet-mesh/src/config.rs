//! Node configuration; defaults are the library's (PROTOCOL.md §4.8).

use meshfleet_wire::{NodeId, DEFAULT_MAX_FRAME_LEN};

use crate::time::Duration;

/// Everything a node needs to start. `Config::new(id)` gives the library's timers.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id (must not be 0).
    pub node_id: NodeId,
    /// Whether this node is the mesh root (`setRoot`).
    pub root: bool,
    /// Whether this node's clock is authoritative (RTC, NTP): others adopt its time.
    pub has_time_authority: bool,
    /// Wait for a NODE_SYNC_REPLY before closing the link (NODE_TIMEOUT, 10 s).
    pub node_timeout: Duration,
    /// Period of node sync per link (60 s), postponed when an unchanged tree arrives.
    pub node_sync_interval: Duration,
    /// Delay of the first node sync and time sync on the accepting (AP) side (10 s).
    pub ap_first_sync_delay: Duration,
    /// Time sync period after a success (TIME_SYNC_INTERVAL, 60 s).
    pub time_sync_interval: Duration,
    /// Time sync period until the first success (10 s).
    pub time_sync_unsynced_interval: Duration,
    /// Retry after a rejected time sample (200 ms).
    pub time_sync_retry: Duration,
    /// How long we hold a TIME_REPLY before sending it, so that `t2 - t1` reflects a real
    /// processing time. The library discards a sample when the round trip exceeds 85 x the
    /// responder's processing time (`MAX_CPU_TRIP_RATIO`); replying in zero time would make
    /// every C++ peer that adopts our time reject every sample. 1 ms accepts round trips
    /// up to 85 ms and costs nothing measurable.
    pub time_reply_hold: Duration,
    /// Largest single time step once our clock holds mesh time (60 s; never less than the
    /// library's `TIME_SYNC_ACCURACY`, 5 ms). The library applies any offset a reply
    /// implies, so one forged reply moved its mesh time by up to 2^31 µs (36 minutes); we
    /// take at most this much per step and at most one step per `time_sync_retry` (200 ms).
    /// The first step of a node that has never taken time is unbounded: until then its clock
    /// is micros since boot, with nothing to protect, and joining a mesh means adopting its
    /// time, up to 2^31 µs away. Why not smaller: two meshes that merge after each took time
    /// converge at this rate (a worst case 2^31 µs apart: 36 steps, about 7 s, close to the
    /// library's own 1-6 rounds); at 1 s per step a 300-node mesh whose parts formed apart
    /// was still 51 minutes apart after 2 minutes (`meshfleet sim --demo`).
    pub max_time_step: Duration,
    /// Largest frame accepted from a peer (see `meshfleet_wire::DEFAULT_MAX_FRAME_LEN`).
    pub max_frame_len: usize,
    /// The initial `timeOffset` (mesh time = local micros + offset).
    pub initial_time_offset: u32,
    /// Seed of this node's PRNG (plugins derive theirs from it).
    pub seed: u64,
    /// How node syncs are paced and timed out ([`NodeSyncPolicy`]; default meshfleet's).
    pub node_sync: NodeSyncPolicy,
}

/// How a node paces its node syncs and times them out. Both policies speak the same wire
/// protocol (a peer sees valid requests and replies either way); they differ in when a
/// request is sent and when an unanswered one closes the link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NodeSyncPolicy {
    /// The library's: a request on every other link at each layout change, whatever is
    /// still unanswered there, and the link closes 10 s (`node_timeout`) after the latest
    /// request unless a reply came. For side-by-side runs and stock models.
    Library,
    /// meshfleet's. Local rules (nothing a stock peer sees changes but one ignored frame):
    /// - **One request in flight per link.** A sync that falls due while our request
    ///   awaits its reply is held until the reply, then sent only if the peer still lacks
    ///   our current tree (answering its requests tells it too); the timeout restarts as
    ///   if it had been sent, as the library's does. In a big mesh forming or
    ///   healing, joins come faster than whole trees cross a link: the library's requests
    ///   pile up, and a reply waits behind them past the timeout.
    /// - **A peer that is syncing is alive.** While our request is unanswered, each node
    ///   sync the peer sends us restarts the timeout: the reply is queued behind the
    ///   frames it is writing. At 10,000 nodes one tree is ~260 KB, 2 s of a link, and
    ///   with a few of them ahead a reply is due after the 10 s; a hung peer, silent, is
    ///   still dropped 10 s after the request.
    /// - **Digests between meshfleet neighbours.** Once a link is synced the node says
    ///   hello (a NEIGHBOUR frame of type 95, which the library ignores); between two that
    ///   did, a tree the peer already holds travels as a 64-bit `SyncDigest`, and a
    ///   mismatch brings the whole tree.
    /// - **Requests are control frames**, so no reply overtakes an earlier request (see
    ///   [`crate::Priority`]).
    #[default]
    Meshfleet,
}

impl Config {
    /// The library's defaults for node `node_id`.
    pub fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            root: false,
            has_time_authority: false,
            node_timeout: Duration::from_secs(10),
            node_sync_interval: Duration::from_secs(60),
            ap_first_sync_delay: Duration::from_secs(10),
            time_sync_interval: Duration::from_secs(60),
            time_sync_unsynced_interval: Duration::from_secs(10),
            time_sync_retry: Duration::from_millis(200),
            time_reply_hold: Duration::from_millis(1),
            max_time_step: Duration::from_secs(60),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            initial_time_offset: 0,
            seed: u64::from(node_id.0),
            node_sync: NodeSyncPolicy::Meshfleet,
        }
    }
}
