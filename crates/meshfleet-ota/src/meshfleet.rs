//! The meshfleet OTA protocol (`docs/ota-protocol.md`): hop-by-hop, store-and-forward
//! distribution of a signed, compressed artefact with NAK repair.
//!
//! One type plays every role: a *source* holds the whole artefact; a *receiver* accepts an
//! OFFER, stores verified chunks in its [`SlotStore`], decodes the contiguous prefix into the
//! inactive slot and commits the verified image; every receiver is also a *relay*: each
//! verified chunk is forwarded to the downstream neighbours that still lack it, so a chunk
//! crosses each link once and the transfer pipelines down the tree.
//!
//! Repair follows the spirit of Trickle (RFC 6206): a receiver that hears no progress from
//! its upstream for an interval `I` (randomized in `[I/2, I)`) sends one NAK, one hop, to its
//! upstream only, and doubles `I` up to `Imax`; progress resets `I` to `Imin`. An upstream
//! answers from its own store, and what it lacks itself is covered by its own NAK upstream,
//! so NAK traffic is at most one message per link per interval: O(links), never O(nodes²).
//!
//! Each node advertises in its CAPS the codecs it decodes and the largest DEFLATE window it
//! can give its decoder ([`MeshfleetConfig::max_window`]); the manifest says which window
//! the payload needs. A sender (source or relay) offers a campaign only to the neighbours
//! whose CAPS cover both, and reports the others ([`OtaEvent::PeerCannotDecode`],
//! [`PeerProgress::cannot_decode`]) so that its driver can serve them another way (the stock
//! flow, or an artefact packed with a smaller window). A receiver refuses an offer it cannot
//! decode in any case, for a sender that ignores CAPS.

#[allow(unused_imports)]
use crate::prelude::*;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use meshfleet_firmware::{
    Artefact, ChunkHash, Codec, Intent, IntentError, Manifest, StreamVerifier, VerifyingKey,
    Version,
};
use meshfleet_mesh::{
    Claims, Ctx, Duration, Instant, LinkId, MeshChange, NodeId, PackageBody, Plugin, TypedPackage,
};
use meshfleet_wire::{Package, Routing};
use serde::{Deserialize, Serialize};

use crate::boot;
use crate::event::{
    AbandonReason, DecodeGap, NodeOutcome, OtaEvent, Refusal, RollbackOutcome, RollbackRefusal,
    VerifyFailure,
};
use crate::pacing::{DelayPacer, SyncBrake};
use crate::proto::{
    campaign_id, decode_binary_chunk, encode_binary_chunk, Bitmap, Caps, ChunkJson, Layout, Nak,
    Offer, Report, Rollback, RollbackResult, Status, Unit, BINARY_CHUNK_HEADER, CAPS, CHUNK,
    MAX_CAPS_TEXT, MAX_CODECS, MAX_NAK_RANGES, MAX_SCOPE, NAK, OFFER, PROTOCOL_VERSION, REPORT,
    ROLLBACK, ROLLBACK_RESULT, STATUS, TYPE_FIRST, TYPE_LAST,
};
use crate::store::{Corruption, ImageInfo, Slot, SlotStore, StoreError};

/// Bytes of one chunk hash in a hash page.
const CHUNK_HASH_BYTES: usize = 16;

/// Where unit `u` is staged and how long it is: a chunk at its payload offset; hash page
/// `k` after the payload, at 16 bytes per chunk it follows (so chunk `i`'s hash is at
/// `compressed_size + 16·i`).
fn staged_range(m: &Manifest, layout: &Layout, u: u32) -> Option<(u64, usize)> {
    match layout.unit(u)? {
        Unit::Chunk(i) => m.chunk_range(i).map(|r| (r.start as u64, r.len())),
        Unit::Page(k) => {
            let first = m.page_chunks(k)?.start;
            let off = m.compressed_size + u64::from(first) * CHUNK_HASH_BYTES as u64;
            Some((off, m.page_len(k)?))
        }
    }
}

/// True if `bytes` is unit `u` of the campaign: a page that hashes to its signed entry, or
/// a chunk that hashes to the entry of its page, which must be held (`have`) and is read
/// back from staging. Chunk hashes live in the staging area, not in RAM: a receiver's
/// memory does not grow with the image.
fn verify_unit(
    store: &mut dyn SlotStore,
    m: &Manifest,
    layout: &Layout,
    have: &Bitmap,
    u: u32,
    bytes: &[u8],
) -> bool {
    match layout.unit(u) {
        Some(Unit::Page(k)) => m.verify_page(k, bytes),
        Some(Unit::Chunk(i)) => {
            have.get(layout.page_of_chunk(i))
                && staged_chunk_hash(store, m, i)
                    .is_some_and(|h| m.verify_chunk_against(i, bytes, &h))
        }
        None => false,
    }
}

/// Chunk `i`'s hash from its staged (verified) hash page.
fn staged_chunk_hash(store: &mut dyn SlotStore, m: &Manifest, i: u32) -> Option<ChunkHash> {
    let off = m.compressed_size + u64::from(i) * CHUNK_HASH_BYTES as u64;
    let b = store.read_staging(off, CHUNK_HASH_BYTES).ok()?;
    Some(ChunkHash(b.try_into().ok()?))
}

/// Assumed ESP32 TCP throughput over the mesh, bytes per second.
pub const ASSUMED_LINK_RATE: u64 = 123_000;

/// First wait for an answer (a NAK or a STATUS) to an OFFER before it is sent again.
pub const OFFER_RETRY_MIN: Duration = Duration::from_secs(2);
/// Longest wait between OFFERs to a neighbour that has not answered, or that accepted and
/// then fell silent while nothing was sent to it (the wait doubles from
/// [`OFFER_RETRY_MIN`]). A neighbour that refused is offered again after four times this.
pub const OFFER_RETRY_MAX: Duration = Duration::from_secs(32);
/// NAKs in a row without a new unit after which the upstream counts as stale: another
/// neighbour that offered the campaign is asked instead (~3.5-7 s with the default NAK
/// interval).
pub const STALE_NAKS: u32 = 3;
/// CAPS sent on a link before giving up on a neighbour that never answers (a stock node).
const CAPS_TRIES: u8 = 3;

/// Remote meshfleet peers (beyond a neighbour without meshfleet OTA, reached by SINGLE
/// routing) are kept under link ids with this bit set: `REMOTE | node id`. Real link ids
/// count up from 1 and never reach it.
const REMOTE: u64 = 1 << 63;
/// Most remote peers a node keeps (each one costs a neighbour record).
pub const MAX_REMOTE_PEERS: usize = 32;
/// Most nodes probed (a SINGLE CAPS) per layout change, and most remembered as probed.
const MAX_PROBES: usize = 64;
const MAX_PROBED: usize = 256;
/// A node probed once is probed again after this long (it may have gained meshfleet OTA).
const PROBE_AGAIN: Duration = Duration::from_secs(600);

/// Most node outcomes a campaign's origin keeps.
pub const MAX_OUTCOMES: usize = 4096;

/// The pseudo link of remote peer `id`.
fn remote_link(id: NodeId) -> LinkId {
    LinkId(REMOTE | u64::from(id.0))
}

/// The remote peer behind a pseudo link, if it is one.
fn remote_peer(link: LinkId) -> Option<NodeId> {
    (link.0 & REMOTE != 0).then(|| NodeId((link.0 & u64::from(u32::MAX)) as u32))
}

/// Configuration of a [`MeshfleetOta`] node.
#[derive(Clone, Debug)]
pub struct MeshfleetConfig {
    /// Our role.
    pub role: String,
    /// Our hardware.
    pub hardware: String,
    /// The running image (from [`crate::BootDecision::image`]), if known.
    pub running: Option<ImageInfo>,
    /// The running image is on trial (not confirmed yet): offers are refused, because the
    /// only other slot holds the confirmed fallback.
    pub on_trial: bool,
    /// Manifests must be signed by this key; `None` accepts unsigned ones (integrity only).
    pub trusted_key: Option<VerifyingKey>,
    /// Accept binary frames (advertised in CAPS).
    pub binary: bool,
    /// Codecs we decode.
    pub codecs: Vec<Codec>,
    /// The largest DEFLATE window we can give the decoder, bytes (advertised in CAPS as
    /// `window`; offers whose manifest needs more are refused). Default 32768, the format's
    /// largest: the decoder then takes [`meshfleet_firmware::decoder_footprint`] = 43,336
    /// bytes. An ESP8266 (about 40 KB free) gives 8192 (18,760 bytes in all).
    pub max_window: u32,
    /// Bytes we can stage (advertised in CAPS; larger payloads are refused).
    pub max_staging: u64,
    /// Accept offers that are not newer than the running version (a local setting of the
    /// node's operator; remote peers can only do this with a signed [`Intent`]).
    pub allow_downgrade: bool,
    /// An unfinished transfer that receives no new unit for this long is abandoned and its
    /// staged data discarded (10 min), so a campaign whose sources are gone cannot block the
    /// node for ever; after a restart the clock starts again. A newer signed version
    /// supersedes an unfinished one at once.
    pub campaign_timeout: Duration,
    /// The wall clock, if the driver knows it: the Unix time in seconds at an instant of the
    /// node's clock. Used only to check an [`Intent`]'s expiry (without it, expiry cannot be
    /// checked; see `docs/security.md`). Update with [`MeshfleetOta::set_unix_time`].
    pub unix_time: Option<(Instant, u64)>,
    /// How long to wait for a neighbour's CAPS before treating it as a stock node (3 s).
    pub caps_timeout: Duration,
    /// Pacing: bytes per second per link (default 60% of [`ASSUMED_LINK_RATE`]): the most a
    /// link sends; the delay control below may pace it slower.
    pub link_rate: u64,
    /// Delay control (`pacing` module docs): a link slows down while its chunk frames wait
    /// longer than this in the driver (the medium is crowded), and speeds up again below
    /// it. 150 ms; `None` paces at `link_rate` alone. Needs a driver that reports backlog.
    pub delay_target: Option<Duration>,
    /// Node-wide brake (`pacing` module docs): every OTA link of the node slows down while
    /// the node's own node-sync exchanges take longer than this (the medium around a
    /// neighbour is crowded), and speeds up again when they are fast. 1 s, a tenth of
    /// painlessMesh's node timeout; `None` turns the brake off.
    pub sync_brake_target: Option<Duration>,
    /// Pacing: chunk frames that may leave back to back on one link (4). Also the
    /// back-pressure limit: no chunk is queued while the driver reports
    /// ([`meshfleet_mesh::Node::set_link_backlog`]) this many chunk frames' bytes already
    /// waiting on the link.
    pub burst_chunks: u32,
    /// NAK interval bounds (Trickle `Imin`, `Imax`): 500 ms, 8 s.
    pub nak_min: Duration,
    /// See `nak_min`.
    pub nak_max: Duration,
    /// Persist the bitmap after this many new chunks (16): a crash re-fetches at most that
    /// many, and flash is not rewritten for every chunk.
    pub save_every: u32,
    /// The scope of every campaign this node becomes the source of (2.3.2): `None` (the
    /// default) offers it to every node that lacks the image; `Some` only to these node ids
    /// (at most [`MAX_SCOPE`]; an empty set offers nothing until
    /// [`MeshfleetOta::target`]). Set it before [`MeshfleetOta::source`] or
    /// [`MeshfleetOta::start_source`]: a scope set after the start comes after the first
    /// offers went out.
    pub source_scope: Option<BTreeSet<u32>>,
}

impl MeshfleetConfig {
    /// Defaults for a node of `role` on `hardware`.
    pub fn new(role: impl Into<String>, hardware: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            hardware: hardware.into(),
            running: None,
            on_trial: false,
            trusted_key: None,
            binary: true,
            codecs: vec![Codec::None, Codec::Deflate],
            max_window: meshfleet_firmware::MAX_WINDOW,
            max_staging: 4 * 1024 * 1024,
            allow_downgrade: false,
            campaign_timeout: Duration::from_secs(600),
            unix_time: None,
            caps_timeout: Duration::from_secs(3),
            link_rate: ASSUMED_LINK_RATE * 6 / 10,
            delay_target: Some(Duration::from_millis(150)),
            sync_brake_target: Some(Duration::from_secs(1)),
            burst_chunks: 4,
            nak_min: Duration::from_millis(500),
            nak_max: Duration::from_secs(8),
            save_every: 16,
            source_scope: None,
        }
    }
}

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshfleetStats {
    /// Chunks sent (all links).
    pub chunks_sent: u64,
    /// Chunk payload bytes sent.
    pub chunk_bytes_sent: u64,
    /// New verified chunks received.
    pub chunks_received: u64,
    /// Chunks received that we already had.
    pub duplicates: u64,
    /// Chunks dropped for failing verification.
    pub chunks_rejected: u64,
    /// Chunks dropped because their hash page had not arrived yet (asked for again).
    pub unverifiable: u64,
    /// NAKs sent.
    pub naks_sent: u64,
    /// NAKs received.
    pub naks_received: u64,
    /// Offers sent.
    pub offers_sent: u64,
    /// Malformed meshfleet packages dropped.
    pub malformed: u64,
    /// OFFERs sent again because the neighbour had not answered.
    pub offers_retried: u64,
    /// NAKs from a neighbour we had not offered the campaign to (ignored: a NAK is not an
    /// acceptance without our OFFER).
    pub naks_unsolicited: u64,
    /// Times the upstream was replaced (it left, went stale, or a better-routed neighbour
    /// offered).
    pub upstream_changes: u64,
}

/// The persisted transfer state (`SlotStore::save_state`).
#[derive(Serialize, Deserialize)]
struct SavedState {
    campaign: u32,
    /// The operator's intent the campaign was accepted under (re-offered downstream).
    #[serde(default)]
    intent: Option<Intent>,
    #[serde(default)]
    origin: u32,
    manifest: serde_json::Value,
    have: String,
    /// Every unit is staged and the image committed: the node keeps serving the campaign
    /// after its reboot (a relay must still update its subtree).
    #[serde(default)]
    complete: bool,
    /// The campaign's scope (`Offer::scope`): whom this node offers it to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<Vec<u32>>,
}

