//! OTA campaigns side by side: stock painlessMesh OTA, its `broadcasted` mode and the
//! meshfleet protocol, against the lower bound, in one run.
//!
//! ```text
//! cargo run -p meshfleet-sim --release --example ota_bench -- \
//!     [--nodes 10,50,100,500,1000] [--loss 0,0.05,0.2] \
//!     [--channel independent,airtime,geometric] \
//!     [--strategy stock,stock_broadcasted,meshfleet] [--image-kib 1024] [--window 8192] \
//!     [--seed 1] [--cap-min 60] [--max-wall-s 1200] [--stock-max-nodes N] [--join-ms 50] \
//!     [--random-tree-from N] [--form-independent-from N] [--formation-cap-s 900]
//!     [--idle-before-s S] [--node-sync meshfleet|library] [--tree-text copied|shared] [--out DIR]
//! ```
//!
//! `--window BYTES` (or `8K`): the DEFLATE window the meshfleet artefact is packed with, a
//! power of two from 512 to 32768. The default, 8192, is what an ESP8266 receiver (the
//! simulator's links are calibrated on ESP8266) can hold: its decoder takes 18.3 KiB, where
//! the 32 KiB window's would take 42.3 KiB, more than the ~40 KB an ESP8266 has free
//! (`crates/meshfleet-firmware/RESULTS.md`). It costs about 1.5 points of compression.
//!
//! `--random-tree-from N`: from N nodes on, the independent and airtime channels run on a
//! random tree instead of the geometric placement (it forms in a fraction of the time).
//! `--form-independent-from N`: from N nodes on, a geometric-channel cell forms its mesh
//! under the independent channel model (the same placement, so the same radio links and the
//! same candidate parents) and switches to the geometric model
//! ([`Simulation::set_channel`]) when the campaign starts, at the same moment as the loss:
//! every campaign frame is sent under the geometric model. Forming under it does not finish
//! at 500-1,000 nodes (node-sync frames of ~15-30 KB silence whole neighbourhoods while the
//! tree changes under them); what it forms is still a tree over the same placement, but
//! not necessarily the same tree (formation timing decides some parents).
//! `--node-sync library`: every cell's nodes run the library's node sync
//! (`meshfleet_mesh::NodeSyncPolicy`; default: meshfleet's for the meshfleet strategy, the
//! library's for the stock ones), to compare the two on one commit.
//! `--tree-text copied`: node syncs reach their receivers flat and each node copies the
//! trees' text (`meshfleet_sim::TreeText`; default `shared`): the same results in about
//! 1.7x the host memory, for up to ~20% less CPU in the biggest cells.
//! `--idle-before-s S`: a control run: after formation, with the cell's channel and loss in
//! place, the mesh runs S virtual seconds without the campaign first, and the note says how
//! many links closed meanwhile (what the mesh does without OTA traffic).
//! `--max-wall-s`: a cell still running (forming or distributing) after that much wall time
//! is stopped and reported as such (never silently). `--stock-max-nodes`: stock cells above
//! that size are skipped, and the row says so. `OTA_BENCH_DEBUG=1` prints formation
//! progress, the campaign's progress every 10 virtual s (updated, links closed, components,
//! wall time), counters and drops.
//!
//! Every cell: a geometric placement (ESP8266: 50 m radio range, at most 4 stations per
//! access point, one node per ~1,000 m², as `meshfleet sim --demo`), one join every 50 ms
//! (`--join-ms`), formed without loss; once every node has joined and the node lists have
//! converged, the loss is applied to every link and node 1 starts the campaign, which runs
//! until every receiver is updated or 60 virtual minutes have passed (the library's
//! announce window). Forming without loss saves wall time on large meshes (their
//! formation is dominated by node sync, ~30 KB frames at 1,000 nodes, which loss only
//! slows down) and does not change what is measured: the campaign runs entirely under
//! loss.
//! The image is 1 MiB of real ESP8266 firmware (`../shared/firmware/esp8266-*.bin`
//! concatenated), or, if that folder is missing, `synthetic_image` (says so).
//!
//! Writes `ota_bench.md` (a markdown table) and `ota_bench.csv` into `--out`
//! (default `target/ota_bench`), and prints each row as it completes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant as Wall;

