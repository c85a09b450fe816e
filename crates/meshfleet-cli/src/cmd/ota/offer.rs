//! `meshfleet ota offer`: a node that offers one firmware artefact to the mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use meshfleet_firmware::{keys, Artefact, SignatureCheck};
use meshfleet_mesh::{Config, LinkId, Node, NodeId};
use meshfleet_ota::{
    ImageInfo, MemStore, MeshfleetConfig, MeshfleetOta, MeshfleetStats, NodeProgress,
    PeerProgress, StockOffer, StockSender, StockSenderConfig, StockSenderStats, StockStyle,
};
use meshfleet_runtime::{Runtime, RuntimeConfig, RuntimeEvent};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::cmd::node::{check_host_port, random_node_id, resolve_listen, Signals};
use crate::context::{tokio_runtime, usage, Context};

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
by a relay; a direct neighbour in that case is reported as skipped, with the reason. With \
auto such a node gets the stock flow like a stock node, if it accepts stock updates (a node \
that trusts a signing key does not); with broadcast it is not updated.

Progress: one bar per node that started fetching (parts or chunks sent / total) on stderr \
when it is a terminal, plain lines otherwise. In the broadcast strategy the bars are the \
direct neighbours only: they relay to the rest of the mesh. At the end a summary (a table \
on stdout, or with --json a {\"event\":\"summary\",...} line).

With --json stdout carries one JSON object per line: {\"event\":\"offer_started\",...}, \
{\"event\":\"listening\",...} (with --listen), every OTA event of the sending plugins \
(e.g. {\"event\":\"part_served\",\"plugin\":\"ota-stock-sender\",\"node\":2001,\"part\":7,...}, \
{\"event\":\"peer_done\",\"plugin\":\"ota-meshfleet\",...}) and the summary \
{\"event\":\"summary\",\"nodes\":[{\"nodeId\":..,\"status\":\"updated|in_progress|failed|skipped\",\
\"bytes\":..,\"seconds\":..}],\"bytes_sent\":..,\"duration_s\":..}. A stock node counts as \
updated once it got the last part (it checks the MD5 itself).

Exit status: 0 when stopped by a signal or by --exit-when-idle, 1 on an error (unreadable \
or broken artefact, the node cannot start), 2 on a usage error.";

const AFTER_LONG_HELP: &str = "\
Examples:
  # Update a mesh of ESP nodes running the stock library, through the node at 10.0.0.1:
  meshfleet ota offer sensor-1.4.2.mfw --strategy stock --connect 10.0.0.1:5555

  # A mixed mesh; check the signature first; stop once everybody is served:
  meshfleet ota offer sensor-1.4.2.mfw --key fleet.pub --connect 10.0.0.1:5555 \\
      --exit-when-idle 120

  # Scripted: JSON events on stdout, then the summary
  meshfleet ota offer sensor-1.4.2.mfw --strategy broadcast --connect 10.0.0.1:5555 \\
      --json --exit-when-idle 30 | jq -c 'select(.event == \"summary\")'";

/// How the artefact is distributed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Strategy {
    /// The library's stock OTA sender only.
    Stock,
    /// The meshfleet protocol only.
    Broadcast,
    /// Both on the same node.
    Auto,
}

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Self::Stock => "stock",
            Self::Broadcast => "broadcast",
            Self::Auto => "auto",
        }
    }

    fn stock(self) -> bool {
        matches!(self, Self::Stock | Self::Auto)
    }

    fn meshfleet(self) -> bool {
        matches!(self, Self::Broadcast | Self::Auto)
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
    #[arg(long, value_enum, default_value_t = Strategy::Auto)]
    strategy: Strategy,

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
    result
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
        if !a.strategy.stock() && (a.stock_style.is_some() || a.broadcasted) {
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
            strategy: a.strategy,
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
        })
    }
}

/// What is offered, as the summary and the bars need it.
struct Offered {
    /// The stock flow runs too (`auto`): it serves nodes that cannot decode the artefact.
    stock_flow: bool,
    chunks: u32,
    parts: u32,
    part_size: u32,
    image_len: u64,
}

