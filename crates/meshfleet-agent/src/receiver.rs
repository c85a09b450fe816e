//! The receiving side of the node as shipped: one plugin holding both receivers of the OTA
//! engine, arbitrating between them, and the boot/confirm policy.
//!
//! [`OtaReceiver`] is one node plugin that holds both receivers and arbitrates between
//! them, so that a node never fetches the same update twice:
//!
//! * [`MeshfleetOta`] (types 700-709): signed, compressed, resumable; also relays the
//!   campaign to downstream meshfleet neighbours. Preferred.
//! * [`StockReceiver`] (types 10, 12): the stock painlessMesh flow, so an unmodified
//!   sender (or `meshfleet ota offer --strategy stock`) can update the node too. Stock
//!   images are not signed, so it is only enabled when no trusted key is configured (the
//!   receiver then still claims the stock types, and ignores them without a word: a stock
//!   sender announces every 60 s). Its Announces are ignored while a meshfleet transfer
//!   is in progress, and a stock fetch is dropped the moment a meshfleet transfer starts
//!   (with `--strategy auto` both protocols reach a meshfleet node at about the same
//!   time). Once the stock image's MD5 matched it is written to the inactive slot and
//!   committed like a meshfleet image.
//!
//! Both write into one [`SlotStore`] (a file store on Linux, an in-memory one in the
//! simulator). The plugin also owns the [`BootManager`], so every change of the boot record
//! happens where the node runs, serialized with the receivers' own store writes.
//!
//! # Boot and confirm ([`BootPolicy`])
//!
//! A committed image is booted on trial either at once ([`ApplyMode::Now`]: a Linux node
//! restarts its application, not itself) or at the node's next start
//! ([`ApplyMode::OnRestart`]: an ESP reboots into it). Starting an image may need the
//! driver's help (a hook that restarts the application): the plugin then asks for it with
//! [`BootAction::RunHook`] and waits for [`OtaReceiver::hook_finished`]. A trial image is
//! confirmed at once ([`ConfirmRule::AtOnce`]) or after a healthy running time while the
//! node is connected to the mesh ([`ConfirmRule::WhenHealthy`]). From the commit until the
//! confirmation the receivers refuse further updates: the only other slot holds the
//! fallback. A failed hook rolls the trial image back.
//!
//! Everything the policy decides is queued as a typed [`BootAction`] for the driver
//! ([`OtaReceiver::poll_action`]); the plugin never runs a process or reads a clock.

use std::collections::VecDeque;

use meshfleet_firmware::{Artefact, Intent, VerifyingKey};
use meshfleet_mesh::{Claims, Ctx, Duration, Instant, LinkId, MeshChange, Plugin, PluginEvent};
use meshfleet_ota::proto;
use meshfleet_ota::store::image_info;
use meshfleet_ota::{
    boot, BootDecision, BootManager, ImageInfo, MeshfleetConfig, MeshfleetOta, OpenError, Slot,
    SlotStore, StockReceiver, StockReceiverConfig, StoreError,
};
use meshfleet_wire::ota::Announce;
use meshfleet_wire::{types, Package, Routing};
use serde_json::json;

/// The plugin's name: the `plugin` of its events in `meshfleet node --json` output.
pub const PLUGIN_NAME: &str = "ota-receiver";

/// Boot actions kept for a driver that does not drain them (the simulator reads the store
/// instead): the oldest are dropped beyond this.
const MAX_ACTIONS: usize = 64;

/// When a committed image boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyMode {
    /// Right after the commit, without restarting the node (a Linux node restarts its
    /// application through the hook).
    Now,
    /// At the node's next start (an ESP reboots into it; the simulator models the reboot
    /// as a scenario event).
    OnRestart,
}

/// When an image on trial is confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfirmRule {
    /// As soon as it started (firmware that is healthy by construction: the simulator).
    AtOnce,
    /// After it ran `after` and the node is connected to the mesh then; otherwise the next
    /// start decides (trial again, or rollback after its boot attempts).
    WhenHealthy {
        /// Healthy running time before the confirmation.
        after: Duration,
    },
}

/// How committed images are started and confirmed. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootPolicy {
    /// When a committed image boots.
    pub apply: ApplyMode,
    /// Starting an image needs the driver: [`BootAction::RunHook`] for each image started
    /// (a trial image, or the one a rollback went back to).
    pub hook: bool,
    /// When a trial image is confirmed.
    pub confirm: ConfirmRule,
    /// Boot attempts of a pending image before it is rolled back.
    pub max_boot_attempts: u32,
}

impl BootPolicy {
    /// A Linux node: boot at once, confirm after `after` of healthy running time.
    pub fn linux(hook: bool, after: Duration) -> Self {
        Self {
            apply: ApplyMode::Now,
            hook,
            confirm: ConfirmRule::WhenHealthy { after },
            max_boot_attempts: meshfleet_ota::DEFAULT_MAX_BOOT_ATTEMPTS,
        }
    }