/// Where chunk bytes come from.
enum ChunkSource {
    /// We are the source: the payload in memory.
    Payload(Arc<Artefact>),
    /// Staged in the store.
    Staged,
}

struct Campaign {
    id: u32,
    /// Full (source) or lean (receiver) manifest.
    manifest: Arc<Manifest>,
    /// The unit index space (hash pages and chunks) every bitmap below counts in.
    layout: Layout,
    /// The operator's signed intent, passed on with every OFFER of the campaign.
    intent: Option<Intent>,
    /// The nodes the campaign is for (`None`: every node that lacks the image): offered
    /// only to these, passed on unchanged with every OFFER (2.3.2).
    scope: Option<BTreeSet<u32>>,
    /// The node the campaign started from (0: unknown, e.g. an offer from an older
    /// build): the upstream is the neighbour on the route toward it.
    origin: u32,
    source: ChunkSource,
    /// Units held (verified and, on a receiver, staged).
    have: Bitmap,
    upstream: Option<LinkId>,
    /// Every chunk held and the image verified and committed (or we are the source).
    complete: bool,
    verifier: Option<StreamVerifier<Arc<Manifest>>>,
    slot: Slot,
    slot_offset: u64,
    unsaved: u32,
    nak_interval: Duration,
    nak_at: Option<Instant>,
    /// A chunk arrived since the NAK interval started (Trickle: consistent, suppress).
    progressed: bool,
    last_progress_tenth: u32,
    /// When the last new unit arrived (or the transfer began or was restored): the
    /// campaign is abandoned `campaign_timeout` after it. `None` until a handler ran after
    /// a restore (no clock in `new`).
    last_progress: Option<Instant>,
    /// NAKs sent in a row without a new unit ([`STALE_NAKS`]).
    stale_naks: u32,
}

struct Neighbour {
    peer: NodeId,
    caps: Option<Caps>,
    caps_deadline: Option<Instant>,
    stock: bool,
    offered: Option<u32>,
    /// Units the neighbour asked for (NAK) and has not been sent since.
    want: Bitmap,
    /// It accepted (sent a NAK) for the campaign.
    accepted: bool,
    rejected: bool,
    /// The campaign its CAPS show it cannot decode (codec not listed, or a smaller window
    /// than the manifest needs): it was not offered that campaign.
    cannot_decode: Option<u32>,
    done: bool,
    subtree_done: bool,
    tokens: f64,
    refilled: Instant,
    pump_at: Option<Instant>,
    /// The link's rate under delay control.
    pacer: DelayPacer,
    /// The campaign it offered us: it holds (part of) it and can be our upstream.
    offers_campaign: Option<u32>,
    /// The origin its OFFER claimed (unsigned: used only to prefer among offerers).
    origin: u32,
    /// When to send our OFFER again if it stays unanswered (or the accepted neighbour falls
    /// silent); the wait doubles up to [`OFFER_RETRY_MAX`].
    offer_at: Option<Instant>,
    offer_backoff: Duration,
    /// When a chunk was last sent to it (a neighbour fed chunks needs no new OFFER).
    last_sent: Option<Instant>,
    /// The campaign it was accounted for to the origin without an offer (skipped).
    reported: Option<u32>,
    /// CAPS sent on this link so far, and when the last one went.
    caps_tries: u8,
    caps_sent: Instant,
    /// Chunks sent to it on this link (retransmissions included).
    chunks_sent: u32,
    /// Chunk payload bytes sent to it on this link.
    bytes_sent: u64,
    /// Chunks sent on this link since `sent_since` (`[0]`) and in the guard period before
    /// (`[1]`): a NAK does not get these sent again (see `handle_nak`).
    sent: [Bitmap; 2],
    sent_since: Instant,
}

impl Neighbour {
    /// Starts the sent-chunk memory of a campaign of `chunks` chunks.
    fn reset_sent(&mut self, chunks: u32, now: Instant) {
        self.sent = [Bitmap::new(chunks), Bitmap::new(chunks)];
        self.sent_since = now;
    }

    /// Ages the sent-chunk memory: a period of `period` after `sent_since`, the recent
    /// chunks become the older ones; after two, nothing is remembered.
    fn age_sent(&mut self, now: Instant, period: Duration) {
        let age = now.saturating_since(self.sent_since);
        if age < period {
            return;
        }
        if age < period + period {
            self.sent.swap(0, 1);
            self.sent[0].clear_all();
        } else {
            self.sent.iter_mut().for_each(Bitmap::clear_all);
        }
        self.sent_since = now;
    }

    fn sent_lately(&self, index: u32) -> bool {
        self.sent.iter().any(|b| b.get(index))
    }
}

/// What a node knows about one meshfleet neighbour, for progress displays
/// ([`MeshfleetOta::peers`]). Counters are per link: a neighbour that reconnects shows up
/// with a new `link` and counters from zero.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerProgress {
    /// The link to it.
    pub link: LinkId,
    /// The neighbour.
    pub peer: NodeId,
    /// It sent no CAPS in time: a stock node.
    pub stock: bool,
    /// We offered it the current campaign.
    pub offered: bool,
    /// It accepted (asked for chunks).
    pub accepted: bool,
    /// It refused the offer.
    pub rejected: bool,
    /// Its CAPS show it cannot decode the current campaign's payload (the codec is not among
    /// its `codecs`, or its `window` is smaller than the manifest's), so it was not offered
    /// the campaign ([`OtaEvent::PeerCannotDecode`]). A driver serves it another way: the
    /// stock flow, or an artefact packed for it.
    pub cannot_decode: bool,
    /// It reported holding the whole image.
    pub done: bool,
    /// It and everything behind it reported done.
    pub subtree_done: bool,
    /// Chunks sent to it on this link (retransmissions included).
    pub chunks_sent: u32,
    /// Chunk payload bytes sent to it on this link.
    pub bytes_sent: u64,
    /// Units (chunks and hash pages) it asked for in its NAKs and has not been sent since:
    /// `units - wanted` is what it holds or has on the way (a resumed transfer starts at
    /// what the node already held).
    pub wanted: u32,
    /// Its role, from its CAPS (`None` before they arrived). A source does not offer a
    /// campaign to a node of another role or hardware, or that runs the image already.
    pub role: Option<String>,
    /// Its hardware, from its CAPS.
    pub hardware: Option<String>,
    /// SHA-256 of the image it runs, from its CAPS (`None` if unknown).
    pub running_sha256: Option<String>,
}

/// The meshfleet OTA plugin (package types 700-709, binary tag 703). See the module docs.
pub struct MeshfleetOta {
    config: MeshfleetConfig,
    store: Box<dyn SlotStore>,
    campaign: Option<Campaign>,
    neighbours: BTreeMap<LinkId, Neighbour>,
    stats: MeshfleetStats,
    /// Set when a store operation failed: the node stops receiving (a real device would be
    /// rebooting) until it is rebuilt from its store.
    failed: Option<StoreError>,
    /// Nodes sent a remote CAPS probe, and when (at most `MAX_PROBED`).
    probed: BTreeMap<u32, Instant>,
    /// Outcomes reported by the nodes of the campaign we are the origin of.
    outcomes: BTreeMap<NodeId, NodeOutcome>,
    /// A report to send once the origin is reachable: (origin, campaign, outcome).
    pending_report: Option<(u32, u32, NodeOutcome)>,
    /// A rollback command switched the boot record to this image: the driver restarts
    /// into it ([`MeshfleetOta::take_reverted`]).
    reverted: Option<ImageInfo>,
    /// The node-wide brake on chunk sending from node-sync round trips.
    brake: SyncBrake,
}

