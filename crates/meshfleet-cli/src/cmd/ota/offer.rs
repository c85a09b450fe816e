//! `meshfleet ota offer`: a node that offers one firmware artefact to the mesh.
//!
//! The sending node is the agent's ([`meshfleet_agent::Source`]), and so is the accounting
//! ([`meshfleet_agent::OfferTracker`]: one outcome per node, the exit status). This module
//! is the edge: the artefact file, the runtime, the progress display and the output.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use meshfleet_agent::{
    Attempt, Note, OfferReport, OfferTracker, Offering, Outcome, ProgressSink, Snapshot, Source,
    SourceConfig, StopCause, Strategy, Targets, Via,
};
use meshfleet_firmware::{keys, Artefact, SignatureCheck};
use meshfleet_mesh::{Config, Instant, Node, NodeId};
use meshfleet_ota::{OtaEvent, StockStyle};
use meshfleet_runtime::{Runtime, RuntimeConfig, RuntimeEvent};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::cmd::node::{check_host_port, random_node_id, resolve_listen, Signals};
use crate::context::{tokio_runtime, usage, Context, Exit};

const LONG_ABOUT: &str = "\
Offer a firmware artefact (.mfw) to the mesh.

The command joins the mesh as a node (--connect to a node, and/or --listen for nodes to \
connect to it) and serves the artefact until SIGINT or SIGTERM, or until nobody has fetched \
anything for --exit-when-idle seconds. The artefact is verified first (its signature too \
with --key); a broken artefact is refused.

Strategies (--strategy):

stock: the painlessMesh library's own sender, byte for byte. An Announce at once, when a \
node joins, then every 60 s (60 times); every DataRequest is answered with a raw image part, \
base64 (1024 raw bytes per part in the Alteriom style, 768 in the v1.4 style). Unmodified \
ESP nodes update from it. --broadcasted selects the library's broadcast mode (only the root \
requests; parts are broadcast).

broadcast: the meshfleet protocol (docs/ota-protocol.md). The signed, compressed artefact \
goes hop by hop down the tree; every meshfleet node stores and forwards it, so each chunk \
crosses each link once, and a node that restarts resumes where it stopped. Stock nodes are \
not served.

auto (the default): both at once. meshfleet neighbours get the meshfleet protocol, stock \
nodes the stock flow; meshfleet nodes that also accept stock updates prefer the meshfleet \
transfer.

The meshfleet protocol picks per node: a meshfleet node whose capabilities show it cannot \
decode the artefact (a smaller decompression window than the artefact was packed with, see \
`firmware pack --window`, or a codec it lacks) is not offered it, neither by this node nor \
by a relay; a direct neighbour in that case is reported as incompatible, with the reason. \
With auto such a node gets the stock flow like a stock node, if it accepts stock updates (a \
node that trusts a signing key does not); with broadcast it is not updated.

