//! Receiving OTA updates on a `meshfleet node` (`--ota-dir`).
//!
//! [`OtaReceiver`] is one node plugin that holds both receivers of the OTA crate and
//! arbitrates between them, so that a node never fetches the same update twice:
//!
//! * [`MeshfleetOta`] (types 700-709): signed, compressed, resumable; also relays the
//!   campaign to downstream meshfleet neighbours. Preferred.
//! * [`StockReceiver`] (types 10, 12): the stock painlessMesh flow, so an unmodified
//!   sender (or `meshfleet ota offer --strategy stock`) can update the node too. Stock
//!   images are not signed, so it is only enabled when no trusted key is configured. Its
//!   Announces are ignored while a meshfleet transfer is in progress, and a stock fetch
//!   is dropped the moment a meshfleet transfer starts (with `--strategy auto` both
//!   protocols reach a meshfleet node at about the same time). The stock receiver keeps
//!   the image in memory (as the library writes it to flash); once its MD5 matched it is
//!   written to the inactive slot and committed like a meshfleet image.
//!
//! Both write into one [`FileStore`]. The plugin also owns the [`BootManager`], so every
//! change of the boot record happens in the runtime's owner task, serialized with the
//! receivers' own store writes.
//!
//! After a commit the node does not restart: [`Controller`] makes the new image boot on
//! trial ([`BootManager::on_boot`]), runs the `--ota-hook` (which restarts the
//! application), and confirms the image after `--ota-confirm-after` seconds if the node is
//! still connected. From the commit until the confirmation the receivers refuse further
//! updates: the only other slot holds the fallback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshfleet_firmware::VerifyingKey;
use meshfleet_mesh::{Ctx, Instant, LinkId, MeshChange, Plugin, PluginEvent};
use meshfleet_ota::boot;
use meshfleet_ota::store::image_info;
use meshfleet_ota::{
    BootDecision, BootManager, FileStore, ImageInfo, MeshfleetConfig, MeshfleetOta, Slot,
    SlotStore, StockReceiver, StockReceiverConfig, StoreError, DEFAULT_MAX_BOOT_ATTEMPTS,
};
use meshfleet_runtime::{MeshHandle, RuntimeEvent, Stopped};
use meshfleet_wire::ota::Announce;
use meshfleet_wire::{types, Package, Routing};
use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use crate::cmd::node::Output;

/// The plugin's name: the `plugin` of its events in `meshfleet node --json` output.
pub(crate) const PLUGIN_NAME: &str = "ota-receiver";

/// Longest a hook may run before it counts as failed (and is killed).
const HOOK_TIMEOUT: Duration = Duration::from_secs(300);

/// How the receiving side of a node is configured (the `--ota-*` flags, resolved).
#[derive(Clone, Debug)]
pub(crate) struct ReceiverOptions {
    /// The [`FileStore`] directory.
    pub(crate) dir: PathBuf,
    /// Our OTA role.
    pub(crate) role: String,
    /// Our hardware.
    pub(crate) hardware: String,
    /// Manifests must be signed by this key.
    pub(crate) key: Option<VerifyingKey>,
    /// Receive meshfleet OTA (types 700-709).
    pub(crate) meshfleet: bool,
    /// Receive stock OTA (types 10, 12).
    pub(crate) stock: bool,
    /// `sh -c` command run once a new image is booted on trial.
    pub(crate) hook: Option<String>,
    /// Healthy running time before a trial image is confirmed.
    pub(crate) confirm_after: Duration,
    /// Largest DEFLATE window we give the decoder (advertised in CAPS).
    pub(crate) max_window: u32,
    /// Pacing of the chunks we relay, bytes per second per link (tests).
    pub(crate) link_rate: Option<u64>,
}

/// A committed image that the driver has not booted yet.
#[derive(Clone, Debug)]
pub(crate) struct Applied {
    /// Where it is.
    pub(crate) slot: Slot,
    /// What it is.
    pub(crate) info: ImageInfo,
    /// Which protocol brought it: `meshfleet` or `stock`.
    pub(crate) via: &'static str,
}

/// Events of the receiver's stock arbitration (the inner receivers emit their own
/// [`meshfleet_ota::OtaEvent`]s).
#[derive(Debug)]
enum StockEvent {
    /// A stock image was written to the inactive slot and committed.
    Applied {
        md5: String,
        version: String,
        size: u64,
    },
    /// A stock fetch in progress was dropped because a meshfleet transfer started.
    Dropped,
    /// The stock image could not be stored.
    ApplyFailed { reason: String },
}