impl core::fmt::Debug for MeshfleetOta {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MeshfleetOta")
            .field("campaign", &self.campaign.as_ref().map(|c| c.id))
            .field("have", &self.campaign.as_ref().map(|c| c.have.count()))
            .field("neighbours", &self.neighbours.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Why [`MeshfleetOta::new`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MeshfleetOta {
    /// A receiver/relay over `store`. A transfer persisted in the store is resumed: its
    /// verified chunks are kept, the staged prefix is decoded again into the inactive slot,
    /// and only missing chunks are asked for once an upstream offers it again.
    pub fn new(config: MeshfleetConfig, store: Box<dyn SlotStore>) -> Result<Self, OpenError> {
        let brake = SyncBrake::new(
            config.sync_brake_target.unwrap_or(Duration::ZERO),
            Instant::ZERO,
        );
        let mut me = Self {
            brake,
            config,
            store,
            campaign: None,
            neighbours: BTreeMap::new(),
            stats: MeshfleetStats::default(),
            failed: None,
            probed: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            pending_report: None,
            reverted: None,
        };
        me.restore()?;
        Ok(me)
    }

    /// A source offering `artefact` (verify it before: [`Artefact::verify`]). `intent`, the
    /// operator's signed [`Intent`] naming the artefact's image, lets receivers install it
    /// even if it is not newer than what they run or they rolled it back; without one they
    /// take it only as an upgrade.
    pub fn source(
        config: MeshfleetConfig,
        store: Box<dyn SlotStore>,
        artefact: Artefact,
        intent: Option<Intent>,
    ) -> Self {
        let scope = config.source_scope.clone();
        let brake = SyncBrake::new(
            config.sync_brake_target.unwrap_or(Duration::ZERO),
            Instant::ZERO,
        );
        Self {
            brake,
            config,
            store,
            campaign: Some(Self::source_campaign(artefact, intent, scope)),
            neighbours: BTreeMap::new(),
            stats: MeshfleetStats::default(),
            failed: None,
            probed: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            pending_report: None,
            reverted: None,
        }
    }

    fn source_campaign(
        artefact: Artefact,
        intent: Option<Intent>,
        scope: Option<BTreeSet<u32>>,
    ) -> Campaign {
        let manifest = Arc::new(artefact.manifest().clone());
        let layout = Layout::of(&manifest);
        Campaign {
            id: campaign_id(&manifest),
            manifest,
            layout,
            intent,
            scope,
            // Set to our id at the first offer (the node id is not known here).
            origin: 0,
            source: ChunkSource::Payload(Arc::new(artefact)),
            have: Bitmap::full(layout.units()),
            upstream: None,
            complete: true,
            verifier: None,
            slot: Slot::B,
            slot_offset: 0,
            unsaved: 0,
            nak_interval: Duration::ZERO,
            nak_at: None,
            progressed: false,
            last_progress_tenth: 10,
            last_progress: None,
            stale_naks: 0,
        }
    }

    /// Turns a running node into the source of `artefact` (a gateway that has just been
    /// handed a new build), then [`MeshfleetOta::start`]s it: the neighbours' CAPS already
    /// exchanged are kept, so every meshfleet neighbour that lacks the image gets an offer
    /// at once. Building a new plugin with [`MeshfleetOta::source`] instead would lose them
    /// (CAPS are sent once per link) and make every neighbour look like a stock node.
    ///
    /// Returns `false`, and changes nothing, while a transfer of *another* campaign is in
    /// progress here (one campaign per node, as for offers). A transfer of the same
    /// campaign is superseded: the node now holds the whole payload.
    pub fn start_source(
        &mut self,
        ctx: &mut Ctx<'_>,
        artefact: Artefact,
        intent: Option<Intent>,
    ) -> bool {
        let id = campaign_id(artefact.manifest());
        if self
            .campaign
            .as_ref()
            .is_some_and(|c| !c.complete && c.id != id)
        {
            return false;
        }
        if self.campaign.as_ref().is_some_and(|c| !c.complete) {
            // A staged partial copy of the same payload is superseded by the whole one; a
            // failure to delete its record only costs a pointless resume after a reboot.
            let _ = self.store.clear_state();
        }
        let scope = self.config.source_scope.clone();
        self.campaign = Some(Self::source_campaign(artefact, intent, scope));
        for n in self.neighbours.values_mut() {
            // Offers of an earlier campaign do not count for this one.
            if n.offered != Some(id) {
                n.offered = None;
            }
        }
        self.start(ctx);
        true
    }

    /// Starts distributing (a source): offers to every meshfleet neighbour that lacks the
    /// image. Neighbours that join later get an offer after their CAPS.
    pub fn start(&mut self, ctx: &mut Ctx<'_>) {
        self.offer_all(ctx);
        self.pump(ctx);
    }

    /// Counters.
    pub fn stats(&self) -> &MeshfleetStats {
        &self.stats
    }

    /// The campaign in progress: (id, units held, units), counting hash pages and chunks
    /// ([`Layout`]).
    pub fn progress(&self) -> Option<(u32, u32, u32)> {
        self.campaign
            .as_ref()
            .map(|c| (c.id, c.have.count(), c.layout.units()))
    }

    /// Whether the image was received, verified and committed (or we are the source).
    pub fn is_complete(&self) -> bool {
        self.campaign.as_ref().is_some_and(|c| c.complete)
    }

    /// Whether every neighbour we offered the campaign to (and that did not refuse it),
    /// and everything behind it, reported done.
    pub fn subtree_done(&self) -> bool {
        let Some(id) = self.campaign.as_ref().map(|c| c.id) else {
            return true;
        };
        self.neighbours
            .values()
            .filter(|n| n.offered == Some(id) && !n.rejected)
            .all(|n| n.subtree_done)
    }

    /// Neighbours that sent no CAPS in time: stock nodes (serve them with a
    /// [`crate::StockSender`] on the same node).
    pub fn stock_neighbours(&self) -> Vec<NodeId> {
        self.neighbours
            .values()
            .filter(|n| n.stock)
            .map(|n| n.peer)
            .collect()
    }

    /// Every meshfleet (or presumed stock) neighbour and what we know of its progress in
    /// the current campaign.
    pub fn peers(&self) -> Vec<PeerProgress> {
        let id = self.campaign.as_ref().map(|c| c.id);
        self.neighbours
            .iter()
            .map(|(link, n)| PeerProgress {
                link: *link,
                peer: n.peer,
                stock: n.stock,
                offered: id.is_some() && n.offered == id,
                accepted: n.accepted,
                rejected: n.rejected,
                cannot_decode: id.is_some() && n.cannot_decode == id,
                done: n.done,
                subtree_done: n.subtree_done,
                chunks_sent: n.chunks_sent,
                bytes_sent: n.bytes_sent,
                wanted: n.want.count(),
                role: n.caps.as_ref().map(|c| c.role.clone()),
                hardware: n.caps.as_ref().map(|c| c.hardware.clone()),
                running_sha256: n
                    .caps
                    .as_ref()
                    .map(|c| c.sha256.clone())
                    .filter(|s| !s.is_empty()),
            })
            .collect()
    }

    /// Tells the node what runs now, for a driver that boots a new image without rebuilding
    /// the plugin (a Linux node restarts its application, not itself): the running image
    /// (advertised in CAPS, compared with offers) and whether it is on trial (offers are
    /// refused then, because the only other slot holds the fallback).
    pub fn set_running(&mut self, running: Option<ImageInfo>, on_trial: bool) {
        self.config.running = running;
        self.config.on_trial = on_trial;
    }

    /// Tells the node the wall-clock time: `unix_s` seconds at instant `at` of its clock
    /// (for the expiry of operator intents).
    pub fn set_unix_time(&mut self, at: Instant, unix_s: u64) {
        self.config.unix_time = Some((at, unix_s));
    }

    /// Unix seconds at `now`, if the driver told us the time.
    fn unix_now(&self, now: Instant) -> Option<u64> {
        self.config.unix_time.map(|(at, s)| {
            if now >= at {
                s.saturating_add(now.saturating_since(at).as_micros() / 1_000_000)
            } else {
                s.saturating_sub(at.saturating_since(now).as_micros() / 1_000_000)
            }
        })
    }

    /// Restricts the campaign this node is the source of to the nodes in `scope` (2.3.2),
    /// or opens it to every node that lacks the image (`None`, the default). OFFERs carry
    /// the scope and every relay keeps it, so the campaign reaches no node outside it.
    /// Nodes already offered keep what they have; add nodes with
    /// [`MeshfleetOta::target`]. `false` if this node is not a source or `scope` holds more
    /// than [`MAX_SCOPE`] ids.
    pub fn set_scope(&mut self, scope: Option<BTreeSet<u32>>) -> bool {
        let Some(c) = self
            .campaign
            .as_mut()
            .filter(|c| matches!(c.source, ChunkSource::Payload(_)))
        else {
            return false;
        };
        if scope.as_ref().is_some_and(|s| s.len() > MAX_SCOPE) {
            return false;
        }
        c.scope.clone_from(&scope);
        self.config.source_scope = scope;
        true
    }

    /// Sets [`MeshfleetConfig::source_scope`]: the scope of the next campaign this node
    /// becomes the source of ([`MeshfleetOta::start_source`]). Use [`MeshfleetOta::set_scope`]
    /// for the campaign it sources now.
    pub fn set_source_scope(&mut self, scope: Option<BTreeSet<u32>>) {
        self.config.source_scope = scope;
    }

    /// Adds `node` to the scope of the campaign this node is the source of and offers it
    /// the campaign: at once if it is a meshfleet neighbour or remote peer, else through a
    /// SINGLE-routed CAPS that makes it a remote peer (2.7), wherever it is in the mesh.
    /// A node offered before (it refused, or was taken out with
    /// [`MeshfleetOta::untarget`]) is offered again. `false` if this node is not a source,
    /// the scope is full, `node` is a neighbour that sent no CAPS (a stock node: serve it
    /// with the stock flow), or there is no route to it now (call again when it joins).
    pub fn target(&mut self, ctx: &mut Ctx<'_>, node: NodeId) -> bool {
        let me = ctx.node_id();
        let Some(c) = self
            .campaign
            .as_mut()
            .filter(|c| matches!(c.source, ChunkSource::Payload(_)))
        else {
            return false;
        };
        if node == me {
            return false;
        }
        if let Some(s) = c.scope.as_mut() {
            if !s.contains(&node.0) && s.len() >= MAX_SCOPE {
                return false;
            }
            s.insert(node.0);
        }
        if c.origin == 0 {
            c.origin = me.0;
        }
        let link = self
            .neighbours
            .iter()
            .find(|(l, n)| n.peer == node && remote_peer(**l).is_none())
            .map(|(l, _)| *l)
            .or_else(|| {
                let r = remote_link(node);
                self.neighbours.contains_key(&r).then_some(r)
            });
        if let Some(link) = link {
            let Some(n) = self.neighbours.get_mut(&link) else {
                return false;
            };
            if n.caps.is_none() {
                return false;
            }
            n.offered = None;
            n.reported = None;
            self.maybe_offer(ctx, link);
            return true;
        }
        if ctx.route(node).is_none() {
            return false;
        }
        // Make room among the remote peers: one that is done, refused or silent goes.
        let remotes: Vec<(LinkId, bool)> = self
            .neighbours
            .iter()
            .filter(|(l, _)| remote_peer(**l).is_some())
            .map(|(l, n)| (*l, n.done || n.rejected || n.caps.is_none()))
            .collect();
        if remotes.len() >= MAX_REMOTE_PEERS {
            match remotes.iter().find(|(_, idle)| *idle) {
                Some((l, _)) => {
                    self.neighbours.remove(l);
                }
                None => return false,
            }
        }
        let now = ctx.now();
        self.probed.insert(node.0, now);
        let caps = self.caps(me.0, node.0, false);
        Self::send_json(ctx, remote_link(node), &caps);
        true
    }

    /// Takes `node` out of the scope of the campaign this node is the source of: no more
    /// offers or chunks to it from here (a rollout cancelled its transfer). It abandons
    /// the transfer by itself once no unit arrives for its `campaign_timeout`. `false` if
    /// this node is not a scoped source.
    pub fn untarget(&mut self, node: NodeId) -> bool {
        let Some(c) = self
            .campaign
            .as_mut()
            .filter(|c| matches!(c.source, ChunkSource::Payload(_)))
        else {
            return false;
        };
        let Some(s) = c.scope.as_mut() else {
            return false;
        };
        s.remove(&node.0);
        let units = c.layout.units();
        for n in self.neighbours.values_mut().filter(|n| n.peer == node) {
            n.want = Bitmap::new(units);
            n.offer_at = None;
            n.accepted = false;
        }
        true
    }

    /// Sends the operator's signed rollback `command` (an [`Intent`] with action
    /// `rollback`, see [`Intent::rollback_to`]) to `node`, SINGLE-routed through the mesh
    /// (any node routes it, with or without OTA). Its answer arrives as
    /// [`OtaEvent::RollbackReport`]. `false` if there is no route to `node` now (send
    /// again when it joins) or `command` is not a rollback command. Sending the same
    /// command again is safe: a node that already reverted answers
    /// [`RollbackOutcome::AlreadyThere`].
    pub fn send_rollback(&mut self, ctx: &mut Ctx<'_>, node: NodeId, command: &Intent) -> bool {
        let me = ctx.node_id().0;
        if command.action != meshfleet_firmware::IntentAction::Rollback || node.0 == me {
            return false;
        }
        let Ok(command) = serde_json::from_slice::<serde_json::Value>(&command.to_json()) else {
            return false;
        };
        let msg = TypedPackage::single(
            NodeId(me),
            node,
            Rollback {
                origin: me,
                command,
            },
        );
        msg.encode().is_ok_and(|pkg| ctx.send(&pkg).is_ok())
    }

    /// The image a rollback command switched the boot record to, once: the node runs it
    /// after its next start (an ESP reboots; a Linux driver makes the boot decision again
    /// and restarts its application). Until then the node refuses offers, as on trial.
    pub fn take_reverted(&mut self) -> Option<ImageInfo> {
        self.reverted.take()
    }

    /// A ROLLBACK addressed to us: check the signed command, carry it out on the boot
    /// record (one atomic write, [`boot::revert`]), answer the origin.
    fn handle_rollback(&mut self, ctx: &mut Ctx<'_>, pkg: &Package) {
        let Ok(TypedPackage {
            from,
            dest,
            body: msg,
            ..
        }) = TypedPackage::<Rollback>::decode(pkg)
        else {
            self.stats.malformed += 1;
            return;
        };
        let me = ctx.node_id().0;
        if dest.0 != me {
            self.stats.malformed += 1;
            return;
        }
        let origin = if msg.origin == 0 { from.0 } else { msg.origin };
        let command = serde_json::to_vec(&msg.command)
            .map_err(|e| IntentError::Malformed(e.to_string()))
            .and_then(|b| Intent::from_json(&b));
        let (outcome, version, issued) = match command {
            Err(_) => (
                RollbackOutcome::Refused(RollbackRefusal::Malformed),
                String::new(),
                0,
            ),
            Ok(cmd) => {
                let version = cmd.version.to_string();
                let outcome = self.carry_out_rollback(ctx, &cmd, me);
                (outcome, version, cmd.issued)
            }
        };
        ctx.emit(Box::new(OtaEvent::RollbackCommand {
            from,
            issued,
            outcome,
            version: version.clone(),
        }));
        // A forged command gets no answer: the unsigned `origin` must not make us send
        // traffic to whoever a forger names.
        if outcome == RollbackOutcome::Refused(RollbackRefusal::Signature) || origin == me {
            return;
        }
        let version = match outcome {
            RollbackOutcome::Reverted | RollbackOutcome::AlreadyThere => version,
            RollbackOutcome::Refused(_) => self
                .config
                .running
                .as_ref()
                .map(|i| i.version.clone())
                .unwrap_or_default(),
        };
        let (o, r) = outcome.labels();
        let answer = TypedPackage::single(
            NodeId(me),
            NodeId(origin),
            RollbackResult {
                issued,
                outcome: o.to_string(),
                refusal: r.map(str::to_string),
                version,
            },
        );
        if let Ok(pkg) = answer.encode() {
            // No route to the origin: it sends the command again and gets the answer then.
            let _ = ctx.send(&pkg);
        }
    }

    /// Checks `cmd` for this node and carries it out.
    fn carry_out_rollback(&mut self, ctx: &Ctx<'_>, cmd: &Intent, me: u32) -> RollbackOutcome {
        let refused = RollbackOutcome::Refused;
        // Signature, action, role/hardware, scope and expiry first, replay after: the same
        // command sent again after the node reverted is answered "already there", not
        // "replayed" (the sender repeats it until it hears back).
        if let Err(e) = cmd.allows_rollback(
            me,
            &self.config.role,
            &self.config.hardware,
            self.config.trusted_key.as_ref(),
            self.unix_now(ctx.now()),
            0,
        ) {
            return refused(match e {
                IntentError::Signature(_) => RollbackRefusal::Signature,
                IntentError::WrongAction { .. } => RollbackRefusal::WrongAction,
                IntentError::OtherImage => RollbackRefusal::OtherRole,
                IntentError::OutOfScope(_) => RollbackRefusal::OutOfScope,
                IntentError::Expired { .. } => RollbackRefusal::Expired,
                IntentError::Replayed { .. } => RollbackRefusal::Replayed,
                _ => RollbackRefusal::Malformed,
            });
        }
        let rec = match self.store.load_boot() {
            Ok(r) => r,
            Err(_) => return refused(RollbackRefusal::StoreFailed),
        };
        let sha = cmd.sha256.to_string();
        let version = cmd.version.to_string();
        let runs_it = rec.as_ref().is_some_and(|r| {
            r.pending.is_none()
                && r.image(r.active)
                    .is_some_and(|i| i.sha256.eq_ignore_ascii_case(&sha) && i.version == version)
        });
        if runs_it {
            return RollbackOutcome::AlreadyThere;
        }
        let used = rec.as_ref().map_or(0, |r| r.intent_issued);
        if cmd.issued <= used {
            return refused(RollbackRefusal::Replayed);
        }
        match boot::revert(&mut *self.store, &sha, &version, cmd.issued) {
            Ok(boot::Reverted::AlreadyThere) => RollbackOutcome::AlreadyThere,
            Ok(boot::Reverted::Switched { to, from, .. }) => {
                // The image left must not spread from here: drop its campaign (a
                // complete one would be offered to every neighbour with an older image).
                let left = from.map(|f| f.sha256);
                let holds_left = self
                    .campaign
                    .as_ref()
                    .is_some_and(|c| left.as_deref() == Some(&c.manifest.sha256.to_string()));
                if holds_left {
                    self.campaign = None;
                    // Without its record the campaign is not restored after the restart;
                    // if the delete fails, the rolled-back list still refuses it.
                    let _ = self.store.clear_state();
                }
                // The slot we run is now the inactive one: no offer may erase it before
                // the restart.
                self.config.on_trial = true;
                self.reverted = Some(to);
                RollbackOutcome::Reverted
            }
            Err(boot::RevertError::NotInPreviousSlot { .. }) => {
                refused(RollbackRefusal::NotInPreviousSlot)
            }
            Err(boot::RevertError::Damaged) => refused(RollbackRefusal::Damaged),
            Err(_) => refused(RollbackRefusal::StoreFailed),
        }
    }

    /// A node's answer to a rollback command we sent.
    fn handle_rollback_result(&mut self, ctx: &mut Ctx<'_>, pkg: &Package) {
        let Ok(TypedPackage { from, body: r, .. }) = TypedPackage::<RollbackResult>::decode(pkg)
        else {
            self.stats.malformed += 1;
            return;
        };
        let Some(outcome) = RollbackOutcome::from_labels(&r.outcome, r.refusal.as_deref()) else {
            self.stats.malformed += 1;
            return;
        };
        let version: String = r.version.chars().take(MAX_CAPS_TEXT).collect();
        ctx.emit(Box::new(OtaEvent::RollbackReport {
            node: from,
            issued: r.issued,
            outcome,
            version,
        }));
    }

    /// Why the node stopped (a store failure), if it did.
    pub fn failure(&self) -> Option<&StoreError> {
        self.failed.as_ref()
    }

    /// Gives the store back (a simulated reboot keeps it).
    pub fn into_store(self) -> Box<dyn SlotStore> {
        self.store
    }

    // ------------------------------------------------------------------ persistence

    fn restore(&mut self) -> Result<(), StoreError> {
        let Some(bytes) = self.store.load_state()? else {
            return Ok(());
        };
        let Some((saved, manifest)) =
            serde_json::from_slice::<SavedState>(&bytes)
                .ok()
                .and_then(|s| {
                    let m = Manifest::from_json(s.manifest.to_string().as_bytes()).ok()?;
                    Some((s, m))
                })
        else {
            // Unreadable state: start over (the staged data is untrusted without it).
            return self.store.clear_state();
        };
        let layout = Layout::of(&manifest);
        let Some(mut have) = Bitmap::from_hex(&saved.have, layout.units()) else {
            return self.store.clear_state();
        };
        if let Some(key) = &self.config.trusted_key {
            // Saved only after the offer's signature was checked; a key changed since (or
            // a tampered record) makes the staged data untrusted.
            if manifest.verify_signature(key).is_err() {
                return self.store.clear_state();
            }
        }
        let manifest = Arc::new(manifest);
        // The bitmap is written after the units it lists, but check anyway: a unit that
        // does not verify is simply fetched again. Pages come before the chunks they cover
        // in unit order, so a chunk is checked against a page already re-verified.
        for u in 0..layout.units() {
            if have.get(u) {
                let ok = staged_range(&manifest, &layout, u)
                    .and_then(|(off, len)| self.store.read_staging(off, len).ok())
                    .is_some_and(|b| {
                        verify_unit(self.store.as_mut(), &manifest, &layout, &have, u, &b)
                    });
                if !ok {
                    have.clear(u);
                }
            }
        }
        if saved.complete {
            // A committed campaign kept to serve the neighbours (a relay that rebooted into
            // its new image). Served only whole, and not if this node rolled the image back.
            let rolled_back = self
                .store
                .load_boot()?
                .is_some_and(|r| r.refused.contains(&manifest.sha256.to_hex()));
            if rolled_back {
                // Told to the origin once the mesh is up (`flush_pending_report`).
                self.pending_report = Some((saved.origin, saved.campaign, NodeOutcome::RolledBack));
            }
            if !have.is_full() || rolled_back {
                return self.store.clear_state();
            }
            self.campaign = Some(Campaign {
                id: saved.campaign,
                verifier: None,
                manifest,
                layout,
                intent: saved.intent,
                scope: saved.scope.map(|s| s.into_iter().collect()),
                origin: saved.origin,
                source: ChunkSource::Staged,
                have,
                upstream: None,
                complete: true,
                slot: Slot::A,
                slot_offset: 0,
                unsaved: 0,
                nak_interval: self.config.nak_min,
                nak_at: None,
                progressed: false,
                last_progress_tenth: 10,
                last_progress: None,
                stale_naks: 0,
            });
            return Ok(());
        }
        let slot = self.inactive_slot()?;
        let mut c = Campaign {
            id: saved.campaign,
            verifier: StreamVerifier::new(manifest.clone()).ok(),
            manifest,
            layout,
            intent: saved.intent,
            scope: saved.scope.map(|s| s.into_iter().collect()),
            origin: saved.origin,
            source: ChunkSource::Staged,
            have,
            upstream: None,
            complete: false,
            slot,
            slot_offset: 0,
            unsaved: 0,
            nak_interval: self.config.nak_min,
            nak_at: None,
            progressed: false,
            last_progress_tenth: 0,
            last_progress: None,
            stale_naks: 0,
        };
        // The decoder's state is not persisted: decode the staged prefix again.
        self.store.erase_slot(slot)?;
        self.advance_decoder(&mut c)?;
        self.campaign = Some(c);
        Ok(())
    }

    fn save_state(&mut self) -> Result<(), StoreError> {
        let Some(c) = self.campaign.as_mut() else {
            return Ok(());
        };
        if matches!(c.source, ChunkSource::Payload(_)) {
            return Ok(());
        }
        let manifest: serde_json::Value =
            serde_json::from_slice(&c.manifest.to_json()).unwrap_or_default();
        let saved = SavedState {
            campaign: c.id,
            intent: c.intent.clone(),
            origin: c.origin,
            manifest,
            have: c.have.to_hex(),
            complete: c.complete,
            scope: c.scope.as_ref().map(|s| s.iter().copied().collect()),
        };
        c.unsaved = 0;
        let bytes = serde_json::to_vec(&saved).map_err(|_| StoreError::Corrupt {
            what: "state",
            why: Corruption::Undecodable,
        })?;
        self.store.save_state(&bytes)
    }

    fn inactive_slot(&mut self) -> Result<Slot, StoreError> {
        Ok(self.store.load_boot()?.map_or(Slot::B, |r| r.inactive()))
    }

    fn fail(&mut self, ctx: &mut Ctx<'_>, e: &StoreError) {
        let campaign = self.campaign.as_ref().map_or(0, |c| c.id);
        self.failed = Some(e.clone());
        ctx.emit(Box::new(OtaEvent::VerifyFailed {
            campaign,
            reason: VerifyFailure::Store(e.clone()),
        }));
    }

    // ------------------------------------------------------------------ sending

    fn send_json<B: PackageBody>(ctx: &mut Ctx<'_>, link: LinkId, msg: &TypedPackage<B>) {
        if remote_peer(link).is_some() {
            // A remote peer: the same message, SINGLE-routed (routing 1) through the nodes
            // between, which forward it like any painlessMesh package. Through a `Value`
            // (keys sorted), as this was always sent: the bytes stay what remote peers of
            // earlier builds saw.
            let Ok(mut v) = serde_json::to_value(msg) else {
                return;
            };
            v["routing"] = serde_json::json!(1);
            if let Ok(pkg) = Package::from_serialize(&v) {
                // No route any more: the layout change that follows drops the peer.
                let _ = ctx.send(&pkg);
            }
            return;
        }
        if let Ok(pkg) = msg.encode() {
            // The link may have just closed; the NeighbourDown that follows cleans up.
            let _ = ctx.send_on_link(link, &pkg);
        }
    }

    /// Bytes waiting on `link`, or for a remote peer on the first link of its route.
    fn backlog(ctx: &Ctx<'_>, link: LinkId) -> Option<usize> {
        match remote_peer(link) {
            Some(peer) => ctx.route(peer).and_then(|l| ctx.link_backlog(l)),
            None => ctx.link_backlog(link),
        }
    }

    /// A fresh neighbour record.
    fn neighbour(&self, peer: NodeId, now: Instant, caps_deadline: Option<Instant>) -> Neighbour {
        Neighbour {
            peer,
            caps: None,
            caps_deadline,
            stock: false,
            offered: None,
            want: Bitmap::new(0),
            accepted: false,
            rejected: false,
            cannot_decode: None,
            done: false,
            subtree_done: false,
            tokens: 0.0,
            refilled: now,
            pump_at: None,
            pacer: DelayPacer::new(
                self.config.link_rate.max(1) as f64,
                self.config.delay_target.unwrap_or(Duration::ZERO),
                now,
            ),
            offers_campaign: None,
            origin: 0,
            offer_at: None,
            offer_backoff: OFFER_RETRY_MIN,
            last_sent: None,
            reported: None,
            caps_tries: 1,
            caps_sent: now,
            chunks_sent: 0,
            bytes_sent: 0,
            sent: [Bitmap::new(0), Bitmap::new(0)],
            sent_since: now,
        }
    }

    /// Signed OTA across nodes without meshfleet OTA (a stock painlessMesh relay, or a
    /// meshfleet node without an OTA store): while we hold a campaign, every node behind a
    /// neighbour that sent no CAPS gets a SINGLE-routed CAPS (at most [`MAX_PROBES`] per
    /// layout change, each node again after 10 min). A meshfleet node answers with its own;
    /// from then on the two are *remote peers*: OFFER, NAK, STATUS and (JSON) CHUNKs travel
    /// between them SINGLE-routed, and the nodes between forward them as any package.
    fn probe_remote(&mut self, ctx: &mut Ctx<'_>) {
        if self.campaign.is_none() {
            return;
        }
        let now = ctx.now();
        let me = ctx.node_id();
        let stock_links: Vec<(LinkId, NodeId)> = self
            .neighbours
            .iter()
            .filter(|(l, n)| n.stock && remote_peer(**l).is_none())
            .map(|(l, n)| (*l, n.peer))
            .collect();
        let mut targets = Vec::new();
        for (link, peer) in stock_links {
            let Some(tree) = ctx.link_tree(link) else {
                continue;
            };
            // Every node below that neighbour (the top one is `peer` itself).
            let ids: Vec<NodeId> = tree.ids().get(1..).unwrap_or_default().to_vec();
            for id in ids {
                if targets.len() >= MAX_PROBES {
                    break;
                }
                let out_of_scope = self
                    .campaign
                    .as_ref()
                    .and_then(|c| c.scope.as_ref())
                    .is_some_and(|s| !s.contains(&id.0));
                if id == peer
                    || id == me
                    || out_of_scope
                    || self.neighbours.contains_key(&remote_link(id))
                    || self.neighbours.values().any(|n| n.peer == id)
                    || self
                        .probed
                        .get(&id.0)
                        .is_some_and(|t| now.saturating_since(*t) < PROBE_AGAIN)
                {
                    continue;
                }
                targets.push(id);
            }
        }
        for id in targets {
            if self.probed.len() >= MAX_PROBED {
                // Forget the oldest probe.
                if let Some(k) = self.probed.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                    self.probed.remove(&k);
                }
            }
            self.probed.insert(id.0, now);
            let caps = self.caps(me.0, id.0, false);
            Self::send_json(ctx, remote_link(id), &caps);
        }
    }

    /// Sends the report kept from the restore (a rollback) once its origin is reachable.
    fn flush_pending_report(&mut self, ctx: &mut Ctx<'_>) {
        if let Some((origin, campaign, outcome)) = self.pending_report {
            if origin == 0 || ctx.route(NodeId(origin)).is_some() {
                self.pending_report = None;
                self.send_report(ctx, origin, campaign, outcome);
            }
        }
    }

    /// Outcomes the nodes of the campaign this node is the origin of reported, by node
    /// (`OtaEvent::NodeReport` as they change). Direct neighbours and nodes anywhere in
    /// the mesh alike; a node that never reported is absent.
    pub fn outcomes(&self) -> &BTreeMap<NodeId, NodeOutcome> {
        &self.outcomes
    }

    /// Drops remote peers that are gone from the mesh, or are now direct neighbours.
    fn prune_remote(&mut self, ctx: &mut Ctx<'_>) {
        let gone: Vec<LinkId> = self
            .neighbours
            .iter()
            .filter_map(|(l, n)| {
                let peer = remote_peer(*l)?;
                let direct = self
                    .neighbours
                    .iter()
                    .any(|(l2, n2)| remote_peer(*l2).is_none() && n2.peer == n.peer);
                (direct || ctx.route(peer).is_none()).then_some(*l)
            })
            .collect();
        for link in gone {
            self.neighbours.remove(&link);
            if self
                .campaign
                .as_ref()
                .is_some_and(|c| c.upstream == Some(link))
            {
                if let Some(c) = self.campaign.as_mut() {
                    c.upstream = None;
                    c.nak_at = None;
                }
                self.switch_upstream(ctx, None);
            }
        }
    }

    fn caps(&self, me: u32, dest: u32, ack: bool) -> TypedPackage<Caps> {
        let running = self.config.running.as_ref();
        let caps = Caps {
            v: PROTOCOL_VERSION,
            codecs: self
                .config
                .codecs
                .iter()
                .map(|c| c.name().to_string())
                .collect(),
            window: self.config.max_window,
            mem: self.config.max_staging,
            bin: self.config.binary,
            role: self.config.role.clone(),
            hardware: self.config.hardware.clone(),
            fw: running.map(|r| r.version.clone()).unwrap_or_default(),
            sha256: running.map(|r| r.sha256.clone()).unwrap_or_default(),
            ack,
        };
        TypedPackage::neighbour(NodeId(me), NodeId(dest), caps)
    }

    /// Offers the campaign to every neighbour whose CAPS show it lacks the image.
    fn offer_all(&mut self, ctx: &mut Ctx<'_>) {
        let links: Vec<LinkId> = self.neighbours.keys().copied().collect();
        for l in links {
            self.maybe_offer(ctx, l);
        }
    }

    fn maybe_offer(&mut self, ctx: &mut Ctx<'_>, link: LinkId) {
        let me = ctx.node_id().0;
        if let Some(c) = self.campaign.as_mut() {
            if c.origin == 0 && matches!(c.source, ChunkSource::Payload(_)) {
                // We are the source: offers name us as the origin.
                c.origin = me;
            }
        }
        let Some(c) = self.campaign.as_ref() else {
            return;
        };
        let Some(n) = self.neighbours.get_mut(&link) else {
            return;
        };
        let Some(caps) = n.caps.as_ref() else {
            return;
        };
        let m = &c.manifest;
        // Without the operator's intent a receiver takes only an upgrade: offering anything
        // else would only earn a refusal (and, from a relay holding an older campaign, an
        // offer the source itself would have to refuse).
        let not_newer = Version::parse(&caps.fw)
            .is_ok_and(|fw| m.version.cmp_precedence(&fw) != core::cmp::Ordering::Greater);
        if Some(link) == c.upstream
            || n.offered == Some(c.id)
            // A remote peer that offered the campaign to us holds it already. (Direct
            // neighbours are still offered: a part-way child whose link was re-made takes
            // its parent's OFFER as the way back to its upstream.)
            || (remote_peer(link).is_some() && n.offers_campaign == Some(c.id))
            // Not a node the campaign is for: it is not offered, and not accounted for
            // (the driver knows whom it left out).
            || c.scope.as_ref().is_some_and(|s| !s.contains(&n.peer.0))
        {
            return;
        }
        // Neighbours not offered the campaign are accounted for to its origin on their
        // behalf (they never see an OFFER, so they cannot report it themselves).
        let skipped = if caps.sha256.eq_ignore_ascii_case(&m.sha256.to_hex()) {
            Some(NodeOutcome::AlreadyCurrent)
        } else if caps.role != m.role {
            Some(NodeOutcome::Incompatible(Refusal::Role))
        } else if caps.hardware != m.hardware {
            Some(NodeOutcome::Incompatible(Refusal::Hardware))
        } else if not_newer && c.intent.is_none() {
            Some(NodeOutcome::Refused(Refusal::Downgrade))
        } else if cannot_decode_reason(caps, m).is_some() {
            let kind = if caps.codecs.iter().any(|x| x == m.codec.name()) {
                Refusal::Window
            } else {
                Refusal::Codec
            };
            Some(NodeOutcome::Incompatible(kind))
        } else {
            None
        };
        if let Some(outcome) = skipped {
            if n.reported != Some(c.id) {
                n.reported = Some(c.id);
                let (origin, id, peer, version) = (c.origin, c.id, n.peer, caps.fw.clone());
                self.report_for(ctx, origin, id, peer, outcome, version);
            }
            // A neighbour that cannot decode the payload is also told to the driver below.
            if !matches!(
                outcome,
                NodeOutcome::Incompatible(Refusal::Codec | Refusal::Window)
            ) {
                return;
            }
        }
        let Some(c) = self.campaign.as_ref() else {
            return;
        };
        let Some(n) = self.neighbours.get_mut(&link) else {
            return;
        };
        let Some(caps) = n.caps.as_ref() else {
            return;
        };
        let m = &c.manifest;
        // The sender's half of the per-node choice: an offer the neighbour would have to
        // refuse for lack of a codec or memory is not made. Saying so once lets the driver
        // reach it another way (`ota offer --strategy auto`: the stock flow's announce).
        if let Some(reason) = cannot_decode_reason(caps, m) {
            if n.cannot_decode != Some(c.id) {
                n.cannot_decode = Some(c.id);
                ctx.emit(Box::new(OtaEvent::PeerCannotDecode {
                    peer: n.peer,
                    campaign: c.id,
                    reason,
                }));
            }
            return;
        }
        n.cannot_decode = None;
        n.offered = Some(c.id);
        n.rejected = false;
        n.accepted = false;
        n.done = false;
        n.subtree_done = false;
        n.want = Bitmap::new(c.layout.units());
        n.reset_sent(c.layout.units(), ctx.now());
        n.offer_backoff = OFFER_RETRY_MIN;
        n.offer_at = Some(ctx.now() + OFFER_RETRY_MIN);
        self.send_offer(ctx, link);
    }

    /// Sends the campaign's OFFER on `link` (first time or retry).
    fn send_offer(&mut self, ctx: &mut Ctx<'_>, link: LinkId) {
        let Some(c) = self.campaign.as_ref() else {
            return;
        };
        let Some(n) = self.neighbours.get(&link) else {
            return;
        };
        if c.scope.as_ref().is_some_and(|s| !s.contains(&n.peer.0)) {
            // Taken out of the scope since the first offer (`untarget`): no retries.
            return;
        }
        let m = &c.manifest;
        // The lean manifest: the chunk table follows page by page with the chunks.
        let lean = if m.has_chunk_table() {
            m.lean().to_json()
        } else {
            m.to_json()
        };
        let offer = Offer {
            campaign: c.id,
            intent: c
                .intent
                .as_ref()
                .and_then(|i| serde_json::from_slice(&i.to_json()).ok()),
            origin: c.origin,
            scope: c.scope.as_ref().map(|s| s.iter().copied().collect()),
            manifest: serde_json::from_slice(&lean).unwrap_or_default(),
        };
        let offer = TypedPackage::neighbour(ctx.node_id(), n.peer, offer);
        self.stats.offers_sent += 1;
        Self::send_json(ctx, link, &offer);
    }

    /// OFFERs are control messages a full send queue may drop: one that got no answer (NAK,
    /// STATUS) is sent again, the wait doubling up to [`OFFER_RETRY_MAX`], until the
    /// neighbour answers or the link dies. A neighbour that accepted and then fell silent
    /// while we sent it nothing (its NAK lost, or it took another upstream and never told
    /// us) is offered again too: it answers with a NAK or a STATUS. A refusal is asked
    /// again after four times the longest wait (refusals such as "busy" or "on trial" end).
    fn retry_offers(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        let Some(id) = self.campaign.as_ref().map(|c| c.id) else {
            // No campaign to offer: no offer timer stays armed (see `poll_timeout`).
            for n in self.neighbours.values_mut() {
                n.offer_at = None;
            }
            return;
        };
        let links: Vec<LinkId> = self
            .neighbours
            .iter()
            .filter(|(_, n)| n.offer_at.is_some_and(|t| t <= now))
            .map(|(l, _)| *l)
            .collect();
        for link in links {
            let Some(n) = self.neighbours.get_mut(&link) else {
                continue;
            };
            if n.offered != Some(id) || n.done {
                n.offer_at = None;
                continue;
            }
            let fed = n
                .last_sent
                .is_some_and(|t| now.saturating_since(t) < OFFER_RETRY_MAX);
            if n.accepted && fed {
                n.offer_at = Some(now + OFFER_RETRY_MAX);
                continue;
            }
            n.offer_backoff = (n.offer_backoff + n.offer_backoff).min(OFFER_RETRY_MAX);
            let wait = if n.rejected {
                OFFER_RETRY_MAX + OFFER_RETRY_MAX + OFFER_RETRY_MAX + OFFER_RETRY_MAX
            } else {
                n.offer_backoff
            };
            n.offer_at = Some(now + wait);
            self.stats.offers_retried += 1;
            self.send_offer(ctx, link);
        }
    }

    /// A NAK or STATUS of the campaign arrived from `link`: our OFFER was answered.
    fn answered(&mut self, now: Instant, link: LinkId) {
        if let Some(n) = self.neighbours.get_mut(&link) {
            n.offer_backoff = OFFER_RETRY_MIN;
            if n.offer_at.is_some() {
                n.offer_at = Some(now + OFFER_RETRY_MAX);
            }
        }
    }

    /// The bytes of unit `index`, if we hold it.
    fn chunk_bytes(&mut self, index: u32) -> Option<Vec<u8>> {
        let c = self.campaign.as_ref()?;
        match &c.source {
            ChunkSource::Payload(a) => match c.layout.unit(index)? {
                Unit::Page(k) => a.manifest().page_bytes(k),
                Unit::Chunk(i) => a.chunk(i).map(<[u8]>::to_vec),
            },
            ChunkSource::Staged => {
                if !c.have.get(index) {
                    return None;
                }
                let (off, len) = staged_range(&c.manifest, &c.layout, index)?;
                self.store.read_staging(off, len).ok()
            }
        }
    }

    /// Sends what the token buckets allow; arms each link's pacing timer.
    fn pump(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        let Some(c) = self.campaign.as_ref() else {
            // Nothing to send any more: no pacing timer stays armed (see `poll_timeout`).
            for n in self.neighbours.values_mut() {
                n.pump_at = None;
            }
            return;
        };
        let (id, chunk_size) = (c.id, u64::from(c.manifest.chunk_size));
        let frame_cost = (chunk_size + BINARY_CHUNK_HEADER as u64 + 5) as f64;
        let delay_control = self.config.delay_target.is_some();
        let burst = frame_cost * f64::from(self.config.burst_chunks.max(1));
        let links: Vec<LinkId> = self.neighbours.keys().copied().collect();
        if self.config.sync_brake_target.is_some() && self.brake.due(now) {
            let timings = ctx
                .links()
                .into_iter()
                .filter_map(|(l, _, _)| ctx.node_sync_timing(l).map(|t| (l, t)));
            self.brake.observe(now, timings);
        }
        let scale = self.brake.scale();
        for link in links {
            loop {
                let Some(c) = self.campaign.as_ref() else {
                    return;
                };
                let Some(n) = self.neighbours.get_mut(&link) else {
                    break;
                };
                n.pump_at = None;
                let Some(index) = n.want.first_common(&c.have, 0) else {
                    break;
                };
                if delay_control {
                    n.pacer.observe(now, Self::backlog(ctx, link));
                }
                let rate = n.pacer.rate() * scale;
                let elapsed = now.saturating_since(n.refilled).as_micros() as f64 / 1e6;
                n.tokens = (n.tokens + elapsed * rate).min(burst);
                n.refilled = now;
                // Back-pressure: when the link is slower than the pacing rate (radio loss
                // stretches TCP, several links share one radio), the driver's queue for it
                // grows. Sending more would only lengthen it: every other frame on the
                // link (node sync, application messages) would wait behind it, until the
                // node-sync timeout closes the link or the queue drops frames. So no chunk
                // is queued while a burst's worth of bytes already waits there; look again
                // when that much should have drained at the pacing rate.
                let backlog = Self::backlog(ctx, link).unwrap_or(0) as f64;
                if backlog >= burst {
                    let wait = ceil_u64((backlog - burst + frame_cost) / rate * 1e6);
                    n.pump_at = Some(now + Duration::from_micros(wait.max(1)));
                    break;
                }
                if n.tokens < frame_cost {
                    let wait = ceil_u64((frame_cost - n.tokens) / rate * 1e6);
                    n.pump_at = Some(now + Duration::from_micros(wait.max(1)));
                    break;
                }
                let binary = self.config.binary
                    && remote_peer(link).is_none()
                    && n.caps.as_ref().is_some_and(|c| c.bin);
                let peer = n.peer.0;
                let Some(data) = self.chunk_bytes(index) else {
                    // Cannot read it back: forget the want; the neighbour NAKs again.
                    if let Some(n) = self.neighbours.get_mut(&link) {
                        n.want.clear(index);
                    }
                    continue;
                };
                let cost = if binary {
                    let payload = encode_binary_chunk(id, index, &data);
                    let _ = ctx.send_bulk_binary_on_link(link, &payload);
                    payload.len() + 5
                } else {
                    let msg = ChunkJson {
                        campaign: id,
                        index,
                        data: BASE64.encode(&data),
                    };
                    let msg = TypedPackage::neighbour(ctx.node_id(), NodeId(peer), msg);
                    if remote_peer(link).is_some() {
                        Self::send_json(ctx, link, &msg);
                    } else if let Ok(pkg) = msg.encode() {
                        // Bulk class, as binary chunks; the link may have just closed.
                        let _ = ctx.send_bulk_on_link(link, &pkg);
                    }
                    msg.body.data.len() + 100
                };
                self.stats.chunks_sent += 1;
                self.stats.chunk_bytes_sent += data.len() as u64;
                if let Some(n) = self.neighbours.get_mut(&link) {
                    n.pacer.on_queued(now, cost as u64);
                    n.tokens -= cost as f64;
                    n.want.clear(index);
                    n.sent[0].set(index);
                    n.last_sent = Some(now);
                    n.chunks_sent = n.chunks_sent.saturating_add(1);
                    n.bytes_sent += data.len() as u64;
                }
            }
        }
    }

    fn send_status(&mut self, ctx: &mut Ctx<'_>, reject: Option<(LinkId, u32, Refusal, String)>) {
        if let Some((link, campaign, kind, reason)) = reject {
            let peer = self.neighbours.get(&link).map_or(0, |n| n.peer.0);
            let st = Status {
                campaign,
                have: 0,
                chunks: 0,
                done: false,
                subtree_done: false,
                reject: Some(reason),
                refusal: Some(kind.label().to_string()),
            };
            let st = TypedPackage::neighbour(ctx.node_id(), NodeId(peer), st);
            Self::send_json(ctx, link, &st);
            return;
        }
        if let Some(up) = self.campaign.as_ref().and_then(|c| c.upstream) {
            self.send_status_on(ctx, up);
        }
    }

    /// Our progress for the campaign, on `link`.
    fn send_status_on(&mut self, ctx: &mut Ctx<'_>, link: LinkId) {
        let Some(c) = self.campaign.as_ref() else {
            return;
        };
        let peer = self.neighbours.get(&link).map_or(0, |n| n.peer.0);
        let st = Status {
            campaign: c.id,
            have: c.have.count(),
            chunks: c.layout.units(),
            done: c.complete,
            subtree_done: c.complete && self.subtree_done(),
            reject: None,
            refusal: None,
        };
        let st = TypedPackage::neighbour(ctx.node_id(), NodeId(peer), st);
        Self::send_json(ctx, link, &st);
    }

    fn send_nak(&mut self, ctx: &mut Ctx<'_>) {
        let Some(c) = self.campaign.as_ref() else {
            return;
        };
        let Some(up) = c.upstream else {
            return;
        };
        if c.have.is_full() {
            return;
        }
        let peer = self.neighbours.get(&up).map_or(0, |n| n.peer.0);
        let nak = Nak {
            campaign: c.id,
            missing: c.have.missing_ranges(MAX_NAK_RANGES),
        };
        let nak = TypedPackage::neighbour(ctx.node_id(), NodeId(peer), nak);
        self.stats.naks_sent += 1;
        Self::send_json(ctx, up, &nak);
    }

    /// Arms the next NAK decision at a random point in `[I/2, I)`.
    fn arm_nak(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        let Some(c) = self.campaign.as_mut() else {
            return;
        };
        if c.complete || c.upstream.is_none() {
            c.nak_at = None;
            return;
        }
        let i = c.nak_interval.as_micros().max(2);
        let t = i / 2 + ctx.rng().below(i / 2);
        c.nak_at = Some(now + Duration::from_micros(t));
        c.progressed = false;
    }

    // ------------------------------------------------------------------ receiving

    fn handle_caps(&mut self, ctx: &mut Ctx<'_>, link: LinkId, pkg: &Package) {
        let Ok(TypedPackage { body: caps, .. }) = TypedPackage::<Caps>::decode(pkg) else {
            self.stats.malformed += 1;
            return;
        };
        let too_long = [&caps.role, &caps.hardware, &caps.fw, &caps.sha256]
            .iter()
            .any(|s| s.len() > MAX_CAPS_TEXT);
        if too_long || caps.codecs.len() > MAX_CODECS {
            self.stats.malformed += 1;
            return;
        }
        let Some(n) = self.neighbours.get_mut(&link) else {
            return;
        };
        n.caps_deadline = None;
        let (peer, had_caps) = (n.peer, n.caps.is_some());
        // It had not got ours when it sent this. If ours left well before (more than half
        // the CAPS timeout), it was lost: send it again. Two CAPS that cross on a new link
        // are both `ack:false` and need no answer.
        let now = ctx.now();
        if !caps.ack
            && (n.caps_tries == 0
                || now.saturating_since(n.caps_sent).as_micros() * 2
                    >= self.config.caps_timeout.as_micros())
        {
            n.caps_sent = now;
            n.caps_tries = n.caps_tries.max(1);
            let ours = self.caps(ctx.node_id().0, peer.0, true);
            Self::send_json(ctx, link, &ours);
        }
        let Some(n) = self.neighbours.get_mut(&link) else {
            return;
        };
        if caps.v != PROTOCOL_VERSION {
            // Chunk indices and the manifest form differ between versions: speaking ours
            // to it would only get every chunk rejected. Stock OTA still reaches it.
            n.stock = true;
            n.caps = None;
            return;
        }
        n.stock = false;
        let binary = caps.bin;
        n.caps = Some(caps);
        if !had_caps {
            ctx.emit(Box::new(OtaEvent::CapsReceived {
                peer: n.peer,
                binary,
            }));
        }
        self.maybe_offer(ctx, link);
    }

    /// Why an offer is refused, if it is. The signature was checked before (`handle_offer`).
    /// `intent` is the offer's operator intent, if any (parsed or not): it is consulted only
    /// where a rule would refuse without it.
    fn refuse_reason(
        &mut self,
        m: &Manifest,
        intent: Option<&Result<Intent, IntentError>>,
        me: u32,
        now: Instant,
    ) -> Option<(Refusal, String)> {
        if m.role != self.config.role {
            return Some((
                Refusal::Role,
                format!("role {} is not ours ({})", m.role, self.config.role),
            ));
        }
        if m.hardware != self.config.hardware {
            return Some((
                Refusal::Hardware,
                format!(
                    "hardware {} is not ours ({})",
                    m.hardware, self.config.hardware
                ),
            ));
        }
        if !self.config.codecs.contains(&m.codec) {
            return Some((
                Refusal::Codec,
                format!("codec {} not supported", m.codec.name()),
            ));
        }
        if m.codec == Codec::Deflate && m.window > self.config.max_window {
            return Some((
                Refusal::Window,
                format!(
                    "needs a {}-byte decompression window, this node can give {}",
                    m.window, self.config.max_window
                ),
            ));
        }
        let staging = m
            .compressed_size
            .saturating_add(u64::from(m.chunk_count) * CHUNK_HASH_BYTES as u64);
        if staging > self.config.max_staging {
            return Some((
                Refusal::Staging,
                format!(
                    "payload and chunk table of {staging} bytes exceed our {} bytes of staging",
                    self.config.max_staging
                ),
            ));
        }
        if self.config.on_trial {
            return Some((
                Refusal::OnTrial,
                "running image is not confirmed yet".into(),
            ));
        }
        // Read fresh: a rollback may have happened since this plugin started.
        let rec = self.store.load_boot().ok().flatten();
        let intent_check = intent.map(|i| match i {
            Ok(i) => i.allows(
                m,
                me,
                self.config.trusted_key.as_ref(),
                self.unix_now(now),
                rec.as_ref().map_or(0, |r| r.intent_issued),
            ),
            Err(e) => Err(e.clone()),
        });
        let lifted = matches!(intent_check, Some(Ok(())));
        let why_not = match &intent_check {
            Some(Err(e)) => format!(" ({e})"),
            _ => String::new(),
        };
        let sha = m.sha256.to_string();
        if rec.as_ref().is_some_and(|r| r.refused.contains(&sha)) && !lifted {
            return Some((
                Refusal::RolledBack,
                format!(
                    "image {} was rolled back on this node; it is refused without the operator's \
                 signed intent for it{why_not}",
                    &sha[..sha.len().min(16)]
                ),
            ));
        }
        if let Some(r) = &self.config.running {
            if let Ok(running) = Version::parse(&r.version) {
                let newer = m.version.cmp_precedence(&running) == core::cmp::Ordering::Greater;
                if !newer && !lifted && !self.config.allow_downgrade {
                    return Some((
                        Refusal::Downgrade,
                        format!(
                            "downgrade refused: offered {} is not newer than running {running} \
                         and carries no valid operator intent{why_not}",
                            m.version
                        ),
                    ));
                }
            }
        }
        None
    }

    /// Refuses an offer from `link`: an event here, a STATUS `reject` to the offerer, and
    /// (for a genuine campaign) a REPORT to the origin the offer named.
    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &mut self,
        ctx: &mut Ctx<'_>,
        link: LinkId,
        peer: NodeId,
        id: u32,
        kind: Refusal,
        reason: String,
        origin: u32,
    ) {
        ctx.emit(Box::new(OtaEvent::OfferRejected {
            peer,
            kind,
            reason: reason.clone(),
        }));
        self.send_status(ctx, Some((link, id, kind, reason)));
        if !matches!(kind, Refusal::Signature | Refusal::InvalidManifest) {
            self.send_report(ctx, origin, id, NodeOutcome::of_refusal(kind));
        }
    }

    /// Accounts for neighbour `node` to the campaign's origin: recorded here if we are the
    /// origin, else sent as a REPORT naming it.
    fn report_for(
        &mut self,
        ctx: &mut Ctx<'_>,
        origin: u32,
        campaign: u32,
        node: NodeId,
        outcome: NodeOutcome,
        version: String,
    ) {
        let me = ctx.node_id().0;
        if origin == me {
            self.record_outcome(ctx, campaign, node, outcome, version);
            return;
        }
        if origin == 0 {
            return;
        }
        let (o, r) = outcome.labels();
        let report = Report {
            campaign,
            outcome: o.to_string(),
            refusal: r.map(str::to_string),
            version,
            node: node.0,
        };
        if let Ok(pkg) = TypedPackage::single(NodeId(me), NodeId(origin), report).encode() {
            let _ = ctx.send(&pkg);
        }
    }

    fn record_outcome(
        &mut self,
        ctx: &mut Ctx<'_>,
        campaign: u32,
        node: NodeId,
        outcome: NodeOutcome,
        version: String,
    ) {
        if self.outcomes.get(&node) == Some(&outcome) {
            return;
        }
        if !self.outcomes.contains_key(&node) && self.outcomes.len() >= MAX_OUTCOMES {
            return;
        }
        self.outcomes.insert(node, outcome);
        let version: String = version.chars().take(MAX_CAPS_TEXT).collect();
        ctx.emit(Box::new(OtaEvent::NodeReport {
            node,
            campaign,
            outcome,
            version,
        }));
    }

    /// Tells the campaign's origin how this node ended it (SINGLE-routed, best effort: it is
    /// sent again with every answer to a re-sent OFFER).
    fn send_report(&mut self, ctx: &mut Ctx<'_>, origin: u32, campaign: u32, outcome: NodeOutcome) {
        let me = ctx.node_id().0;
        if origin == 0 || origin == me {
            return;
        }
        let (o, r) = outcome.labels();
        let report = Report {
            campaign,
            outcome: o.to_string(),
            refusal: r.map(str::to_string),
            version: self
                .config
                .running
                .as_ref()
                .map(|i| i.version.clone())
                .unwrap_or_default(),
            node: 0,
        };
        if let Ok(pkg) = TypedPackage::single(NodeId(me), NodeId(origin), report).encode() {
            // No route to the origin: nobody to tell.
            let _ = ctx.send(&pkg);
        }
    }

    /// A node's REPORT of a campaign we are the origin of.
    fn handle_report(&mut self, ctx: &mut Ctx<'_>, pkg: &Package) {
        let Ok(TypedPackage { from, body: r, .. }) = TypedPackage::<Report>::decode(pkg) else {
            self.stats.malformed += 1;
            return;
        };
        let me = ctx.node_id().0;
        let Some(c) = self.campaign.as_ref() else {
            return;
        };
        if c.id != r.campaign || c.origin != me {
            return;
        }
        let Some(outcome) = NodeOutcome::from_labels(&r.outcome, r.refusal.as_deref()) else {
            self.stats.malformed += 1;
            return;
        };
        // A relay reports the neighbours it did not offer the campaign to (`node`); a node
        // reports itself (`node` 0).
        let node = if r.node == 0 { from } else { NodeId(r.node) };
        if node.0 == 0 {
            // No `from` key (the wire crate reads it as 0): a report about nobody.
            self.stats.malformed += 1;
            return;
        }
        self.record_outcome(ctx, r.campaign, node, outcome, r.version);
    }

    fn handle_offer(&mut self, ctx: &mut Ctx<'_>, link: LinkId, pkg: &Package) {
        let Ok(TypedPackage { body: offer, .. }) = TypedPackage::<Offer>::decode(pkg) else {
            self.stats.malformed += 1;
            return;
        };
        let now = ctx.now();
        let me = ctx.node_id().0;
        let peer = self.neighbours.get(&link).map_or(pkg.from(), |n| n.peer);
        let manifest = match Manifest::from_json(offer.manifest.to_string().as_bytes()) {
            Ok(m) => m,
            Err(e) => {
                let reason = format!("invalid manifest: {e}");
                let kind = Refusal::InvalidManifest;
                self.refuse(ctx, link, peer, offer.campaign, kind, reason, 0);
                return;
            }
        };
        let id = campaign_id(&manifest);
        if id != offer.campaign {
            self.stats.malformed += 1;
            return;
        }
        // The signature first: nothing below (resume, the choice of upstream, a state
        // record) acts on an offer the fleet key did not sign.
        if let Some(key) = &self.config.trusted_key {
            if let Err(e) = manifest.verify_signature(key) {
                let reason = format!("signature: {e}");
                self.refuse(ctx, link, peer, id, Refusal::Signature, reason, 0);
                return;
            }
        }
        // Already running it: tell the offerer we are done.
        if self
            .config
            .running
            .as_ref()
            .is_some_and(|r| r.sha256.eq_ignore_ascii_case(&manifest.sha256.to_hex()))
        {
            let st = Status {
                campaign: id,
                have: Layout::of(&manifest).units(),
                chunks: Layout::of(&manifest).units(),
                done: true,
                subtree_done: true,
                reject: None,
                refusal: None,
            };
            let st = TypedPackage::neighbour(NodeId(me), peer, st);
            Self::send_json(ctx, link, &st);
            self.send_report(ctx, offer.origin, id, NodeOutcome::AlreadyCurrent);
            return;
        }
        let intent = offer
            .intent
            .as_ref()
            .map(|v| Intent::from_json(v.to_string().as_bytes()));
        if let Some(c) = self.campaign.as_ref() {
            if c.id == id {
                if c.manifest.signed_bytes() != manifest.signed_bytes() {
                    // Same payload, another manifest: not the campaign we hold.
                    self.stats.malformed += 1;
                    return;
                }
                if c.complete {
                    // We hold it already (source, or done and not yet rebooted).
                    self.send_status_on(ctx, link);
                    return;
                }
                self.resume_from(ctx, link, offer.origin);
                return;
            }
            if matches!(c.source, ChunkSource::Payload(_)) {
                // A source distributes its campaign; it never drops it for a neighbour's.
                let reason = format!("this node is the source of campaign {}", c.id);
                let origin = offer.origin;
                self.refuse(ctx, link, peer, id, Refusal::Source, reason, origin);
                return;
            }
            if self.failed.is_some() {
                let (kind, origin) = (Refusal::StoreFailed, offer.origin);
                self.refuse(ctx, link, peer, id, kind, "store failed".into(), origin);
                return;
            }
        }
        // The campaign's scope (2.3.2): unsigned, a rule of cooperating nodes (any node may
        // take a newer signed image by design), so that a rollout reaches only the nodes
        // of the waves it started.
        let scope = match offer.scope {
            Some(v) if v.len() > MAX_SCOPE => {
                self.stats.malformed += 1;
                return;
            }
            v => v.map(|v| v.into_iter().collect::<BTreeSet<u32>>()),
        };
        if scope.as_ref().is_some_and(|s| !s.contains(&me)) {
            let reason = "this node is not in the campaign's scope".to_string();
            let origin = offer.origin;
            self.refuse(ctx, link, peer, id, Refusal::OutOfScope, reason, origin);
            return;
        }
        if let Some((kind, reason)) = self.refuse_reason(&manifest, intent.as_ref(), me, now) {
            self.refuse(ctx, link, peer, id, kind, reason, offer.origin);
            return;
        }
        if let Some(c) = self.campaign.as_ref().filter(|c| !c.complete) {
            // Another campaign half-received: a newer signed version, or the image the
            // operator's intent names, supersedes it; anything else waits for it to finish
            // or to be abandoned (`campaign_timeout`).
            let newer = manifest.version.cmp_precedence(&c.manifest.version)
                == core::cmp::Ordering::Greater;
            let by_intent = matches!(intent, Some(Ok(_)));
            if !newer && !by_intent {
                let reason = format!(
                    "busy with campaign {} (version {}, not older than {})",
                    c.id, c.manifest.version, manifest.version
                );
                let origin = offer.origin;
                self.refuse(ctx, link, peer, id, Refusal::Busy, reason, origin);
                return;
            }
            self.abandon(ctx, AbandonReason::Superseded { by: id });
        }
        if let Some(n) = self.neighbours.get_mut(&link) {
            n.offers_campaign = Some(id);
            n.origin = offer.origin;
        }
        let intent = intent.and_then(Result::ok);
        if let Err(e) = self.begin(ctx, link, id, manifest, intent, scope, offer.origin) {
            self.fail(ctx, &e);
        }
    }

    /// An OFFER of the campaign we are receiving (after a reboot, a lost upstream, or from a
    /// second holder). Its sender becomes the upstream if we have none, or if ours is not
    /// delivering and the sender is on the route toward the origin it claims (or ours has
    /// been stale for [`STALE_NAKS`] NAKs). Otherwise it is told our progress (a STATUS),
    /// which answers its OFFER.
    fn resume_from(&mut self, ctx: &mut Ctx<'_>, link: LinkId, origin: u32) {
        let Some(c) = self.campaign.as_ref() else {
            return;
        };
        let id = c.id;
        if let Some(n) = self.neighbours.get_mut(&link) {
            n.offers_campaign = Some(id);
            n.origin = origin;
        }
        let alive = matches!(c.upstream, Some(u) if self.neighbours.contains_key(&u));
        let toward_origin = origin != 0 && ctx.route(NodeId(origin)) == Some(link);
        let switch = !alive || (c.stale_naks >= 1 && toward_origin) || c.stale_naks >= STALE_NAKS;
        if c.upstream == Some(link) || switch {
            self.set_upstream(ctx, link);
        } else {
            self.send_status_on(ctx, link);
        }
    }

    // The offer's parts, each checked by the caller; a struct for one call site would only
    // move the list.
    #[allow(clippy::too_many_arguments)]
    fn begin(
        &mut self,
        ctx: &mut Ctx<'_>,
        link: LinkId,
        id: u32,
        manifest: Manifest,
        intent: Option<Intent>,
        scope: Option<BTreeSet<u32>>,
        origin: u32,
    ) -> Result<(), StoreError> {
        // A committed but not yet booted image sits in the inactive slot: it is superseded.
        let mut rec = self.store.load_boot()?;
        if let Some(r) = rec.as_mut().filter(|r| r.pending.is_some()) {
            r.pending = None;
            r.attempts = 0;
            self.store.save_boot(r)?;
        }
        let slot = rec.map_or(Slot::B, |r| r.inactive());
        // Only the lean manifest is kept: the chunk table arrives as hash pages.
        let manifest = Arc::new(manifest.lean());
        let layout = Layout::of(&manifest);
        let chunks = layout.units();
        // Staging: the payload, then the chunk table (16 bytes per chunk).
        let table = u64::from(manifest.chunk_count) * CHUNK_HASH_BYTES as u64;
        self.store
            .reset_staging(manifest.compressed_size.saturating_add(table))?;
        self.store.erase_slot(slot)?;
        self.campaign = Some(Campaign {
            id,
            verifier: StreamVerifier::new(manifest.clone()).ok(),
            manifest: manifest.clone(),
            layout,
            intent,
            scope,
            origin,
            source: ChunkSource::Staged,
            have: Bitmap::new(chunks),
            upstream: Some(link),
            complete: false,
            slot,
            slot_offset: 0,
            unsaved: 0,
            nak_interval: self.config.nak_min,
            nak_at: None,
            progressed: false,
            last_progress_tenth: 0,
            last_progress: Some(ctx.now()),
            stale_naks: 0,
        });
        self.save_state()?;
        ctx.emit(Box::new(OtaEvent::OfferAccepted {
            campaign: id,
            version: manifest.version.to_string(),
            have: 0,
            chunks,
        }));
        // The NAK is the acceptance: "send me all of these".
        self.send_nak(ctx);
        self.arm_nak(ctx);
        // Pipelining: offer downstream at once; chunks follow as they arrive here.
        self.offer_all(ctx);
        Ok(())
    }

    fn handle_chunk(
        &mut self,
        ctx: &mut Ctx<'_>,
        link: LinkId,
        campaign: u32,
        index: u32,
        data: &[u8],
    ) {
        let peer = self.neighbours.get(&link).map_or(NodeId(0), |n| n.peer);
        if self.failed.is_some() {
            return;
        }
        let Some(c) = self.campaign.as_ref() else {
            return;
        };
        let layout = c.layout;
        let expected_len = staged_range(&c.manifest, &layout, index).map(|(_, len)| len);
        let reject = if c.id != campaign {
            Some("campaign")
        } else if expected_len.is_none() {
            Some("index")
        } else if expected_len != Some(data.len()) {
            Some("length")
        } else if c.have.get(index) {
            self.stats.duplicates += 1;
            return;
        } else if matches!(layout.unit(index), Some(Unit::Chunk(i)) if !c.have.get(layout.page_of_chunk(i)))
        {
            // Its hash page has not arrived (it is sent just before the chunks it covers,
            // so this takes a reordering, e.g. a new upstream mid-page): not bad data, just
            // not checkable yet. Dropped; the NAK asks for both again.
            self.stats.unverifiable += 1;
            return;
        } else {
            let ok = verify_unit(
                self.store.as_mut(),
                &c.manifest,
                &layout,
                &c.have,
                index,
                data,
            );
            (!ok).then_some("hash")
        };
        if let Some(reason) = reject {
            self.stats.chunks_rejected += 1;
            ctx.emit(Box::new(OtaEvent::ChunkRejected {
                peer,
                index,
                reason,
            }));
            return;
        }
        if let Err(e) = self.store_chunk(ctx, index, data) {
            self.fail(ctx, &e);
            return;
        }
        // Forward downstream: every accepted neighbour but the sender that lacks it.
        for (l, n) in &mut self.neighbours {
            if *l != link && n.accepted && !n.done && n.offered == Some(campaign) {
                n.want.set(index);
            }
        }
        self.pump(ctx);
    }

    fn store_chunk(
        &mut self,
        ctx: &mut Ctx<'_>,
        index: u32,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let Some(c) = self.campaign.as_mut() else {
            return Ok(());
        };
        let offset = staged_range(&c.manifest, &c.layout, index).map_or(0, |(off, _)| off);
        // Data first, durable; then the bitmap that vouches for it.
        self.store.write_staging(offset, data)?;
        let Some(mut c) = self.campaign.take() else {
            return Ok(());
        };
        c.have.set(index);
        c.unsaved += 1;
        c.progressed = true;
        c.stale_naks = 0;
        c.last_progress = Some(ctx.now());
        self.stats.chunks_received += 1;
        let r = self.advance_decoder(&mut c);
        let tenth = c.have.count() * 10 / c.layout.units().max(1);
        let progress = (tenth > c.last_progress_tenth).then(|| {
            c.last_progress_tenth = tenth;
            OtaEvent::Progress {
                campaign: c.id,
                have: c.have.count(),
                chunks: c.layout.units(),
            }
        });
        let full = c.have.is_full();
        let save = c.unsaved >= self.config.save_every.max(1) && !full;
        self.campaign = Some(c);
        r?;
        if let Some(e) = progress {
            ctx.emit(Box::new(e));
        }
        if save {
            self.save_state()?;
        }
        if full {
            self.finish(ctx)?;
        }
        Ok(())
    }

    /// Decodes the contiguous prefix of held chunks into the inactive slot.
    fn advance_decoder(&mut self, c: &mut Campaign) -> Result<(), StoreError> {
        let Some(v) = c.verifier.as_mut() else {
            return Ok(());
        };
        while !v.is_complete() && c.have.get(c.layout.of_chunk(v.next_chunk())) {
            let i = v.next_chunk();
            let Some(r) = c.manifest.chunk_range(i) else {
                break;
            };
            let bytes = self.store.read_staging(r.start as u64, r.len())?;
            let Some(hash) = staged_chunk_hash(self.store.as_mut(), &c.manifest, i) else {
                break;
            };
            let mut err = None;
            let (store, slot, off) = (&mut self.store, c.slot, &mut c.slot_offset);
            let pushed = v.push_chunk_with_hash(i, &bytes, &hash, |out| {
                if err.is_none() {
                    if let Err(e) = store.write_slot(slot, *off, out) {
                        err = Some(e);
                    }
                    *off += out.len() as u64;
                }
            });
            if let Some(e) = err {
                return Err(e);
            }
            if pushed.is_err() {
                // A decode error: the image is bad (a verified chunk list with a corrupt
                // stream can only come from a bad signer). `finish` reports it.
                c.verifier = None;
                break;
            }
        }
        Ok(())
    }

    fn finish(&mut self, ctx: &mut Ctx<'_>) -> Result<(), StoreError> {
        let Some(mut c) = self.campaign.take() else {
            return Ok(());
        };
        let verdict = match c.verifier.take() {
            Some(v) => v.finish().map_err(VerifyFailure::Image),
            None => Err(VerifyFailure::Undecodable),
        };
        let m = c.manifest.clone();
        match verdict {
            Ok(()) => {
                ctx.emit(Box::new(OtaEvent::Verified { campaign: c.id }));
                self.store.sync_slot(c.slot)?;
                let info = ImageInfo {
                    version: m.version.to_string(),
                    sha256: m.sha256.to_hex(),
                    md5: m.md5.to_hex(),
                    size: m.size,
                };
                boot::commit(self.store.as_mut(), c.slot, info)?;
                if let Some(i) = &c.intent {
                    // A used intent cannot install its image again later (replay).
                    if let Some(mut rec) = self.store.load_boot()? {
                        rec.intent_issued = rec.intent_issued.max(i.issued);
                        self.store.save_boot(&rec)?;
                    }
                }
                c.complete = true;
                c.nak_at = None;
                let id = c.id;
                self.campaign = Some(c);
                // The staged units stay, recorded as complete: after its reboot into the new
                // image the node still serves the campaign to neighbours that lack it.
                self.save_state()?;
                ctx.emit(Box::new(OtaEvent::Applied {
                    campaign: id,
                    version: m.version.to_string(),
                }));
                let origin = self.campaign.as_ref().map_or(0, |c| c.origin);
                self.send_report(ctx, origin, id, NodeOutcome::Updated);
                self.send_status(ctx, None);
            }
            Err(reason) => {
                ctx.emit(Box::new(OtaEvent::VerifyFailed {
                    campaign: c.id,
                    reason,
                }));
                self.send_report(ctx, c.origin, c.id, NodeOutcome::Failed);
                self.store.clear_state()?;
                // Nothing was committed; the campaign is dropped.
            }
        }
        Ok(())
    }

    fn handle_nak(&mut self, ctx: &mut Ctx<'_>, link: LinkId, pkg: &Package) {
        let Ok(TypedPackage { body: nak, .. }) = TypedPackage::<Nak>::decode(pkg) else {
            self.stats.malformed += 1;
            return;
        };
        self.stats.naks_received += 1;
        let Some(c) = self.campaign.as_ref() else {
            return;
        };
        if nak.campaign != c.id || nak.missing.len() > MAX_NAK_RANGES {
            self.stats.malformed += 1;
            return;
        }
        let backlog = Self::backlog(ctx, link);
        let Some(n) = self.neighbours.get_mut(&link) else {
            return;
        };
        let now = ctx.now();
        if n.offered != Some(c.id) {
            // A NAK is an acceptance only of an OFFER we made on this link. Anything else
            // (a neighbour that never was offered, or one from before our restart) would
            // let any neighbour pull the whole artefact: ignored. A neighbour that really
            // needs the campaign gets our OFFER after the CAPS exchange and NAKs again.
            self.stats.naks_unsolicited += 1;
            return;
        }
        n.accepted = true;
        n.rejected = false;
        n.done = false;
        n.subtree_done = false;
        n.offer_backoff = OFFER_RETRY_MIN;
        if n.offer_at.is_some() {
            n.offer_at = Some(now + OFFER_RETRY_MAX);
        }
        // The link is TCP: a chunk sent on it is delivered unless the link dies, and then
        // the neighbour comes back on a new link with fresh state. A NAK that lists a chunk
        // sent here lately was written while that chunk was still queued or in flight (a
        // stalled link, a busy channel): sending it again would only duplicate it. So
        // only chunks not sent within the last one to two guard periods (a quarter of
        // `nak_max`, 2 s: longer than a TCP stall at 20% segment loss usually lasts) are
        // wanted again; a chunk that really went missing (a driver that dropped a frame
        // from a full queue) is sent again after that.
        // On a crowded medium chunks can wait in the driver's queue longer than that
        // (measured at 500 nodes on the geometric channel: the source sent its children
        // two copies each): the memory then also covers the oldest chunk still waiting.
        let mut guard =
            Duration::from_micros(self.config.nak_max.as_micros() / 4).max(self.config.nak_min);
        if self.config.delay_target.is_some() {
            n.pacer.observe(now, backlog);
            if let Some(waiting) = n.pacer.oldest_waiting(now) {
                guard = guard.max(waiting + guard);
            }
        }
        n.age_sent(now, guard);
        let chunks = c.layout.units();
        for [a, b] in nak.missing {
            for i in a..b.min(chunks) {
                if !n.sent_lately(i) {
                    n.want.set(i);
                }
            }
        }
        self.pump(ctx);
    }

    /// After a layout change: if the route toward the campaign's origin now leaves through
    /// another neighbour that holds the campaign, that neighbour becomes the upstream (and
    /// hears our NAK at once). Upstreams thus follow the tree toward the source, which has
    /// no cycles; without this, nodes whose links were re-made could end up each other's
    /// upstream, both part-way, and stay so.
    fn follow_origin(&mut self, ctx: &mut Ctx<'_>) {
        let Some(c) = self.campaign.as_mut() else {
            return;
        };
        // Only while the current upstream is not delivering: `origin` is not signed, and a
        // neighbour that claims to be the origin must not draw the transfer away from an
        // upstream that works. Two part-way nodes waiting on each other make no progress,
        // so this still breaks such cycles.
        if c.complete || c.origin == 0 || c.stale_naks == 0 {
            return;
        }
        let Some(link) = ctx.route(NodeId(c.origin)) else {
            return;
        };
        if c.upstream == Some(link)
            || self.neighbours.get(&link).and_then(|n| n.offers_campaign) != Some(c.id)
        {
            return;
        }
        self.set_upstream(ctx, link);
    }

    /// Makes `link` the upstream: NAKs it at once.
    fn set_upstream(&mut self, ctx: &mut Ctx<'_>, link: LinkId) {
        let Some(c) = self.campaign.as_mut() else {
            return;
        };
        let (id, peer, origin) = match self.neighbours.get(&link) {
            Some(n) => (c.id, n.peer, n.origin),
            None => return,
        };
        if c.upstream != Some(link) {
            c.upstream = Some(link);
            if origin != 0 {
                c.origin = origin;
            }
            self.stats.upstream_changes += 1;
            ctx.emit(Box::new(OtaEvent::UpstreamChanged { campaign: id, peer }));
        }
        c.nak_interval = self.config.nak_min;
        c.stale_naks = 0;
        self.send_nak(ctx);
        self.arm_nak(ctx);
    }

    /// Picks another upstream among the neighbours that offered the campaign, other than
    /// `avoid`: the one on the route toward the origin it claimed if there is one, else the
    /// next one after `avoid` (so stale offerers are tried in turn). Returns whether it
    /// switched.
    fn switch_upstream(&mut self, ctx: &mut Ctx<'_>, avoid: Option<LinkId>) -> bool {
        let Some(c) = self.campaign.as_ref() else {
            return false;
        };
        if c.complete {
            return false;
        }
        let id = c.id;
        let candidates: Vec<(LinkId, u32)> = self
            .neighbours
            .iter()
            .filter(|(l, n)| Some(**l) != avoid && n.offers_campaign == Some(id))
            .map(|(l, n)| (*l, n.origin))
            .collect();
        let toward = candidates
            .iter()
            .find(|(l, o)| *o != 0 && ctx.route(NodeId(*o)) == Some(*l))
            .map(|(l, _)| *l);
        let next = avoid.and_then(|a| candidates.iter().map(|(l, _)| *l).find(|l| *l > a));
        let pick = toward
            .or(next)
            .or_else(|| candidates.first().map(|(l, _)| *l));
        match pick {
            Some(l) => {
                self.set_upstream(ctx, l);
                true
            }
            None => false,
        }
    }

    /// When an unfinished campaign is abandoned for lack of progress.
    fn abandon_at(&self) -> Option<Instant> {
        let c = self.campaign.as_ref()?;
        if c.complete {
            return None;
        }
        Some(c.last_progress? + self.config.campaign_timeout)
    }

    /// Starts the no-progress clock of a campaign restored without one.
    fn touch(&mut self, now: Instant) {
        if let Some(c) = self.campaign.as_mut() {
            if !c.complete && c.last_progress.is_none() {
                c.last_progress = Some(now);
            }
        }
    }

    /// Gives up the unfinished campaign: its state record and staged data are discarded.
    fn abandon(&mut self, ctx: &mut Ctx<'_>, reason: AbandonReason) {
        let Some(c) = self.campaign.take() else {
            return;
        };
        ctx.emit(Box::new(OtaEvent::CampaignAbandoned {
            campaign: c.id,
            reason,
        }));
        for n in self.neighbours.values_mut() {
            if n.offers_campaign == Some(c.id) {
                n.offers_campaign = None;
            }
            if n.offered == Some(c.id) {
                n.offered = None;
                n.offer_at = None;
                n.want = Bitmap::new(0);
            }
        }
        if let Err(e) = self.store.clear_state() {
            self.fail(ctx, &e);
        }
    }

    fn handle_status(&mut self, ctx: &mut Ctx<'_>, link: LinkId, pkg: &Package) {
        let Ok(TypedPackage { body: st, .. }) = TypedPackage::<Status>::decode(pkg) else {
            self.stats.malformed += 1;
            return;
        };
        let Some(c) = self.campaign.as_ref() else {
            return;
        };
        if st.campaign != c.id {
            return;
        }
        let id = c.id;
        let now = ctx.now();
        if self
            .neighbours
            .get(&link)
            .is_some_and(|n| n.offered == Some(id))
        {
            self.answered(now, link);
        }
        let Some(n) = self.neighbours.get_mut(&link) else {
            return;
        };
        if let Some(reason) = st.reject {
            if n.offered != Some(id) {
                // Only a refusal of our own offer counts.
                return;
            }
            let first = !n.rejected;
            n.rejected = true;
            n.accepted = false;
            n.want.clear_all();
            n.offer_at =
                Some(now + OFFER_RETRY_MAX + OFFER_RETRY_MAX + OFFER_RETRY_MAX + OFFER_RETRY_MAX);
            if first {
                let reason: String = reason.chars().take(200).collect();
                ctx.emit(Box::new(OtaEvent::PeerRefused {
                    peer: n.peer,
                    campaign: id,
                    kind: st.refusal.as_deref().map(Refusal::from_label),
                    reason,
                }));
            }
            return;
        }
        let was = n.subtree_done;
        if st.done {
            // Reported once per neighbour: a later STATUS that only updates
            // `subtree_done` is not a second "done".
            let was_done = n.done;
            n.done = true;
            n.accepted = true;
            n.rejected = false;
            n.offer_at = None;
            n.want.clear_all();
            if !was_done {
                ctx.emit(Box::new(OtaEvent::PeerDone {
                    peer: n.peer,
                    campaign: id,
                }));
            }
        }
        n.subtree_done = st.done && st.subtree_done;
        if n.subtree_done != was && self.is_complete() {
            // Our own subtree state may have changed: tell upstream.
            self.send_status(ctx, None);
        }
    }
}

/// `x.ceil() as u64` without `f64::ceil`, which `core` lacks (it is in `std`): the same
/// value for every `x`, NaN and out-of-range values included (`as` saturates).
fn ceil_u64(x: f64) -> u64 {
    let t = x as u64;
    if (t as f64) < x {
        t.saturating_add(1)
    } else {
        t
    }
}

/// Why a neighbour with these CAPS cannot decode the payload `m` describes, if it cannot:
/// the codec is not among its `codecs`, or (DEFLATE) its `window` is smaller than the
/// manifest's. The receiver would refuse such an offer itself (`refuse_reason`); the sender
/// does not make it.
fn cannot_decode_reason(caps: &Caps, m: &Manifest) -> Option<DecodeGap> {
    let codec = m.codec.name();
    if !caps.codecs.iter().any(|c| c == codec) {
        return Some(DecodeGap::Codec {
            needed: codec.to_owned(),
            listed: caps.codecs.clone(),
        });
    }
    if m.codec == Codec::Deflate && caps.window < m.window {
        return Some(DecodeGap::Window {
            needed: m.window,
            offered: caps.window,
        });
    }
    None
}

impl Plugin for MeshfleetOta {
    fn name(&self) -> &'static str {
        "ota-meshfleet"
    }

