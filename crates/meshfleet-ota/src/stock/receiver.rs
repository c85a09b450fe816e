//! The stock receiver: the library's receive flow (Alteriom `ota.hpp`
//! `addReceivePackageCallback`), as the faithful model of an unmodified node.

#[allow(unused_imports)]
use crate::prelude::*;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use md5::{Digest as _, Md5};
use meshfleet_mesh::{Claims, Ctx, Duration, Instant, LinkId, NodeId, Plugin};
use meshfleet_wire::ota::{Announce, Data, DataRequest};
use meshfleet_wire::{types, Package, Routing};

use super::hex;
use crate::event::{OtaEvent, UpdateFailure};

/// Default cap on an image a stock receiver accepts (16 MiB, the largest ESP32 flash).
/// Stock packages carry no size, so without a cap a sender could make us buffer forever.
pub const DEFAULT_MAX_STOCK_IMAGE: u64 = 16 * 1024 * 1024;

/// What the receiver is and its timers. [`StockReceiverConfig::new`] gives the library's.
#[derive(Clone, Debug)]
pub struct StockReceiverConfig {
    /// Our role (`initOTAReceive(role)`).
    pub role: String,
    /// Our hardware ("ESP32" or "ESP8266").
    pub hardware: String,
    /// MD5 of the running firmware (what the library reads from `/ota_fw.json`), if known.
    pub current_md5: Option<String>,
    /// Period of the request task (30 s, ota.hpp l.440).
    pub retry_interval: Duration,
    /// Requests the task sends before giving up (10, ota.hpp l.563).
    pub max_requests: u32,
    /// Keep the received image in memory ([`StockReceiver::installed_image`]). The
    /// simulator turns this off: only the MD5 is computed, as the bytes stream by.
    pub keep_image: bool,
    /// Largest image accepted ([`DEFAULT_MAX_STOCK_IMAGE`]); more is a write failure, as on
    /// an ESP whose partition is full.
    pub max_image_size: u64,
    /// Fixes a bug of the library (default `false`: behave like it).
    ///
    /// The library builds each follow-up request from the Data it just got
    /// (`DataRequest::replyTo(const Data&)`), taking `from` = the Data's `dest`. In broadcast
    /// mode that `dest` is the root, so a node falling back to unicast after a gap asks *on
    /// the root's behalf*: the sender answers the root, the node never gets its part, gives up
    /// after 10 tries, and, broadcast announces never making a non-root node request, stays
    /// on the old firmware. With `true` the node puts its own id in `from`.
    pub gap_request_from_self: bool,
}

impl StockReceiverConfig {
    /// The library's behaviour for a node of `role` on `hardware`.
    pub fn new(role: impl Into<String>, hardware: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            hardware: hardware.into(),
            current_md5: None,
            retry_interval: Duration::from_secs(30),
            max_requests: 10,
            keep_image: true,
            max_image_size: DEFAULT_MAX_STOCK_IMAGE,
            gap_request_from_self: false,
        }
    }
}

/// The request task (`updateFW->task`): resends `request` every `retry_interval`.
#[derive(Clone, Debug)]
struct RequestTask {
    request: DataRequest,
    next_at: Instant,
    left: u32,
}

/// The update in progress (`updateFW`). `md5` empty means none; `part_no` deliberately
/// survives a give-up, like the library's, so the next announce resumes where it stopped.
#[derive(Debug, Default)]
struct UpdateState {
    md5: String,
    part_no: u32,
    broadcasted: bool,
    task: Option<RequestTask>,
    /// `Update` (flash writer) state: MD5 of what was written, bytes written, the bytes.
    hasher: Md5,
    written: u64,
    image: Vec<u8>,
}

/// A [`Plugin`] receiving stock OTA (types 10 and 12) exactly as an unmodified painlessMesh
/// node does; the simulator's model of stock nodes.
///
/// * Announce for our role and hardware, with an MD5 other than ours (or `forced`), and not
///   the one already being fetched: start, asking for part `part_no` (0, or where a
///   previous attempt stopped) at once and every 30 s, 10 times. In `broadcasted` mode only
///   the root asks; others wait for the broadcast parts.
/// * Data for the update's MD5 and the expected part: write it; after the last part check
///   the MD5 and install ([`OtaEvent::Updated`]), else ask for the next part (task
///   restarted: at once, then every 30 s, 10 times).
/// * A broadcast part out of sequence while in broadcast mode: leave broadcast mode and ask
///   for the expected part by unicast ([`OtaEvent::BroadcastGap`]).
/// * After the 10th request the task ends and the update is abandoned ([`OtaEvent::GaveUp`]):
///   TaskScheduler disables a task on the pass right after its last iteration, so the
///   library gives up as soon as it has sent the 10th request.
///
/// After a successful update the library reboots 2 s later; the model goes straight to the
/// rebooted state: running the new MD5, no update in progress.
#[derive(Debug)]
pub struct StockReceiver {
    config: StockReceiverConfig,
    current_md5: String,
    update: UpdateState,
    installed: Option<Vec<u8>>,
    updates: u32,
}