impl PluginEvent for StockEvent {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            // Same name as the meshfleet receiver's event: "an image is committed".
            Self::Applied { md5, version, size } => json!({"event": "applied",
                "via": "stock", "md5": md5, "version": version, "size": size}),
            Self::Dropped => json!({"event": "stock_update_dropped",
                "reason": "a meshfleet transfer started"}),
            Self::ApplyFailed { reason } => {
                json!({"event": "stock_apply_failed", "reason": reason})
            }
        }
    }
}

/// The version recorded for an image that came through the stock protocol, which carries
/// none: `0.0.0+stock.<md5 prefix>`. Valid semver that sorts below any release, so a
/// meshfleet offer of a real version is never refused as a downgrade.
fn stock_version(md5: &str) -> String {
    let prefix: String = md5.chars().take(12).collect();
    format!("0.0.0+stock.{prefix}")
}

/// The receiving plugin; see the module docs.
pub(crate) struct OtaReceiver {
    meshfleet: Option<MeshfleetOta>,
    stock: Option<StockReceiver>,
    /// To rebuild the stock receiver (dropping a fetch, or after a new image booted).
    stock_config: StockReceiverConfig,
    boot: BootManager<FileStore>,
    /// The campaign the meshfleet receiver had after the previous call, and whether it
    /// was complete: a change tells that a transfer started or an image was committed.
    seen_campaign: Option<u32>,
    seen_complete: bool,
    /// A committed image waiting for [`OtaReceiver::boot_applied`].
    applied: Option<Applied>,
    /// The transfer found in the store at startup: (campaign, chunks held, chunks).
    resumed: Option<(u32, u32, u32)>,
    /// The image files of slots A and B.
    slot_paths: [PathBuf; 2],
    opts: ReceiverOptions,
}

