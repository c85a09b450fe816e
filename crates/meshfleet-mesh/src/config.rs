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
    /// At most one NODE_SYNC_REQUEST of ours awaits its reply on a link (default: on).
    /// The library sends one on every other link at each layout change, whatever is still
    /// unanswered, and each carries our whole tree; in a big mesh forming or healing, joins
    /// come faster than those trees cross a link, the requests pile up in the queues, and
    /// a reply waits behind them past the 10 s node timeout, which closes the link and
    /// starts another wave. With this on, a sync that falls due while a request is
    /// unanswered is held until the reply, then sent only if the peer still lacks our
    /// current tree (answering its requests tells it too). Nothing on the wire changes: a
    /// peer just receives fewer requests, each with the newest tree. `false` is the
    /// library's behaviour, for side-by-side runs.
    pub one_request_in_flight: bool,
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
            one_request_in_flight: true,
        }
    }
}