Progress: one bar per node being served, on stderr when it is a terminal, plain lines \
otherwise. meshfleet bars count transfer units (the artefact's chunks plus the pages of its \
chunk table sent with them) and start at what the node already holds (a resumed transfer); \
stock bars count parts. Nodes further away get the image from their relays.

The final report lists every node of the mesh with one outcome: updated, already_current, \
in_progress, refused (with the node's reason), incompatible (with the values), failed, \
rolled_back, unreachable (it left the mesh) or unknown (in the mesh, behind a relay that \
reports no per-node outcome). As a table on stdout, or with --json one \
{\"event\":\"summary\",\"nodes\":[{\"nodeId\":..,\"via\":..,\"neighbour\":..,\"status\":..,\
\"reason\":..,\"have\":..,\"total\":..,\"bytes\":..,\"seconds\":..}],\"bytes_sent\":..,\
\"duration_s\":..,\"stopped\":\"idle|signal\",\"exit\":..,\"exit_code\":..} line. A stock node \
counts as updated once it got the last part (it checks the MD5 itself).

With --json stdout carries one JSON object per line: {\"event\":\"offer_started\",...}, \
{\"event\":\"listening\",...} (with --listen), every OTA event of the sending plugins \
(e.g. {\"event\":\"part_served\",\"plugin\":\"ota-stock-sender\",\"node\":2001,\"part\":7,...}, \
{\"event\":\"peer_done\",\"plugin\":\"ota-meshfleet\",...}) and the summary.

Targets: the nodes that answered the offer (neighbours that accepted, refused or fetched); \
with --require-all every node in the mesh; --expect N also needs at least N nodes updated \
or already current.

Exit status:
  0  every target ended updated or already current
  1  error (unreadable or broken artefact, the node cannot start)
  2  usage error
  3  interrupted (SIGINT/SIGTERM) before that
  4  never connected to any node
  5  some target refused, could not take the artefact, failed or rolled back
  6  incomplete: some target unfinished or without an outcome, fewer than --expect updated, \
or nothing updated at all";

const AFTER_LONG_HELP: &str = "\
Examples:
  # Update a mesh of ESP nodes running the stock library, through the node at 10.0.0.1:
  meshfleet ota offer sensor-1.4.2.mfw --strategy stock --connect 10.0.0.1:5555

  # A mixed mesh; check the signature first; stop once everybody is served:
  meshfleet ota offer sensor-1.4.2.mfw --key fleet.key.pub --connect 10.0.0.1:5555 \\
      --exit-when-idle 120 --expect 12

  # Scripted: JSON events on stdout, then the summary
  meshfleet ota offer sensor-1.4.2.mfw --strategy broadcast --connect 10.0.0.1:5555 \\
      --json --exit-when-idle 30 | jq -c 'select(.event == \"summary\")'";

/// How the artefact is distributed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum StrategyArg {
    /// The library's stock OTA sender only.
    Stock,
    /// The meshfleet protocol only.
    Broadcast,
    /// Both on the same node.
    Auto,
}

impl StrategyArg {
    fn strategy(self) -> Strategy {
        match self {
            Self::Stock => Strategy::Stock,
            Self::Broadcast => Strategy::Broadcast,
            Self::Auto => Strategy::Auto,
        }
    }
}

/// The stock sender's packaging.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum StyleArg {
    /// Alteriom painlessMesh 1.10: 1024 raw bytes per part.
    Alteriom,
    /// painlessMesh v1.4.1 / painlessMeshBoost: 1024 base64 characters per part.
    #[value(name = "v1.4")]
    V14,
}

/// Offer a firmware artefact to the mesh until stopped.
#[derive(clap::Args, Debug)]
#[command(long_about = LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
pub(crate) struct OfferArgs {
    /// The artefact (from `meshfleet firmware pack`).
    #[arg(value_name = "FILE.mfw")]
    file: PathBuf,

    /// `stock`, `broadcast` (meshfleet protocol) or `auto` (both); see above.
    #[arg(long, value_enum, default_value_t = StrategyArg::Auto)]
    strategy: StrategyArg,

    /// Join the mesh through the node at HOST:PORT (reconnects with backoff). Repeatable.
    #[arg(long, value_name = "HOST:PORT")]
    connect: Vec<String>,

    /// Accept mesh connections on ADDR:PORT (port 0: any free port, printed).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,

    /// This node's id (default: random).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    node_id: Option<u32>,

    /// Exit (status 0) after SECS seconds without OTA activity: after the last part or
    /// chunk served, or SECS after the start if nobody asked.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    exit_when_idle: Option<u64>,

    /// JSON lines on stdout: the OTA events and a final summary.
    #[arg(long)]
    json: bool,

    /// Succeed (exit 0) only if at least N nodes end updated or already current.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    expect: Option<u32>,

    /// Every node in the mesh is a target, not only those that answered the offer: a node
    /// with no outcome (behind a relay that reports none, or gone) makes the exit non-zero.
    #[arg(long)]
    require_all: bool,

    /// Public key the artefact must be signed with (checked before anything is offered).
    #[arg(long, value_name = "PUB")]
    key: Option<PathBuf>,

    /// Stock flow only: stock nodes install the image even if it is the MD5 they run (the
    /// library's unsigned flag). meshfleet nodes ignore it: they need --intent.
    #[arg(long)]
    forced: bool,

    /// The operator's signed intent for this artefact's image (`meshfleet firmware
    /// intent`): lets meshfleet nodes in its scope install it although it is not newer
    /// than what they run, or they rolled it back.
    #[arg(long, value_name = "FILE.intent")]
    intent: Option<PathBuf>,

    /// Stock packaging: `alteriom` (default; 1024 raw bytes per part) or `v1.4`.
    #[arg(long, value_enum, value_name = "STYLE")]
    stock_style: Option<StyleArg>,

    /// The library's broadcasted mode (Alteriom style): only the root requests, parts are
    /// broadcast to every node.
    #[arg(long)]
    broadcasted: bool,

    /// Pacing of the meshfleet source, bytes per second per link (tests).
    #[arg(long, hide = true, value_name = "BYTES_PER_S")]
    ota_rate: Option<u64>,
}

/// Poll period of the progress counters (and of the idle check).
const TICK: Duration = Duration::from_millis(250);

/// Events buffered for us: the stock sender emits one per part served.
const EVENT_CAPACITY: usize = 16 * 1024;

pub(crate) fn run(args: OfferArgs, _ctx: &Context) -> anyhow::Result<()> {
    let plan = Plan::new(args)?;
    let rt = tokio_runtime()?;
    let result = rt.block_on(offer(plan));
    rt.shutdown_timeout(Duration::from_millis(100));
    let code = result?;
    if code == 0 {
        Ok(())
    } else {
        // The report said why.
        Err(Exit(code).into())
    }
}

/// Everything decided before the node starts.
struct Plan {
    strategy: Strategy,
    node_id: NodeId,
    runtime: RuntimeConfig,
    exit_when_idle: Option<Duration>,
    json: bool,
    forced: bool,
    intent: Option<PathBuf>,
    style: StockStyle,
    ota_rate: Option<u64>,
    file: PathBuf,
    key: Option<PathBuf>,
    targets: Targets,
}

impl Plan {
    fn new(a: OfferArgs) -> anyhow::Result<Self> {
        if a.connect.is_empty() && a.listen.is_none() {
            return Err(usage(
                "nothing to join: give --connect HOST:PORT and/or --listen ADDR:PORT",
            ));
        }
        for target in &a.connect {
            check_host_port(target)?;
        }
        let strategy = a.strategy.strategy();
        if !strategy.stock() && (a.stock_style.is_some() || a.broadcasted) {
            return Err(usage(
                "--stock-style and --broadcasted apply to the stock flow (--strategy stock or auto)",
            ));
        }
        let style = match (a.stock_style.unwrap_or(StyleArg::Alteriom), a.broadcasted) {
            (StyleArg::V14, true) => {
                return Err(usage(
                    "--broadcasted needs --stock-style alteriom (v1.4 has no broadcast mode)",
                ))
            }
            (StyleArg::V14, false) => StockStyle::V141,
            (StyleArg::Alteriom, broadcasted) => StockStyle::Alteriom {
                part_size: 1024,
                broadcasted,
            },
        };
        if a.ota_rate == Some(0) {
            return Err(usage("--ota-rate must be positive"));
        }
        let mut runtime = RuntimeConfig::default();
        if let Some(addr) = &a.listen {
            runtime.listen = Some(resolve_listen(addr)?);
        }
        runtime.connect = a.connect;
        runtime.event_capacity = EVENT_CAPACITY;
        Ok(Self {
            strategy,
            node_id: a.node_id.map_or_else(random_node_id, NodeId),
            runtime,
            exit_when_idle: a.exit_when_idle.map(Duration::from_secs),
            json: a.json,
            forced: a.forced,
            intent: a.intent,
            style,
            ota_rate: a.ota_rate,
            file: a.file,
            key: a.key,
            targets: Targets {
                require_all: a.require_all,
                expect: a.expect,
            },
        })
    }
}

/// Reads and verifies the artefact, and builds the node with the agent's sending plugins.
fn build_node(plan: &Plan) -> anyhow::Result<(Node, Offering, Value)> {
    let file = &plan.file;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let artefact = Artefact::from_bytes(&bytes)
        .with_context(|| format!("{} is not a valid .mfw artefact", file.display()))?;
    let key = plan
        .key
        .as_deref()
        .map(keys::read_public_key)
        .transpose()?;
    let verified = artefact.verify(key.as_ref()).map_err(|e| {
        anyhow!(
            "{}: verification failed, not offering it: {e}",
            file.display()
        )
    })?;
    let signature = match verified.signature() {
        SignatureCheck::Verified(_) => "verified",
        SignatureCheck::NotChecked {
            claimed_key: Some(_),
        } => {
            warn!("signature not checked (no --key); receivers that trust a key check it");
            "not_checked"
        }
        SignatureCheck::NotChecked { claimed_key: None } => "unsigned",
    };
    let intent = match &plan.intent {
        None => None,
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let i = meshfleet_firmware::Intent::from_json(&bytes)
                .map_err(|e| usage(format!("--intent {}: {e}", path.display())))?;
            let m = artefact.manifest();
            if i.sha256 != m.sha256 || i.version != m.version {
                return Err(usage(format!(
                    "--intent {} names version {}, not this artefact's image",
                    path.display(),
                    i.version
                )));
            }
            Some(i)
        }
    };
    let image = verified.into_image();
    let mut node = Node::new(Config::new(plan.node_id));
    let mut config = SourceConfig::new(plan.strategy);
    config.forced = plan.forced;
    config.intent = intent;
    config.style = plan.style;
    config.link_rate = plan.ota_rate;
    let offering = Source::equip(&mut node, artefact, image, &config)
        .context("cannot offer this image to stock nodes")?;
    let m = &offering.manifest;
    let started = json!({
        "event": "offer_started",
        "nodeId": plan.node_id.0,
        "strategy": plan.strategy.label(),
        "file": file.display().to_string(),
        "role": m.role,
        "hardware": m.hardware,
        "version": m.version.to_string(),
        "size": m.size,
        "md5": m.md5.to_hex(),
        "sha256": m.sha256.to_hex(),
        // The same count as `firmware inspect`; meshfleet progress counts `units`: these
        // chunks plus the chunk table's hash pages.
        "chunks": offering.chunks,
        "hash_pages": offering.hash_pages(),
        "units": offering.units,
        "parts": offering.parts,
        "signature": signature,
        "forced": plan.forced,
        "intent": plan.intent.is_some(),
    });
    Ok((node, offering, started))
}