impl std::fmt::Debug for OtaReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtaReceiver")
            .field("meshfleet", &self.meshfleet)
            .field("stock", &self.stock.is_some())
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl OtaReceiver {
    /// Opens the store, makes this start's boot decision (trial, rollback) and builds the
    /// receivers for the image that runs. Returns the decision so the caller can report it.
    pub(crate) fn open(opts: ReceiverOptions) -> Result<(Self, BootDecision), StoreError> {
        // `FileStore` keeps no state but its directory, so the boot manager and the
        // meshfleet receiver can each have one: every use happens in the owner task.
        let store = FileStore::open(&opts.dir)?;
        let slot_paths = [store.slot_path(Slot::A), store.slot_path(Slot::B)];
        let mut boot = BootManager::new(store, DEFAULT_MAX_BOOT_ATTEMPTS);
        let decision = boot.on_boot()?;
        let running = decision.image.clone();

        let meshfleet = if opts.meshfleet {
            let mut config = MeshfleetConfig::new(opts.role.clone(), opts.hardware.clone());
            config.running.clone_from(&running);
            config.on_trial = decision.trial;
            config.trusted_key = opts.key;
            config.max_window = opts.max_window;
            // Node time starts with the runtime, just after this: the wall clock at time
            // zero, for the expiry of operator intents.
            config.unix_time = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| (meshfleet_mesh::Instant::ZERO, d.as_secs()));
            if let Some(rate) = opts.link_rate {
                config.link_rate = rate;
            }
            let store = FileStore::open(&opts.dir)?;
            let ota = MeshfleetOta::new(config, Box::new(store)).map_err(|e| match e {
                meshfleet_ota::OpenError::Store(s) => s,
                other => StoreError::Corrupt {
                    what: "state.json",
                    detail: other.to_string(),
                },
            })?;
            Some(ota)
        } else {
            None
        };

        let mut stock_config = StockReceiverConfig::new(opts.role.clone(), opts.hardware.clone());
        stock_config.current_md5 = running.as_ref().map(|i| i.md5.clone());
        let stock = opts
            .stock
            .then(|| StockReceiver::new(stock_config.clone()));

        let resumed = meshfleet.as_ref().and_then(MeshfleetOta::progress);
        let me = Self {
            seen_campaign: resumed.map(|p| p.0),
            seen_complete: meshfleet.as_ref().is_some_and(MeshfleetOta::is_complete),
            meshfleet,
            stock,
            stock_config,
            boot,
            applied: None,
            resumed,
            slot_paths,
            opts,
        };
        Ok((me, decision))
    }

    /// The transfer found in the store at startup, if any: (campaign, have, chunks).
    pub(crate) fn resumed(&self) -> Option<(u32, u32, u32)> {
        self.resumed
    }

    /// The committed image waiting to be booted, if any.
    pub(crate) fn applied(&self) -> Option<&Applied> {
        self.applied.as_ref()
    }

    /// No update may start: an image is committed and not booted yet, or runs on trial.
    fn frozen(&self) -> bool {
        self.applied.is_some() || self.boot.current().is_some_and(|d| d.trial)
    }

    /// A meshfleet campaign is in progress (accepted, not complete; possibly waiting for
    /// an upstream after a restart).
    fn meshfleet_busy(&self) -> bool {
        self.meshfleet
            .as_ref()
            .is_some_and(|m| m.progress().is_some() && !m.is_complete())
    }

    /// Tells the receivers what runs now, and whether updates are frozen.
    fn sync_running(&mut self) {
        let current = self.boot.current().cloned();
        let running = current.as_ref().and_then(|d| d.image.clone());
        let frozen = self.frozen();
        if let Some(m) = self.meshfleet.as_mut() {
            m.set_running(running.clone(), frozen);
        }
        self.stock_config.current_md5 = running.map(|i| i.md5);
    }

    /// A fresh stock receiver (drops whatever it was fetching).
    fn reset_stock(&mut self) {
        if self.stock.is_some() {
            self.stock = Some(StockReceiver::new(self.stock_config.clone()));
        }
    }

    /// Boots the committed image on trial (the boot manager re-hashes it and counts the
    /// attempt). Returns the decision: on trial, or rolled back if the image no longer
    /// matches what was verified.
    pub(crate) fn boot_applied(&mut self) -> Result<BootDecision, StoreError> {
        let decision = self.boot.on_boot()?;
        self.applied = None;
        self.sync_running();
        self.reset_stock();
        Ok(decision)
    }

    /// Abandons the image on trial (its hook failed): the confirmed image boots again.
    pub(crate) fn roll_back(&mut self) -> Result<BootDecision, StoreError> {
        self.boot.rollback()?;
        let decision = self.boot.on_boot()?;
        self.applied = None;
        self.sync_running();
        self.reset_stock();
        Ok(decision)
    }

    /// Confirms the image on trial. Returns it, or `None` if nothing was on trial.
    pub(crate) fn confirm(&mut self) -> Result<Option<ImageInfo>, StoreError> {
        let Some(image) = self.boot.current().filter(|d| d.trial).map(|d| d.image.clone()) else {
            return Ok(None);
        };
        self.boot.confirm()?;
        self.sync_running();
        Ok(image)
    }

    /// The file holding `slot`'s image.
    pub(crate) fn slot_path(&self, slot: Slot) -> PathBuf {
        let [a, b] = &self.slot_paths;
        match slot {
            Slot::A => a.clone(),
            Slot::B => b.clone(),
        }
    }

    /// What the `ota` command prints.
    pub(crate) fn state(&mut self) -> ReceiverState {
        let record = self.boot.store().load_boot();
        // The image on trial is pending in the boot record too; report it once, as running.
        let trial_slot = self.boot.current().filter(|d| d.trial).map(|d| d.slot);
        let (pending, record_error) = match record {
            Ok(rec) => (
                rec.and_then(|r| {
                    let slot = r.pending.filter(|s| Some(*s) != trial_slot)?;
                    Some(SlotView::new(slot, r.image(slot)?, self.slot_path(slot), false))
                }),
                None,
            ),
            Err(e) => (None, Some(e.to_string())),
        };
        let running = self.boot.current().and_then(|d| {
            let info = d.image.as_ref()?;
            Some(SlotView::new(d.slot, info, self.slot_path(d.slot), d.trial))
        });
        let phase = if self.meshfleet.as_ref().is_some_and(|m| m.failure().is_some()) {
            "failed"
        } else if self.applied.is_some() {
            "applying"
        } else if self.boot.current().is_some_and(|d| d.trial) {
            "trial"
        } else if self.meshfleet_busy()
            || self.stock.as_ref().is_some_and(|s| s.expected_part().is_some())
        {
            "receiving"
        } else {
            "idle"
        };
        let transfer = self.meshfleet.as_ref().and_then(|m| {
            let (campaign, have, chunks) = m.progress()?;
            Some(TransferView {
                campaign,
                have,
                chunks,
                complete: m.is_complete(),
            })
        });
        let stats = self.meshfleet.as_ref().map(|m| {
            let s = m.stats();
            StatsView {
                chunks_received: s.chunks_received,
                duplicates: s.duplicates,
                chunks_rejected: s.chunks_rejected,
                chunks_sent: s.chunks_sent,
                naks_sent: s.naks_sent,
                naks_received: s.naks_received,
                offers_sent: s.offers_sent,
            }
        });
        let mut accept = Vec::new();
        if self.meshfleet.is_some() {
            accept.push("meshfleet");
        }
        if self.stock.is_some() {
            accept.push("stock");
        }
        ReceiverState {
            phase,
            dir: self.opts.dir.display().to_string(),
            role: self.opts.role.clone(),
            hardware: self.opts.hardware.clone(),
            trusted_key: self
                .opts
                .key
                .as_ref()
                .map(|k| meshfleet_firmware::keys::key_id(k).to_string()),
            accept,
            running,
            pending,
            transfer,
            stock_part: self.stock.as_ref().and_then(StockReceiver::expected_part),
            stock_updates: self.stock.as_ref().map_or(0, StockReceiver::updates),
            stats,
            failure: self
                .meshfleet
                .as_ref()
                .and_then(|m| m.failure().map(str::to_owned))
                .or(record_error),
        }
    }

    // ------------------------------------------------------------------ arbitration

    /// After every call into the meshfleet receiver: a new campaign drops a stock fetch;
    /// a campaign that became complete is a committed image.
    fn after_meshfleet(&mut self, ctx: &mut Ctx<'_>) {
        let Some(m) = self.meshfleet.as_ref() else {
            return;
        };
        let campaign = m.progress().map(|p| p.0);
        let complete = m.is_complete();
        let started = campaign.is_some() && campaign != self.seen_campaign;
        let committed = complete && (!self.seen_complete || started);
        self.seen_campaign = campaign;
        self.seen_complete = complete;
        if started
            && !complete
            && self
                .stock
                .as_ref()
                .is_some_and(|s| s.expected_part().is_some())
        {
            info!("meshfleet transfer started: dropping the stock update in progress");
            self.reset_stock();
            ctx.emit(Box::new(StockEvent::Dropped));
        }
        if committed {
            self.on_committed("meshfleet");
        }
    }

    /// Records the image the boot record now has pending, and freezes updates.
    fn on_committed(&mut self, via: &'static str) {
        match self.boot.store().load_boot() {
            Ok(Some(rec)) => {
                if let Some((slot, info)) = rec
                    .pending
                    .and_then(|slot| Some((slot, rec.image(slot)?.clone())))
                {
                    self.applied = Some(Applied { slot, info, via });
                }
            }
            Ok(None) => warn!("an image was committed but the boot record is missing"),
            Err(e) => warn!(error = %e, "cannot read the boot record after a commit"),
        }
        self.sync_running();
    }

    /// A stock package: Announces are gated (see the module docs); Data goes through.
    fn stock_package(&mut self, ctx: &mut Ctx<'_>, link: LinkId, routing: Routing, pkg: &Package) {
        if pkg.ty() == types::OTA_ANNOUNCE {
            if self.frozen() || self.meshfleet_busy() {
                debug!("stock announce ignored: another update is in progress");
                return;
            }
            if let Ok(ann) = pkg.parse::<Announce>() {
                if self.holds_md5(&ann.md5) {
                    // Forced or not, re-installing the image we run or have pending
                    // gains nothing (the meshfleet receiver refuses that too).
                    return;
                }
            }
        }
        let Some(stock) = self.stock.as_mut() else {
            return;
        };
        let before = stock.updates();
        stock.handle_package(ctx, link, routing, pkg);
        self.after_stock(ctx, before);
    }

    /// Whether `md5` is the running image's or the pending one's.
    fn holds_md5(&mut self, md5: &str) -> bool {
        let running = self
            .boot
            .current()
            .and_then(|d| d.image.as_ref())
            .is_some_and(|i| i.md5.eq_ignore_ascii_case(md5));
        running
            || self.boot.store().load_boot().ok().flatten().is_some_and(|r| {
                r.pending
                    .and_then(|s| r.image(s))
                    .is_some_and(|i| i.md5.eq_ignore_ascii_case(md5))
            })
    }

    /// After a call into the stock receiver: a new installed image is committed.
    fn after_stock(&mut self, ctx: &mut Ctx<'_>, updates_before: u32) {
        let Some(stock) = self.stock.as_ref() else {
            return;
        };
        if stock.updates() == updates_before {
            return;
        }
        let Some(image) = stock.installed_image().map(<[u8]>::to_vec) else {
            return;
        };
        let md5 = stock.current_md5().to_owned();
        let version = stock_version(&md5);
        match self.commit_stock(&image, &version) {
            Ok(()) => {
                ctx.emit(Box::new(StockEvent::Applied {
                    md5,
                    version,
                    size: image.len() as u64,
                }));
                self.on_committed("stock");
            }
            Err(e) => {
                warn!(error = %e, "cannot store the stock image");
                ctx.emit(Box::new(StockEvent::ApplyFailed {
                    reason: e.to_string(),
                }));
            }
        }
        // Frees the image the stock receiver keeps. Its Announce is not taken up again:
        // updates are frozen until the image is confirmed, and `holds_md5` after that.
        self.reset_stock();
    }

    /// Writes a stock image (whose MD5 the stock receiver checked) to the inactive slot and
    /// commits it, as the meshfleet receiver does with a verified image.
    fn commit_stock(&mut self, image: &[u8], version: &str) -> Result<(), StoreError> {
        let store = self.boot.store();
        let slot = store.load_boot()?.map_or(Slot::B, |r| r.inactive());
        store.erase_slot(slot)?;
        store.write_slot(slot, 0, image)?;
        store.sync_slot(slot)?;
        boot::commit(store, slot, image_info(image, version))
    }
}