/// Reads and verifies the artefact, and builds the node with the sending plugins.
fn build_node(plan: &Plan) -> anyhow::Result<(Node, Offered, Value)> {
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
    let image = verified.into_image();
    let m = artefact.manifest().clone();

    let mut node = Node::new(Config::new(plan.node_id));
    let mut parts = 0;
    if plan.strategy.meshfleet() {
        let mut cfg = MeshfleetConfig::new(m.role.clone(), m.hardware.clone());
        // Advertised in our CAPS: receivers that hold the campaign then never offer it
        // back to us.
        cfg.running = Some(ImageInfo {
            version: m.version.to_string(),
            sha256: m.sha256.to_hex(),
            md5: m.md5.to_hex(),
            size: m.size,
        });
        if let Some(rate) = plan.ota_rate {
            cfg.link_rate = rate;
        }
        let intent = match &plan.intent {
            None => None,
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let i = meshfleet_firmware::Intent::from_json(&bytes)
                    .map_err(|e| usage(format!("--intent {}: {e}", path.display())))?;
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
        // The source never stores anything: its chunks come from the artefact.
        let ota = MeshfleetOta::source(cfg, Box::new(MemStore::new()), artefact, intent);
        node.add_plugin(Box::new(ota));
    }
    let image_len = image.len() as u64;
    if plan.strategy.stock() {
        let offer = StockOffer::new(image, m.role.clone(), m.hardware.clone(), plan.style)
            .context("cannot offer this image to stock nodes")?
            .forced(plan.forced);
        parts = offer.no_part();
        node.add_plugin(Box::new(StockSender::new(
            offer,
            StockSenderConfig::default(),
        )));
    }
    let started = json!({
        "event": "offer_started",
        "nodeId": plan.node_id.0,
        "strategy": plan.strategy.name(),
        "file": file.display().to_string(),
        "role": m.role,
        "hardware": m.hardware,
        "version": m.version.to_string(),
        "size": m.size,
        "md5": m.md5.to_hex(),
        "sha256": m.sha256.to_hex(),
        "chunks": m.chunk_count,
        "units": meshfleet_ota::proto::Layout::of(&m).units(),
        "parts": parts,
        "signature": signature,
        "forced": plan.forced,
        "intent": plan.intent.is_some(),
    });
    let offered = Offered {
        stock_flow: plan.strategy.stock(),
        // Bars count transfer units: the chunks and the hash pages sent with them.
        chunks: meshfleet_ota::proto::Layout::of(&m).units(),
        parts,
        part_size: plan.style.raw_part_size(),
        image_len,
    };
    Ok((node, offered, started))
}

async fn offer(plan: Plan) -> anyhow::Result<()> {
    let (node, offered, started) = build_node(&plan)?;
    eprintln!(
        "offering {} {} {} ({} bytes) as node {}, strategy {}",
        started["role"].as_str().unwrap_or_default(),
        started["hardware"].as_str().unwrap_or_default(),
        started["version"].as_str().unwrap_or_default(),
        offered.image_len,
        plan.node_id,
        plan.strategy.name()
    );
    if plan.json {
        json_line(&started);
    }
    let (mesh, mut task) = Runtime::start(node, plan.runtime.clone())
        .await
        .context("cannot start the node")?;
    let mut events = mesh.subscribe();
    mesh.with_node(|node, now| {
        node.with_plugin::<MeshfleetOta, _>(now, |m, ctx| m.start(ctx));
        node.with_plugin::<StockSender, _>(now, |s, ctx| s.start(ctx));
    })
    .await
    .context("the mesh runtime stopped")?;

    let mut tracker = Tracker::new(&offered);
    let mut display = Display::new();
    let mut signals = Signals::new()?;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut task_done = false;
    let result = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(RuntimeEvent::Plugin { plugin, data }) => {
                    tracker.on_event(&plugin, &data, &mut display);
                    if plan.json {
                        json_line(&flatten(&plugin, data));
                    }
                }
                Ok(e @ RuntimeEvent::Listening { .. }) => {
                    if plan.json {
                        if let Ok(v) = serde_json::to_value(&e) {
                            json_line(&v);
                        }
                    }
                    display.note(&e.to_string());
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
                let Ok(snap) = mesh.with_node(snapshot).await else {
                    break Err(anyhow!("the mesh runtime stopped unexpectedly"));
                };
                tracker.on_snapshot(snap, &mut display);
                if let Some(idle) = plan.exit_when_idle {
                    if tracker.last_activity.elapsed() >= idle {
                        info!(idle_s = idle.as_secs(), "no OTA activity: stopping");
                        break Ok("idle");
                    }
                }
            }
            signal = signals.recv() => {
                info!(signal, "stopping");
                break Ok("signal");
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
    // A last look at the counters, so the summary includes what was sent meanwhile.
    if let Ok(snap) = mesh.with_node(snapshot).await {
        tracker.on_snapshot(snap, &mut display);
    }
    mesh.shutdown().await;
    if !task_done {
        let _ = task.await;
    }
    display.finish();
    let stopped = result?;
    let summary = tracker.summary(stopped);
    if plan.json {
        match serde_json::to_value(&summary) {
            Ok(v) => json_line(&v),
            Err(e) => warn!(error = %e, "cannot serialize the summary"),
        }
    } else {
        print_table(&summary);
    }
    Ok(())
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

/// The sending plugins' counters, read in the owner task.
struct Snapshot {
    meshfleet: Option<(MeshfleetStats, Vec<PeerProgress>)>,
    stock: Option<(StockSenderStats, Vec<(NodeId, NodeProgress)>)>,
}

fn snapshot(node: &mut Node, _now: meshfleet_mesh::Instant) -> Snapshot {
    Snapshot {
        meshfleet: node
            .plugin::<MeshfleetOta>()
            .map(|m| (m.stats().clone(), m.peers())),
        stock: node.plugin::<StockSender>().map(|s| {
            let progress = s.progress().iter().map(|(n, p)| (*n, p.clone())).collect();
            (s.stats().clone(), progress)
        }),
    }
}

// ---------------------------------------------------------------------- tracking

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Via {
    Meshfleet,
    Stock,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Self::Meshfleet => "meshfleet",
            Self::Stock => "stock",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Self::Meshfleet => "chunks",
            Self::Stock => "parts",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    InProgress,
    Updated,
    Failed,
    /// Not offered: it cannot decode the artefact (meshfleet only).
    Skipped,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Updated => "updated",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

type Key = (u32, Via);

/// One node being served.
#[derive(Debug)]
struct NodeRecord {
    total: u32,
    /// Parts (highest requested + 1) or chunks sent, at most `total`.
    position: u32,
    bytes: u64,
    started: Instant,
    finished: Option<Instant>,
    /// Exact duration when the sender measured it (stock `node_completed`).
    seconds: Option<f64>,
    status: Status,
    reason: Option<String>,
    subtree_done: bool,
    /// meshfleet: (chunks, bytes) sent per link; a reconnected neighbour has a new link.
    links: BTreeMap<LinkId, (u32, u64)>,
}

impl NodeRecord {
    fn new(total: u32) -> Self {
        Self {
            total,
            position: 0,
            bytes: 0,
            started: Instant::now(),
            finished: None,
            seconds: None,
            status: Status::InProgress,
            reason: None,
            subtree_done: false,
            links: BTreeMap::new(),
        }
    }

    fn seconds(&self) -> f64 {
        let s = self.seconds.unwrap_or_else(|| {
            self.finished
                .unwrap_or_else(Instant::now)
                .duration_since(self.started)
                .as_secs_f64()
        });
        (s * 1000.0).round() / 1000.0
    }

    /// Moves to `status`; a node once updated stays updated.
    fn set_status(&mut self, status: Status) {
        if self.status == Status::Updated || self.status == status {
            return;
        }
        self.status = status;
        if status == Status::Updated {
            self.position = self.total;
        }
        if status != Status::InProgress {
            self.finished.get_or_insert_with(Instant::now);
        }
    }
}

struct Tracker {
    stock_flow: bool,
    started: Instant,
    last_activity: Instant,
    nodes: BTreeMap<Key, NodeRecord>,
    chunks: u32,
    parts: u32,
    part_size: u32,
    image_len: u64,
    /// (meshfleet chunks sent, NAKs received, stock parts sent): a change is activity.
    counters: (u64, u64, u64),
    bytes_sent: u64,
    /// (node, reason) of ignored requests already reported.
    ignored: BTreeSet<(u32, String)>,
}

/// Most distinct ignored-request notes printed.
const MAX_IGNORED_NOTES: usize = 256;

impl Tracker {
    fn new(o: &Offered) -> Self {
        let now = Instant::now();
        Self {
            stock_flow: o.stock_flow,
            started: now,
            last_activity: now,
            nodes: BTreeMap::new(),
            chunks: o.chunks,
            parts: o.parts,
            part_size: o.part_size,
            image_len: o.image_len,
            counters: (0, 0, 0),
            bytes_sent: 0,
            ignored: BTreeSet::new(),
        }
    }

    fn record(&mut self, key: Key) -> &mut NodeRecord {
        let total = match key.1 {
            Via::Meshfleet => self.chunks,
            Via::Stock => self.parts,
        };
        self.nodes
            .entry(key)
            .or_insert_with(|| NodeRecord::new(total))
    }

    /// Raw bytes of stock part `part`.
    fn part_len(&self, part: u64) -> u64 {
        let size = u64::from(self.part_size);
        self.image_len
            .saturating_sub(part.saturating_mul(size))
            .min(size)
    }

    fn on_event(&mut self, plugin: &str, data: &Value, display: &mut Display) {
        let event = data["event"].as_str().unwrap_or_default();
        // Announces and capability exchanges happen whether or not anybody fetches.
        if !matches!(
            event,
            "announce_sent" | "caps_received" | "neighbour_is_stock" | "peer_cannot_decode"
        ) {
            self.last_activity = Instant::now();
        }
        let node = |k: &str| data[k].as_u64().and_then(|n| u32::try_from(n).ok());
        match event {
            "part_served" => {
                let (Some(n), Some(part)) = (node("node"), data["part"].as_u64()) else {
                    return;
                };
                let len = self.part_len(part);
                let r = self.record((n, Via::Stock));
                r.bytes += len;
                r.position = r.position.max(u32::try_from(part + 1).unwrap_or(u32::MAX));
                r.position = r.position.min(r.total);
                display.update((n, Via::Stock), r);
            }
            "node_completed" => {
                let Some(n) = node("node") else { return };
                let r = self.record((n, Via::Stock));
                if let Some(ms) = data["took_ms"].as_u64() {
                    r.seconds = Some(ms as f64 / 1000.0);
                }
                r.set_status(Status::Updated);
                display.update((n, Via::Stock), r);
            }
            "peer_refused" => {
                let Some(n) = node("peer") else { return };
                let r = self.record((n, Via::Meshfleet));
                r.reason = data["reason"].as_str().map(str::to_owned);
                r.set_status(Status::Failed);
                display.update((n, Via::Meshfleet), r);
            }
            "peer_cannot_decode" => {
                let Some(n) = node("peer") else { return };
                let why = data["reason"].as_str().unwrap_or("unknown reason");
                let r = self.record((n, Via::Meshfleet));
                r.reason = Some(format!("cannot decode this artefact: {why}"));
                r.set_status(Status::Skipped);
                display.update((n, Via::Meshfleet), r);
                display.note(&format!(
                    "node {n} cannot decode this artefact ({why}): {}",
                    if self.stock_flow {
                        "the stock flow serves it if it accepts stock updates"
                    } else {
                        "not offered (--strategy auto would serve it the stock flow)"
                    }
                ));
            }
            "peer_done" => {
                let Some(n) = node("peer") else { return };
                let r = self.record((n, Via::Meshfleet));
                r.set_status(Status::Updated);
                display.update((n, Via::Meshfleet), r);
            }
            "request_ignored" => {
                let reason = data["reason"].as_str().unwrap_or("?").to_owned();
                let key = (node("node").unwrap_or(0), reason);
                // Once per node and reason, and for a bounded number of them: requests
                // come from the network, at whatever rate a peer likes.
                if self.ignored.len() < MAX_IGNORED_NOTES && self.ignored.insert(key.clone()) {
                    display.note(&format!(
                        "{plugin}: requests from node {} ignored ({})",
                        key.0, key.1
                    ));
                }
            }
            _ => {}
        }
    }

    fn on_snapshot(&mut self, snap: Snapshot, display: &mut Display) {
        let mut counters = self.counters;
        let mut bytes = 0;
        if let Some((stats, peers)) = snap.meshfleet {
            counters.0 = stats.chunks_sent;
            counters.1 = stats.naks_received;
            bytes += stats.chunk_bytes_sent;
            for p in peers {
                let engaged =
                    p.accepted || p.rejected || p.done || p.cannot_decode || p.chunks_sent > 0;
                if p.stock || !engaged {
                    continue;
                }
                let key = (p.peer.0, Via::Meshfleet);
                let r = self.record(key);
                r.links.insert(p.link, (p.chunks_sent, p.bytes_sent));
                let (chunks, b) = r
                    .links
                    .values()
                    .fold((0u32, 0u64), |(c, b), (c2, b2)| (c.saturating_add(*c2), b + b2));
                r.bytes = b;
                r.position = r.position.max(chunks.min(r.total));
                r.subtree_done = p.subtree_done;
                if p.done {
                    r.set_status(Status::Updated);
                } else if p.rejected {
                    r.set_status(Status::Failed);
                } else if p.cannot_decode {
                    r.reason
                        .get_or_insert_with(|| "cannot decode this artefact".to_owned());
                    r.set_status(Status::Skipped);
                }
                display.update(key, r);
            }
        }
        if let Some((stats, progress)) = snap.stock {
            counters.2 = stats.data_sent;
            bytes += stats.raw_bytes_sent;
            for (n, p) in progress {
                let key = (n.0, Via::Stock);
                let r = self.record(key);
                let pos = p.highest_part.saturating_add(1).min(r.total);
                r.position = r.position.max(pos);
                if p.completed {
                    r.set_status(Status::Updated);
                }
                display.update(key, r);
            }
        }
        if counters != self.counters {
            self.counters = counters;
            self.last_activity = Instant::now();
        }
        self.bytes_sent = bytes;
    }

    fn summary(&self, stopped: &'static str) -> Summary {
        let nodes = self
            .nodes
            .iter()
            .map(|((id, via), r)| SummaryNode {
                node_id: *id,
                via: via.name(),
                status: r.status.name(),
                bytes: r.bytes,
                seconds: r.seconds(),
                reason: r.reason.clone(),
                subtree_done: (*via == Via::Meshfleet).then_some(r.subtree_done),
            })
            .collect();
        let duration = self.started.elapsed().as_secs_f64();
        Summary {
            event: "summary",
            nodes,
            bytes_sent: self.bytes_sent,
            duration_s: (duration * 1000.0).round() / 1000.0,
            stopped,
        }
    }
}

/// `{"event":"summary",...}`.
#[derive(Debug, Serialize)]
struct Summary {
    event: &'static str,
    nodes: Vec<SummaryNode>,
    /// Image bytes in stock parts plus payload bytes in meshfleet chunks, retries included.
    bytes_sent: u64,
    duration_s: f64,
    /// `idle` (--exit-when-idle) or `signal`.
    stopped: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SummaryNode {
    node_id: u32,
    via: &'static str,
    status: &'static str,
    bytes: u64,
    seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// meshfleet: the node and every node behind it reported done.
    #[serde(skip_serializing_if = "Option::is_none")]
    subtree_done: Option<bool>,
}

fn print_table(s: &Summary) {
    let mut out = std::io::stdout().lock();
    let mut lines = vec![format!(
        "{:<12} {:<10} {:<12} {:>12} {:>9}",
        "NODE", "VIA", "STATUS", "BYTES", "SECONDS"
    )];
    for n in &s.nodes {
        lines.push(format!(
            "{:<12} {:<10} {:<12} {:>12} {:>9.1}",
            n.node_id, n.via, n.status, n.bytes, n.seconds
        ));
    }
    let count = |st: &str| s.nodes.iter().filter(|n| n.status == st).count();
    lines.push(format!(
        "{} node(s): {} updated, {} in progress, {} failed, {} skipped; {} bytes sent in {:.1} s",
        s.nodes.len(),
        count("updated"),
        count("in_progress"),
        count("failed"),
        count("skipped"),
        s.bytes_sent,
        s.duration_s
    ));
    for n in s.nodes.iter().filter(|n| n.reason.is_some()) {
        lines.push(format!(
            "  node {}: {}",
            n.node_id,
            n.reason.as_deref().unwrap_or_default()
        ));
    }
    for l in lines {
        // A closed stdout must not turn a finished offer into an error.
        if writeln!(out, "{l}").is_err() {
            return;
        }
    }
    let _ = out.flush();
}

// ---------------------------------------------------------------------- display

/// Progress on stderr: bars on a terminal, plain lines otherwise.
enum Display {
    Bars {
        multi: MultiProgress,
        bars: BTreeMap<Key, ProgressBar>,
        style: ProgressStyle,
    },
    Lines {
        /// Last reported (quarter of progress, status) per node.
        reported: BTreeMap<Key, (u32, Status)>,
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
    fn note(&self, msg: &str) {
        match self {
            // Above the bars, so they are not torn.
            Self::Bars { multi, .. } => {
                let _ = multi.println(msg);
            }
            Self::Lines { .. } => eprintln!("{msg}"),
        }
    }

    fn update(&mut self, key: Key, r: &NodeRecord) {
        let (id, via) = key;
        match self {
            Self::Bars { multi, bars, style } => {
                let bar = bars.entry(key).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(u64::from(r.total)));
                    b.set_style(style.clone());
                    b.set_prefix(format!("node {id} ({})", via.name()));
                    b
                });
                if bar.is_finished() {
                    return;
                }
                bar.set_position(u64::from(r.position));
                match r.status {
                    Status::InProgress => bar.set_message(format!("{} bytes", r.bytes)),
                    Status::Updated => {
                        bar.finish_with_message(format!("updated in {:.1} s", r.seconds()));
                    }
                    Status::Failed => bar.abandon_with_message(format!(
                        "failed: {}",
                        r.reason.as_deref().unwrap_or("refused")
                    )),
                    Status::Skipped => bar.abandon_with_message(format!(
                        "skipped: {}",
                        r.reason.as_deref().unwrap_or("cannot decode this artefact")
                    )),
                }
            }
            Self::Lines { reported } => {
                let quarter = r.position.saturating_mul(4).checked_div(r.total).unwrap_or(0);
                let now = (quarter, r.status);
                let before = reported.insert(key, now);
                if before == Some(now) {
                    return;
                }
                let who = format!("node {id} ({})", via.name());
                let msg = match r.status {
                    Status::Updated => format!("{who}: updated in {:.1} s", r.seconds()),
                    Status::Failed => format!(
                        "{who}: failed: {}",
                        r.reason.as_deref().unwrap_or("refused")
                    ),
                    Status::Skipped => format!(
                        "{who}: skipped: {}",
                        r.reason.as_deref().unwrap_or("cannot decode this artefact")
                    ),
                    Status::InProgress if before.is_none() => {
                        format!("{who}: fetching {} {}", r.total, via.unit())
                    }
                    Status::InProgress => format!(
                        "{who}: {}/{} {} ({}%)",
                        r.position,
                        r.total,
                        via.unit(),
                        quarter * 25
                    ),
                };
                eprintln!("{msg}");
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tracker() -> Tracker {
        Tracker::new(&Offered {
            stock_flow: true,
            chunks: 10,
            parts: 3,
            part_size: 1024,
            image_len: 2500,
        })
    }

    #[test]
    fn stock_bytes_follow_the_parts_served() {
        let mut t = tracker();
        let mut d = Display::Lines {
            reported: BTreeMap::new(),
        };
        for part in 0..3 {
            let ev = json!({"event": "part_served", "node": 7, "part": part, "no_part": 3,
                            "served": part + 1});
            t.on_event("ota-stock-sender", &ev, &mut d);
        }
        t.on_event(
            "ota-stock-sender",
            &json!({"event": "node_completed", "node": 7, "took_ms": 1500}),
            &mut d,
        );
        let s = t.summary("idle");
        assert_eq!(s.nodes.len(), 1);
        let n = &s.nodes[0];
        assert_eq!((n.node_id, n.via, n.status), (7, "stock", "updated"));
        assert_eq!(n.bytes, 2500);
        assert!((n.seconds - 1.5).abs() < 1e-9);
    }

    #[test]
    fn rejections_fail_and_updates_stick() {
        let mut t = tracker();
        let mut d = Display::Lines {
            reported: BTreeMap::new(),
        };
        t.on_event(
            "ota-meshfleet",
            &json!({"event": "peer_refused", "peer": 3, "reason": "downgrade refused"}),
            &mut d,
        );
        t.on_event(
            "ota-meshfleet",
            &json!({"event": "peer_done", "peer": 4, "campaign": 1}),
            &mut d,
        );
        t.on_event(
            "ota-meshfleet",
            &json!({"event": "peer_refused", "peer": 4, "reason": "late"}),
            &mut d,
        );
        let v = serde_json::to_value(t.summary("signal")).unwrap();
        assert_eq!(v["event"], "summary");
        assert_eq!(v["nodes"][0]["nodeId"], 3);
        assert_eq!(v["nodes"][0]["status"], "failed");
        assert_eq!(v["nodes"][0]["reason"], "downgrade refused");
        assert_eq!(v["nodes"][1]["status"], "updated");
        assert!(v["bytes_sent"].is_u64() && v["duration_s"].is_f64());
    }

    #[test]
    fn a_neighbour_that_cannot_decode_is_skipped_with_the_reason() {
        let mut t = tracker();
        let mut d = Display::Lines {
            reported: BTreeMap::new(),
        };
        t.on_event(
            "ota-meshfleet",
            &json!({"event": "peer_cannot_decode", "peer": 5, "campaign": 1,
                    "reason": "the payload needs a 32768-byte decompression window, it can give 8192"}),
            &mut d,
        );
        // The stock flow then serves it like a stock node.
        for part in 0..3 {
            let ev = json!({"event": "part_served", "node": 5, "part": part, "no_part": 3,
                            "served": part + 1});
            t.on_event("ota-stock-sender", &ev, &mut d);
        }
        t.on_event(
            "ota-stock-sender",
            &json!({"event": "node_completed", "node": 5, "took_ms": 900}),
            &mut d,
        );
        let v = serde_json::to_value(t.summary("idle")).unwrap();
        let nodes = v["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 2, "{v}");
        assert_eq!(
            (&nodes[0]["via"], &nodes[0]["status"]),
            (&json!("meshfleet"), &json!("skipped"))
        );
        assert!(nodes[0]["reason"]
            .as_str()
            .unwrap()
            .contains("32768-byte decompression window, it can give 8192"));
        assert_eq!(
            (&nodes[1]["via"], &nodes[1]["status"]),
            (&json!("stock"), &json!("updated"))
        );
    }

    #[test]
    fn plugin_events_are_flattened() {
        let v = flatten("ota-meshfleet", json!({"event": "peer_done", "peer": 2}));
        assert_eq!(
            v,
            json!({"event": "peer_done", "peer": 2, "plugin": "ota-meshfleet"})
        );
    }
}