    /// A device that boots committed images at its next start, healthy by construction.
    pub fn on_restart() -> Self {
        Self {
            apply: ApplyMode::OnRestart,
            hook: false,
            confirm: ConfirmRule::AtOnce,
            max_boot_attempts: meshfleet_ota::DEFAULT_MAX_BOOT_ATTEMPTS,
        }
    }
}

/// How the receiving side of a node is configured.
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    /// Our OTA role.
    pub role: String,
    /// Our hardware.
    pub hardware: String,
    /// Receive meshfleet OTA (types 700-709) with this configuration; role, hardware, the
    /// running image and the trial flag are filled in from the rest of this configuration
    /// and the boot decision.
    pub meshfleet: Option<MeshfleetConfig>,
    /// Receive stock OTA (types 10, 12) with this configuration; role, hardware and the
    /// running MD5 are filled in likewise. Refused with a trusted key (stock images carry
    /// no signature).
    pub stock: Option<StockReceiverConfig>,
    /// Manifests must be signed by this key.
    pub trusted_key: Option<VerifyingKey>,
    /// Boot and confirmation.
    pub policy: BootPolicy,
    /// This node is the source of this artefact (already verified) from the start: the
    /// simulator's source after a reboot. The intent as in [`MeshfleetOta::source`].
    pub source: Option<(Artefact, Option<Intent>)>,
}

impl ReceiverConfig {
    /// Both protocols with their defaults (stock only without a key), for `role` on
    /// `hardware`.
    pub fn new(role: impl Into<String>, hardware: impl Into<String>, policy: BootPolicy) -> Self {
        let (role, hardware) = (role.into(), hardware.into());
        Self {
            meshfleet: Some(MeshfleetConfig::new(role.clone(), hardware.clone())),
            stock: Some(StockReceiverConfig::new(role.clone(), hardware.clone())),
            role,
            hardware,
            trusted_key: None,
            policy,
            source: None,
        }
    }
}

/// Why a receiver could not be opened.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReceiverError {
    /// The store failed (reading the boot record, the transfer state, ...).
    Store(StoreError),
    /// The stock protocol was asked for together with a trusted key.
    StockWithKey,
    /// The meshfleet receiver could not restore its state.
    Meshfleet(OpenError),
}

impl std::fmt::Display for ReceiverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Store(e) => std::fmt::Display::fmt(e, f),
            Self::Meshfleet(e) => std::fmt::Display::fmt(e, f),
            Self::StockWithKey => f.write_str(
                "stock OTA cannot be combined with a trusted key: stock images carry no signature",
            ),
        }
    }
}

impl std::error::Error for ReceiverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Store(e) => Some(e),
            Self::Meshfleet(e) => Some(e),
            Self::StockWithKey => None,
        }
    }
}

impl From<StoreError> for ReceiverError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// Which protocol brought an image (or serves a node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Via {
    /// The meshfleet protocol.
    Meshfleet,
    /// The stock painlessMesh flow.
    Stock,
}

impl Via {
    /// `meshfleet` or `stock`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Meshfleet => "meshfleet",
            Self::Stock => "stock",
        }
    }
}

/// A committed image that has not booted yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Where it is.
    pub slot: Slot,
    /// What it is.
    pub info: ImageInfo,
    /// Which protocol brought it.
    pub via: Via,
}

/// Why an image was (re)started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootReason {
    /// The node started.
    Start,
    /// A committed image booted without a restart ([`ApplyMode::Now`]).
    Update,
    /// The trial image's hook failed: the confirmed image runs again.
    Rollback,
}

impl BootReason {
    /// `start`, `update` or `rollback`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Update => "update",
            Self::Rollback => "rollback",
        }
    }
}

/// The driver should start an image: run its hook, then call
/// [`OtaReceiver::hook_finished`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookRequest {
    /// The image.
    pub image: ImageInfo,
    /// Its slot.
    pub slot: Slot,
    /// Whether it is on trial (a failed hook then rolls it back).
    pub trial: bool,
    /// Why it starts.
    pub reason: BootReason,
}

/// Why a trial image was not confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The node had no other node in reach when it was due.
    NotConnected,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotConnected => f.write_str("not connected to the mesh"),
        }
    }
}

/// Which step of the boot policy a store error interrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootStep {
    /// Booting a committed image.
    Boot,
    /// Rolling back after a failed hook.
    Rollback,
    /// Confirming the trial image.
    Confirm,
    /// Writing a stock image to its slot.
    StoreStockImage,
}

impl std::fmt::Display for BootStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Boot => "cannot boot the new image",
            Self::Rollback => "cannot roll back",
            Self::Confirm => "cannot confirm the new image",
            Self::StoreStockImage => "cannot store the stock image",
        })
    }
}