/// The offer's clock: the agent's tracker takes mesh `Instant`s from the start.
struct Clock(std::time::Instant);

impl Clock {
    fn now(&self) -> Instant {
        let us = u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX);
        Instant::ZERO + meshfleet_mesh::Duration::from_micros(us)
    }
}

/// Runs the offer; returns the exit code of its report.
async fn offer(plan: Plan) -> anyhow::Result<u8> {
    let (node, offering, started) = build_node(&plan)?;
    let m = &offering.manifest;
    eprintln!(
        "offering {} {} {} ({} bytes, {} chunks) as node {}, strategy {}",
        m.role,
        m.hardware,
        m.version,
        offering.image_len,
        offering.chunks,
        plan.node_id,
        plan.strategy.label()
    );
    if plan.json {
        json_line(&started);
    }
    // Before the node starts: once it runs, a receiver can accept within milliseconds,
    // and a Ctrl-C that arrived before the handler would kill the process without its
    // summary and exit code 3.
    let mut signals = Signals::new()?;
    let (mesh, mut task) = Runtime::start(node, plan.runtime.clone())
        .await
        .context("cannot start the node")?;
    let mut events = mesh.subscribe();
    mesh.with_node(Source::start)
        .await
        .context("the mesh runtime stopped")?;

    let clock = Clock(std::time::Instant::now());
    let mut tracker = OfferTracker::new(offering, clock.now());
    let mut display = Display::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut task_done = false;
    let result = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(RuntimeEvent::Plugin { plugin, data }) => {
                    if let Some(ev) = data.downcast_ref::<OtaEvent>() {
                        tracker.on_event(clock.now(), ev, &mut display);
                    }
                    if plan.json {
                        json_line(&flatten(&plugin, data.to_json()));
                    }
                }
                Ok(e @ RuntimeEvent::Listening { .. }) => {
                    if plan.json {
                        if let Ok(v) = serde_json::to_value(&e) {
                            json_line(&v);
                        }
                    }
                    display.note_text(&e.to_string());
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(missed = n, "output too slow: OTA events skipped");
                }
                Err(broadcast::error::RecvError::Closed) => {
                    break Err(anyhow!("the mesh runtime stopped unexpectedly"));
                }
            },
            _ = tick.tick() => {
                let Ok(snap) = mesh.with_node(|node, _| Snapshot::of(node)).await else {
                    break Err(anyhow!("the mesh runtime stopped unexpectedly"));
                };
                let now = clock.now();
                tracker.on_snapshot(now, snap, &mut display);
                if let Some(idle) = plan.exit_when_idle {
                    let quiet = now.saturating_since(tracker.last_activity());
                    if quiet.as_micros() >= idle.as_micros() as u64 {
                        info!(idle_s = idle.as_secs(), "no OTA activity: stopping");
                        break Ok(StopCause::Idle);
                    }
                }
            }
            signal = signals.recv() => {
                info!(signal, "stopping");
                break Ok(StopCause::Signal);
            }
            joined = &mut task => {
                task_done = true;
                break Err(match joined {
                    Err(e) if e.is_panic() => anyhow!("the mesh runtime panicked"),
                    _ => anyhow!("the mesh runtime stopped unexpectedly"),
                });
            }
        }
    };
    // A last look at the counters, so the report includes what was sent meanwhile.
    if let Ok(snap) = mesh.with_node(|node, _| Snapshot::of(node)).await {
        tracker.on_snapshot(clock.now(), snap, &mut display);
    }
    mesh.shutdown().await;
    if !task_done {
        let _ = task.await;
    }
    display.finish();
    let stop = result?;
    let report = tracker.report(clock.now(), stop, plan.targets);
    if plan.json {
        match serde_json::to_value(&report) {
            Ok(v) => json_line(&v),
            Err(e) => warn!(error = %e, "cannot serialize the summary"),
        }
    } else {
        print_report(&report);
    }
    Ok(report.exit_status.code())
}