impl StockReceiver {
    /// A receiver.
    pub fn new(config: StockReceiverConfig) -> Self {
        Self {
            current_md5: config.current_md5.clone().unwrap_or_default(),
            config,
            update: UpdateState::default(),
            installed: None,
            updates: 0,
        }
    }

    /// MD5 of the running firmware ("" if unknown).
    pub fn current_md5(&self) -> &str {
        &self.current_md5
    }

    /// The last installed image (when [`StockReceiverConfig::keep_image`]).
    pub fn installed_image(&self) -> Option<&[u8]> {
        self.installed.as_deref()
    }

    /// Successful updates so far.
    pub fn updates(&self) -> u32 {
        self.updates
    }

    /// The part the receiver waits for, while an update is in progress.
    pub fn expected_part(&self) -> Option<u32> {
        (!self.update.md5.is_empty()).then_some(self.update.part_no)
    }

    /// Whether the request task is running.
    pub fn is_requesting(&self) -> bool {
        self.update.task.is_some()
    }

    fn handle_announce(&mut self, ctx: &mut Ctx<'_>, pkg: &Package) {
        let Ok(ann) = pkg.parse::<Announce>() else {
            return;
        };
        if ann.role != self.config.role || ann.hardware != self.config.hardware {
            return;
        }
        if (self.current_md5 == ann.md5 && !ann.forced) || self.update.md5 == ann.md5 {
            return; // already running it, or already fetching it
        }
        let broadcasted = ann.broadcasted == Some(true);
        self.update.md5.clone_from(&ann.md5);
        self.update.broadcasted = broadcasted;
        ctx.emit(Box::new(OtaEvent::UpdateStarted {
            md5: ann.md5.clone(),
            no_part: ann.no_part,
            from_part: self.update.part_no,
            sender: NodeId(ann.from),
        }));
        // "If we are not in broadcasted mode, or we are the root node, begin requesting."
        if !broadcasted || ctx.topology().root {
            let mut request = ann.request(ctx.node_id().0, self.update.part_no);
            // The Alteriom receiver always writes the key (transcript 06: `false` although
            // the v1.4.1 announce had none).
            request.broadcasted = Some(broadcasted);
            self.start_task(ctx, request);
        }
    }

    fn handle_data(&mut self, ctx: &mut Ctx<'_>, pkg: &Package) {
        let Ok(data) = pkg.parse::<Data>() else {
            return;
        };
        if self.update.md5 != data.md5
            || data.role != self.config.role
            || data.hardware != self.config.hardware
        {
            return;
        }
        if self.update.part_no != data.part_no {
            // Out of sequence: in broadcast mode, drop to unicast for the part we need.
            if self.update.broadcasted && data.broadcasted == Some(true) {
                ctx.emit(Box::new(OtaEvent::BroadcastGap {
                    expected: self.update.part_no,
                    got: data.part_no,
                }));
                self.update.broadcasted = false;
                let from = self.request_from(ctx, &data);
                let mut request = request_after(&data, self.update.part_no, from);
                request.broadcasted = Some(false);
                self.start_task(ctx, request);
            }
            return;
        }
        ctx.emit(Box::new(OtaEvent::PartReceived {
            part: data.part_no,
            no_part: data.no_part,
        }));
        if data.part_no == 0 {
            // Update.begin(): a fresh flash write.
            self.update.hasher = Md5::new();
            self.update.written = 0;
            self.update.image.clear();
        }
        if let Err(reason) = self.write(&data.data) {
            // The library ends the update but leaves its request task running.
            ctx.emit(Box::new(OtaEvent::UpdateFailed {
                md5: data.md5.clone(),
                reason,
            }));
            self.update.md5.clear();
            self.update.part_no = 0;
            return;
        }
        if data.no_part.checked_sub(1) == Some(data.part_no) {
            self.finish(ctx, &data);
        } else {
            self.update.part_no += 1;
            if self.update.task.is_some() {
                let from = self.request_from(ctx, &data);
                let request = request_after(&data, self.update.part_no, from);
                self.start_task(ctx, request);
            }
        }
    }

