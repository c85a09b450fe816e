//! Receiving OTA updates on a `meshfleet node` (`--ota-dir`): the IO edge of the agent's
//! receiver ([`meshfleet_agent::OtaReceiver`]).
//!
//! The node as shipped (stock/meshfleet arbitration, boot on trial, confirmation, rollback)
//! is composed in `meshfleet-agent`, the same code the simulator runs. What is left here
//! is what needs the operating system: the [`FileStore`] directory (behind a
//! [`WorkerStore`], so its fsyncs do not stall the node's links and timers), the `--ota-hook`
//! process and the lines the node prints. [`Controller`] drains the receiver's
//! [`BootAction`]s, prints them, runs the hook the receiver asks for and reports its
//! result back ([`OtaReceiver::hook_finished`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshfleet_agent::{
    BootAction, BootPolicy, HookRequest, OtaReceiver, ReceiverConfig,
    ReceiverEvent,
};
use meshfleet_firmware::VerifyingKey;
use meshfleet_ota::{
    BootDecision, ImageInfo, MeshfleetConfig, Slot, SlotStore, StockReceiverConfig,
};
use meshfleet_store_fs::{FileStore, WorkerConfig, WorkerStore};
use meshfleet_runtime::{MeshHandle, RuntimeEvent, Stopped};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::cmd::node::Output;

/// The receiver on a Linux node.
pub(crate) type Receiver = OtaReceiver<WorkerStore>;

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

/// Opens the store and the agent's receiver (this start's boot decision is its first
/// action).
pub(crate) fn open(opts: &ReceiverOptions) -> anyhow::Result<Receiver> {
    // One worker thread performs the store's writes in order; the boot manager and the
    // meshfleet engine hold handles to it, so each reads what the other wrote.
    // The caller names the directory; the OS's reason is the cause.
    let files = FileStore::open(&opts.dir).map_err(|e| anyhow::Error::new(e.source))?;
    let store = WorkerStore::spawn(files, WorkerConfig::default())
        .map_err(|e| anyhow::anyhow!("cannot start the OTA store's thread: {e}"))?;
    let (boot_store, ota_store) = (store.clone(), store);
    let after = meshfleet_mesh::Duration::from_micros(
        u64::try_from(opts.confirm_after.as_micros()).unwrap_or(u64::MAX),
    );
    let policy = BootPolicy::linux(opts.hook.is_some(), after);
    let mut config = ReceiverConfig::new(opts.role.clone(), opts.hardware.clone(), policy);
    config.trusted_key = opts.key;
    config.meshfleet = opts.meshfleet.then(|| {
        let mut c = MeshfleetConfig::new(opts.role.clone(), opts.hardware.clone());
        c.max_window = opts.max_window;
        // Node time starts with the runtime, just after this: the wall clock at time
        // zero, for the expiry of operator intents.
        c.unix_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| (meshfleet_mesh::Instant::ZERO, d.as_secs()));
        if let Some(rate) = opts.link_rate {
            c.link_rate = rate;
        }
        c
    });
    config.stock = opts
        .stock
        .then(|| StockReceiverConfig::new(opts.role.clone(), opts.hardware.clone()));
    Ok(OtaReceiver::open(config, boot_store, Box::new(ota_store))?)
}

/// The file holding `slot`'s image in `dir`.
fn slot_path(dir: &Path, slot: Slot) -> PathBuf {
    FileStore::slot_path_in(dir, slot)
}