    fn claims(&self) -> Claims {
        // The binary chunk frame is tagged with the JSON chunk's type (703).
        Claims::none()
            .types(TYPE_FIRST..=TYPE_LAST)
            .tag(CHUNK as u16)
    }

    fn handle_package(&mut self, ctx: &mut Ctx<'_>, link: LinkId, routing: Routing, pkg: &Package) {
        if pkg.ty() == ROLLBACK || pkg.ty() == ROLLBACK_RESULT {
            // Self-authenticating (signed) or a plain answer: from anywhere in the mesh,
            // SINGLE-routed (a neighbour may send it NEIGHBOUR-routed), never flooded.
            if !matches!(routing, Routing::Single | Routing::Neighbour) {
                self.stats.malformed += 1;
            } else if pkg.ty() == ROLLBACK {
                self.handle_rollback(ctx, pkg);
            } else {
                self.handle_rollback_result(ctx, pkg);
            }
            return;
        }
        if pkg.ty() == REPORT {
            // Addressed to the origin, from anywhere in the mesh.
            if routing == Routing::Single {
                self.handle_report(ctx, pkg);
            } else {
                self.stats.malformed += 1;
            }
            return;
        }
        let link = match routing {
            Routing::Neighbour => link,
            // From a remote peer (beyond nodes without meshfleet OTA); the mesh delivers a
            // SINGLE package here only if it is addressed to us.
            Routing::Single => {
                let from = pkg.from();
                let direct = self
                    .neighbours
                    .get(&link)
                    .is_some_and(|n| n.peer == from && remote_peer(link).is_none());
                if direct {
                    link
                } else {
                    let remote = remote_link(from);
                    if !self.neighbours.contains_key(&remote) {
                        // Only a CAPS makes a remote peer, and only so many.
                        let remotes = self
                            .neighbours
                            .keys()
                            .filter(|l| remote_peer(**l).is_some())
                            .count();
                        if pkg.ty() != CAPS || remotes >= MAX_REMOTE_PEERS || from.0 == 0 {
                            self.stats.malformed += 1;
                            return;
                        }
                        let mut n = self.neighbour(from, ctx.now(), None);
                        // We never sent it ours: its CAPS gets an answer.
                        n.caps_tries = 0;
                        self.neighbours.insert(remote, n);
                    }
                    remote
                }
            }
            // Flooded: never ours.
            _ => {
                self.stats.malformed += 1;
                return;
            }
        };
        match pkg.ty() {
            CAPS => self.handle_caps(ctx, link, pkg),
            OFFER => self.handle_offer(ctx, link, pkg),
            CHUNK => {
                let Ok(TypedPackage { body: c, .. }) = TypedPackage::<ChunkJson>::decode(pkg)
                else {
                    self.stats.malformed += 1;
                    return;
                };
                match BASE64.decode(&c.data) {
                    Ok(data) => self.handle_chunk(ctx, link, c.campaign, c.index, &data),
                    Err(_) => self.stats.malformed += 1,
                }
            }
            NAK => self.handle_nak(ctx, link, pkg),
            STATUS => self.handle_status(ctx, link, pkg),
            _ => {}
        }
    }