use meshfleet_mesh::Duration;
use meshfleet_sim::ota::{synthetic_image, MonteCarlo, OtaCampaign, OtaReport, OtaStrategy};
use meshfleet_sim::{
    ChannelModel, Formation, LinkChange, LinkParams, Scenario, SimEvent, Simulation, Topology,
    ESP8266_MAX_CONN,
};

struct Args {
    nodes: Vec<u32>,
    loss: Vec<f64>,
    channels: Vec<String>,
    strategies: Vec<OtaStrategy>,
    image_kib: usize,
    window: u32,
    seed: u64,
    cap: Duration,
    max_wall_s: f64,
    stock_max_nodes: u32,
    formation_cap: Duration,
    join_ms: u64,
    random_tree_from: Option<u32>,
    form_independent_from: Option<u32>,
    idle_before: Duration,
    node_sync: Option<meshfleet_mesh::NodeSyncPolicy>,
    tree_text: meshfleet_sim::TreeText,
    out: PathBuf,
}

fn list<T>(v: &str, f: impl Fn(&str) -> Option<T>) -> Vec<T> {
    v.split(',')
        .map(|x| f(x.trim()).unwrap_or_else(|| die(&format!("bad value `{x}`"))))
        .collect()
}

fn die(msg: &str) -> ! {
    eprintln!("ota_bench: {msg}");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        nodes: vec![10, 50, 100, 500, 1000],
        loss: vec![0.0, 0.05, 0.2],
        channels: vec!["independent".into(), "airtime".into(), "geometric".into()],
        strategies: OtaStrategy::ALL.to_vec(),
        image_kib: 1024,
        window: 8192,
        seed: 1,
        cap: Duration::from_secs(3600),
        max_wall_s: 1200.0,
        stock_max_nodes: u32::MAX,
        formation_cap: Duration::from_secs(900),
        join_ms: 50,
        random_tree_from: None,
        form_independent_from: None,
        idle_before: Duration::ZERO,
        node_sync: None,
        tree_text: meshfleet_sim::TreeText::default(),
        out: PathBuf::from("target/ota_bench"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .unwrap_or_else(|| die(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--nodes" => a.nodes = list(&v, |x| x.parse().ok()),
            "--loss" => a.loss = list(&v, |x| x.parse().ok()),
            "--channel" => a.channels = list(&v, |x| Some(x.to_owned())),
            "--strategy" => a.strategies = list(&v, OtaStrategy::from_label),
            "--image-kib" => a.image_kib = v.parse().unwrap_or_else(|_| die("bad --image-kib")),
            "--window" => a.window = parse_window(&v),
            "--seed" => a.seed = v.parse().unwrap_or_else(|_| die("bad --seed")),
            "--cap-min" => {
                a.cap = Duration::from_secs(
                    v.parse::<u64>().unwrap_or_else(|_| die("bad --cap-min")) * 60,
                );
            }
            "--max-wall-s" => a.max_wall_s = v.parse().unwrap_or_else(|_| die("bad --max-wall-s")),
            "--stock-max-nodes" => {
                a.stock_max_nodes = v.parse().unwrap_or_else(|_| die("bad --stock-max-nodes"));
            }
            "--formation-cap-s" => {
                a.formation_cap =
                    Duration::from_secs(v.parse().unwrap_or_else(|_| die("bad --formation-cap-s")));
            }
            "--random-tree-from" => {
                a.random_tree_from =
                    Some(v.parse().unwrap_or_else(|_| die("bad --random-tree-from")));
            }
            "--form-independent-from" => {
                a.form_independent_from = Some(
                    v.parse()
                        .unwrap_or_else(|_| die("bad --form-independent-from")),
                );
            }
            "--idle-before-s" => {
                a.idle_before =
                    Duration::from_secs(v.parse().unwrap_or_else(|_| die("bad --idle-before-s")));
            }
            "--node-sync" => {
                a.node_sync = Some(match v.as_str() {
                    "meshfleet" => meshfleet_mesh::NodeSyncPolicy::Meshfleet,
                    "library" => meshfleet_mesh::NodeSyncPolicy::Library,
                    _ => die("--node-sync is meshfleet or library"),
                })
            }
            "--tree-text" => {
                a.tree_text = match v.as_str() {
                    "copied" => meshfleet_sim::TreeText::Copied,
                    "shared" => meshfleet_sim::TreeText::Shared,
                    _ => die("--tree-text is copied or shared"),
                }
            }
            "--join-ms" => a.join_ms = v.parse().unwrap_or_else(|_| die("bad --join-ms")),
            "--out" => a.out = PathBuf::from(v),
            other => die(&format!("unknown flag {other}")),
        }
    }
    a
}

/// `--window`: bytes, or KiB with a `K`/`KiB` suffix; checked when the image is packed.
fn parse_window(v: &str) -> u32 {
    let lower = v.trim().to_ascii_lowercase();
    let (digits, unit) = match lower
        .strip_suffix("kib")
        .or_else(|| lower.strip_suffix('k'))
    {
        Some(d) => (d, 1024),
        None => (lower.as_str(), 1),
    };
    digits
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .unwrap_or_else(|| die(&format!("bad --window {v:?}: bytes, e.g. 8192 or 8K")))
}

/// 1 MiB (or `kib`) of real ESP8266 firmware, or synthetic firmware-like bytes.
fn image(kib: usize) -> (Vec<u8>, String) {
    let len = kib * 1024;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/firmware");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("esp8266-") && n.ends_with(".bin"))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut out = Vec::with_capacity(len);
    for f in &files {
        if let Ok(b) = std::fs::read(f) {
            out.extend_from_slice(&b);
        }
        if out.len() >= len {
            break;
        }
    }
    if out.len() >= len {
        out.truncate(len);
        let names: Vec<String> = files
            .iter()
            .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        (
            out,
            format!(
                "real ESP8266 firmware ({} concatenated, first {kib} KiB)",
                names.join(" + ")
            ),
        )
    } else {
        (
            synthetic_image(len, 1),
            format!(
                "SYNTHETIC firmware-like bytes ({kib} KiB): {} not found",
                dir.display()
            ),
        )
    }
}

fn channel(name: &str) -> ChannelModel {
    match name {
        "independent" => ChannelModel::Independent,
        "airtime" => ChannelModel::Airtime,
        // Twice the radio range, the scenario files' default.
        "geometric" => ChannelModel::Geometric {
            interference_range_m: 100.0,
        },
        other => die(&format!("unknown channel {other}")),
    }
}

fn scenario(n: u32, ch: &str, a: &Args) -> Scenario {
    let topology = if a.random_tree_from.is_some_and(|m| n >= m) && ch != "geometric" {
        Topology::RandomTree {
            nodes: n,
            max_children: ESP8266_MAX_CONN,
        }
    } else {
        // One node per ~1,000 m², as the demo: connected by construction, depth ~√n.
        let side = (f64::from(n) * 1008.0).sqrt().max(60.0);
        Topology::Geometric {
            nodes: n,
            width_m: side,
            height_m: side,
            radio_range_m: 50.0,
            max_children: ESP8266_MAX_CONN,
        }
    };
    let (seed, join_ms) = (a.seed, a.join_ms);
    // Formed under the independent model, switched to the cell's at the start (run_cell).
    let formation_channel = if switches_channel(n, ch, a) {
        ChannelModel::Independent
    } else {
        channel(ch)
    };
    let mut s = Scenario::new(topology)
        .name(format!("ota n{n} {ch}"))
        .seed(seed)
        .duration(Duration::from_secs(6 * 3600))
        .channel(formation_channel)
        // Formed without loss; the loss is applied when the campaign starts (see run_cell).
        .link(LinkParams::default())
        .formation(Formation {
            start: Duration::ZERO,
            interval: Duration::from_millis(join_ms),
            jitter: Duration::from_millis(join_ms * 4 / 5),
        });
    s.mesh.node_sync = a.node_sync;
    s.mesh.tree_text = a.tree_text;
    s
}

/// Whether the cell forms under the independent model and switches to `ch` at the start.
fn switches_channel(n: u32, ch: &str, a: &Args) -> bool {
    ch == "geometric" && a.form_independent_from.is_some_and(|m| n >= m)
}

/// One cell's outcome.
struct Row {
    n: u32,
    loss: f64,
    channel: String,
    strategy: String,
    formed_s: Option<f64>,
    report: Option<OtaReport>,
    /// Links closed during the campaign: (by the node-sync timeout, for any reason).
    closes: Option<(u64, u64)>,
    wall_s: f64,
    note: String,
}

fn run_cell(a: &Args, base: &OtaCampaign, n: u32, loss: f64, ch: &str, s: OtaStrategy) -> Row {
    let wall = Wall::now();
    let campaign = base.clone().with_strategy(s);
    let (sc, mut run) = campaign.attach(scenario(n, ch, a));
    let mut sim = Simulation::new(sc);
    run.install(&mut sim);
    let debug = std::env::var_os("OTA_BENCH_DEBUG").is_some();
    // Form the mesh first: the campaign measures distribution, not formation.
    let mut formed = None;
    let mut note = String::new();
    while sim.now().as_micros() < a.formation_cap.as_micros() {
        // One virtual second in tenths, to check the wall clock in between: a formation
        // storm can take wall minutes per virtual second.
        for _ in 0..10 {
            sim.run_for(Duration::from_millis(100));
            if wall.elapsed().as_secs_f64() <= a.max_wall_s {
                continue;
            }
            let _ = write!(
                note,
                "formation stopped at the wall-time cap ({:.0} s) at {:.1} virtual s; no campaign. ",
                a.max_wall_s,
                sim.now().as_micros() as f64 / 1e6
            );
            return Row {
                n,
                loss,
                channel: ch.to_owned(),
                strategy: s.label().to_owned(),
                formed_s: None,
                report: None,
                closes: None,
                wall_s: wall.elapsed().as_secs_f64(),
                note,
            };
        }
        if debug && sim.now().as_micros() % 10_000_000 == 0 {
            eprintln!(
                "  forming: {:.0} virtual s, {:.1} wall s, {} components, converged {}, rss {} MiB",
                sim.now().as_micros() as f64 / 1e6,
                wall.elapsed().as_secs_f64(),
                sim.components(),
                sim.converged(),
                meshfleet_sim::rss_kib().unwrap_or(0) / 1024
            );
        }
        let all_up = sim.node_ids().iter().all(|id| sim.is_running(*id));
        if all_up && sim.converged() && sim.components() == 1 {
            formed = Some(sim.now().as_micros() as f64 / 1e6);
            break;
        }
    }
    if debug {
        eprintln!(
            "formed at {formed:?} virtual s after {:.1} wall s",
            wall.elapsed().as_secs_f64()
        );
    }
    if formed.is_none() {
        note.push_str("mesh not converged at the formation cap; started anyway. ");
    }
    if switches_channel(n, ch, a) {
        // The campaign runs entirely under the cell's channel model.
        if let Err(e) = sim.set_channel(channel(ch)) {
            die(&format!("cannot switch to the {ch} channel: {e}"));
        }
        note.push_str("formed under the independent model, geometric from the start. ");
    }
    // Loss from now on, on every link (the bound reads the links as they are at the end).
    if loss > 0.0 {
        sim.schedule(
            sim.now(),
            SimEvent::SetLink {
                between: None,
                change: LinkChange::loss(loss),
            },
        );
        sim.run_for(Duration::ZERO);
    }
    if a.idle_before > Duration::ZERO {
        // The control: the same mesh, channel and loss without a campaign.
        let from = link_closes(&sim);
        let t0 = sim.now();
        sim.run_for(a.idle_before);
        let to = link_closes(&sim);
        let _ = write!(
            note,
            "without the campaign for {:.0} s first: {} / {} links closed, {} components, converged {}. ",
            sim.now().saturating_since(t0).as_micros() as f64 / 1e6,
            to.0 - from.0,
            to.1 - from.1,
            sim.components(),
            sim.converged()
        );
        if debug {
            eprintln!("{note}");
        }
    }
    // Links closed before the campaign (formation, the idle control) are not the campaign's.
    let closes_before = link_closes(&sim);
    run.start(&mut sim);
    let start = sim.now();
    let cap_at = start + a.cap;
    let mut wall_capped = false;
    'campaign: while sim.now() < cap_at && !run.all_updated() {
        // As in the formation: one virtual second in tenths, the wall clock checked between.
        for _ in 0..10 {
            sim.run_for(Duration::from_millis(100));
            if wall.elapsed().as_secs_f64() > a.max_wall_s {
                wall_capped = true;
                break 'campaign;
            }
        }
        if debug && sim.now().saturating_since(start).as_micros() % 10_000_000 == 0 {
            // Where the campaign stands in virtual time: tells a stall (nothing updated,
            // links closing) from a run that is only slow on the host.
            let (t, all) = link_closes(&sim);
            eprintln!(
                "  campaign: {:.0} virtual s, {} / {} updated, links closed {} / {} (node-sync timeout / all), {} components, converged {}, {:.1} wall s, rss {} MiB",
                sim.now().saturating_since(start).as_micros() as f64 / 1e6,
                run.updated(),
                run.receivers(),
                t - closes_before.0,
                all - closes_before.1,
                sim.components(),
                sim.converged(),
                wall.elapsed().as_secs_f64(),
                meshfleet_sim::rss_kib().unwrap_or(0) / 1024
            );
        }
    }
    if wall_capped {
        let _ = write!(
            note,
            "stopped at the wall-time cap ({:.0} s) after {:.0} virtual s. ",
            a.max_wall_s,
            sim.now().saturating_since(start).as_micros() as f64 / 1e6
        );
    } else if !run.all_updated() {
        let _ = write!(
            note,
            "at the {:.0}-min cap. ",
            a.cap.as_micros() as f64 / 6e7
        );
    }
    let report = run.report(&sim);
    let closes_after = link_closes(&sim);
    let closes = Some((
        closes_after.0 - closes_before.0,
        closes_after.1 - closes_before.1,
    ));
    let c = &report.counters;
    if c.broadcast_gaps + c.gave_up > 0 {
        let _ = write!(
            note,
            "{} broadcast gaps, {} gave up. ",
            c.broadcast_gaps, c.gave_up
        );
    }
    if std::env::var_os("OTA_BENCH_DEBUG").is_some() {
        eprintln!(
            "{}",
            serde_json::to_string_pretty(&report.counters).unwrap_or_default()
        );
        let drops = sim.report().drops;
        eprintln!("drops {drops:?} closes {:?}", sim.report().link_closes);
        // Where the receivers that did not update stand at the end.
        let (mut no_campaign, mut partial, mut isolated, mut nodes_seen) = (0, 0, 0, 0);
        // Where the bytes above one copy per receiver go (receivers' own counters).
        let mut sum = meshfleet_ota::MeshfleetStats::default();
        for id in sim.node_ids() {
            let Some(ota) = sim
                .node(id)
                .and_then(|n| n.plugin::<meshfleet_agent::OtaReceiver<meshfleet_ota::MemStore>>())
                .and_then(|r| r.meshfleet())
            else {
                continue;
            };
            let st = ota.stats();
            sum.chunks_sent += st.chunks_sent;
            sum.chunks_received += st.chunks_received;
            sum.duplicates += st.duplicates;
            sum.naks_sent += st.naks_sent;
            sum.offers_sent += st.offers_sent;
            sum.offers_retried += st.offers_retried;
            sum.upstream_changes += st.upstream_changes;
        }
        eprintln!(
            "receivers: {} chunks received ({} duplicates), {} relayed; {} NAKs, {} offers ({} retried), {} upstream changes",
            sum.chunks_received, sum.duplicates, sum.chunks_sent, sum.naks_sent, sum.offers_sent,
            sum.offers_retried, sum.upstream_changes
        );
        for id in sim.node_ids() {
            let Some(node) = sim.node(id) else { continue };
            let Some(ota) = node
                .plugin::<meshfleet_agent::OtaReceiver<meshfleet_ota::MemStore>>()
                .and_then(|r| r.meshfleet())
            else {
                continue;
            };
            if ota.is_complete() {
                continue;
            }
            if node.link_count() == 0 {
                isolated += 1;
            }
            match ota.progress() {
                None => no_campaign += 1,
                Some(_) => partial += 1,
            }
            if nodes_seen < 12 {
                nodes_seen += 1;
                eprintln!(
                    "  {id:?}: links {} knows {} nodes, progress {:?}, peers {:?}",
                    node.link_count(),
                    node.nodes().len(),
                    ota.progress(),
                    ota.peers()
                        .iter()
                        .map(|p| (p.peer.0, p.offered, p.accepted, p.done, p.stock))
                        .collect::<Vec<_>>()
                );
            }
        }
        eprintln!(
            "end: {} components, converged {}; not updated: {no_campaign} without the campaign, {partial} part-way, {isolated} with no link",
            sim.components(),
            sim.converged()
        );
    }
    Row {
        n,
        loss,
        channel: ch.to_owned(),
        strategy: s.label().to_owned(),
        formed_s: formed,
        report: Some(report),
        closes,
        wall_s: wall.elapsed().as_secs_f64(),
        note,
    }
}