/// What the boot policy did or asks for, in order. Drain with [`OtaReceiver::poll_action`].
#[derive(Debug)]
#[non_exhaustive]
pub enum BootAction {
    /// A boot decision was made.
    Booted {
        /// Why.
        reason: BootReason,
        /// The decision.
        decision: BootDecision,
    },
    /// A transfer was found in the store at the start: it resumes when an upstream offers
    /// it.
    Resumed {
        /// Campaign id.
        campaign: u32,
        /// Units held.
        have: u32,
        /// Units in all.
        units: u32,
    },
    /// Start this image (run the hook), then call [`OtaReceiver::hook_finished`].
    RunHook(HookRequest),
    /// The trial image was confirmed: it is the active image now.
    Confirmed {
        /// Its version.
        version: String,
    },
    /// The trial image was not confirmed; the next start decides.
    ConfirmSkipped {
        /// Its version.
        version: String,
        /// Why.
        reason: SkipReason,
    },
    /// A signed rollback command (ROLLBACK 707) made the previous slot the one that boots
    /// ([`ApplyMode::OnRestart`]): restart the node to run `to`. With [`ApplyMode::Now`]
    /// the receiver makes the boot decision itself ([`BootAction::Booted`] with
    /// [`BootReason::Rollback`], then the hook if any).
    RestartForRollback {
        /// The image the node runs after the restart.
        to: ImageInfo,
    },
    /// A store operation of the policy failed.
    Failed {
        /// What was being done.
        step: BootStep,
        /// The store's error.
        error: StoreError,
    },
}

/// Events of the receiver itself (the inner receivers emit their own
/// [`meshfleet_ota::OtaEvent`]s). Downcast with `event.downcast_ref()`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiverEvent {
    /// An image was committed: it boots as [`BootPolicy::apply`] says.
    Applied {
        /// The protocol that brought it.
        via: Via,
        /// Its version (`0.0.0+stock.<md5 prefix>` for stock images, which carry none).
        version: String,
        /// Its MD5.
        md5: String,
        /// Its size.
        size: u64,
    },
    /// A stock fetch in progress was dropped because a meshfleet transfer started.
    StockDropped,
    /// The stock image could not be stored.
    StockApplyFailed {
        /// The store's error, for a human.
        error: String,
    },
}

impl PluginEvent for ReceiverEvent {
    fn to_json(&self) -> serde_json::Value {
        match self {
            // Same name as the meshfleet receiver's event: "an image is committed".
            Self::Applied {
                via,
                version,
                md5,
                size,
            } => json!({"event": "applied", "via": via.label(), "md5": md5,
                        "version": version, "size": size}),
            Self::StockDropped => json!({"event": "stock_update_dropped",
                "reason": "a meshfleet transfer started"}),
            Self::StockApplyFailed { error } => {
                json!({"event": "stock_apply_failed", "reason": error})
            }
        }
    }
}

/// The version recorded for an image that came through the stock protocol, which carries
/// none: `0.0.0+stock.<md5 prefix>`. Valid semver that sorts below any release, so a
/// meshfleet offer of a real version is never refused as a downgrade.
pub fn stock_version(md5: &str) -> String {
    let prefix: String = md5.chars().take(12).collect();
    format!("0.0.0+stock.{prefix}")
}

/// Where the hook of the current image stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Hook {
    Idle,
    /// Asked for; waiting for [`OtaReceiver::hook_finished`].
    Running(HookRequest),
}

/// Counters of what the receiver ignored on purpose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Stock packages ignored: stock disabled (a trusted key), or another update in
    /// progress or frozen.
    pub stock_ignored: u64,
}

/// The receiving plugin; see the module docs. `S` is the store the boot manager uses; the
/// meshfleet receiver gets its own handle on the same storage (see [`OtaReceiver::open`]).
pub struct OtaReceiver<S: SlotStore> {
    meshfleet: Option<MeshfleetOta>,
    stock: Option<StockReceiver>,
    /// To rebuild the stock receiver (dropping a fetch, or after a new image booted).
    stock_config: Option<StockReceiverConfig>,
    /// The stock types are claimed even without a stock receiver, to ignore them quietly.
    claim_stock: bool,
    boot: BootManager<S>,
    /// The campaign the meshfleet receiver had after the previous call, and whether it
    /// was complete: a change tells that a transfer started or an image was committed.
    seen_campaign: Option<u32>,
    seen_complete: bool,
    /// A committed image waiting to boot.
    applied: Option<Applied>,
    /// The transfer found in the store at startup: (campaign, units held, units).
    resumed: Option<(u32, u32, u32)>,
    policy: BootPolicy,
    hook: Hook,
    /// The trial image is confirmed at this time (if still healthy).
    confirm_at: Option<Instant>,
    /// The trial image started: the confirmation is armed at the next timeout, where `now`
    /// is known.
    arm_confirm: bool,
    actions: VecDeque<BootAction>,
    stats: ReceiverStats,
    role: String,
    hardware: String,
    trusted_key: Option<VerifyingKey>,
}

impl<S: SlotStore> std::fmt::Debug for OtaReceiver<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtaReceiver")
            .field("meshfleet", &self.meshfleet)
            .field("stock", &self.stock.is_some())
            .field("applied", &self.applied)
            .field("hook", &self.hook)
            .finish_non_exhaustive()
    }
}

