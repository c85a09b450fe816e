//! What one run of a campaign measures: OTA frames and bytes on the air (frame trace),
//! updates and notable events (event hook), and the campaign as a workload.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use meshfleet_mesh::{Event, Instant, NodeId};
use meshfleet_ota::OtaEvent;
use meshfleet_wire::BINARY_FRAME_MARK;

use super::bound::{lower_bound, TreeShape};
use super::campaign::{lock, Shared};
use super::report::{final_image, meshfleet_memory, stock_memory};
use super::{secs, secs_at, FinalImage, OtaCampaign, OtaNodeReport, OtaReport, OtaStrategy};
use crate::scenario::Scenario;
use crate::sim::{FrameTrace, Simulation};
use crate::svg::{Chart, Series};

/// What the frame trace counts.
#[derive(Default)]
pub(super) struct Air {
    pub(super) start: Option<Instant>,
    pub(super) source: NodeId,
    pub(super) ota_frames: u64,
    pub(super) ota_bytes: u64,
    pub(super) since_start_bytes: u64,
    pub(super) source_ota_bytes: u64,
    pub(super) source_bytes: u64,
    /// `since_start_bytes` when the latest node updated.
    pub(super) at_last_update: u64,
    pub(super) max_offer_frame: u64,
    pub(super) max_data_frame: u64,
}

/// OTA package types: stock 10-12, meshfleet 700-709 (binary chunks are tagged 703).
fn is_ota_type(ty: i64) -> bool {
    (10..=12).contains(&ty) || (700..=709).contains(&ty)
}