impl Plugin for OtaReceiver {
    fn name(&self) -> &'static str {
        PLUGIN_NAME
    }

    fn handles(&self, ty: i64) -> bool {
        self.meshfleet.as_ref().is_some_and(|m| m.handles(ty))
            || self.stock.as_ref().is_some_and(|s| s.handles(ty))
    }

    fn handle_package(&mut self, ctx: &mut Ctx<'_>, link: LinkId, routing: Routing, pkg: &Package) {
        if let Some(m) = self.meshfleet.as_mut().filter(|m| m.handles(pkg.ty())) {
            m.handle_package(ctx, link, routing, pkg);
            self.after_meshfleet(ctx);
        } else if self.stock.as_ref().is_some_and(|s| s.handles(pkg.ty())) {
            self.stock_package(ctx, link, routing, pkg);
        }
    }

    fn handles_binary(&self, tag: u16) -> bool {
        self.meshfleet.as_ref().is_some_and(|m| m.handles_binary(tag))
    }

    fn handle_binary(&mut self, ctx: &mut Ctx<'_>, link: LinkId, payload: &[u8]) {
        if let Some(m) = self.meshfleet.as_mut() {
            m.handle_binary(ctx, link, payload);
            self.after_meshfleet(ctx);
        }
    }

    fn handle_change(&mut self, ctx: &mut Ctx<'_>, change: &MeshChange) {
        if let Some(m) = self.meshfleet.as_mut() {
            m.handle_change(ctx, change);
            self.after_meshfleet(ctx);
        }
        if let Some(s) = self.stock.as_mut() {
            let before = s.updates();
            s.handle_change(ctx, change);
            self.after_stock(ctx, before);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let m = self.meshfleet.as_ref().and_then(Plugin::poll_timeout);
        let s = self.stock.as_ref().and_then(Plugin::poll_timeout);
        m.into_iter().chain(s).min()
    }

    fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        if let Some(m) = self
            .meshfleet
            .as_mut()
            .filter(|m| m.poll_timeout().is_some_and(|t| t <= now))
        {
            m.handle_timeout(ctx);
            self.after_meshfleet(ctx);
        }
        if let Some(s) = self
            .stock
            .as_mut()
            .filter(|s| s.poll_timeout().is_some_and(|t| t <= now))
        {
            let before = s.updates();
            s.handle_timeout(ctx);
            self.after_stock(ctx, before);
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

// ---------------------------------------------------------------------- reports

/// An image in a slot, as reported.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SlotView {
    slot: &'static str,
    version: String,
    sha256: String,
    md5: String,
    size: u64,
    /// The image file.
    path: String,
    trial: bool,
}

impl SlotView {
    fn new(slot: Slot, info: &ImageInfo, path: PathBuf, trial: bool) -> Self {
        Self {
            slot: slot_name(slot),
            version: info.version.clone(),
            sha256: info.sha256.clone(),
            md5: info.md5.clone(),
            size: info.size,
            path: path.display().to_string(),
            trial,
        }
    }
}

fn slot_name(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "A",
        Slot::B => "B",
    }
}