/// Prints one JSON line on stdout. A closed stdout must not stop the offer.
fn json_line(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}").and_then(|()| out.flush());
}

/// A plugin event as one flat object: the plugin's own JSON plus `"plugin"`.
fn flatten(plugin: &str, data: Value) -> Value {
    match data {
        Value::Object(mut map) => {
            map.insert("plugin".into(), Value::String(plugin.to_owned()));
            Value::Object(map)
        }
        other => json!({"event": "plugin", "plugin": plugin, "data": other}),
    }
}

fn print_report(r: &OfferReport) {
    let mut out = std::io::stdout().lock();
    for l in r.text() {
        // A closed stdout must not turn a finished offer into an error.
        if writeln!(out, "{l}").is_err() {
            return;
        }
    }
    let _ = out.flush();
}

fn unit(via: Via) -> &'static str {
    match via {
        Via::Meshfleet => "units",
        Via::Stock => "parts",
    }
}

// ---------------------------------------------------------------------- display

type Key = (NodeId, Via);

/// Progress on stderr: bars on a terminal, plain lines otherwise.
enum Display {
    Bars {
        multi: MultiProgress,
        bars: BTreeMap<Key, ProgressBar>,
        style: ProgressStyle,
    },
    Lines {
        /// Last reported (quarter of progress, outcome) per node.
        reported: BTreeMap<Key, (u32, &'static str)>,
    },
}

impl Display {
    fn new() -> Self {
        if std::io::stderr().is_terminal() {
            let style = ProgressStyle::with_template(
                "{prefix:<24} [{bar:30.cyan/blue}] {pos:>5}/{len:5} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            Self::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: BTreeMap::new(),
                style,
            }
        } else {
            Self::Lines {
                reported: BTreeMap::new(),
            }
        }
    }