    /// The `from` of a request that follows `data` (see
    /// [`StockReceiverConfig::gap_request_from_self`]).
    fn request_from(&self, ctx: &Ctx<'_>, data: &Data) -> u32 {
        if self.config.gap_request_from_self {
            ctx.node_id().0
        } else {
            data.dest
        }
    }

    /// `Update.write` of one base64 part.
    fn write(&mut self, b64: &str) -> Result<(), UpdateFailure> {
        let bytes = BASE64.decode(b64).map_err(|_| UpdateFailure::BadPart)?;
        let total = self.update.written.saturating_add(bytes.len() as u64);
        if total > self.config.max_image_size {
            return Err(UpdateFailure::TooLarge {
                limit: self.config.max_image_size,
            });
        }
        self.update.hasher.update(&bytes);
        self.update.written = total;
        if self.config.keep_image {
            self.update.image.extend_from_slice(&bytes);
        }
        Ok(())
    }

    /// The last part: `Update.end(true)` checks the MD5.
    fn finish(&mut self, ctx: &mut Ctx<'_>, data: &Data) {
        let md5 = hex(&core::mem::take(&mut self.update.hasher).finalize());
        // The request task is disabled without its give-up handler either way.
        self.update.task = None;
        if md5.eq_ignore_ascii_case(&self.update.md5) {
            let size = self.update.written;
            self.current_md5 = md5.clone();
            self.updates += 1;
            self.installed = Some(core::mem::take(&mut self.update.image));
            // The library reboots 2 s later: model the rebooted state.
            self.update = UpdateState::default();
            ctx.emit(Box::new(OtaEvent::Updated { md5, size }));
        } else {
            ctx.emit(Box::new(OtaEvent::UpdateFailed {
                md5: data.md5.clone(),
                reason: UpdateFailure::Md5Mismatch { got: md5 },
            }));
            self.update.md5.clear();
            self.update.part_no = 0;
            self.update.image.clear();
        }
    }

    /// Enables (or restarts) the request task: first request at once.
    fn start_task(&mut self, ctx: &mut Ctx<'_>, request: DataRequest) {
        self.update.task = Some(RequestTask {
            request,
            next_at: ctx.now(),
            left: self.config.max_requests.max(1),
        });
        self.run_task(ctx);
    }

    fn run_task(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        let Some(task) = self.update.task.as_mut() else {
            return;
        };
        if task.next_at > now {
            return;
        }
        if let Ok(pkg) = Package::from_serialize(&task.request) {
            // No route: the library's sendPackage fails silently too; the task retries.
            let _ = ctx.send(&pkg);
        }
        task.left -= 1;
        task.next_at = now + self.config.retry_interval;
        if task.left == 0 {
            let part = task.request.part_no;
            self.update.task = None;
            let md5 = core::mem::take(&mut self.update.md5);
            ctx.emit(Box::new(OtaEvent::GaveUp { md5, part }));
        }
    }
}

/// `DataRequest::replyTo(const Data&, partNo)`: the request built from a Data package. The
/// library takes `from` = the Data's `dest`; see
/// [`StockReceiverConfig::gap_request_from_self`].
fn request_after(d: &Data, part_no: u32, from: u32) -> DataRequest {
    DataRequest {
        from,
        routing: 1,
        ty: types::OTA_DATA_REQUEST,
        md5: d.md5.clone(),
        hardware: d.hardware.clone(),
        role: d.role.clone(),
        forced: d.forced,
        no_part: d.no_part,
        // The Alteriom receiver always writes the key (false when the v1.4.1 sender omitted
        // it): transcript 06.
        broadcasted: Some(d.broadcasted == Some(true)),
        compressed: d.compressed,
        dest: d.from,
        part_no,
    }
}

impl Plugin for StockReceiver {
    fn name(&self) -> &'static str {
        "ota-stock-receiver"
    }

    fn claims(&self) -> Claims {
        Claims::none().ty(types::OTA_ANNOUNCE).ty(types::OTA_DATA)
    }

    fn handle_package(
        &mut self,
        ctx: &mut Ctx<'_>,
        _link: LinkId,
        _routing: Routing,
        pkg: &Package,
    ) {
        match pkg.ty() {
            types::OTA_ANNOUNCE => self.handle_announce(ctx, pkg),
            types::OTA_DATA => self.handle_data(ctx, pkg),
            _ => {}
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.update.task.as_ref().map(|t| t.next_at)
    }

    fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        self.run_task(ctx);
    }
}