/// A meshfleet transfer, as reported.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TransferView {
    campaign: u32,
    have: u32,
    chunks: u32,
    complete: bool,
}

/// The meshfleet receiver's counters (since this start).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatsView {
    chunks_received: u64,
    duplicates: u64,
    chunks_rejected: u64,
    chunks_sent: u64,
    naks_sent: u64,
    naks_received: u64,
    offers_sent: u64,
}

/// The reply to the `ota` command.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReceiverState {
    /// `idle`, `receiving`, `applying` (committed, not booted yet), `trial` or `failed`.
    phase: &'static str,
    dir: String,
    role: String,
    hardware: String,
    trusted_key: Option<String>,
    accept: Vec<&'static str>,
    running: Option<SlotView>,
    pending: Option<SlotView>,
    transfer: Option<TransferView>,
    /// The part the stock receiver waits for.
    stock_part: Option<u32>,
    stock_updates: u32,
    stats: Option<StatsView>,
    failure: Option<String>,
}

impl std::fmt::Display for ReceiverState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ota: {}", self.phase)?;
        match &self.running {
            Some(r) => write!(
                f,
                ", running {} (slot {}{})",
                r.version,
                r.slot,
                if r.trial { ", on trial" } else { "" }
            )?,
            None => f.write_str(", running image unknown")?,
        }
        if let Some(p) = &self.pending {
            write!(f, ", pending {} (slot {})", p.version, p.slot)?;
        }
        if let Some(t) = &self.transfer {
            write!(
                f,
                ", transfer {}: {}/{} chunks{}",
                t.campaign,
                t.have,
                t.chunks,
                if t.complete { " (complete)" } else { "" }
            )?;
        }
        if let Some(p) = self.stock_part {
            write!(f, ", stock update at part {p}")?;
        }
        if let Some(e) = &self.failure {
            write!(f, ", failed: {e}")?;
        }
        Ok(())
    }
}