/// What the `ota` command prints.
pub(crate) fn state(r: &mut Receiver, dir: &Path) -> ReceiverState {
    let record = r.store().load_boot();
    // The image on trial is pending in the boot record too; report it once, as running.
    let trial_slot = r.current().filter(|d| d.trial).map(|d| d.slot);
    let (pending, record_error) = match record {
        Ok(rec) => (
            rec.and_then(|rec| {
                let slot = rec.pending.filter(|s| Some(*s) != trial_slot)?;
                Some(SlotView::new(slot, rec.image(slot)?, slot_path(dir, slot), false))
            }),
            None,
        ),
        Err(e) => (None, Some(e.to_string())),
    };
    let running = r.current().and_then(|d| {
        let info = d.image.as_ref()?;
        Some(SlotView::new(d.slot, info, slot_path(dir, d.slot), d.trial))
    });
    let phase = if r.meshfleet().is_some_and(|m| m.failure().is_some()) {
        "failed"
    } else if r.applied().is_some() {
        "applying"
    } else if r.current().is_some_and(|d| d.trial) {
        "trial"
    } else if r.meshfleet_busy() || r.stock().is_some_and(|s| s.expected_part().is_some()) {
        "receiving"
    } else {
        "idle"
    };
    let transfer = r.meshfleet().and_then(|m| {
        let (campaign, have, chunks) = m.progress()?;
        Some(TransferView {
            campaign,
            have,
            chunks,
            complete: m.is_complete(),
        })
    });
    let stats = r.meshfleet().map(|m| {
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
    if r.meshfleet().is_some() {
        accept.push("meshfleet");
    }
    if r.stock().is_some() {
        accept.push("stock");
    }
    ReceiverState {
        phase,
        dir: dir.display().to_string(),
        role: r.role().to_owned(),
        hardware: r.hardware().to_owned(),
        trusted_key: r
            .trusted_key()
            .map(|k| meshfleet_firmware::keys::key_id(k).to_string()),
        accept,
        running,
        pending,
        transfer,
        stock_part: r.stock().and_then(|s| s.expected_part()),
        stock_updates: r.stock().map_or(0, |s| s.updates()),
        stats,
        failure: r
            .meshfleet()
            .and_then(|m| m.failure().map(ToString::to_string))
            .or(record_error),
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

impl OtaLine {
    /// The line for a boot action (`None` for the hook request, printed when it ran).
    fn of(action: &BootAction, dir: &Path) -> Option<Self> {
        Some(match action {
            BootAction::Booted { reason, decision } => {
                Self::boot(reason.label(), decision, &slot_path(dir, decision.slot))
            }
            BootAction::Resumed {
                campaign,
                have,
                units,
            } => Self::Resume {
                campaign: *campaign,
                have: *have,
                chunks: *units,
            },
            BootAction::Confirmed { version } => Self::Confirmed {
                version: version.clone(),
            },
            BootAction::ConfirmSkipped { version, reason } => Self::ConfirmSkipped {
                version: version.clone(),
                reason: reason.to_string(),
            },
            BootAction::Failed { step, error } => Self::Error {
                error: format!("{step}: {error}"),
            },
            BootAction::RunHook(_) => return None,
            _ => return None,
        })
    }
}

/// The driver side of an OTA-receiving node: prints what the receiver's boot policy did and
/// runs the hooks it asks for. Runs as its own task next to the node's command loop.
pub(crate) struct Controller {
    /// The mesh.
    pub(crate) mesh: MeshHandle,
    /// Where lines go.
    pub(crate) out: Output,
    /// `--ota-hook`.
    pub(crate) hook: Option<String>,
    /// `--ota-dir`.
    pub(crate) dir: PathBuf,
}

/// How often the receiver's actions are drained when no event says there are some (the
/// confirmation timer runs inside the node).
const POLL: Duration = Duration::from_millis(250);

impl Controller {
    /// Runs until the runtime stops. `events` wakes it when the receiver reports something.
    pub(crate) async fn run(self, mut events: broadcast::Receiver<RuntimeEvent>) {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(RuntimeEvent::Plugin { data, .. })
                        if data.downcast_ref::<ReceiverEvent>().is_some()
                            || data.downcast_ref::<meshfleet_ota::OtaEvent>().is_some_and(
                                |e| matches!(e, meshfleet_ota::OtaEvent::Applied { .. })) => {}
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = poll.tick() => {}
            }
            if self.drain().await.is_err() {
                return;
            }
        }
    }

    /// Prints every pending action and runs the hooks asked for, until none is left.
    async fn drain(&self) -> Result<(), Stopped> {
        loop {
            let actions = self
                .mesh
                .with_node(|node, _| {
                    node.plugin_mut::<Receiver>()
                        .map(|r| std::iter::from_fn(|| r.poll_action()).collect::<Vec<_>>())
                        .unwrap_or_default()
                })
                .await?;
            if actions.is_empty() {
                return Ok(());
            }
            for a in &actions {
                if let Some(line) = OtaLine::of(a, &self.dir) {
                    line.print(self.out);
                }
                // The image that runs now is what the status reports say (the gateway
                // counts a campaign's node done when its report shows the new version).
                if let BootAction::Booted { decision, .. } = a {
                    if let Some(version) = decision.image.as_ref().map(|i| i.version.clone()) {
                        self.mesh
                            .with_node(move |node, _| {
                                let who = node
                                    .plugin::<Receiver>()
                                    .map(|r| (r.role().to_owned(), r.hardware().to_owned()));
                                if let (Some((role, hardware)), Some(t)) =
                                    (who, node.plugin_mut::<meshfleet_agent::Telemetry>())
                                {
                                    t.set_identity(meshfleet_agent::telemetry::Identity {
                                        firmware: version,
                                        role,
                                        hardware,
                                    });
                                }
                            })
                            .await?;
                    }
                }
                if let BootAction::RunHook(req) = a {
                    let ok = self.run_hook(req).await;
                    self.mesh
                        .with_node(move |node, now| {
                            if let Some(r) = node.plugin_mut::<Receiver>() {
                                r.hook_finished(now, ok);
                            }
                        })
                        .await?;
                }
            }
        }
    }

    /// Runs `--ota-hook` for the image of `req`. Returns whether it succeeded.
    async fn run_hook(&self, req: &HookRequest) -> bool {
        let Some(command) = self.hook.as_deref() else {
            return true;
        };
        let path = slot_path(&self.dir, req.slot);
        let version = &req.image.version;
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(command)
            .env("MESHFLEET_OTA_VERSION", version)
            .env("MESHFLEET_OTA_IMAGE", &path)
            .env("MESHFLEET_OTA_REASON", req.reason.label())
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
            version: version.clone(),
            image: path.display().to_string(),
            ok,
            exit_code,
            error,
        }
        .print(self.out);
        ok
    }
}

/// What text mode prints for an event.
pub(crate) enum TextLine {
    /// The event's own line.
    Event,
    /// Nothing.
    Skip,
    /// This instead.
    Text(String),
}

/// Summarises a stock update's `part_received` events in text mode: a line at every tenth
/// of the image (and the last part) instead of one per part (582 for a 582 KiB image).
#[derive(Debug, Default)]
pub(crate) struct PartProgress {
    /// The tenth last printed.
    tenth: Option<u32>,
}

impl PartProgress {
    pub(crate) fn text(&mut self, e: &RuntimeEvent) -> TextLine {
        let RuntimeEvent::Plugin { data, .. } = e else {
            return TextLine::Event;
        };
        match data.downcast_ref::<meshfleet_ota::OtaEvent>() {
            Some(meshfleet_ota::OtaEvent::PartReceived { part, no_part }) => {
                let done = part.saturating_add(1);
                let tenth = done.saturating_mul(10).checked_div(*no_part).unwrap_or(10);
                if self.tenth == Some(tenth) && done < *no_part {
                    return TextLine::Skip;
                }
                self.tenth = Some(tenth);
                TextLine::Text(format!(
                    "ota: stock update, {done}/{no_part} parts ({}%)",
                    tenth * 10
                ))
            }
            Some(meshfleet_ota::OtaEvent::UpdateStarted { .. }) => {
                self.tenth = None;
                TextLine::Event
            }
            _ => TextLine::Event,
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