/// Links closed so far: (by the node-sync timeout, for any reason).
fn link_closes(sim: &Simulation) -> (u64, u64) {
    let closes = sim.report().link_closes;
    (
        closes.get("node_sync_timeout").copied().unwrap_or(0),
        closes.values().sum(),
    )
}

fn closes_cell(c: Option<(u64, u64)>) -> String {
    c.map_or_else(String::new, |(t, all)| format!("{t} / {all}"))
}

fn mb(b: u64) -> String {
    format!("{:.1}", b as f64 / 1e6)
}

/// A pair of stochastic bounds, deepest path / every receiver, with the larger 95%
/// confidence half-width.
fn pair(path: &MonteCarlo, tree: &MonteCarlo) -> String {
    format!(
        "{:.1} / {:.1} ±{:.2}",
        path.mean_s,
        tree.mean_s,
        1.96 * path.se_s.max(tree.se_s)
    )
}

fn short_binding(b: &str) -> &str {
    match b {
        "stochastic_pipeline" => "stoch. path",
        "stochastic_tree" => "stoch. tree",
        "stochastic_pipeline_chunked" => "stoch. path, c",
        "stochastic_tree_chunked" => "stoch. tree, c",
        other => other,
    }
}

fn md_row(r: &Row) -> String {
    let Some(o) = &r.report else {
        return format!(
            "| {} | {:.0}% | {} | {} | not run | | | | | | | | | | | | | | | {:.0} | {} |\n",
            r.n,
            r.loss * 100.0,
            r.channel,
            r.strategy,
            r.wall_s,
            r.note.trim()
        );
    };
    let lb = o.lower_bound.as_ref();
    let per_copy = o.ota_bytes_on_air as f64 / (f64::from(o.receivers) * o.payload_bytes as f64);
    let makespan = match (o.makespan_s, o.last_update_s) {
        (Some(m), _) => format!("{m:.1}"),
        (None, Some(l)) => format!("> {:.0} (last {l:.0})", o.observed_s.unwrap_or(0.0)),
        (None, None) => format!("> {:.0}", o.observed_s.unwrap_or(0.0)),
    };
    let ratio = |x: Option<f64>| x.map_or_else(|| "–".into(), |x| format!("{x:.2}"));
    format!(
        "| {} | {:.0}% | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {:.1} | {}/{} | {} | {:.0} | {} |\n",
        r.n,
        r.loss * 100.0,
        r.channel,
        r.strategy,
        makespan,
        lb.map_or_else(|| "–".into(), |b| format!("{:.1} ({})", b.bound_s, b.binding)),
        lb.map_or_else(
            || "–".into(),
            |b| pair(&b.stochastic_pipeline, &b.stochastic_tree)
        ),
        lb.map_or_else(
            || "–".into(),
            |b| {
                let t = &b.stochastic_tree_chunked;
                format!(
                    "{} (sd {:.1}, 5% {:.1})",
                    pair(&b.stochastic_pipeline_chunked, t),
                    t.sd_s,
                    t.q05_s
                )
            }
        ),
        lb.map_or_else(|| "–".into(), |b| format!(
            "{:.1} ({})",
            b.combined_bound_s,
            short_binding(b.combined_binding)
        )),
        ratio(o.ratio_to_bound),
        ratio(
            o.makespan_s
                .zip(lb)
                .map(|(m, b)| m / b.stochastic_tree.mean_s.max(b.stochastic_pipeline.mean_s))
        ),
        ratio(o.ratio_to_combined_bound),
        lb.map_or_else(|| "–".into(), |b| b.depth.to_string()),
        mb(o.ota_bytes_on_air),
        per_copy,
        mb(o.source_bytes),
        o.peak_node_ota_memory_bytes as f64 / 1024.0,
        o.updated,
        o.receivers,
        closes_cell(r.closes),
        r.wall_s,
        r.note.trim()
    )
}