/// The `ota_*` lines the node prints about its own OTA life: the JSON form is
/// `{"event":"ota_boot",...}` with camelCase fields, like the runtime's events.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all_fields = "camelCase")]
pub(crate) enum OtaLine {
    /// A boot decision: at startup (`reason` = `start`) or when a new image is booted
    /// (`update`), or after a failed hook (`rollback`).
    #[serde(rename = "ota_boot")]
    Boot {
        reason: &'static str,
        slot: &'static str,
        image: Option<SlotView>,
        trial: bool,
        rolled_back: Option<&'static str>,
    },
    /// A transfer was found in the store at startup: it resumes when an upstream offers it.
    #[serde(rename = "ota_resume")]
    Resume {
        campaign: u32,
        have: u32,
        chunks: u32,
    },
    /// The hook ran.
    #[serde(rename = "ota_hook")]
    Hook {
        command: String,
        version: String,
        image: String,
        ok: bool,
        exit_code: Option<i32>,
        error: Option<String>,
    },
    /// The image on trial was confirmed: it is the active image now.
    #[serde(rename = "ota_confirmed")]
    Confirmed { version: String },
    /// The image on trial was not confirmed; the next start decides (trial again or
    /// rollback, after its boot attempts).
    #[serde(rename = "ota_confirm_skipped")]
    ConfirmSkipped { version: String, reason: String },
    /// A store operation of the driver failed.
    #[serde(rename = "ota_error")]
    Error { error: String },
}

impl OtaLine {
    /// The boot line for `d`.
    pub(crate) fn boot(reason: &'static str, d: &BootDecision, path: &Path) -> Self {
        Self::Boot {
            reason,
            slot: slot_name(d.slot),
            image: d
                .image
                .as_ref()
                .map(|i| SlotView::new(d.slot, i, path.to_owned(), d.trial)),
            trial: d.trial,
            rolled_back: d.rolled_back,
        }
    }

    fn text(&self) -> String {
        match self {
            Self::Boot {
                reason,
                slot,
                image,
                trial,
                rolled_back,
            } => {
                let what = image
                    .as_ref()
                    .map_or_else(|| "no known image".to_owned(), |i| i.version.clone());
                let mut s = format!("ota boot ({reason}): slot {slot}, {what}");
                if *trial {
                    s.push_str(", on trial");
                }
                if let Some(why) = rolled_back {
                    s.push_str(&format!(", rolled back: {why}"));
                }
                s
            }
            Self::Resume {
                campaign,
                have,
                chunks,
            } => format!(
                "ota: transfer {campaign} resumes with {have}/{chunks} chunks already held"
            ),
            Self::Hook {
                command,
                ok,
                exit_code,
                error,
                ..
            } => match (ok, error, exit_code) {
                (true, _, _) => format!("ota hook `{command}` succeeded"),
                (false, Some(e), _) => format!("ota hook `{command}` failed: {e}"),
                (false, None, Some(c)) => format!("ota hook `{command}` failed with status {c}"),
                (false, None, None) => format!("ota hook `{command}` was killed by a signal"),
            },
            Self::Confirmed { version } => format!("ota: {version} confirmed"),
            Self::ConfirmSkipped { version, reason } => {
                format!("ota: {version} not confirmed: {reason}")
            }
            Self::Error { error } => format!("ota error: {error}"),
        }
    }

