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

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use meshfleet_firmware::{
    Artefact, ChunkHash, Codec, Manifest, StreamVerifier, VerifyingKey, Version,
};
use meshfleet_mesh::{Ctx, Duration, Instant, LinkId, MeshChange, NodeId, Plugin};
use meshfleet_wire::{Package, Routing};
use serde::{Deserialize, Serialize};

use crate::boot;
use crate::event::OtaEvent;
use crate::pacing::DelayPacer;
use crate::proto::{
    campaign_id, decode_binary_chunk, encode_binary_chunk, Bitmap, Caps, ChunkJson, Layout, Nak,
    Offer, Status, Unit, BINARY_CHUNK_HEADER, CAPS, CHUNK, MAX_CAPS_TEXT, MAX_CODECS,
    MAX_NAK_RANGES, NAK, OFFER, PROTOCOL_VERSION, STATUS, TYPE_FIRST, TYPE_LAST,
};
use crate::store::{ImageInfo, Slot, SlotStore, StoreError};

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
    /// Accept offers that are not newer than the running version.
    pub allow_downgrade: bool,
    /// How long to wait for a neighbour's CAPS before treating it as a stock node (3 s).
    pub caps_timeout: Duration,
    /// Pacing: bytes per second per link (default 60% of [`ASSUMED_LINK_RATE`]): the most a
    /// link sends; the delay control below may pace it slower.
    pub link_rate: u64,
    /// Delay control (`pacing` module docs): a link slows down while its chunk frames wait
    /// longer than this in the driver (the medium is crowded), and speeds up again below
    /// it. 150 ms; `None` paces at `link_rate` alone. Needs a driver that reports backlog.
    pub delay_target: Option<Duration>,
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
            caps_timeout: Duration::from_secs(3),
            link_rate: ASSUMED_LINK_RATE * 6 / 10,
            delay_target: Some(Duration::from_millis(150)),
            burst_chunks: 4,
            nak_min: Duration::from_millis(500),
            nak_max: Duration::from_secs(8),
            save_every: 16,
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
}

/// The persisted transfer state (`SlotStore::save_state`).
#[derive(Serialize, Deserialize)]
struct SavedState {
    campaign: u32,
    forced: bool,
    #[serde(default)]
    origin: u32,
    manifest: serde_json::Value,
    have: String,
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
    forced: bool,
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
    failed: Option<String>,
}