fn csv_row(r: &Row) -> String {
    let o = r.report.as_ref();
    let lb = o.and_then(|o| o.lower_bound.as_ref());
    let opt = |v: Option<f64>| v.map_or_else(String::new, |x| format!("{x:.3}"));
    let opt4 = |v: Option<f64>| v.map_or_else(String::new, |x| format!("{x:.4}"));
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.1},\"{}\"\n",
        r.n,
        r.loss,
        r.channel,
        r.strategy,
        opt(r.formed_s),
        opt(o.and_then(|o| o.makespan_s)),
        opt(o.and_then(|o| o.last_update_s)),
        opt(lb.map(|b| b.bound_s)),
        lb.map_or("", |b| b.binding),
        lb.map_or(String::new(), |b| b.depth.to_string()),
        opt(o.and_then(|o| o.ratio_to_bound)),
        opt(lb.map(|b| b.stochastic_pipeline.mean_s)),
        opt4(lb.map(|b| b.stochastic_pipeline.se_s)),
        opt(lb.map(|b| b.stochastic_tree.mean_s)),
        opt4(lb.map(|b| b.stochastic_tree.se_s)),
        opt(lb.map(|b| b.stochastic_pipeline_chunked.mean_s)),
        opt4(lb.map(|b| b.stochastic_pipeline_chunked.se_s)),
        opt(lb.map(|b| b.stochastic_tree_chunked.mean_s)),
        opt4(lb.map(|b| b.stochastic_tree_chunked.se_s)),
        opt(lb.map(|b| b.stochastic_tree.sd_s)),
        opt(lb.map(|b| b.stochastic_tree_chunked.sd_s)),
        opt(lb.map(|b| b.stochastic_tree_chunked.q05_s)),
        opt(lb.map(|b| b.combined_bound_s)),
        lb.map_or("", |b| b.combined_binding),
        opt(o.and_then(|o| o.ratio_to_combined_bound)),
        o.map_or(String::new(), |o| o.ota_bytes_on_air.to_string()),
        o.map_or(String::new(), |o| o
            .bytes_on_air_until_last_update
            .to_string()),
        o.map_or(String::new(), |o| o.source_bytes.to_string()),
        o.map_or(String::new(), |o| o.payload_bytes.to_string()),
        o.map_or(String::new(), |o| o.peak_node_ota_memory_bytes.to_string()),
        o.map_or(String::new(), |o| o.updated.to_string()),
        o.map_or(String::new(), |o| o.receivers.to_string()),
        r.closes.map_or(String::new(), |c| c.0.to_string()),
        r.closes.map_or(String::new(), |c| c.1.to_string()),
        r.wall_s,
        r.note.trim().replace('"', "'")
    )
}