    fn handle_binary(&mut self, ctx: &mut Ctx<'_>, link: LinkId, payload: &[u8]) {
        match decode_binary_chunk(payload) {
            Some((campaign, index, data)) => self.handle_chunk(ctx, link, campaign, index, data),
            None => self.stats.malformed += 1,
        }
    }

    fn handle_change(&mut self, ctx: &mut Ctx<'_>, change: &MeshChange) {
        let now = ctx.now();
        match change {
            MeshChange::NeighbourUp { link, peer } => {
                let n = self.neighbour(*peer, now, Some(now + self.config.caps_timeout));
                self.neighbours.insert(*link, n);
                let caps = self.caps(ctx.node_id().0, peer.0, false);
                Self::send_json(ctx, *link, &caps);
                self.touch(now);
            }
            MeshChange::NeighbourDown { link, .. } => {
                self.neighbours.remove(link);
                if let Some(c) = self.campaign.as_mut() {
                    if c.upstream == Some(*link) {
                        c.upstream = None;
                        c.nak_at = None;
                        // Another neighbour that offered the campaign takes over at once;
                        // if none did, wait for an offer (senders retry theirs).
                        self.switch_upstream(ctx, None);
                    }
                }
            }
            MeshChange::LayoutChanged => {
                self.flush_pending_report(ctx);
                self.prune_remote(ctx);
                self.follow_origin(ctx);
                self.probe_remote(ctx);
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        // Pacing and offer timers belong to a campaign: once it is gone (abandoned, failed
        // verification, rolled back) their handlers return at once without re-arming them,
        // so a stale one would be a wakeup in the past for ever (at 500 nodes on the
        // geometric channel a relay whose campaign was abandoned while it paced a
        // neighbour kept the simulation at one instant).
        let campaign = self.campaign.is_some();
        let n = self
            .neighbours
            .values()
            .flat_map(|n| {
                [
                    n.caps_deadline,
                    n.pump_at.filter(|_| campaign),
                    n.offer_at.filter(|_| campaign),
                ]
            })
            .flatten();
        let c = self.campaign.as_ref().and_then(|c| c.nak_at);
        let abandon = self.abandon_at();
        n.chain(c).chain(abandon).min()
    }

    fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        self.touch(now);
        let me = ctx.node_id().0;
        let mut stock = Vec::new();
        let mut resend = Vec::new();
        let timeout = self.config.caps_timeout;
        for (link, n) in &mut self.neighbours {
            if n.caps_deadline.is_some_and(|t| t <= now) {
                n.caps_deadline = None;
                if n.caps.is_some() {
                    continue;
                }
                if !n.stock {
                    n.stock = true;
                    stock.push(n.peer);
                }
                // A lost CAPS must not turn a meshfleet neighbour into a stock one for the
                // life of the link: a few more tries, further apart (a stock node ignores
                // them).
                if n.caps_tries < CAPS_TRIES {
                    n.caps_tries += 1;
                    let wait = Duration::from_micros(
                        timeout.as_micros().saturating_mul(1 << n.caps_tries),
                    );
                    n.caps_deadline = Some(now + wait);
                    n.caps_sent = now;
                    resend.push((*link, n.peer));
                }
            }
        }
        for (link, peer) in resend {
            let caps = self.caps(me, peer.0, false);
            Self::send_json(ctx, link, &caps);
        }
        let any_stock = !stock.is_empty();
        for peer in stock {
            ctx.emit(Box::new(OtaEvent::NeighbourIsStock { peer }));
        }
        if any_stock {
            self.probe_remote(ctx);
        }
        if self.abandon_at().is_some_and(|t| t <= now) {
            self.abandon(ctx, AbandonReason::NoProgress);
        }
        if let Some(c) = self.campaign.as_mut() {
            if c.nak_at.is_some_and(|t| t <= now) {
                if c.progressed {
                    // Progress heard: suppress, and look again later (Trickle doubles a
                    // consistent interval). Staying at Imin cost a NAK per chunk once a
                    // crowded medium slowed the stream below one chunk per Imin (bytes on
                    // air 1.09 instead of 1.04 x (N-1)·S at 300 nodes on the geometric
                    // channel). A stall is still noticed within `nak_max`.
                    c.nak_interval = (c.nak_interval + c.nak_interval)
                        .min(self.config.nak_max)
                        .max(self.config.nak_min);
                    c.stale_naks = 0;
                    self.arm_nak(ctx);
                } else {
                    c.nak_interval = (c.nak_interval + c.nak_interval)
                        .min(self.config.nak_max)
                        .max(self.config.nak_min);
                    c.stale_naks += 1;
                    let stale = c.stale_naks >= STALE_NAKS;
                    let current = c.upstream;
                    // An upstream that does not deliver (it left the campaign, it is a
                    // replaying neighbour that never sends, it lacks the units itself)
                    // is replaced by another neighbour that offered the campaign.
                    if !(stale && self.switch_upstream(ctx, current)) {
                        self.send_nak(ctx);
                        self.arm_nak(ctx);
                    }
                }
            }
        }
        self.retry_offers(ctx);
        self.pump(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::ceil_u64;
    use proptest::prelude::*;

    #[test]
    fn ceil_u64_matches_std_at_the_edges() {
        let edges = [
            0.0,
            -0.0,
            -0.5,
            -1.0,
            0.5,
            1.0,
            1.000_000_1,
            4_503_599_627_370_495.5, // 2^52 - 0.5: the largest with a fraction
            9_007_199_254_740_993.0, // 2^53 + 1 (rounds to 2^53)
            18_446_744_073_709_551_615.0, // rounds to 2^64
            1e30,
            f64::MAX,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            f64::MIN_POSITIVE,
        ];
        for x in edges {
            assert_eq!(ceil_u64(x), x.ceil() as u64, "{x}");
        }
    }

    proptest! {
        #[test]
        fn ceil_u64_matches_std(x in proptest::num::f64::ANY) {
            prop_assert_eq!(ceil_u64(x), x.ceil() as u64);
        }
    }
}