    /// A one-off message.
    fn note_text(&self, msg: &str) {
        match self {
            // Above the bars, so they are not torn.
            Self::Bars { multi, .. } => {
                let _ = multi.println(msg);
            }
            Self::Lines { .. } => {
                let _ = writeln!(std::io::stderr(), "{msg}");
            }
        }
    }

    fn finish(&mut self) {
        if let Self::Bars { bars, .. } = self {
            for b in bars.values().filter(|b| !b.is_finished()) {
                b.abandon();
            }
        }
    }
}

/// What a finished attempt says.
fn outcome_text(a: &Attempt, now: Instant) -> String {
    match &a.outcome {
        Outcome::Updated => format!("updated in {:.1} s", a.seconds(now)),
        o => match o.reason() {
            Some(r) => format!("{}: {r}", o.label().replace('_', " ")),
            None => o.label().replace('_', " "),
        },
    }
}

impl ProgressSink for Display {
    fn note(&mut self, note: &Note) {
        self.note_text(&note.to_string());
    }

    fn update(&mut self, id: NodeId, via: Via, a: &Attempt, now: Instant) {
        let key = (id, via);
        match self {
            Self::Bars { multi, bars, style } => {
                let bar = bars.entry(key).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(u64::from(a.total)));
                    b.set_style(style.clone());
                    // The unit, so the counts read like `inspect`'s chunks plus hash pages.
                    b.set_prefix(format!("node {id} ({}, {})", via.label(), unit(via)));
                    b
                });
                if bar.is_finished() {
                    return;
                }
                bar.set_position(u64::from(a.position));
                match &a.outcome {
                    Outcome::InProgress => bar.set_message(format!("{} bytes", a.bytes)),
                    Outcome::Updated | Outcome::AlreadyCurrent => {
                        bar.finish_with_message(outcome_text(a, now));
                    }
                    _ => bar.abandon_with_message(outcome_text(a, now)),
                }
            }
            Self::Lines { reported } => {
                let quarter = a.position.saturating_mul(4).checked_div(a.total).unwrap_or(0);
                let state = (quarter, a.outcome.label());
                let before = reported.insert(key, state);
                if before == Some(state) {
                    return;
                }
                let who = format!("node {id} ({})", via.label());
                let msg = match &a.outcome {
                    Outcome::InProgress if before.is_none() => format!(
                        "{who}: fetching {} {}, holds {}",
                        a.total,
                        unit(via),
                        a.position
                    ),
                    Outcome::InProgress => format!(
                        "{who}: {}/{} {} ({}%)",
                        a.position,
                        a.total,
                        unit(via),
                        quarter * 25
                    ),
                    _ => format!("{who}: {}", outcome_text(a, now)),
                };
                let _ = writeln!(std::io::stderr(), "{msg}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_events_are_flattened() {
        let v = flatten("ota-meshfleet", json!({"event": "peer_done", "peer": 2}));
        assert_eq!(
            v,
            json!({"event": "peer_done", "peer": 2, "plugin": "ota-meshfleet"})
        );
    }
}