/// The package type of a frame on the air: the tag of a binary frame, or the first
/// `"type":` of a JSON frame (every painlessMesh package has it among its first keys).
pub fn frame_type(frame: &[u8]) -> Option<i64> {
    if frame.first() == Some(&BINARY_FRAME_MARK) {
        let t = frame.get(5..7)?;
        return Some(i64::from(u16::from_le_bytes([t[0], t[1]])));
    }
    const KEY: &[u8] = b"\"type\":";
    let head = &frame[..frame.len().min(128)];
    let at = head.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = frame[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'-')
        .count();
    std::str::from_utf8(&frame[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// The campaign as a workload ([`crate::workload`]): `run_scenario` attaches, installs and
/// reports it like any other, its report in [`crate::SimReport::ota`].
pub struct OtaWorkload {
    campaign: OtaCampaign,
    run: Option<OtaRun>,
    /// The report `finish` made, for the plots.
    last: Option<OtaReport>,
}

impl OtaWorkload {
    /// A workload running `campaign`.
    pub fn new(campaign: OtaCampaign) -> Self {
        Self {
            campaign,
            run: None,
            last: None,
        }
    }
}

impl crate::workload::Workload for OtaWorkload {
    fn key(&self) -> &'static str {
        "ota"
    }

    fn attach(&mut self, scenario: Scenario) -> Scenario {
        let (s, run) = self.campaign.attach(scenario);
        self.run = Some(run);
        s
    }

    fn install(&mut self, sim: &mut Simulation) {
        if let Some(run) = &self.run {
            run.install(sim);
        }
    }

    fn report(&mut self, sim: &Simulation) -> serde_json::Value {
        self.run
            .as_ref()
            .and_then(|r| serde_json::to_value(r.report(sim)).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    fn finish(&mut self, sim: &Simulation, report: &mut crate::SimReport) {
        report.ota = self.run.as_ref().map(|r| r.report(sim));
        self.last.clone_from(&report.ota);
    }

    fn plots(&self) -> Vec<(String, String)> {
        self.last
            .as_ref()
            .and_then(|o| progress_plot(std::slice::from_ref(o)))
            .map(|svg| vec![("ota_progress.svg".to_owned(), svg)])
            .unwrap_or_default()
    }
}

/// Receivers updated over time since each campaign's start, one step curve per report (say,
/// one per strategy on the same scenario), the number of receivers dashed and the first
/// report's lower bounds as markers; `None` if no campaign started. `run_scenario` writes it
/// for its campaign as `ota_progress.svg`.
pub fn progress_plot(reports: &[OtaReport]) -> Option<String> {
    let started: Vec<&OtaReport> = reports.iter().filter(|o| o.started_s.is_some()).collect();
    let first = *started.first()?;
    let mut end = 0.0f64;
    let mut curves = Vec::new();
    for o in &started {
        let mut times: Vec<f64> = o
            .per_node
            .iter()
            .filter_map(|n| n.updated_after_s)
            .collect();
        times.sort_by(f64::total_cmp);
        let mut pts = vec![(0.0, 0.0)];
        for (k, t) in times.iter().enumerate() {
            // A step: k receivers until t, k + 1 from t.
            pts.push((*t, k as f64));
            pts.push((*t, (k + 1) as f64));
        }
        let observed = o.observed_s.unwrap_or(0.0);
        // Once everyone is updated, the rest of the run is a flat line: show the campaign
        // and its bounds, with a quarter more for context.
        let this_end = match (o.makespan_s, &o.lower_bound) {
            (Some(m), Some(b)) => (m.max(b.combined_bound_s) * 1.25).min(observed),
            (Some(m), None) => (m * 1.25).min(observed),
            _ => observed,
        };
        end = end.max(this_end);
        curves.push((o.strategy.clone(), pts, times.len()));
    }
    let title = match started.as_slice() {
        [o] => format!(
            "OTA ({}): {} of {} receivers updated",
            o.strategy, o.updated, o.receivers
        ),
        _ => format!("OTA progress: {} receivers", first.receivers),
    };
    let mut c = Chart::new(
        title,
        "seconds since the campaign started",
        "receivers holding the new image",
    );
    for (name, mut pts, n) in curves {
        pts.push((end, n as f64));
        c = c.series(Series::new(name, pts));
    }
    let all = f64::from(first.receivers);
    c = c
        .series(Series::new("all receivers", vec![(0.0, all), (end, all)]).dashed())
        .x_range(0.0, end.max(1e-3));
    if let Some(b) = &first.lower_bound {
        c = c.marker(b.bound_s, format!("mean-value bound {:.1} s", b.bound_s));
        if b.combined_bound_s > b.bound_s {
            c = c.marker(
                b.combined_bound_s,
                format!("with stall propagation {:.1} s", b.combined_bound_s),
            );
        }
    }
    Some(c.render())
}

/// Observes one run of a scenario equipped by [`OtaCampaign::attach`].
pub struct OtaRun {
    pub(super) campaign: OtaCampaign,
    pub(super) shared: Arc<Mutex<Shared>>,
    pub(super) air: Rc<RefCell<Air>>,
    pub(super) id_base: u32,
    pub(super) nodes: u32,
    pub(super) start: Option<Instant>,
}

impl OtaRun {
    /// Installs the frame trace and the event hook that measure the campaign (traces and
    /// hooks add up to those set before). Call before running.
    pub fn install(&self, sim: &mut Simulation) {
        let air = self.air.clone();
        sim.set_frame_trace(move |f: &FrameTrace<'_>| {
            let mut a = air.borrow_mut();
            let ty = frame_type(f.frame);
            let ota = ty.is_some_and(is_ota_type);
            let bytes = f.bytes as u64;
            if ota {
                a.ota_frames += 1;
                a.ota_bytes += bytes;
                match ty {
                    Some(701) => a.max_offer_frame = a.max_offer_frame.max(bytes),
                    Some(12) => a.max_data_frame = a.max_data_frame.max(bytes),
                    _ => {}
                }
            }
            if a.start.is_some_and(|s| f.start >= s) {
                a.since_start_bytes += bytes;
                if f.from == a.source {
                    a.source_bytes += bytes;
                    if ota {
                        a.source_ota_bytes += bytes;
                    }
                }
            }
        });
        let air = self.air.clone();
        let shared = self.shared.clone();
        let base = self.id_base;
        let strategy = self.campaign.strategy;
        sim.set_event_hook(move |now: Instant, id: NodeId, e: &Event| {
            let Event::Plugin { event, .. } = e else {
                return;
            };
            let Some(ev) = event.downcast_ref::<OtaEvent>() else {
                return;
            };
            let number = id.0.wrapping_sub(base);
            let mut sh = lock(&shared);
            let c = &mut sh.counters;
            let updated = match ev {
                OtaEvent::Updated { .. } => strategy != OtaStrategy::Meshfleet,
                OtaEvent::Applied { .. } => strategy == OtaStrategy::Meshfleet,
                OtaEvent::GaveUp { .. } => {
                    c.gave_up += 1;
                    false
                }
                OtaEvent::BroadcastGap { .. } => {
                    c.broadcast_gaps += 1;
                    false
                }
                OtaEvent::UpdateFailed { .. } => {
                    c.update_failed += 1;
                    false
                }
                OtaEvent::ChunkRejected { .. } => {
                    c.chunks_rejected += 1;
                    false
                }
                OtaEvent::VerifyFailed { .. } => {
                    c.verify_failed += 1;
                    false
                }
                OtaEvent::OfferRejected { .. } => {
                    c.offers_rejected += 1;
                    false
                }
                _ => false,
            };
            if updated && !sh.updated_at.contains_key(&number) {
                sh.updated_at.insert(number, now);
                let mut a = air.borrow_mut();
                a.at_last_update = a.since_start_bytes;
            }
        });
    }

    /// Starts the campaign now (for campaigns without [`OtaCampaign::start`]). Returns
    /// `false` if it had started already or the source is not running.
    pub fn start(&mut self, sim: &mut Simulation) -> bool {
        if self.start.is_some() {
            return false;
        }
        let now = sim.now();
        let campaign = self.campaign.clone();
        let shared = self.shared.clone();
        let id = sim.id_of(self.campaign.source);
        let done = sim
            .with_node(id, move |node, local| {
                campaign.start_on(node, local, &shared)
            })
            .is_some();
        if done {
            self.start = Some(now);
            self.air.borrow_mut().start = Some(now);
        }
        done
    }

    /// When the campaign starts (or started), global virtual time.
    pub fn started_at(&self) -> Option<Instant> {
        self.start
    }

    /// Receivers: every node but the source.
    pub fn receivers(&self) -> u32 {
        self.nodes.saturating_sub(1)
    }

    /// Receivers updated so far.
    pub fn updated(&self) -> u32 {
        lock(&self.shared).updated_at.len() as u32
    }

    /// Receivers updated so far (node numbers) and when, global virtual time.
    pub fn updated_at(&self) -> Vec<(u32, Instant)> {
        lock(&self.shared)
            .updated_at
            .iter()
            .map(|(n, t)| (*n, *t))
            .collect()
    }

    /// Whether every receiver is updated.
    pub fn all_updated(&self) -> bool {
        self.updated() >= self.receivers()
    }

    /// The campaign this run observes.
    pub fn campaign(&self) -> &OtaCampaign {
        &self.campaign
    }

    /// The report so far.
    pub fn report(&self, sim: &Simulation) -> OtaReport {
        let sh = lock(&self.shared);
        let air = self.air.borrow();
        let c = &self.campaign;
        let p = &c.payload;
        let manifest = p.artefact.manifest();
        let start = self.start.filter(|s| *s <= sim.now() && sh.started);
        let since = |t: Instant| start.map(|s| secs(t.saturating_since(s)));
        let shape = sh
            .tree
            .as_ref()
            .map(|t| TreeShape::from_tree(t, self.id_base, self.nodes));
        let mut per_node = Vec::new();
        let (mut new, mut old, mut broken) = (0, 0, 0);
        for number in (1..=self.nodes).filter(|n| *n != c.source) {
            let image = match c.strategy {
                OtaStrategy::Meshfleet => sh
                    .stores
                    .get(&number)
                    .map_or(FinalImage::Old, |s| final_image(s, p)),
                // The library checks the MD5 of the whole image before it switches:
                // a stock node runs the new image or the old one.
                _ if sh.updated_at.contains_key(&number) => FinalImage::New,
                _ => FinalImage::Old,
            };
            match image {
                FinalImage::New => new += 1,
                FinalImage::Old => old += 1,
                FinalImage::Broken => broken += 1,
            }
            per_node.push(OtaNodeReport {
                node: number,
                depth: shape
                    .as_ref()
                    .and_then(|s| s.depth.get(number as usize - 1).copied().flatten()),
                updated_after_s: sh.updated_at.get(&number).and_then(|t| since(*t)),
                image,
            });
        }
        let receivers = self.receivers();
        let updated = sh.updated_at.len() as u32;
        let last = sh.updated_at.values().max().and_then(|t| since(*t));
        let makespan = last.filter(|_| updated >= receivers);
        let lower_bound = shape.as_ref().filter(|_| start.is_some()).map(|s| {
            lower_bound(
                s,
                p.artefact.payload().len() as u64,
                manifest.chunk_size,
                // The links as they are now: a `SetLink` for all links (say, loss applied
                // once the mesh has formed) is what the campaign ran under.
                sim.link_defaults(),
                // Likewise the channel model: a run may form under one and switch.
                sim.channel(),
                sim.positions(),
            )
        });
        let memory = match c.strategy {
            OtaStrategy::Meshfleet => {
                let children = shape.as_ref().map_or(0, |s| {
                    (1..=self.nodes)
                        .filter(|n| *n != c.source)
                        .map(|n| s.children[n as usize - 1])
                        .max()
                        .unwrap_or(0)
                });
                meshfleet_memory(manifest, children, air.max_offer_frame)
            }
            _ => stock_memory(c, air.max_data_frame),
        };
        OtaReport {
            strategy: c.strategy.label().to_owned(),
            source: c.source,
            image_bytes: p.image.len() as u64,
            payload_bytes: p.artefact.payload().len() as u64,
            started_s: start.map(secs_at),
            observed_s: since(sim.now()),
            receivers,
            updated,
            success_ratio: if receivers > 0 {
                f64::from(updated) / f64::from(receivers)
            } else {
                1.0
            },
            makespan_s: makespan,
            last_update_s: last,
            ota_frames_on_air: air.ota_frames,
            ota_bytes_on_air: air.ota_bytes,
            bytes_on_air_until_last_update: air.at_last_update,
            bytes_on_air_since_start: air.since_start_bytes,
            source_ota_bytes: air.source_ota_bytes,
            source_bytes: air.source_bytes,
            peak_node_ota_memory_bytes: memory,
            final_new: new,
            final_old: old,
            final_broken: broken,
            counters: sh.counters.clone(),
            ratio_to_bound: match (&lower_bound, makespan) {
                (Some(b), Some(m)) if b.bound_s > 0.0 => Some(m / b.bound_s),
                _ => None,
            },
            ratio_to_combined_bound: match (&lower_bound, makespan) {
                (Some(b), Some(m)) if b.combined_bound_s > 0.0 => Some(m / b.combined_bound_s),
                _ => None,
            },
            lower_bound,
            per_node,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_types() {
        assert_eq!(
            frame_type(b"{\"from\":1,\"routing\":2,\"type\":10,\"md5\":\"x\"}\0"),
            Some(10)
        );
        assert_eq!(frame_type(b"{\"type\":8,\"dest\":0}\0"), Some(8));
        let bin =
            meshfleet_wire::binary_frame(&meshfleet_ota::proto::encode_binary_chunk(1, 2, b"abc"));
        assert_eq!(frame_type(&bin), Some(703));
        assert_eq!(frame_type(b"garbage"), None);
    }
}