impl std::fmt::Debug for MeshfleetOta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
        let mut me = Self {
            config,
            store,
            campaign: None,
            neighbours: BTreeMap::new(),
            stats: MeshfleetStats::default(),
            failed: None,
        };
        me.restore()?;
        Ok(me)
    }

    /// A source offering `artefact` (verify it before: [`Artefact::verify`]). `forced`
    /// lets receivers install it even if not newer.
    pub fn source(
        config: MeshfleetConfig,
        store: Box<dyn SlotStore>,
        artefact: Artefact,
        forced: bool,
    ) -> Self {
        Self {
            config,
            store,
            campaign: Some(Self::source_campaign(artefact, forced)),
            neighbours: BTreeMap::new(),
            stats: MeshfleetStats::default(),
            failed: None,
        }
    }

    fn source_campaign(artefact: Artefact, forced: bool) -> Campaign {
        let manifest = Arc::new(artefact.manifest().clone());
        let layout = Layout::of(&manifest);
        Campaign {
            id: campaign_id(&manifest),
            manifest,
            layout,
            forced,
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
    pub fn start_source(&mut self, ctx: &mut Ctx<'_>, artefact: Artefact, forced: bool) -> bool {
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
        self.campaign = Some(Self::source_campaign(artefact, forced));
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

    /// Why the node stopped (a store failure), if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
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
        let slot = self.inactive_slot()?;
        let mut c = Campaign {
            id: saved.campaign,
            verifier: StreamVerifier::new(manifest.clone()).ok(),
            manifest,
            layout,
            forced: saved.forced,
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
        if matches!(c.source, ChunkSource::Payload(_)) || c.complete {
            return Ok(());
        }
        let manifest: serde_json::Value =
            serde_json::from_slice(&c.manifest.to_json()).unwrap_or_default();
        let saved = SavedState {
            campaign: c.id,
            forced: c.forced,
            origin: c.origin,
            manifest,
            have: c.have.to_hex(),
        };
        c.unsaved = 0;
        let bytes = serde_json::to_vec(&saved).map_err(|e| StoreError::Corrupt {
            what: "state",
            detail: e.to_string(),
        })?;
        self.store.save_state(&bytes)
    }

    fn inactive_slot(&mut self) -> Result<Slot, StoreError> {
        Ok(self.store.load_boot()?.map_or(Slot::B, |r| r.inactive()))
    }

    fn fail(&mut self, ctx: &mut Ctx<'_>, e: &StoreError) {
        let campaign = self.campaign.as_ref().map_or(0, |c| c.id);
        let reason = format!("store failed: {e}");
        self.failed = Some(reason.clone());
        ctx.emit(Box::new(OtaEvent::VerifyFailed { campaign, reason }));
    }

    // ------------------------------------------------------------------ sending

    fn send_json<T: Serialize>(ctx: &mut Ctx<'_>, link: LinkId, msg: &T) {
        if let Ok(pkg) = Package::from_serialize(msg) {
            // The link may have just closed; the NeighbourDown that follows cleans up.
            let _ = ctx.send_on_link(link, &pkg);
        }
    }

    fn caps(&self, me: u32, dest: u32) -> Caps {
        let running = self.config.running.as_ref();
        Caps {
            from: me,
            routing: 0,
            ty: CAPS,
            dest,
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
        }
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
        if Some(link) == c.upstream
            || n.offered == Some(c.id)
            || caps.sha256.eq_ignore_ascii_case(&m.sha256.to_hex())
            || caps.role != m.role
            || caps.hardware != m.hardware
        {
            return;
        }
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
        // The lean manifest: the chunk table follows page by page with the chunks.
        let lean = if m.has_chunk_table() {
            m.lean().to_json()
        } else {
            m.to_json()
        };
        let offer = Offer {
            from: ctx.node_id().0,
            routing: 0,
            ty: OFFER,
            dest: n.peer.0,
            campaign: c.id,
            forced: c.forced,
            origin: c.origin,
            manifest: serde_json::from_slice(&lean).unwrap_or_default(),
        };
        self.stats.offers_sent += 1;
        Self::send_json(ctx, link, &offer);
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
            return;
        };
        let (id, chunk_size) = (c.id, u64::from(c.manifest.chunk_size));
        let frame_cost = (chunk_size + BINARY_CHUNK_HEADER as u64 + 5) as f64;
        let delay_control = self.config.delay_target.is_some();
        let burst = frame_cost * f64::from(self.config.burst_chunks.max(1));
        let links: Vec<LinkId> = self.neighbours.keys().copied().collect();
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
                    n.pacer.observe(now, ctx.link_backlog(link));
                }
                let rate = n.pacer.rate();
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
                let backlog = ctx.link_backlog(link).unwrap_or(0) as f64;
                if backlog >= burst {
                    let wait = ((backlog - burst + frame_cost) / rate * 1e6).ceil() as u64;
                    n.pump_at = Some(now + Duration::from_micros(wait.max(1)));
                    break;
                }
                if n.tokens < frame_cost {
                    let wait = ((frame_cost - n.tokens) / rate * 1e6).ceil() as u64;
                    n.pump_at = Some(now + Duration::from_micros(wait.max(1)));
                    break;
                }
                let binary = self.config.binary && n.caps.as_ref().is_some_and(|c| c.bin);
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
                    let _ = ctx.send_binary_on_link(link, &payload);
                    payload.len() + 5
                } else {
                    let msg = ChunkJson {
                        from: ctx.node_id().0,
                        routing: 0,
                        ty: CHUNK,
                        dest: peer,
                        campaign: id,
                        index,
                        data: BASE64.encode(&data),
                    };
                    Self::send_json(ctx, link, &msg);
                    msg.data.len() + 100
                };
                self.stats.chunks_sent += 1;
                self.stats.chunk_bytes_sent += data.len() as u64;
                if let Some(n) = self.neighbours.get_mut(&link) {
                    n.pacer.on_queued(now, cost as u64);
                    n.tokens -= cost as f64;
                    n.want.clear(index);
                    n.sent[0].set(index);
                    n.chunks_sent = n.chunks_sent.saturating_add(1);
                    n.bytes_sent += data.len() as u64;
                }
            }
        }
    }

    fn send_status(&mut self, ctx: &mut Ctx<'_>, reject: Option<(LinkId, u32, String)>) {
        if let Some((link, campaign, reason)) = reject {
            let peer = self.neighbours.get(&link).map_or(0, |n| n.peer.0);
            let st = Status {
                from: ctx.node_id().0,
                routing: 0,
                ty: STATUS,
                dest: peer,
                campaign,
                have: 0,
                chunks: 0,
                done: false,
                subtree_done: false,
                reject: Some(reason),
            };
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
            from: ctx.node_id().0,
            routing: 0,
            ty: STATUS,
            dest: peer,
            campaign: c.id,
            have: c.have.count(),
            chunks: c.layout.units(),
            done: c.complete,
            subtree_done: c.complete && self.subtree_done(),
            reject: None,
        };
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
            from: ctx.node_id().0,
            routing: 0,
            ty: NAK,
            dest: peer,
            campaign: c.id,
            missing: c.have.missing_ranges(MAX_NAK_RANGES),
        };
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
        let Ok(caps) = pkg.parse::<Caps>() else {
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
        ctx.emit(Box::new(OtaEvent::CapsReceived {
            peer: n.peer,
            binary,
        }));
        self.maybe_offer(ctx, link);
    }

    /// Why an offer is refused, if it is.
    fn refuse_reason(&mut self, m: &Manifest, forced: bool) -> Option<String> {
        if m.role != self.config.role {
            return Some(format!(
                "role {} is not ours ({})",
                m.role, self.config.role
            ));
        }
        if m.hardware != self.config.hardware {
            return Some(format!(
                "hardware {} is not ours ({})",
                m.hardware, self.config.hardware
            ));
        }
        if let Some(key) = &self.config.trusted_key {
            if let Err(e) = m.verify_signature(key) {
                return Some(format!("signature: {e}"));
            }
        }
        if !self.config.codecs.contains(&m.codec) {
            return Some(format!("codec {} not supported", m.codec.name()));
        }
        if m.codec == Codec::Deflate && m.window > self.config.max_window {
            return Some(format!(
                "needs a {}-byte decompression window, this node can give {}",
                m.window, self.config.max_window
            ));
        }
        let staging = m
            .compressed_size
            .saturating_add(u64::from(m.chunk_count) * CHUNK_HASH_BYTES as u64);
        if staging > self.config.max_staging {
            return Some(format!(
                "payload and chunk table of {staging} bytes exceed our {} bytes of staging",
                self.config.max_staging
            ));
        }
        if self.config.on_trial {
            return Some("running image is not confirmed yet".into());
        }
        if !forced {
            let sha = m.sha256.to_string();
            // Read fresh: a rollback may have happened since this plugin started.
            if let Ok(Some(rec)) = self.store.load_boot() {
                if rec.refused.contains(&sha) {
                    return Some(format!(
                        "image {} was rolled back on this node; it is refused unless forced",
                        &sha[..sha.len().min(16)]
                    ));
                }
            }
        }
        if let Some(r) = &self.config.running {
            if let Ok(running) = Version::parse(&r.version) {
                let newer = m.version.cmp_precedence(&running) == std::cmp::Ordering::Greater;
                if !newer && !forced && !self.config.allow_downgrade {
                    return Some(format!(
                        "downgrade refused: offered {} is not newer than running {}",
                        m.version, running
                    ));
                }
            }
        }
        None
    }

    fn handle_offer(&mut self, ctx: &mut Ctx<'_>, link: LinkId, pkg: &Package) {
        let Ok(offer) = pkg.parse::<Offer>() else {
            self.stats.malformed += 1;
            return;
        };
        let peer = self.neighbours.get(&link).map_or(pkg.from(), |n| n.peer);
        let manifest = match Manifest::from_json(offer.manifest.to_string().as_bytes()) {
            Ok(m) => m,
            Err(e) => {
                let reason = format!("invalid manifest: {e}");
                ctx.emit(Box::new(OtaEvent::OfferRejected {
                    peer,
                    reason: reason.clone(),
                }));
                self.send_status(ctx, Some((link, offer.campaign, reason)));
                return;
            }
        };
        let id = campaign_id(&manifest);
        if id != offer.campaign {
            self.stats.malformed += 1;
            return;
        }
        // Already running it: tell the offerer we are done.
        if self
            .config
            .running
            .as_ref()
            .is_some_and(|r| r.sha256.eq_ignore_ascii_case(&manifest.sha256.to_hex()))
        {
            let st = Status {
                from: ctx.node_id().0,
                routing: 0,
                ty: STATUS,
                dest: peer.0,
                campaign: id,
                have: Layout::of(&manifest).units(),
                chunks: Layout::of(&manifest).units(),
                done: true,
                subtree_done: true,
                reject: None,
            };
            Self::send_json(ctx, link, &st);
            return;
        }
        if let Some(c) = self.campaign.as_mut() {
            if c.id == id {
                if c.complete {
                    // We hold it already (source, or done and not yet rebooted).
                    self.send_status_on(ctx, link);
                    return;
                }
                // Resume (after a reboot, a lost upstream, or a second offerer).
                if let Some(n) = self.neighbours.get_mut(&link) {
                    n.offers_campaign = Some(id);
                }
                if c.origin == 0 {
                    c.origin = offer.origin;
                }
                let alive = matches!(c.upstream, Some(u) if self.neighbours.contains_key(&u));
                // The neighbour toward the origin is the right upstream whatever we had:
                // two part-way nodes that took each other as upstream after their links
                // were re-made would otherwise wait on each other for ever.
                let toward_origin = c.origin != 0 && ctx.route(NodeId(c.origin)) == Some(link);
                if !alive || (toward_origin && c.upstream != Some(link)) {
                    c.upstream = Some(link);
                    c.nak_interval = self.config.nak_min;
                }
                if c.upstream == Some(link) {
                    c.nak_interval = self.config.nak_min;
                    self.send_nak(ctx);
                    self.arm_nak(ctx);
                }
                return;
            }
            if !c.complete || self.failed.is_some() {
                let reason = format!("busy with campaign {}", c.id);
                ctx.emit(Box::new(OtaEvent::OfferRejected {
                    peer,
                    reason: reason.clone(),
                }));
                self.send_status(ctx, Some((link, id, reason)));
                return;
            }
        }
        if let Some(reason) = self.refuse_reason(&manifest, offer.forced) {
            ctx.emit(Box::new(OtaEvent::OfferRejected {
                peer,
                reason: reason.clone(),
            }));
            self.send_status(ctx, Some((link, id, reason)));
            return;
        }
        if let Some(n) = self.neighbours.get_mut(&link) {
            n.offers_campaign = Some(id);
        }
        if let Err(e) = self.begin(ctx, link, id, manifest, offer.forced, offer.origin) {
            self.fail(ctx, &e);
        }
    }

    fn begin(
        &mut self,
        ctx: &mut Ctx<'_>,
        link: LinkId,
        id: u32,
        manifest: Manifest,
        forced: bool,
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
            forced,
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
            Some(v) => v.finish().map_err(|e| e.to_string()),
            None => Err("the payload does not decode".to_string()),
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
                self.store.clear_state()?;
                c.complete = true;
                c.nak_at = None;
                let id = c.id;
                self.campaign = Some(c);
                ctx.emit(Box::new(OtaEvent::Applied {
                    campaign: id,
                    version: m.version.to_string(),
                }));
                self.send_status(ctx, None);
            }
            Err(reason) => {
                ctx.emit(Box::new(OtaEvent::VerifyFailed {
                    campaign: c.id,
                    reason,
                }));
                self.store.clear_state()?;
                // Nothing was committed; the campaign is dropped.
            }
        }
        Ok(())
    }

    fn handle_nak(&mut self, ctx: &mut Ctx<'_>, link: LinkId, pkg: &Package) {
        let Ok(nak) = pkg.parse::<Nak>() else {
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
        let Some(n) = self.neighbours.get_mut(&link) else {
            return;
        };
        let now = ctx.now();
        if n.offered != Some(c.id) {
            // A NAK without our offer (e.g. after our restart): treat it as acceptance.
            n.offered = Some(c.id);
            n.want = Bitmap::new(c.layout.units());
            n.reset_sent(c.layout.units(), now);
        }
        n.accepted = true;
        n.done = false;
        n.subtree_done = false;
        // The link is TCP: a chunk sent on it is delivered unless the link dies, and then
        // the neighbour comes back on a new link with fresh state. A NAK that lists a chunk
        // sent here lately was written while that chunk was still queued or in flight (a
        // stalled link, a busy channel): sending it again would only duplicate it. So
        // only chunks not sent within the last one to two guard periods (a quarter of
        // `nak_max`, 2 s: longer than a TCP stall at 20% segment loss usually lasts) are
        // wanted again; a chunk that really went missing (a driver that dropped a frame
        // from a full queue) is sent again after that.
        let guard = Duration::from_micros(self.config.nak_max.as_micros() / 4);
        n.age_sent(now, guard.max(self.config.nak_min));
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
        if c.complete || c.origin == 0 {
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
        c.upstream = Some(link);
        c.nak_interval = self.config.nak_min;
        self.send_nak(ctx);
        self.arm_nak(ctx);
    }

    fn handle_status(&mut self, ctx: &mut Ctx<'_>, link: LinkId, pkg: &Package) {
        let Ok(st) = pkg.parse::<Status>() else {
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
        let Some(n) = self.neighbours.get_mut(&link) else {
            return;
        };
        if let Some(reason) = st.reject {
            n.rejected = true;
            n.accepted = false;
            n.want.clear_all();
            let reason: String = reason.chars().take(200).collect();
            ctx.emit(Box::new(OtaEvent::OfferRejected {
                peer: n.peer,
                reason,
            }));
            return;
        }
        let was = n.subtree_done;
        if st.done {
            // Reported once per neighbour: a later STATUS that only updates
            // `subtree_done` is not a second "done".
            let was_done = n.done;
            n.done = true;
            n.accepted = true;
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

/// Why a neighbour with these CAPS cannot decode the payload `m` describes, if it cannot:
/// the codec is not among its `codecs`, or (DEFLATE) its `window` is smaller than the
/// manifest's. The receiver would refuse such an offer itself (`refuse_reason`); the sender
/// does not make it.
fn cannot_decode_reason(caps: &Caps, m: &Manifest) -> Option<String> {
    let codec = m.codec.name();
    if !caps.codecs.iter().any(|c| c == codec) {
        return Some(format!(
            "it does not decode codec {codec} (it lists {})",
            caps.codecs.join(", ")
        ));
    }
    if m.codec == Codec::Deflate && caps.window < m.window {
        return Some(format!(
            "the payload needs a {}-byte decompression window, it can give {}",
            m.window, caps.window
        ));
    }
    None
}

impl Plugin for MeshfleetOta {
    fn name(&self) -> &'static str {
        "ota-meshfleet"
    }

    fn handles(&self, ty: i64) -> bool {
        (TYPE_FIRST..=TYPE_LAST).contains(&ty)
    }

    fn handles_binary(&self, tag: u16) -> bool {
        i64::from(tag) == CHUNK
    }

    fn handle_package(&mut self, ctx: &mut Ctx<'_>, link: LinkId, routing: Routing, pkg: &Package) {
        // Hop-by-hop only: a meshfleet package that was flooded or routed is not for us.
        if routing != Routing::Neighbour {
            self.stats.malformed += 1;
            return;
        }
        match pkg.ty() {
            CAPS => self.handle_caps(ctx, link, pkg),
            OFFER => self.handle_offer(ctx, link, pkg),
            CHUNK => {
                let Ok(c) = pkg.parse::<ChunkJson>() else {
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
                self.neighbours.insert(
                    *link,
                    Neighbour {
                        peer: *peer,
                        caps: None,
                        caps_deadline: Some(now + self.config.caps_timeout),
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
                        chunks_sent: 0,
                        bytes_sent: 0,
                        sent: [Bitmap::new(0), Bitmap::new(0)],
                        sent_since: now,
                    },
                );
                let caps = self.caps(ctx.node_id().0, peer.0);
                Self::send_json(ctx, *link, &caps);
            }
            MeshChange::NeighbourDown { link, .. } => {
                self.neighbours.remove(link);
                if let Some(c) = self.campaign.as_mut() {
                    if c.upstream == Some(*link) {
                        // Wait for an offer from whoever still has it.
                        c.upstream = None;
                        c.nak_at = None;
                    }
                }
            }
            MeshChange::LayoutChanged => self.follow_origin(ctx),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let n = self
            .neighbours
            .values()
            .flat_map(|n| [n.caps_deadline, n.pump_at])
            .flatten();
        let c = self.campaign.as_ref().and_then(|c| c.nak_at);
        n.chain(c).min()
    }

    fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        let mut stock = Vec::new();
        for n in self.neighbours.values_mut() {
            if n.caps_deadline.is_some_and(|t| t <= now) {
                n.caps_deadline = None;
                n.stock = true;
                stock.push(n.peer);
            }
        }
        for peer in stock {
            ctx.emit(Box::new(OtaEvent::NeighbourIsStock { peer }));
        }
        if let Some(c) = self.campaign.as_mut() {
            if c.nak_at.is_some_and(|t| t <= now) {
                if c.progressed {
                    // Progress heard: suppress, stay at Imin.
                    c.nak_interval = self.config.nak_min;
                    self.arm_nak(ctx);
                } else {
                    c.nak_interval = (c.nak_interval + c.nak_interval)
                        .min(self.config.nak_max)
                        .max(self.config.nak_min);
                    self.send_nak(ctx);
                    self.arm_nak(ctx);
                }
            }
        }
        self.pump(ctx);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
