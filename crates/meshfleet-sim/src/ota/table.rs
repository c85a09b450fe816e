//! The OTA campaign as a workload spec: the `[ota]` table of scenario files, and
//! [`Scenario::ota`] from code.

use std::any::Any;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::{secs, synthetic_image, OtaCampaign, OtaStrategy, OtaWorkload};
use crate::scenario::Scenario;
use crate::workload::{check, TableError, TableSource, Workload, WorkloadSpec};

/// The workload's key: the `[ota]` table, `summary.json`'s `ota`.
pub const KEY: &str = "ota";

/// The largest synthetic image: the image limit of the firmware crate (64 MiB).
const MAX_SYNTHETIC_KIB: i64 = (meshfleet_firmware::MAX_IMAGE_SIZE / 1024) as i64;

impl WorkloadSpec for OtaCampaign {
    fn key(&self) -> &'static str {
        KEY
    }

    fn validate(&self, scenario: &Scenario) -> Result<(), String> {
        self.check(scenario.topology.node_count())
            .map_err(|(f, m)| format!("ota.{f}: {m}"))
    }

    fn build(&self, _scenario: &Scenario) -> Box<dyn Workload> {
        Box::new(OtaWorkload::new(self.clone()))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn describe(&self) -> Vec<String> {
        vec![format!(
            "OTA: {} strategy, a {} KiB image from node {}{}",
            self.strategy.label(),
            self.image().len() / 1024,
            self.source,
            self.start_time()
                .map_or(String::new(), |t| format!(", starting at {:.0} s", secs(t)))
        )]
    }
}

/// The OTA campaign of `scenario`, if it has one.
pub fn campaign(scenario: &Scenario) -> Option<&OtaCampaign> {
    scenario
        .workloads
        .iter()
        .find_map(|w| w.as_any().downcast_ref::<OtaCampaign>())
}

impl Scenario {
    /// Sets the OTA campaign (one per scenario; it goes first among the workloads, so it
    /// wraps the node factory before the others do).
    pub fn ota(mut self, campaign: OtaCampaign) -> Self {
        self.workloads.retain(|w| w.key() != KEY);
        self.workloads.insert(0, Arc::new(campaign));
        self
    }
}

/// The `[ota]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOta {
    strategy: Spanned<String>,
    image: Option<Spanned<String>>,
    synthetic_kib: Option<Spanned<i64>>,
    source: Option<Spanned<i64>>,
    start_s: Spanned<f64>,
    role: Option<Spanned<String>>,
    hardware: Option<Spanned<String>>,
    broadcast_root: Option<Spanned<i64>>,
}

/// The part of the file this workload reads.
#[derive(Deserialize)]
struct File {
    ota: RawOta,
}

/// Parses the `[ota]` table; `image` is read relative to the scenario file.
pub(crate) fn parse_table(src: &TableSource<'_>) -> Result<Arc<dyn WorkloadSpec>, TableError> {
    let File { ota: o } = src.deserialize()?;
    let n = src.nodes;
    let strategy = OtaStrategy::from_label(o.strategy.get_ref()).ok_or_else(|| {
        TableError::at(
            o.strategy.span(),
            "strategy",
            format!(
                "unknown OTA strategy `{}` (expected stock, stock_broadcasted or meshfleet)",
                o.strategy.get_ref()
            ),
        )
    })?;
    let image = match (&o.image, &o.synthetic_kib) {
        (Some(_), Some(k)) => {
            return Err(TableError::at(
                k.span(),
                "synthetic_kib",
                "give either `image` or `synthetic_kib`, not both",
            ))
        }
        (None, None) => {
            return Err(TableError::at(
                o.strategy.span(),
                "image",
                "an OTA campaign needs `image = \"path\"` or `synthetic_kib = N`",
            ))
        }
        (None, Some(k)) => {
            let kib = check::count("synthetic_kib", k, 1)?;
            if i64::from(kib) > MAX_SYNTHETIC_KIB {
                return Err(TableError::at(
                    k.span(),
                    "synthetic_kib",
                    format!("must be at most {MAX_SYNTHETIC_KIB} (64 MiB, the image limit)"),
                ));
            }
            // A fixed seed: the image is the campaign's input, not part of the run's
            // randomness, so `--seed` does not change it.
            synthetic_image(kib as usize * 1024, 1)
        }
        (Some(f), None) => {
            let rel = Path::new(f.get_ref());
            let path = match src.path.and_then(Path::parent) {
                Some(dir) if rel.is_relative() => dir.join(rel),
                _ => rel.to_path_buf(),
            };
            let bytes = std::fs::read(&path).map_err(|e| TableError {
                unreadable: Some((path.clone(), e.kind())),
                ..TableError::at(f.span(), "image", e.to_string())
            })?;
            if bytes.is_empty() {
                return Err(TableError::at(
                    f.span(),
                    "image",
                    format!("{} is empty", path.display()),
                ));
            }
            bytes
        }
    };
    let role = o
        .role
        .as_ref()
        .map_or(super::DEFAULT_ROLE, |r| r.get_ref().as_str());
    let hardware = o
        .hardware
        .as_ref()
        .map_or(super::DEFAULT_HARDWARE, |h| h.get_ref().as_str());
    let mut campaign = OtaCampaign::for_target(strategy, image, role, hardware).map_err(|e| {
        let span = o
            .role
            .as_ref()
            .or(o.hardware.as_ref())
            .map_or(o.strategy.span(), Spanned::span);
        TableError::at(span, "", e.to_string())
    })?;
    if let Some(v) = &o.source {
        campaign.source = check::node("source", v, n)?;
    }
    if n < 2 {
        return Err(TableError::at(
            o.strategy.span(),
            "",
            "an OTA campaign needs at least two nodes",
        ));
    }
    let start = check::secs(check::non_negative("start_s", &o.start_s)?);
    if start >= src.duration {
        return Err(TableError::at(
            o.start_s.span(),
            "start_s",
            format!(
                "must be before the end of the run (duration_s = {})",
                src.duration.as_micros() as f64 / 1e6
            ),
        ));
    }
    campaign.start = Some(start);
    if let Some(v) = &o.broadcast_root {
        if strategy != OtaStrategy::StockBroadcasted {
            return Err(TableError::at(
                v.span(),
                "broadcast_root",
                format!("not used by strategy `{}`", strategy.label()),
            ));
        }
        let r = check::node("broadcast_root", v, n)?;
        if r == campaign.source {
            return Err(TableError::at(
                v.span(),
                "broadcast_root",
                "the root must be a receiver: in broadcast mode only the root requests parts",
            ));
        }
        campaign.broadcast_root = Some(r);
    }
    Ok(Arc::new(campaign))
}