/// The bounds (`docs/ota-protocol.md` §7): the mean-value bound (a)-(c) for frames of at
/// most c payload bytes; the stochastic bound (d) down the deepest path and over every
/// receiver, for frames of any size (the fewest segments: any protocol) and for frames of
/// at most c; the combined bound, the largest of them; the makespan over the mean-value
/// bound, over the stochastic bound for any protocol, and over the combined bound. The
/// stochastic bounds are on the expected makespan; one run scatters around its mean (the
/// tree's standard deviation `sd`), and is shorter than the 5% quantile with probability
/// at most 5%.
const MD_HEAD: &str = "| N | loss | channel | strategy | makespan s | mean-value bound s | stochastic s, any frames: path / tree ±95% | stochastic s, frames ≤ c: path / tree ±95% (tree: sd, 5% quantile) | combined bound s | makespan / mean-value | makespan / stochastic any | makespan / combined | depth | OTA MB on air | on air / ((N-1)·S) | source MB sent | peak node OTA KiB | updated | links closed in the campaign: node-sync timeout / all | wall s | note |\n| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n";
const CSV_HEAD: &str = "nodes,loss,channel,strategy,formed_s,makespan_s,last_update_s,lower_bound_s,binding,depth,ratio_to_bound,stochastic_pipeline_s,stochastic_pipeline_se_s,stochastic_tree_s,stochastic_tree_se_s,stochastic_pipeline_chunked_s,stochastic_pipeline_chunked_se_s,stochastic_tree_chunked_s,stochastic_tree_chunked_se_s,stochastic_tree_sd_s,stochastic_tree_chunked_sd_s,stochastic_tree_chunked_q05_s,combined_bound_s,combined_binding,ratio_to_combined_bound,ota_bytes_on_air,bytes_on_air_until_last_update,source_bytes,payload_bytes,peak_node_ota_memory_bytes,updated,receivers,node_sync_timeouts,link_closes,wall_s,note\n";