    /// Prints it.
    pub(crate) fn print(&self, out: Output) {
        out.reply(self, || self.text());
    }
}

// ---------------------------------------------------------------------- driver

/// The driver side of an OTA-receiving node: reacts to committed images (boot on trial,
/// hook, confirm). Runs as its own task next to the node's command loop.
pub(crate) struct Controller {
    /// The mesh.
    pub(crate) mesh: MeshHandle,
    /// Where lines go.
    pub(crate) out: Output,
    /// `--ota-hook`.
    pub(crate) hook: Option<String>,
    /// `--ota-confirm-after`.
    pub(crate) confirm_after: Duration,
}

impl Controller {
    /// Runs until the runtime stops. `events` must be subscribed before the runtime can
    /// deliver an update. `startup` is this start's boot decision (and the image file): an
    /// image on trial, or one the boot manager went back to, is handed to the hook first,
    /// since the application may still run another one.
    pub(crate) async fn run(
        self,
        mut events: broadcast::Receiver<RuntimeEvent>,
        startup: (BootDecision, PathBuf),
    ) {
        let (decision, path) = startup;
        let mut confirm_at = None;
        if decision.trial || decision.rolled_back.is_some() {
            match self.start_image(&decision, &path).await {
                Ok(true) => confirm_at = Some(tokio::time::Instant::now() + self.confirm_after),
                Ok(false) => {}
                Err(Stopped) => return,
            }
        }
        // A safety net: an `applied` event lost to a lagging subscriber is still noticed.
        let mut poll = tokio::time::interval(Duration::from_secs(1));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let confirm = async {
                match confirm_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(RuntimeEvent::Plugin { plugin, data })
                        if plugin == PLUGIN_NAME && data["event"] == "applied" => {}
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = poll.tick() => {}
                () = confirm => {
                    confirm_at = None;
                    if self.confirm().await.is_err() {
                        return;
                    }
                    continue;
                }
            }
            let applied = self
                .mesh
                .with_node(|node, _| {
                    node.plugin::<OtaReceiver>()
                        .and_then(|r| r.applied().cloned())
                })
                .await;
            match applied {
                Ok(Some(a)) => match self.install(a).await {
                    Ok(true) => {
                        confirm_at = Some(tokio::time::Instant::now() + self.confirm_after);
                    }
                    Ok(false) => confirm_at = None,
                    Err(Stopped) => return,
                },
                Ok(None) => {}
                Err(Stopped) => return,
            }
        }
    }

    /// Boots a committed image on trial and hands it to the hook. Returns whether an image
    /// is now on trial.
    async fn install(&self, a: Applied) -> Result<bool, Stopped> {
        info!(version = %a.info.version, via = a.via, slot = slot_name(a.slot),
              "booting the new image on trial");
        let decision = self
            .with_receiver(|r| {
                let d = r.boot_applied()?;
                let path = r.slot_path(d.slot);
                Ok((d, path))
            })
            .await?;
        let Some((decision, path)) = decision else {
            return Ok(false);
        };
        OtaLine::boot("update", &decision, &path).print(self.out);
        if !decision.trial {
            // The boot manager refused it (damaged since it was verified): the
            // application keeps running what it runs.
            return Ok(false);
        }
        self.start_image(&decision, &path).await
    }

    /// Runs the hook for the image `decision` boots. If that fails for an image on trial,
    /// rolls it back and runs the hook again for the confirmed image. Returns whether an
    /// image is on trial afterwards.
    async fn start_image(&self, decision: &BootDecision, path: &Path) -> Result<bool, Stopped> {
        let Some(image) = decision.image.as_ref() else {
            // Nothing known to run (a fresh device that rolled back): nothing to start.
            return Ok(false);
        };
        if self.run_hook(&image.version, path).await || !decision.trial {
            return Ok(decision.trial);
        }
        // The application could not start on the new image: go back to the confirmed
        // one, and give the application the old image back the same way.
        let back = self
            .with_receiver(|r| {
                let d = r.roll_back()?;
                let path = r.slot_path(d.slot);
                Ok((d, path))
            })
            .await?;
        if let Some((d, path)) = back {
            OtaLine::boot("rollback", &d, &path).print(self.out);
            if let Some(old) = d.image.as_ref() {
                self.run_hook(&old.version, &path).await;
            }
        }
        Ok(false)
    }

    /// Runs `--ota-hook` for the image at `path`, if there is a hook. Returns whether it
    /// succeeded (true without a hook).
    async fn run_hook(&self, version: &str, path: &Path) -> bool {
        let Some(command) = self.hook.as_deref() else {
            return true;
        };
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(command)
            .env("MESHFLEET_OTA_VERSION", version)
            .env("MESHFLEET_OTA_IMAGE", path)
            .stdin(std::process::Stdio::null())
            // Our stdout carries events (JSON with --json): the hook's output goes to
            // stderr. Not captured: a hook that starts a daemon would hold a pipe open.
            .stdout(stderr_stdio())
            .kill_on_drop(true);
        let outcome = match cmd.spawn() {
            Err(e) => Err(format!("cannot start sh: {e}")),
            Ok(mut child) => match tokio::time::timeout(HOOK_TIMEOUT, child.wait()).await {
                Ok(Ok(status)) => Ok(status),
                Ok(Err(e)) => Err(format!("cannot wait for the hook: {e}")),
                Err(_) => Err(format!("still running after {} s", HOOK_TIMEOUT.as_secs())),
            },
        };
        let (ok, exit_code, error) = match outcome {
            Ok(status) => (status.success(), status.code(), None),
            Err(e) => (false, None, Some(e)),
        };
        OtaLine::Hook {
            command: command.to_owned(),
            version: version.to_owned(),
            image: path.display().to_string(),
            ok,
            exit_code,
            error,
        }
        .print(self.out);
        ok
    }

    /// Confirms the image on trial if the node is connected to the mesh.
    async fn confirm(&self) -> Result<(), Stopped> {
        let outcome = self
            .mesh
            .with_node(|node, _| {
                let connected = !node.nodes().is_empty();
                let r = node.plugin_mut::<OtaReceiver>()?;
                let version = r
                    .boot
                    .current()
                    .filter(|d| d.trial)
                    .and_then(|d| d.image.as_ref())
                    .map(|i| i.version.clone())?;
                Some(if connected {
                    r.confirm().map(|_| (version, true))
                } else {
                    Ok((version, false))
                })
            })
            .await?;
        match outcome {
            None => {}
            Some(Ok((version, true))) => OtaLine::Confirmed { version }.print(self.out),
            Some(Ok((version, false))) => OtaLine::ConfirmSkipped {
                version,
                reason: "not connected to the mesh".into(),
            }
            .print(self.out),
            Some(Err(e)) => OtaLine::Error {
                error: format!("cannot confirm the new image: {e}"),
            }
            .print(self.out),
        }
        Ok(())
    }

    /// Runs `f` on the receiver in the owner task; store errors are printed and give `None`.
    async fn with_receiver<T, F>(&self, f: F) -> Result<Option<T>, Stopped>
    where
        F: FnOnce(&mut OtaReceiver) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let r = self
            .mesh
            .with_node(|node, _| node.plugin_mut::<OtaReceiver>().map(f))
            .await?;
        match r {
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(e)) => {
                OtaLine::Error {
                    error: e.to_string(),
                }
                .print(self.out);
                Ok(None)
            }
            None => Ok(None),
        }
    }
}

/// A handle on our stderr for a child's stdout (null if it cannot be duplicated).
fn stderr_stdio() -> std::process::Stdio {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd as _;
        std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map_or_else(|_| std::process::Stdio::null(), std::process::Stdio::from)
    }
    #[cfg(not(unix))]
    {
        std::process::Stdio::null()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stock_versions_are_semver_below_any_release() {
        let v = stock_version("0123456789abcdef0123456789abcdef");
        assert_eq!(v, "0.0.0+stock.0123456789ab");
        let parsed = meshfleet_firmware::Version::parse(&v).unwrap();
        let release = meshfleet_firmware::Version::parse("0.0.1").unwrap();
        assert_eq!(
            release.cmp_precedence(&parsed),
            std::cmp::Ordering::Greater
        );
    }
}