impl<S: SlotStore + 'static> OtaReceiver<S> {
    /// Makes this start's boot decision (trial, rollback) over `boot_store` and builds the
    /// receivers for the image that runs. `ota_store` is the meshfleet receiver's handle on
    /// the same storage (a second handle on the same directory, or a clone of an in-memory
    /// store that shares its contents): both are only used from the plugin's calls.
    ///
    /// The decision is the first [`BootAction`]; an image to start or confirm follows.
    pub fn open(
        config: ReceiverConfig,
        boot_store: S,
        ota_store: Box<dyn SlotStore>,
    ) -> Result<Self, ReceiverError> {
        if config.stock.is_some() && config.trusted_key.is_some() {
            return Err(ReceiverError::StockWithKey);
        }
        let policy = config.policy;
        let mut boot = BootManager::new(boot_store, policy.max_boot_attempts);
        let mut decision = boot.on_boot()?;
        let mut actions = VecDeque::new();
        actions.push_back(BootAction::Booted {
            reason: BootReason::Start,
            decision: decision.clone(),
        });
        // Healthy by construction, nothing to start: confirmed before the receivers are
        // built, so they never see it on trial.
        let confirm_now = decision.trial && !policy.hook && policy.confirm == ConfirmRule::AtOnce;
        if confirm_now {
            let version = decision.image.as_ref().map(|i| i.version.clone());
            match boot.confirm() {
                Ok(()) => {
                    decision.trial = false;
                    if let Some(version) = version {
                        actions.push_back(BootAction::Confirmed { version });
                    }
                }
                Err(error) => actions.push_back(BootAction::Failed {
                    step: BootStep::Confirm,
                    error,
                }),
            }
        }
        let running = decision.image.clone();

        let meshfleet = match config.meshfleet {
            Some(mut c) => {
                c.role.clone_from(&config.role);
                c.hardware.clone_from(&config.hardware);
                c.running.clone_from(&running);
                c.on_trial = decision.trial;
                c.trusted_key = config.trusted_key;
                Some(match config.source {
                    Some((artefact, intent)) => {
                        MeshfleetOta::source(c, ota_store, artefact, intent)
                    }
                    None => MeshfleetOta::new(c, ota_store).map_err(ReceiverError::Meshfleet)?,
                })
            }
            None => None,
        };
        let stock_config = config.stock.map(|mut c| {
            c.role.clone_from(&config.role);
            c.hardware.clone_from(&config.hardware);
            c.current_md5 = running.as_ref().map(|i| i.md5.clone());
            c
        });
        let stock = stock_config.clone().map(StockReceiver::new);

        let resumed = meshfleet
            .as_ref()
            .filter(|m| !m.is_complete())
            .and_then(MeshfleetOta::progress);
        if let Some((campaign, have, units)) = resumed {
            actions.push_back(BootAction::Resumed {
                campaign,
                have,
                units,
            });
        }
        let mut me = Self {
            seen_campaign: meshfleet
                .as_ref()
                .and_then(MeshfleetOta::progress)
                .map(|p| p.0),
            seen_complete: meshfleet.as_ref().is_some_and(MeshfleetOta::is_complete),
            claim_stock: meshfleet.is_some() || stock.is_some(),
            meshfleet,
            stock,
            stock_config,
            boot,
            applied: None,
            resumed,
            policy,
            hook: Hook::Idle,
            confirm_at: None,
            arm_confirm: false,
            actions,
            stats: ReceiverStats::default(),
            role: config.role,
            hardware: config.hardware,
            trusted_key: config.trusted_key,
        };
        // An image on trial, or one the boot manager went back to, is started first: the
        // application may still run another one.
        if !confirm_now && (decision.trial || decision.rolled_back.is_some()) {
            me.start_image(&decision, BootReason::Start);
        }
        Ok(me)
    }

    /// The next thing the boot policy did or asks for.
    pub fn poll_action(&mut self) -> Option<BootAction> {
        self.actions.pop_front()
    }

    /// The transfer found in the store at startup, if any: (campaign, units held, units).
    pub fn resumed(&self) -> Option<(u32, u32, u32)> {
        self.resumed
    }

    /// The committed image waiting to boot, if any.
    pub fn applied(&self) -> Option<&Applied> {
        self.applied.as_ref()
    }

    /// The hook the driver is running (asked for with [`BootAction::RunHook`]), if any.
    pub fn hook_running(&self) -> Option<&HookRequest> {
        match &self.hook {
            Hook::Running(r) => Some(r),
            Hook::Idle => None,
        }
    }

    /// The boot manager's decision for what runs now.
    pub fn current(&self) -> Option<&BootDecision> {
        self.boot.current()
    }

    /// The boot manager's store (to read the boot record).
    pub fn store(&mut self) -> &mut S {
        self.boot.store()
    }

    /// The meshfleet receiver, if enabled.
    pub fn meshfleet(&self) -> Option<&MeshfleetOta> {
        self.meshfleet.as_ref()
    }

    /// The meshfleet engine, for what a gateway's node does as a source besides receiving:
    /// [`MeshfleetOta::set_scope`], [`MeshfleetOta::target`], [`MeshfleetOta::untarget`]
    /// (a progressive rollout's offers) and [`MeshfleetOta::send_rollback`]. Packages and
    /// timers go through the plugin, never through this.
    pub fn meshfleet_mut(&mut self) -> Option<&mut MeshfleetOta> {
        self.meshfleet.as_mut()
    }

    /// The stock receiver, if enabled.
    pub fn stock(&self) -> Option<&StockReceiver> {
        self.stock.as_ref()
    }

    /// Our role.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// Our hardware.
    pub fn hardware(&self) -> &str {
        &self.hardware
    }

    /// The trusted key, if any.
    pub fn trusted_key(&self) -> Option<&VerifyingKey> {
        self.trusted_key.as_ref()
    }

    /// Counters.
    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    /// No update may start: an image is committed and not booted yet, or runs on trial.
    pub fn frozen(&self) -> bool {
        self.applied.is_some() || self.boot.current().is_some_and(|d| d.trial)
    }

    /// A meshfleet campaign is in progress (accepted, not complete; possibly waiting for
    /// an upstream after a restart).
    pub fn meshfleet_busy(&self) -> bool {
        self.meshfleet
            .as_ref()
            .is_some_and(|m| m.progress().is_some() && !m.is_complete())
    }

    /// Makes this node the source of `artefact` (verified by the caller), keeping the
    /// neighbours' CAPS ([`MeshfleetOta::start_source`]). `false` without a meshfleet
    /// receiver or while another campaign is in progress.
    pub fn start_source(
        &mut self,
        ctx: &mut Ctx<'_>,
        artefact: Artefact,
        intent: Option<Intent>,
    ) -> bool {
        let Some(m) = self.meshfleet.as_mut() else {
            return false;
        };
        let started = m.start_source(ctx, artefact, intent);
        // A source holds the whole campaign without having committed anything.
        self.seen_campaign = m.progress().map(|p| p.0);
        self.seen_complete = m.is_complete();
        started
    }

    /// The driver finished the hook of [`BootAction::RunHook`] at `now`: `ok` if the
    /// application started. A failed hook rolls a trial image back (and asks for the hook
    /// of the image it went back to).
    pub fn hook_finished(&mut self, now: Instant, ok: bool) {
        let Hook::Running(req) = std::mem::replace(&mut self.hook, Hook::Idle) else {
            return;
        };
        if !req.trial {
            return;
        }
        if ok {
            self.started_on_trial(Some(now));
            return;
        }
        // The application could not start on the new image: go back to the confirmed
        // one, and give the application the old image back the same way.
        let back = self.boot.rollback().and_then(|()| self.boot.on_boot());
        match back {
            Ok(d) => {
                self.after_boot();
                self.push(BootAction::Booted {
                    reason: BootReason::Rollback,
                    decision: d.clone(),
                });
                self.start_image(&d, BootReason::Rollback);
            }
            Err(error) => self.push(BootAction::Failed {
                step: BootStep::Rollback,
                error,
            }),
        }
    }

    // ------------------------------------------------------------------ boot policy

    fn push(&mut self, a: BootAction) {
        if self.actions.len() >= MAX_ACTIONS {
            self.actions.pop_front();
        }
        self.actions.push_back(a);
    }

    /// Starts the image `d` boots: asks for the hook, or takes it as started.
    fn start_image(&mut self, d: &BootDecision, reason: BootReason) {
        let Some(image) = d.image.clone() else {
            // Nothing known to run (a fresh device that rolled back): nothing to start.
            return;
        };
        if self.policy.hook {
            let req = HookRequest {
                image,
                slot: d.slot,
                trial: d.trial,
                reason,
            };
            self.hook = Hook::Running(req.clone());
            self.push(BootAction::RunHook(req));
        } else if d.trial {
            self.started_on_trial(None);
        }
    }

    /// The trial image runs: confirm it now or arm the confirmation.
    fn started_on_trial(&mut self, now: Option<Instant>) {
        match (self.policy.confirm, now) {
            (ConfirmRule::AtOnce, _) => self.confirm(),
            (ConfirmRule::WhenHealthy { after }, Some(now)) => {
                self.confirm_at = Some(now + after);
            }
            (ConfirmRule::WhenHealthy { .. }, None) => self.arm_confirm = true,
        }
    }

    /// Confirms the image on trial, if any.
    fn confirm(&mut self) {
        self.confirm_at = None;
        let Some(version) = self
            .boot
            .current()
            .filter(|d| d.trial)
            .and_then(|d| d.image.as_ref())
            .map(|i| i.version.clone())
        else {
            return;
        };
        match self.boot.confirm() {
            Ok(()) => {
                self.sync_running();
                self.push(BootAction::Confirmed { version });
            }
            Err(error) => self.push(BootAction::Failed {
                step: BootStep::Confirm,
                error,
            }),
        }
    }

    /// A committed image: boot it now if the policy says so.
    fn boot_applied(&mut self) {
        if self.policy.apply != ApplyMode::Now || self.applied.is_none() {
            return;
        }
        match self.boot.on_boot() {
            Ok(d) => {
                self.applied = None;
                self.after_boot();
                self.push(BootAction::Booted {
                    reason: BootReason::Update,
                    decision: d.clone(),
                });
                // Not on trial: the boot manager refused it (damaged since it was
                // verified); the application keeps running what it runs.
                if d.trial {
                    self.start_image(&d, BootReason::Update);
                }
            }
            Err(error) => self.push(BootAction::Failed {
                step: BootStep::Boot,
                error,
            }),
        }
    }

    /// After a boot decision without a restart: the receivers learn what runs.
    fn after_boot(&mut self) {
        self.confirm_at = None;
        self.arm_confirm = false;
        self.sync_running();
        self.reset_stock();
    }

    /// Tells the receivers what runs now, and whether updates are frozen.
    fn sync_running(&mut self) {
        let running = self.boot.current().and_then(|d| d.image.clone());
        let frozen = self.frozen();
        if let Some(m) = self.meshfleet.as_mut() {
            m.set_running(running.clone(), frozen);
        }
        if let Some(c) = self.stock_config.as_mut() {
            c.current_md5 = running.map(|i| i.md5);
        }
    }

    /// A fresh stock receiver (drops whatever it was fetching).
    fn reset_stock(&mut self) {
        if self.stock.is_some() {
            self.stock = self.stock_config.clone().map(StockReceiver::new);
        }
    }

    // ------------------------------------------------------------------ arbitration

    /// After every call into the meshfleet receiver: a new campaign drops a stock fetch;
    /// a campaign that became complete is a committed image.
    fn after_meshfleet(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(to) = self
            .meshfleet
            .as_mut()
            .and_then(MeshfleetOta::take_reverted)
        {
            self.reverted_by_command(to);
        }
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
            self.reset_stock();
            ctx.emit(Box::new(ReceiverEvent::StockDropped));
        }
        if committed {
            self.on_committed(Via::Meshfleet);
        }
    }

    /// A rollback command switched the boot record to the previous slot (`to`): a
    /// committed image waiting to boot is gone, a trial is over; the previous image runs
    /// now ([`ApplyMode::Now`]) or after the restart the driver is asked for.
    fn reverted_by_command(&mut self, to: ImageInfo) {
        self.applied = None;
        self.confirm_at = None;
        self.arm_confirm = false;
        match self.policy.apply {
            ApplyMode::OnRestart => self.push(BootAction::RestartForRollback { to }),
            ApplyMode::Now => match self.boot.on_boot() {
                Ok(d) => {
                    self.after_boot();
                    self.push(BootAction::Booted {
                        reason: BootReason::Rollback,
                        decision: d.clone(),
                    });
                    self.start_image(&d, BootReason::Rollback);
                }
                Err(error) => self.push(BootAction::Failed {
                    step: BootStep::Rollback,
                    error,
                }),
            },
        }
    }

    /// Records the image the boot record now has pending, freezes updates, and boots it
    /// if the policy says so.
    fn on_committed(&mut self, via: Via) {
        if let Ok(Some(rec)) = self.boot.store().load_boot() {
            if let Some((slot, info)) = rec
                .pending
                .and_then(|slot| Some((slot, rec.image(slot)?.clone())))
            {
                self.applied = Some(Applied { slot, info, via });
            }
        }
        self.sync_running();
        self.boot_applied();
    }

    /// A stock package: Announces are gated (see the module docs); Data goes through.
    fn stock_package(&mut self, ctx: &mut Ctx<'_>, link: LinkId, routing: Routing, pkg: &Package) {
        if self.stock.is_none() {
            self.stats.stock_ignored += 1;
            return;
        }
        if pkg.ty() == types::OTA_ANNOUNCE {
            if self.frozen() || self.meshfleet_busy() {
                self.stats.stock_ignored += 1;
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
            || self
                .boot
                .store()
                .load_boot()
                .ok()
                .flatten()
                .is_some_and(|r| {
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
                ctx.emit(Box::new(ReceiverEvent::Applied {
                    via: Via::Stock,
                    md5,
                    version,
                    size: image.len() as u64,
                }));
                // Frees the image the stock receiver keeps. Its Announce is not taken up
                // again: updates are frozen until the image is confirmed, and `holds_md5`
                // after that.
                self.reset_stock();
                self.on_committed(Via::Stock);
                return;
            }
            Err(error) => {
                ctx.emit(Box::new(ReceiverEvent::StockApplyFailed {
                    error: error.to_string(),
                }));
                self.push(BootAction::Failed {
                    step: BootStep::StoreStockImage,
                    error,
                });
            }
        }
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

    /// The confirmation timer fired: confirm if the node is connected.
    fn confirm_due(&mut self, ctx: &Ctx<'_>) {
        self.confirm_at = None;
        if ctx.nodes().is_empty() {
            if let Some(version) = self
                .boot
                .current()
                .filter(|d| d.trial)
                .and_then(|d| d.image.as_ref())
                .map(|i| i.version.clone())
            {
                self.push(BootAction::ConfirmSkipped {
                    version,
                    reason: SkipReason::NotConnected,
                });
            }
            return;
        }
        self.confirm();
    }
}

impl<S: SlotStore + 'static> Plugin for OtaReceiver<S> {
    fn name(&self) -> &'static str {
        PLUGIN_NAME
    }

    fn claims(&self) -> Claims {
        let mut claims = Claims::none();
        if let Some(m) = &self.meshfleet {
            claims = claims.with(m.claims());
        }
        if self.claim_stock {
            claims = claims.types(types::OTA_ANNOUNCE..=types::OTA_DATA);
        }
        claims
    }

    fn handle_package(&mut self, ctx: &mut Ctx<'_>, link: LinkId, routing: Routing, pkg: &Package) {
        let meshfleet_type = (proto::TYPE_FIRST..=proto::TYPE_LAST).contains(&pkg.ty());
        if let Some(m) = self.meshfleet.as_mut().filter(|_| meshfleet_type) {
            m.handle_package(ctx, link, routing, pkg);
            self.after_meshfleet(ctx);
        } else if self.stock.is_some() && matches!(pkg.ty(), types::OTA_ANNOUNCE | types::OTA_DATA)
        {
            self.stock_package(ctx, link, routing, pkg);
        } else {
            // A stock type we do not take (no stock receiver, or a DataRequest meant for
            // a sender): not an error worth a line per announce.
            self.stats.stock_ignored += 1;
        }
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
        // "As soon as possible" for arming the confirmation: the driver clamps a past
        // deadline to now.
        let c = if self.arm_confirm {
            Some(Instant::ZERO)
        } else {
            self.confirm_at
        };
        m.into_iter().chain(s).chain(c).min()
    }

    fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        if self.arm_confirm {
            self.arm_confirm = false;
            if let ConfirmRule::WhenHealthy { after } = self.policy.confirm {
                self.confirm_at = Some(now + after);
            }
        }
        if self.confirm_at.is_some_and(|t| t <= now) {
            self.confirm_due(ctx);
        }
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
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meshfleet_mesh::{Config, Node, NodeId};
    use meshfleet_ota::MemStore;

    #[test]
    fn stock_versions_are_semver_below_any_release() {
        let v = stock_version("0123456789abcdef0123456789abcdef");
        assert_eq!(v, "0.0.0+stock.0123456789ab");
        let parsed = meshfleet_firmware::Version::parse(&v).unwrap();
        let release = meshfleet_firmware::Version::parse("0.0.1").unwrap();
        assert_eq!(release.cmp_precedence(&parsed), std::cmp::Ordering::Greater);
    }

    fn pending_store() -> MemStore {
        let mut s = MemStore::with_image(b"old", "1.0.0");
        let new = b"new image".to_vec();
        s.erase_slot(Slot::B).unwrap();
        s.write_slot(Slot::B, 0, &new).unwrap();
        boot::commit(&mut s, Slot::B, image_info(&new, "1.1.0")).unwrap();
        s
    }

    fn drain<S: SlotStore + 'static>(r: &mut OtaReceiver<S>) -> Vec<BootAction> {
        std::iter::from_fn(|| r.poll_action()).collect()
    }

    #[test]
    fn a_healthy_device_confirms_its_pending_image_at_start() {
        let s = pending_store();
        let cfg = ReceiverConfig::new("sensor", "ESP32", BootPolicy::on_restart());
        let mut r = OtaReceiver::open(cfg, s.clone(), Box::new(s.clone())).unwrap();
        let a = drain(&mut r);
        assert!(
            matches!(&a[..], [BootAction::Booted { reason: BootReason::Start, decision },
                BootAction::Confirmed { version }] if decision.trial && version == "1.1.0"),
            "{a:?}"
        );
        assert!(!r.frozen());
        let rec = s.clone().load_boot().unwrap().unwrap();
        assert_eq!((rec.active, rec.pending), (Slot::B, None));
    }

    #[test]
    fn a_failed_hook_rolls_back_and_restarts_the_old_image() {
        let s = pending_store();
        let cfg = ReceiverConfig::new(
            "sensor",
            "ESP32",
            BootPolicy::linux(true, Duration::from_secs(5)),
        );
        let mut r = OtaReceiver::open(cfg, s.clone(), Box::new(s.clone())).unwrap();
        let a = drain(&mut r);
        let [BootAction::Booted { .. }, BootAction::RunHook(req)] = &a[..] else {
            panic!("{a:?}")
        };
        assert!(req.trial && req.image.version == "1.1.0" && req.reason == BootReason::Start);
        assert!(r.frozen(), "updates wait for the confirmation");
        r.hook_finished(Instant::ZERO, false);
        let a = drain(&mut r);
        let [BootAction::Booted {
            reason: BootReason::Rollback,
            decision,
        }, BootAction::RunHook(back)] = &a[..]
        else {
            panic!("{a:?}")
        };
        assert_eq!(decision.image.as_ref().unwrap().version, "1.0.0");
        assert!(!back.trial && back.reason == BootReason::Rollback);
        r.hook_finished(Instant::ZERO, true);
        assert!(drain(&mut r).is_empty());
        assert!(!r.frozen());
    }

    #[test]
    fn a_trial_image_is_confirmed_only_when_connected() {
        let s = pending_store();
        let cfg = ReceiverConfig::new(
            "sensor",
            "ESP32",
            BootPolicy::linux(false, Duration::from_secs(5)),
        );
        let r = OtaReceiver::open(cfg, s.clone(), Box::new(s.clone())).unwrap();
        let mut node = Node::new(Config::new(NodeId(7)));
        node.add_plugin(Box::new(r)).unwrap();
        // Armed at the first timeout, due 5 s later; alone in the mesh: skipped.
        node.handle_timeout(Instant::ZERO);
        let at = Instant::ZERO + Duration::from_secs(5);
        node.handle_timeout(at);
        let a = node
            .plugin_mut::<OtaReceiver<MemStore>>()
            .map(drain)
            .unwrap();
        assert!(
            a.iter().any(|x| matches!(
                x,
                BootAction::ConfirmSkipped {
                    reason: SkipReason::NotConnected,
                    ..
                }
            )),
            "{a:?}"
        );
        assert!(!a.iter().any(|x| matches!(x, BootAction::Confirmed { .. })));
        let rec = s.clone().load_boot().unwrap().unwrap();
        assert_eq!(rec.pending, Some(Slot::B), "still on trial");
    }

    /// A device that confirmed 1.1.0 (slot B) over 1.0.0 (slot A), equipped with `policy`,
    /// gets a rollback command to 1.0.0 from node 9; returns the actions after it.
    fn rollback_with(policy: BootPolicy) -> (Vec<BootAction>, MemStore) {
        let s = pending_store();
        let mut bm = meshfleet_ota::BootManager::new(s.clone(), 3);
        bm.on_boot().unwrap();
        bm.confirm().unwrap();
        let cfg = ReceiverConfig::new("sensor", "ESP32", policy);
        let mut r = OtaReceiver::open(cfg, s.clone(), Box::new(s.clone())).unwrap();
        drain(&mut r);
        let mut node = Node::new(Config::new(NodeId(7)));
        node.add_plugin(Box::new(r)).unwrap();
        let mut net = meshfleet_testkit::Net::new(Duration::from_millis(2));
        net.add(node);
        net.add_id(9);
        let w = net.connect(1, 0);
        net.run_for(Duration::from_secs(4));
        let old = image_info(b"old", "1.0.0");
        let cmd = Intent::rollback_to(
            "sensor",
            "ESP32",
            meshfleet_firmware::Version::parse("1.0.0").unwrap(),
            old.sha256.parse().unwrap(),
            vec![7],
            1,
            60,
        );
        let msg = json!({"from": 9, "routing": 1, "type": 707, "dest": 7, "origin": 9,
                         "command": serde_json::from_slice::<serde_json::Value>(&cmd.to_json()).unwrap()});
        let pkg = Package::from_serialize(&msg).unwrap();
        net.inject(w, 0, format!("{}\0", pkg.text()).as_bytes());
        let a = net.nodes[0]
            .plugin_mut::<OtaReceiver<MemStore>>()
            .map(drain)
            .unwrap();
        let rec = s.clone().load_boot().unwrap().unwrap();
        assert_eq!((rec.active, rec.pending), (Slot::A, None));
        (a, s)
    }

    #[test]
    fn a_rollback_command_restarts_the_previous_image() {
        // A Linux node: the boot decision at once, and the hook starts the old image.
        let (a, _) = rollback_with(BootPolicy::linux(true, Duration::from_secs(5)));
        let [BootAction::Booted {
            reason: BootReason::Rollback,
            decision,
        }, BootAction::RunHook(req)] = &a[..]
        else {
            panic!("{a:?}")
        };
        assert_eq!((decision.slot, decision.trial), (Slot::A, false));
        assert_eq!(req.image.version, "1.0.0");
        assert!(!req.trial && req.reason == BootReason::Rollback);
        // An ESP: the driver restarts it.
        let (a, _) = rollback_with(BootPolicy::on_restart());
        assert!(
            matches!(&a[..], [BootAction::RestartForRollback { to }] if to.version == "1.0.0"),
            "{a:?}"
        );
    }

    #[test]
    fn stock_is_refused_with_a_key() {
        let s = MemStore::new();
        let mut cfg = ReceiverConfig::new("sensor", "ESP32", BootPolicy::on_restart());
        cfg.trusted_key =
            Some(meshfleet_firmware::SigningKey::from_bytes(&[1; 32]).verifying_key());
        let e = OtaReceiver::open(cfg, s.clone(), Box::new(s)).unwrap_err();
        assert!(matches!(e, ReceiverError::StockWithKey));
    }
}