fn main() {
    let a = parse_args();
    let (img, what) = image(a.image_kib);
    let base = OtaCampaign::new(OtaStrategy::Meshfleet, img)
        .and_then(|c| c.with_window(a.window))
        .unwrap_or_else(|e| die(&format!("cannot pack the image: {e}")));
    let s = base.artefact().payload().len();
    let m = base.artefact().manifest();
    println!(
        "image: {what}; {} bytes, deflated payload S = {s} bytes ({:.3}) with a {}-byte window \
         (decoder {} bytes), {} chunks of {} bytes",
        base.image().len(),
        s as f64 / base.image().len() as f64,
        m.window,
        m.decoder_footprint(),
        base.artefact().chunk_count(),
        m.chunk_size
    );
    std::fs::create_dir_all(&a.out).unwrap_or_else(|e| die(&format!("{}: {e}", a.out.display())));
    let mut md = String::from(MD_HEAD);
    let mut csv = String::from(CSV_HEAD);
    print!("{MD_HEAD}");
    for &n in &a.nodes {
        for &loss in &a.loss {
            for ch in &a.channels {
                for &st in &a.strategies {
                    let row = if st != OtaStrategy::Meshfleet && n > a.stock_max_nodes {
                        Row {
                            n,
                            loss,
                            channel: ch.clone(),
                            strategy: st.label().to_owned(),
                            formed_s: None,
                            report: None,
                            closes: None,
                            wall_s: 0.0,
                            note: format!("stock runs above {} nodes skipped (--stock-max-nodes): see the estimate in docs/benchmarks.md", a.stock_max_nodes),
                        }
                    } else {
                        run_cell(&a, &base, n, loss, ch, st)
                    };
                    let line = md_row(&row);
                    print!("{line}");
                    md.push_str(&line);
                    csv.push_str(&csv_row(&row));
                    // Written after every row: a long run can be read while it goes on.
                    let _ = std::fs::write(a.out.join("ota_bench.md"), &md);
                    let _ = std::fs::write(a.out.join("ota_bench.csv"), &csv);
                }
            }
        }
    }
    println!(
        "\nwritten: {}/ota_bench.md, ota_bench.csv ({what}; {}-byte window)",
        a.out.display(),
        a.window
    );
}
