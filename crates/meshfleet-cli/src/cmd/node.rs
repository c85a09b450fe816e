//! `meshfleet node`: one mesh node, driven by line commands on stdin, reporting events
//! on stdout (readable lines, or JSON objects with `--json`).
//!
//! The flags are a contract: an external harness drives this command against the real
//! C++ painlessMesh, so `--listen`, `--connect`, `--node-id`, `--root` and `--json` and
//! the JSON shapes below must not change.
//!
//! `--ota-dir` adds an OTA receiver ([`crate::cmd::ota::receiver`]) and the `ota` command;
//! without it the node behaves exactly as before.

use std::hash::{BuildHasher, RandomState};
use std::io::BufRead;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use meshfleet_mesh::{Config, Node, NodeId};
use meshfleet_runtime::{
    MeshHandle, Runtime, RuntimeConfig, RuntimeEvent, RuntimeStats, SendError, Stopped,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tracing::{info, warn};

use crate::cmd::firmware::parse_window;
use crate::cmd::ota::receiver::{self, Controller, ReceiverOptions};
use meshfleet_agent::telemetry::Identity;
use meshfleet_agent::{Agent, AgentConfig, Telemetry, TelemetryConfig};
use crate::context::{tokio_runtime, usage, Context};

mod output;

pub(crate) use output::Output;

const LONG_ABOUT: &str = "\
Run a painlessMesh-compatible mesh node over TCP.

The node speaks the painlessMesh wire protocol, so it can join a mesh of ESP32/ESP8266 \
nodes running the C++ library (from a host on the mesh's WiFi) or of other meshfleet nodes. \
--listen accepts connections like a painlessMesh access point (the library uses port 5555); \
--connect joins another node like a station, and reconnects with backoff when the link drops.

Commands, one per line on stdin:
  single <dest> <text>   send <text> (the rest of the line) to node <dest>
  broadcast <text>       send <text> to every node
  nodes                  print the list of other nodes
  topology               print the mesh tree as JSON (painlessMesh's subConnectionJson)
  time                   print the mesh time (microseconds, wraps at 2^32)
  delay <dest>           measure the trip delay to <dest>; the result arrives as an event
  stats                  print counters
  ota                    print the OTA receiver's state (with --ota-dir)
  help                   list these commands
  quit                   close every link and exit with status 0

Events (links up and down, node list changes, messages received, time adjustments) are \
printed on stdout as they happen, one per line: readable text, or with --json one JSON \
object per line, e.g. {\"event\":\"received\",\"from\":1001,\"msg\":\"hi\",\"kind\":\"single\"}. \
Command replies follow the same format ({\"nodes\":[...]}, {\"topology\":{...}}, {\"time\":...}).

Output never holds up the node: lines are queued (up to 1 MiB) and written by a thread of \
their own. If stdout's reader falls behind, lines that do not fit are dropped and counted \
(`stats`: outputShed), and the next line written is preceded by \
{\"event\":\"output_shed\",\"lines\":N,\"total\":T}; a newer node list replaces one still \
queued. If stdout is closed (`meshfleet node ... | head`), output stops and the node keeps \
running.

At end of input on stdin the node keeps running until SIGINT or SIGTERM, so it can run \
detached (`meshfleet node --listen 0.0.0.0:5555 </dev/null &`). SIGINT and SIGTERM stop it \
like `quit`.

OTA receiving (--ota-dir DIR --ota-role R --ota-hardware H): the node accepts firmware \
updates for its role and hardware from `meshfleet ota offer` or from a stock painlessMesh \
sender. DIR holds two image slots (slot_a.bin, slot_b.bin), the staged transfer and the boot \
record. meshfleet transfers are verified chunk by chunk against the signed manifest (signed \
by --ota-key's key, if given: then unsigned or forged artefacts are refused), relayed to \
the node's own meshfleet neighbours, and resumed after a restart; stock transfers (only \
accepted without --ota-key: they carry no signature) are checked against their MD5. A \
verified image is written to the inactive slot and booted on trial: the node prints \
{\"event\":\"ota_boot\",...}, runs --ota-hook through `sh -c` with MESHFLEET_OTA_VERSION \
and MESHFLEET_OTA_IMAGE (the image file) in its environment (this is how a Linux node \
restarts its application; the hook's output goes to stderr), and after --ota-confirm-after \
seconds (30) confirms the image if the node is connected to the mesh. Until then further \
updates are refused. An image never confirmed is booted on trial again at the next start, \
and rolled back after 3 unconfirmed starts; the hook runs at such a start too, for the image \
booted. If the hook fails for a new image, the update is rolled back at once and the hook \
runs again for the previous image. At every start the node prints its boot \
decision ({\"event\":\"ota_boot\",\"reason\":\"start\",...}) and any transfer it resumes \
({\"event\":\"ota_resume\",...}). Transfer events are plugin events \
({\"event\":\"plugin\",\"plugin\":\"ota-receiver\",\"data\":{\"event\":\"progress\",...}}). \
--ota-window caps the DEFLATE window the node gives its decompressor (advertised to its \
neighbours, which then do not offer artefacts packed with a larger one; such an offer is \
refused): 8K is what an ESP8266 can afford; the default, 32K, takes any artefact.

Status and telemetry: --status-interval SECS broadcasts the painlessMesh status package \
(type 604) every SECS seconds, as the library's example does, so stock receivers and \
gateways see the node's uptime, node and link counts and message counters; --telemetry-to N \
streams the meshfleet telemetry (type 710) to gateway node N. Every node answers a gateway's \
telemetry query (type 711), printed as {\"event\":\"plugin\",\"plugin\":\"telemetry\",\
\"data\":{\"event\":\"telemetry_query\",...}}, and then reports to that gateway.";

const AFTER_LONG_HELP: &str = "\
Examples:
  # An access point on the painlessMesh port, with a fixed id:
  meshfleet node --listen 0.0.0.0:5555 --node-id 1001

  # Join it (from another terminal or machine), then type commands:
  meshfleet node --connect 192.168.1.10:5555
  single 1001 hello from the other side
  nodes

  # Relay: accept stations and connect upwards at the same time:
  meshfleet node --listen 0.0.0.0:5556 --connect 192.168.1.10:5555

  # Scripted, machine-readable:
  (sleep 2; echo 'broadcast hi all'; echo quit) | meshfleet node --connect 127.0.0.1:5555 --json

  # A Linux node that takes signed updates for role `gateway` and restarts its service:
  meshfleet node --connect 192.168.1.10:5555 --ota-dir /var/lib/meshfleet/ota \\
      --ota-role gateway --ota-hardware linux-x86_64 --ota-key fleet.key.pub \\
      --ota-hook 'install -m755 \"$MESHFLEET_OTA_IMAGE\" /usr/local/bin/app && systemctl restart app'";

/// Run a mesh node: send and receive messages, watch the mesh.
#[derive(clap::Args, Debug)]
#[command(long_about = LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
pub(crate) struct Args {
    /// Accept mesh connections on ADDR:PORT, like a painlessMesh access point (the
    /// library's port is 5555). Port 0 picks a free port; the `listening` event says which.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,

    /// Connect to the node at HOST:PORT, like a station; reconnects with backoff (0.5 s
    /// doubling to 30 s) whenever the link drops. Repeat for several uplinks.
    #[arg(long, value_name = "HOST:PORT")]
    connect: Vec<String>,

    /// This node's id, 1 to 4294967295 (on an ESP: the last 4 bytes of its AP MAC).
    /// Default: random.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    node_id: Option<u32>,

    /// Make this node the mesh root (painlessMesh `setRoot`): other nodes see it in the
    /// topology with "root":true.
    #[arg(long)]
    root: bool,

    /// Print events and command replies as JSON, one object per line.
    #[arg(long)]
    json: bool,

    /// Largest frame accepted from a peer, in bytes (default 1 MiB); longer frames are
    /// dropped without being buffered.
    #[arg(long, value_name = "BYTES")]
    max_frame_len: Option<usize>,

    /// Send queue cap per link, in bytes (default 256 KiB).
    #[arg(long, hide = true, value_name = "BYTES")]
    queue_cap: Option<usize>,

    /// Output queue cap, in bytes (default 1 MiB): lines that do not fit while stdout's
    /// reader is slow are dropped and counted, never waited for.
    #[arg(long, hide = true, value_name = "BYTES")]
    output_cap: Option<usize>,

    /// Most accepted links from one IP address that have not completed node sync (default
    /// 8); a connection over it takes the slot of that address's idlest unsynced link, or
    /// is closed.
    #[arg(long, hide = true, value_name = "N")]
    max_unsynced_per_addr: Option<usize>,

    /// Receive OTA updates, kept in DIR (created if needed). Needs --ota-role and
    /// --ota-hardware.
    #[arg(long, value_name = "DIR", help_heading = "OTA receiving")]
    ota_dir: Option<PathBuf>,

    /// The OTA role of this node: offers for another role are refused.
    #[arg(long, value_name = "ROLE", help_heading = "OTA receiving")]
    ota_role: Option<String>,

    /// The OTA hardware of this node (e.g. ESP32, linux-arm64).
    #[arg(long, value_name = "HW", help_heading = "OTA receiving")]
    ota_hardware: Option<String>,

    /// Accept only artefacts signed by this public key (from `meshfleet firmware keygen`).
    #[arg(long, value_name = "PUB", help_heading = "OTA receiving")]
    ota_key: Option<PathBuf>,

    /// Protocols to accept updates through, comma-separated: `meshfleet`, `stock`.
    /// Default: both, or only meshfleet with --ota-key (stock images are not signed).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "PROTO",
        help_heading = "OTA receiving"
    )]
    ota_accept: Vec<OtaProto>,

    /// Run `sh -c CMD` whenever the image to run changes (an update booted on trial, a
    /// rollback), with MESHFLEET_OTA_VERSION and MESHFLEET_OTA_IMAGE (the image file) set:
    /// restart the application here. A failure rolls a new image back.
    #[arg(long, value_name = "CMD", help_heading = "OTA receiving")]
    ota_hook: Option<String>,

    /// Confirm a new image after SECS seconds of running if the node is connected
    /// (default 30); unconfirmed images roll back after 3 starts.
    #[arg(long, value_name = "SECS", help_heading = "OTA receiving")]
    ota_confirm_after: Option<u64>,

    /// Largest DEFLATE window this node gives its decompressor: bytes or with a K/KiB
    /// suffix (e.g. 8K), a power of two from 512 to 32768 (default). Artefacts packed with a
    /// larger `--window` are not offered to it (and refused if they are).
    #[arg(
        long,
        value_name = "BYTES",
        value_parser = parse_window,
        help_heading = "OTA receiving"
    )]
    ota_window: Option<u32>,

    /// Pacing of the OTA chunks this node relays, bytes per second per link (tests).
    #[arg(long, hide = true, value_name = "BYTES_PER_S")]
    ota_rate: Option<u64>,

    /// Broadcast the painlessMesh status package (type 604, the Alteriom
    /// EnhancedStatusPackage) every SECS seconds, as the library's example does: uptime, node
    /// and link counts, message counters, firmware version.
    #[arg(
        long,
        value_name = "SECS",
        value_parser = clap::value_parser!(u64).range(1..=86_400),
        help_heading = "Status and telemetry"
    )]
    status_interval: Option<u64>,

    /// Send the meshfleet telemetry stream (type 710: keyframes, thresholded deltas, a
    /// threshold crossing at once) to the gateway node N. Without it, telemetry goes to the
    /// last node that asked for it with a query (711).
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..),
        help_heading = "Status and telemetry"
    )]
    telemetry_to: Option<u32>,

    /// Seconds between scheduled telemetry reports (default 300; every 12th is a keyframe).
    #[arg(
        long,
        value_name = "SECS",
        value_parser = clap::value_parser!(u32).range(1..=86_400),
        help_heading = "Status and telemetry"
    )]
    telemetry_interval: Option<u32>,
}

/// A protocol OTA updates may arrive through (`--ota-accept`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OtaProto {
    /// The meshfleet protocol (signed, compressed, resumable, relayed).
    Meshfleet,
    /// The painlessMesh library's stock OTA (unsigned; checked by MD5).
    Stock,
}

/// A window size in the config file: bytes (`ota-window = 8192`) or as on the command line
/// (`ota-window = "8K"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum WindowSetting {
    Bytes(u32),
    Text(String),
}

impl WindowSetting {
    fn resolve(self) -> anyhow::Result<u32> {
        let text = match self {
            Self::Bytes(n) => n.to_string(),
            Self::Text(t) => t,
        };
        parse_window(&text).map_err(|e| usage(format!("ota-window in the config file: {e}")))
    }
}

/// The `[node]` table of the config file: defaults for the flags, same names.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct NodeDefaults {
    listen: Option<String>,
    connect: Vec<String>,
    node_id: Option<u32>,
    root: bool,
    json: bool,
    max_frame_len: Option<usize>,
    queue_cap: Option<usize>,
    output_cap: Option<usize>,
    max_unsynced_per_addr: Option<usize>,
    ota_dir: Option<PathBuf>,
    ota_role: Option<String>,
    ota_hardware: Option<String>,
    ota_key: Option<PathBuf>,
    ota_accept: Vec<OtaProto>,
    ota_hook: Option<String>,
    ota_confirm_after: Option<u64>,
    ota_window: Option<WindowSetting>,
    status_interval: Option<u64>,
    telemetry_to: Option<u32>,
    telemetry_interval: Option<u32>,
}

/// Default `--ota-confirm-after`.
const DEFAULT_CONFIRM_AFTER: u64 = 30;

/// Flags over config file over built-in defaults.
struct Options {
    node: Config,
    runtime: RuntimeConfig,
    json: bool,
    output_cap: usize,
    ota: Option<ReceiverOptions>,
    telemetry: TelemetryConfig,
}

impl Options {
    fn resolve(args: Args, defaults: NodeDefaults) -> anyhow::Result<Self> {
        let node_id = match args.node_id.or(defaults.node_id) {
            Some(0) => return Err(usage("node-id must be between 1 and 4294967295")),
            Some(id) => NodeId(id),
            None => random_node_id(),
        };
        let mut node = Config::new(node_id);
        node.root = args.root || defaults.root;
        if let Some(n) = args.max_frame_len.or(defaults.max_frame_len) {
            if n == 0 {
                return Err(usage("--max-frame-len must be positive"));
            }
            node.max_frame_len = n;
        }

        let mut runtime = RuntimeConfig::default();
        if let Some(addr) = args.listen.or(defaults.listen) {
            runtime.listen = Some(resolve_listen(&addr)?);
        }
        // Flags replace the file's list rather than adding to it, like every other flag.
        runtime.connect = if args.connect.is_empty() {
            defaults.connect
        } else {
            args.connect
        };
        for target in &runtime.connect {
            check_host_port(target)?;
        }
        if let Some(cap) = args.queue_cap.or(defaults.queue_cap) {
            if cap == 0 {
                return Err(usage("--queue-cap must be positive"));
            }
            runtime.queue_cap = cap;
        }
        if let Some(n) = args.max_unsynced_per_addr.or(defaults.max_unsynced_per_addr) {
            if n == 0 {
                return Err(usage("--max-unsynced-per-addr must be positive"));
            }
            runtime.max_unsynced_per_addr = n;
        }
        let output_cap = match args.output_cap.or(defaults.output_cap) {
            Some(0) => return Err(usage("--output-cap must be positive")),
            Some(cap) => cap,
            None => output::DEFAULT_OUTPUT_CAP,
        };
        let window = match args.ota_window {
            Some(w) => Some(w),
            None => defaults.ota_window.map(WindowSetting::resolve).transpose()?,
        };
        let ota = OtaFlags {
            dir: args.ota_dir.or(defaults.ota_dir),
            role: args.ota_role.or(defaults.ota_role),
            hardware: args.ota_hardware.or(defaults.ota_hardware),
            key: args.ota_key.or(defaults.ota_key),
            accept: if args.ota_accept.is_empty() {
                defaults.ota_accept
            } else {
                args.ota_accept
            },
            hook: args.ota_hook.or(defaults.ota_hook),
            confirm_after: args.ota_confirm_after.or(defaults.ota_confirm_after),
            window,
            rate: args.ota_rate,
        }
        .resolve()?;
        let mut telemetry = TelemetryConfig {
            gateway: args.telemetry_to.or(defaults.telemetry_to).map(NodeId),
            status_interval: args
                .status_interval
                .or(defaults.status_interval)
                .map(meshfleet_mesh::Duration::from_secs),
            ..TelemetryConfig::default()
        };
        if let Some(s) = args.telemetry_interval.or(defaults.telemetry_interval) {
            telemetry.producer.report_interval_s = s;
        }
        if telemetry.gateway == Some(NodeId(0))
            || telemetry.status_interval == Some(meshfleet_mesh::Duration::ZERO)
            || telemetry.producer.report_interval_s == 0
        {
            return Err(usage(
                "telemetry-to, status-interval and telemetry-interval must be positive",
            ));
        }
        Ok(Self {
            node,
            runtime,
            json: args.json || defaults.json,
            output_cap,
            ota,
            telemetry,
        })
    }
}

/// The `--ota-*` settings, before checking.
struct OtaFlags {
    dir: Option<PathBuf>,
    role: Option<String>,
    hardware: Option<String>,
    key: Option<PathBuf>,
    accept: Vec<OtaProto>,
    hook: Option<String>,
    confirm_after: Option<u64>,
    /// A valid DEFLATE window (checked when parsed).
    window: Option<u32>,
    rate: Option<u64>,
}

impl OtaFlags {
    fn resolve(self) -> anyhow::Result<Option<ReceiverOptions>> {
        let Some(dir) = self.dir else {
            let given = self.role.is_some()
                || self.hardware.is_some()
                || self.key.is_some()
                || !self.accept.is_empty()
                || self.hook.is_some()
                || self.confirm_after.is_some()
                || self.window.is_some()
                || self.rate.is_some();
            if given {
                return Err(usage("the --ota-* options need --ota-dir DIR"));
            }
            return Ok(None);
        };
        // Absolute, so the image path handed to the hook does not depend on its cwd.
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let (Some(role), Some(hardware)) = (self.role, self.hardware) else {
            return Err(usage("--ota-dir needs --ota-role and --ota-hardware"));
        };
        // `esp32` is ESP32, as `firmware pack` writes it; other names are kept as given.
        let hardware = crate::cmd::firmware::parse_hardware(&hardware).unwrap_or(hardware);
        // The manifest's limit: a longer role could never match an artefact.
        let max = meshfleet_firmware::MAX_TEXT_LEN;
        for (flag, v) in [("--ota-role", &role), ("--ota-hardware", &hardware)] {
            if v.is_empty() || v.len() > max {
                return Err(usage(format!("{flag}: 1 to {max} bytes")));
            }
        }
        let accept = if self.accept.is_empty() {
            if self.key.is_some() {
                vec![OtaProto::Meshfleet]
            } else {
                vec![OtaProto::Meshfleet, OtaProto::Stock]
            }
        } else {
            self.accept
        };
        let stock = accept.contains(&OtaProto::Stock);
        if stock && self.key.is_some() {
            return Err(usage(
                "--ota-accept stock cannot be combined with --ota-key: stock images carry no \
                 signature",
            ));
        }
        if self.rate == Some(0) {
            return Err(usage("--ota-rate must be positive"));
        }
        let key = self
            .key
            .as_deref()
            .map(|p| {
                // The key reader's error names the file.
                meshfleet_firmware::keys::read_public_key(p).context("--ota-key")
            })
            .transpose()?;
        Ok(Some(ReceiverOptions {
            dir,
            role,
            hardware,
            key,
            meshfleet: accept.contains(&OtaProto::Meshfleet),
            stock,
            hook: self.hook.filter(|h| !h.trim().is_empty()),
            confirm_after: Duration::from_secs(
                self.confirm_after.unwrap_or(DEFAULT_CONFIRM_AFTER),
            ),
            max_window: self.window.unwrap_or(meshfleet_firmware::MAX_WINDOW),
            link_rate: self.rate,
        }))
    }
}

/// `--listen ADDR:PORT`, resolved (usage error if it does not resolve).
pub(crate) fn resolve_listen(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(|e| usage(format!("--listen {addr}: {e} (expected ADDR:PORT)")))?
        .next()
        .ok_or_else(|| usage(format!("--listen {addr}: resolves to no address")))
}

/// Connect targets are resolved at every attempt (addresses may change), so only their
/// form is checked here.
pub(crate) fn check_host_port(target: &str) -> anyhow::Result<()> {
    match target.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(usage(format!("--connect {target}: expected HOST:PORT"))),
    }
}

/// A non-zero id from the OS-seeded hasher (0 means "unknown" on the wire).
pub(crate) fn random_node_id() -> NodeId {
    let state = RandomState::new();
    let mut salt = 0u64;
    loop {
        let bits = state.hash_one((std::time::SystemTime::now(), std::process::id(), salt));
        let id = (bits ^ (bits >> 32)) as u32;
        if id != 0 {
            return NodeId(id);
        }
        salt += 1;
    }
}

pub(crate) fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    let opts = Options::resolve(args, ctx.section("node")?)?;
    let rt = tokio_runtime()?;
    let result = rt.block_on(run_node(opts));
    // The stdin thread may be blocked in read(2); it must not hold up the exit.
    rt.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn run_node(opts: Options) -> anyhow::Result<()> {
    let out = Output::stdout(opts.json, opts.output_cap)?;
    let node_id = opts.node.node_id;
    let root = opts.node.root;
    let mut node = Node::new(opts.node);
    // The boot decision is made before the node joins the mesh, like a bootloader's.
    let receiver = match &opts.ota {
        Some(o) => Some(
            receiver::open(o)
                .with_context(|| format!("cannot open the OTA store in {}", o.dir.display()))?,
        ),
        None => None,
    };
    // Status and telemetry: every node answers a gateway's queries (711); it broadcasts
    // 604 and streams 710 only when asked to by its flags. Without an OTA receiver it is
    // this program, at this version, on this host.
    let telemetry = match &receiver {
        Some(r) => Telemetry::new(opts.telemetry).with_receiver(r),
        None => {
            let mut t = Telemetry::new(opts.telemetry);
            t.set_identity(Identity {
                firmware: env!("CARGO_PKG_VERSION").into(),
                role: "node".into(),
                hardware: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
            });
            t
        }
    };
    // The node as shipped: the same composition as the simulator's nodes.
    Agent::equip(
        &mut node,
        AgentConfig {
            receiver,
            extra: vec![Box::new(telemetry)],
        },
    )
    .map_err(|e| anyhow::anyhow!("cannot compose the node's plugins: {e}"))?;
    let ota_dir = opts.ota.as_ref().map(|o| o.dir.clone());
    let (mesh, mut task) = Runtime::start(node, opts.runtime)
        .await
        .context("cannot start the node")?;
    // Subscribed before the runtime started: holds `listening` and any early event.
    let events = mesh.subscribe();
    // The OTA controller's own subscription, taken before any update can arrive (an
    // offer needs a link, a node sync and a CAPS exchange first).
    let ota_events = opts.ota.as_ref().map(|_| mesh.subscribe());
    out.reply(
        Start {
            event: "start",
            node_id: node_id.0,
            root,
        },
        || format!("node {node_id} started{}", if root { " (root)" } else { "" }),
    );
    let controller = opts.ota.zip(ota_events).map(|(o, ota_events)| {
        let c = Controller {
            mesh: mesh.clone(),
            out,
            hook: o.hook,
            dir: o.dir,
        };
        tokio::spawn(c.run(ota_events))
    });
    let printer = tokio::spawn(print_events(events, out));

    let mut lines = spawn_stdin_reader()?;
    let mut signals = Signals::new()?;
    let mut stdin_open = true;
    let mut task_done = false;
    let result = loop {
        tokio::select! {
            line = lines.recv(), if stdin_open => match line {
                Some(line) => match execute(&mesh, out, line, ota_dir.as_deref()).await {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Quit) => break Ok(()),
                    Err(Stopped) => break Err(anyhow!("the mesh runtime stopped unexpectedly")),
                },
                None => {
                    stdin_open = false;
                    info!("end of stdin: running until SIGINT or SIGTERM");
                }
            },
            signal = signals.recv() => {
                info!(signal, "stopping");
                break Ok(());
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

    out.reply(json!({"event": "stopping"}), || "stopping".to_owned());
    if let Some(c) = controller {
        // A hook still running is killed with it.
        c.abort();
    }
    mesh.shutdown().await;
    if !task_done {
        let _ = task.await;
    }
    drop(mesh);
    // The printer ends once the runtime's event channel closes; give it a moment to
    // queue the last disconnects, and the writer to write them, but do not hang on a
    // reader that has stopped.
    let _ = tokio::time::timeout(Duration::from_secs(1), printer).await;
    let _ = tokio::task::spawn_blocking(move || out.finish(Duration::from_secs(1))).await;
    result
}

impl Output {
    /// Prints `value` in JSON mode, `text()` otherwise.
    pub(crate) fn reply(self, value: impl Serialize, text: impl FnOnce() -> String) {
        if !self.json {
            self.line(&text());
            return;
        }
        match serde_json::to_string(&value) {
            Ok(s) => self.line(&s),
            Err(err) => warn!(error = %err, "cannot serialize a reply"),
        }
    }

    fn event(self, e: &RuntimeEvent) {
        // Only the latest node list matters: a newer one replaces one still queued.
        let kind = match e {
            RuntimeEvent::Nodes { .. } => output::Kind::NodeList,
            _ => output::Kind::Plain,
        };
        if self.json {
            match serde_json::to_string(e) {
                Ok(s) => self.line_of(&s, kind),
                Err(err) => warn!(error = %err, "cannot serialize event"),
            }
        } else {
            self.line_of(&one_line(&e.to_string()), kind);
        }
    }

    fn error(self, msg: &str) {
        self.reply(json!({ "error": msg }), || format!("error: {msg}"));
    }
}

/// Escapes line breaks and other control characters, so a received message cannot
/// break the one-event-per-line output.
fn one_line(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

async fn print_events(mut events: broadcast::Receiver<RuntimeEvent>, out: Output) {
    // Text mode: a stock update's parts are summarised (JSON keeps every event).
    let mut parts = receiver::PartProgress::default();
    loop {
        match events.recv().await {
            Ok(e) if !out.json => match parts.text(&e) {
                receiver::TextLine::Event => out.event(&e),
                receiver::TextLine::Skip => {}
                receiver::TextLine::Text(t) => out.reply((), || t),
            },
            Ok(e) => out.event(&e),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!(missed = n, "output too slow: events skipped");
                out.lost(n);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Longest command line accepted (a message must fit in a frame anyway).
const MAX_LINE: usize = 4 << 20;

/// One line from stdin.
enum Line {
    Text(String),
    TooLong,
    NotUtf8,
}

/// Reads stdin on a plain thread: tokio's stdin would hold up the runtime's shutdown
/// while a read is pending. The channel is bounded: a fast writer is held back by the
/// pipe, not buffered here.
fn spawn_stdin_reader() -> anyhow::Result<mpsc::Receiver<Line>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            loop {
                match read_line_capped(&mut stdin, MAX_LINE) {
                    Ok(Some(line)) => {
                        if tx.blocking_send(line).is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        warn!(error = %e, "cannot read stdin");
                        return;
                    }
                }
            }
        })
        .context("cannot start the stdin thread")?;
    Ok(rx)
}

/// Reads up to and including the next `\n`, keeping at most `max` bytes: a longer line
/// is consumed and reported as [`Line::TooLong`]. `None` at end of input.
fn read_line_capped(r: &mut impl BufRead, max: usize) -> std::io::Result<Option<Line>> {
    let mut buf = Vec::new();
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            if !read_any {
                return Ok(None);
            }
            break;
        }
        read_any = true;
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if !too_long {
            if buf.len() + take > max {
                too_long = true;
                buf = Vec::new();
            } else {
                buf.extend_from_slice(&chunk[..take]);
            }
        }
        r.consume(take);
        if done {
            break;
        }
    }
    if too_long {
        return Ok(Some(Line::TooLong));
    }
    Ok(Some(match String::from_utf8(buf) {
        Ok(s) => Line::Text(s),
        Err(_) => Line::NotUtf8,
    }))
}

/// A parsed stdin command.
#[derive(Debug, PartialEq, Eq)]
enum Cmd<'a> {
    Single { dest: NodeId, text: &'a str },
    Broadcast(&'a str),
    Nodes,
    Topology,
    Time,
    Delay(NodeId),
    Stats,
    Ota,
    Help,
    Quit,
    Nothing,
}

const HELP: &str = "commands: single <dest> <text> | broadcast <text> | nodes | topology | \
                    time | delay <dest> | stats | ota (with --ota-dir) | help | quit";

/// Splits off the first blank-separated word; the rest has its leading blanks removed.
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

fn node_id_arg(s: &str) -> Result<NodeId, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("node id 0 is not a node".into()),
        Ok(n) => Ok(NodeId(n)),
        Err(_) if s.is_empty() => Err("missing node id".into()),
        Err(_) => Err(format!("'{s}' is not a node id (1..4294967295)")),
    }
}

fn parse(line: &str) -> Result<Cmd<'_>, String> {
    let line = line.trim_end_matches(['\n', '\r']);
    let (verb, rest) = word(line);
    let no_args = |cmd| {
        if rest.is_empty() {
            Ok(cmd)
        } else {
            Err(format!("'{verb}' takes no arguments"))
        }
    };
    match verb {
        "" => Ok(Cmd::Nothing),
        "single" => {
            let (dest, text) = word(rest);
            Ok(Cmd::Single {
                dest: node_id_arg(dest)?,
                text,
            })
        }
        "broadcast" => Ok(Cmd::Broadcast(rest)),
        "delay" => {
            let (dest, extra) = word(rest);
            if !extra.is_empty() {
                return Err("usage: delay <dest>".into());
            }
            Ok(Cmd::Delay(node_id_arg(dest)?))
        }
        "nodes" => no_args(Cmd::Nodes),
        "topology" => no_args(Cmd::Topology),
        "time" => no_args(Cmd::Time),
        "stats" => no_args(Cmd::Stats),
        "ota" => no_args(Cmd::Ota),
        "help" => no_args(Cmd::Help),
        "quit" | "exit" => no_args(Cmd::Quit),
        other => Err(format!("unknown command '{other}' ({HELP})")),
    }
}

enum Flow {
    Continue,
    Quit,
}

fn ids(nodes: &[NodeId]) -> Vec<u32> {
    nodes.iter().map(|n| n.0).collect()
}

fn ids_text(nodes: &[NodeId]) -> String {
    let list: Vec<String> = nodes.iter().map(ToString::to_string).collect();
    format!("[{}]", list.join(", "))
}

/// `{"event":"start",...}`: the first line, with the (possibly random) node id.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Start {
    event: &'static str,
    node_id: u32,
    root: bool,
}

/// `{"event":"sent",...}`: the outcome of `single`, `broadcast` or `delay` (fields in
/// this order; `json!` would sort them).
#[derive(Serialize)]
struct Sent<'a> {
    event: &'static str,
    kind: &'a str,
    #[serde(rename = "type")]
    ty: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    dest: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    links: Option<usize>,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Prints the outcome of a send to one node.
fn report_send(
    out: Output,
    kind: &str,
    ty: u8,
    dest: NodeId,
    r: Result<(), SendError>,
) -> Result<(), Stopped> {
    let error = match r {
        Ok(()) => None,
        Err(SendError::Stopped(s)) => return Err(s),
        Err(e) => Some(e.to_string()),
    };
    let text = || match &error {
        None => format!("sent {kind} to {dest}"),
        Some(e) => format!("{kind} to {dest} not sent: {e}"),
    };
    let sent = Sent {
        event: "sent",
        kind,
        ty,
        dest: Some(dest.0),
        links: None,
        ok: error.is_none(),
        error: error.clone(),
    };
    out.reply(sent, text);
    Ok(())
}

/// The `stats` reply.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatsReply {
    links: usize,
    queued_bytes: usize,
    queue_dropped: u64,
    queue_evicted: u64,
    closed_stalled: u64,
    links_evicted: u64,
    accepts_refused: u64,
    bytes_in: u64,
    bytes_out: u64,
    frames_in: u64,
    frames_out: u64,
    forwarded: u64,
    app_sent: u64,
    app_received: u64,
    dropped_too_long: u64,
    dropped_decode: u64,
    dropped_no_route: u64,
    refused_trees: u64,
    refused_time: u64,
    time_adjustments: u64,
    time_steps_bounded: u64,
    /// Output lines dropped because stdout's reader was too slow.
    output_shed: u64,
    output_coalesced: u64,
    output_queued_bytes: usize,
}

impl StatsReply {
    fn new(s: &RuntimeStats, out: output::OutputStats) -> Self {
        let n = &s.node;
        Self {
            links: s.links,
            queued_bytes: s.queued_bytes,
            queue_dropped: s.queue_dropped,
            queue_evicted: s.queue_evicted,
            closed_stalled: s.closed_stalled,
            links_evicted: s.links_evicted,
            accepts_refused: s.accepts_refused + s.accepts_refused_per_addr,
            bytes_in: n.bytes_in,
            bytes_out: n.bytes_out,
            frames_in: n.frames_in,
            frames_out: n.frames_out,
            forwarded: n.forwarded,
            app_sent: n.app_sent,
            app_received: n.app_received,
            dropped_too_long: n.dropped_too_long,
            dropped_decode: n.dropped_decode,
            dropped_no_route: n.dropped_no_route,
            refused_trees: n.refused_trees,
            refused_time: n.refused_time,
            time_adjustments: n.time_adjustments,
            time_steps_bounded: n.time_steps_bounded,
            output_shed: out.shed_lines,
            output_coalesced: out.coalesced,
            output_queued_bytes: out.queued_bytes,
        }
    }
}

impl std::fmt::Display for StatsReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "links {}, frames in {} out {}, forwarded {}, messages sent {} received {}, \
             dropped: queue full {}, too long {}, undecodable {}, no route {}, \
             node syncs refused {}, output lines shed {}",
            self.links,
            self.frames_in,
            self.frames_out,
            self.forwarded,
            self.app_sent,
            self.app_received,
            self.queue_dropped,
            self.dropped_too_long,
            self.dropped_decode,
            self.dropped_no_route,
            self.refused_trees,
            self.output_shed
        )
    }
}

async fn execute(
    mesh: &MeshHandle,
    out: Output,
    line: Line,
    ota: Option<&std::path::Path>,
) -> Result<Flow, Stopped> {
    let text = match line {
        Line::Text(t) => t,
        Line::TooLong => {
            out.error(&format!("line longer than {MAX_LINE} bytes ignored"));
            return Ok(Flow::Continue);
        }
        Line::NotUtf8 => {
            out.error("line is not valid UTF-8; ignored");
            return Ok(Flow::Continue);
        }
    };
    let cmd = match parse(&text) {
        Ok(c) => c,
        Err(msg) => {
            out.error(&msg);
            return Ok(Flow::Continue);
        }
    };
    match cmd {
        Cmd::Nothing => {}
        Cmd::Single { dest, text } => {
            let r = mesh.send_single(dest, text).await;
            report_send(out, "single", 9, dest, r)?;
        }
        Cmd::Broadcast(text) => {
            let links = mesh.broadcast(text).await?;
            let sent = Sent {
                event: "sent",
                kind: "broadcast",
                ty: 8,
                dest: None,
                links: Some(links),
                ok: links > 0,
                error: (links == 0).then(|| "no synced neighbour".to_owned()),
            };
            out.reply(sent, || format!("sent broadcast on {links} link(s)"));
        }
        Cmd::Delay(dest) => {
            let r = mesh.start_delay_measurement(dest).await;
            report_send(out, "delay", 3, dest, r)?;
        }
        Cmd::Nodes => {
            let nodes = mesh.nodes().await?;
            out.reply(json!({ "nodes": ids(&nodes) }), || {
                format!("nodes: {}", ids_text(&nodes))
            });
        }
        Cmd::Topology => {
            let tree = mesh.topology().await?;
            // NodeTree serializes to the library's subConnectionJson shape.
            match serde_json::to_value(&tree) {
                Ok(v) => out.reply(json!({ "topology": v }), || v.to_string()),
                Err(e) => out.error(&format!("cannot serialize the topology: {e}")),
            }
        }
        Cmd::Time => {
            let t = mesh.mesh_time().await?;
            out.reply(json!({ "time": t }), || format!("time: {t}"));
        }
        Cmd::Stats => {
            let stats = StatsReply::new(&mesh.stats().await?, out.stats());
            let text = stats.to_string();
            out.reply(json!({ "stats": stats }), || text);
        }
        Cmd::Ota => {
            let Some(dir) = ota.map(std::path::Path::to_path_buf) else {
                out.error("no OTA receiver: start the node with --ota-dir");
                return Ok(Flow::Continue);
            };
            let state = mesh
                .with_node(move |node, _| {
                    node.plugin_mut::<receiver::Receiver>()
                        .map(|r| receiver::state(r, &dir))
                })
                .await?;
            match state {
                Some(s) => {
                    let text = s.to_string();
                    out.reply(json!({ "ota": s }), || text);
                }
                None => out.error("no OTA receiver"),
            }
        }
        Cmd::Help => {
            out.reply(json!({ "help": HELP }), || HELP.to_owned());
        }
        Cmd::Quit => return Ok(Flow::Quit),
    }
    Ok(Flow::Continue)
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere).
pub(crate) struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers.
    pub(crate) fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
                term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next signal's name.
    pub(crate) async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => "SIGINT",
                _ = self.term.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse("single 1001 hello  world\n"),
            Ok(Cmd::Single {
                dest: NodeId(1001),
                text: "hello  world"
            })
        );
        assert_eq!(
            parse("single 7\r\n"),
            Ok(Cmd::Single {
                dest: NodeId(7),
                text: ""
            })
        );
        assert_eq!(parse("broadcast a b c"), Ok(Cmd::Broadcast("a b c")));
        assert_eq!(parse("  nodes  "), Ok(Cmd::Nodes));
        assert_eq!(parse("delay 4294967295"), Ok(Cmd::Delay(NodeId(u32::MAX))));
        assert_eq!(parse(""), Ok(Cmd::Nothing));
        assert!(parse("single x hi").is_err());
        assert!(parse("single 0 hi").is_err());
        assert!(parse("single").is_err());
        assert!(parse("delay 5 6").is_err());
        assert!(parse("nodes please").is_err());
        assert!(parse("frobnicate").unwrap_err().contains("unknown command"));
        assert_eq!(parse("ota"), Ok(Cmd::Ota));
        assert!(parse("ota now").is_err());
    }

    fn ota_flags(dir: Option<&str>) -> OtaFlags {
        OtaFlags {
            dir: dir.map(PathBuf::from),
            role: Some("sensor".into()),
            hardware: Some("ESP32".into()),
            key: None,
            accept: Vec::new(),
            hook: None,
            confirm_after: None,
            window: None,
            rate: None,
        }
    }

    #[test]
    fn ota_flags_resolve() {
        let o = ota_flags(Some("ota")).resolve().unwrap().unwrap();
        assert!(o.dir.is_absolute() && o.dir.ends_with("ota"));
        assert!(o.meshfleet && o.stock, "both protocols by default without a key");
        assert_eq!(o.confirm_after, Duration::from_secs(30));
        assert!(o.key.is_none() && o.hook.is_none());

        let mut f = ota_flags(Some("ota"));
        f.accept = vec![OtaProto::Stock];
        f.confirm_after = Some(0);
        f.hook = Some("  ".into());
        let o = f.resolve().unwrap().unwrap();
        assert!(!o.meshfleet && o.stock);
        assert_eq!(o.confirm_after, Duration::ZERO);
        assert!(o.hook.is_none(), "a blank hook is no hook");

        // Without --ota-dir: nothing, and the other flags are a usage error.
        let mut f = ota_flags(None);
        f.role = None;
        f.hardware = None;
        assert!(f.resolve().unwrap().is_none());
        assert!(ota_flags(None).resolve().is_err());
        let mut f = ota_flags(Some("ota"));
        f.hardware = None;
        assert!(f.resolve().is_err());
        // Stock images carry no signature: not with a trusted key.
        let mut f = ota_flags(Some("ota"));
        f.key = Some("fleet.pub".into());
        f.accept = vec![OtaProto::Meshfleet, OtaProto::Stock];
        let e = f.resolve().unwrap_err();
        assert!(e.downcast_ref::<crate::context::UsageError>().is_some());
        let mut f = ota_flags(Some("ota"));
        f.rate = Some(0);
        assert!(f.resolve().is_err());
        // The window: 32 KiB unless given; not without --ota-dir.
        assert_eq!(ota_flags(Some("ota")).resolve().unwrap().unwrap().max_window, 32768);
        let mut f = ota_flags(Some("ota"));
        f.window = Some(8192);
        assert_eq!(f.resolve().unwrap().unwrap().max_window, 8192);
        let mut f = ota_flags(None);
        (f.role, f.hardware, f.window) = (None, None, Some(8192));
        assert!(f.resolve().is_err());
    }

    #[test]
    fn ota_window_flag_and_config() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            node: Args,
        }
        let parse = |a: &[&str]| Cli::try_parse_from([&["node"], a].concat()).map(|c| c.node);
        assert_eq!(parse(&["--ota-window", "8K"]).unwrap().ota_window, Some(8192));
        assert_eq!(parse(&["--ota-window", "4096"]).unwrap().ota_window, Some(4096));
        let e = parse(&["--ota-window", "5000"]).err().unwrap().to_string();
        assert!(e.contains("power of two from 512 to 32768"), "{e}");

        let args = || parse(&["--node-id", "5", "--ota-role", "sensor"]).unwrap();
        let file = |t: &str| toml::from_str::<NodeDefaults>(t).unwrap();
        let base = "ota-dir = \"/var/lib/ota\"\nota-hardware = \"ESP8266\"\n";
        for (line, want) in [("ota-window = \"8K\"", 8192), ("ota-window = 16384", 16384)] {
            let o = Options::resolve(args(), file(&format!("{base}{line}"))).unwrap();
            assert_eq!(o.ota.unwrap().max_window, want, "{line}");
        }
        // The flag wins over the file.
        let mut a = args();
        a.ota_window = Some(1024);
        let o = Options::resolve(a, file(&format!("{base}ota-window = \"8K\""))).unwrap();
        assert_eq!(o.ota.unwrap().max_window, 1024);
        let e = Options::resolve(args(), file(&format!("{base}ota-window = 6000")))
            .err()
            .unwrap();
        assert!(e.downcast_ref::<crate::context::UsageError>().is_some());
        assert!(e.to_string().contains("ota-window in the config file"), "{e}");
    }

    #[test]
    fn ota_settings_come_from_the_config_file_too() {
        let file: NodeDefaults = toml::from_str(
            "ota-dir = \"/var/lib/ota\"\nota-role = \"gw\"\nota-hardware = \"linux\"\n\
             ota-accept = [\"meshfleet\"]\nota-confirm-after = 5",
        )
        .unwrap();
        let args = Args {
            listen: None,
            connect: Vec::new(),
            node_id: Some(5),
            root: false,
            json: false,
            max_frame_len: None,
            queue_cap: None,
            output_cap: None,
            max_unsynced_per_addr: None,
            ota_dir: None,
            ota_role: Some("sensor".into()),
            ota_hardware: None,
            ota_key: None,
            ota_accept: Vec::new(),
            ota_hook: None,
            ota_confirm_after: None,
            ota_window: None,
            ota_rate: None,
            status_interval: None,
            telemetry_to: None,
            telemetry_interval: None,
        };
        let o = Options::resolve(args, file).unwrap().ota.unwrap();
        assert_eq!(o.dir, PathBuf::from("/var/lib/ota"));
        assert_eq!((o.role.as_str(), o.hardware.as_str()), ("sensor", "linux"));
        assert!(o.meshfleet && !o.stock);
        assert_eq!(o.confirm_after, Duration::from_secs(5));
        assert!(toml::from_str::<NodeDefaults>("ota-accept = [\"gossip\"]").is_err());
    }

    #[test]
    fn long_lines_are_consumed_and_reported() {
        let input = format!("{}\nnodes\nlast", "x".repeat(100));
        let mut r = std::io::BufReader::with_capacity(16, input.as_bytes());
        assert!(matches!(read_line_capped(&mut r, 50), Ok(Some(Line::TooLong))));
        assert!(matches!(read_line_capped(&mut r, 50), Ok(Some(Line::Text(t))) if t == "nodes\n"));
        assert!(matches!(read_line_capped(&mut r, 50), Ok(Some(Line::Text(t))) if t == "last"));
        assert!(matches!(read_line_capped(&mut r, 50), Ok(None)));
    }

    #[test]
    fn output_stays_on_one_line() {
        assert_eq!(one_line("a\nb\tc"), "a\\nb\\tc");
        assert_eq!(one_line("plain é"), "plain é");
    }

    #[test]
    fn options_resolve_flags_over_file() {
        let args = Args {
            listen: None,
            connect: vec!["10.0.0.1:5555".into()],
            node_id: Some(5),
            root: false,
            json: false,
            max_frame_len: None,
            queue_cap: Some(1000),
            output_cap: None,
            max_unsynced_per_addr: None,
            ota_dir: None,
            ota_role: None,
            ota_hardware: None,
            ota_key: None,
            ota_accept: Vec::new(),
            ota_hook: None,
            ota_confirm_after: None,
            ota_window: None,
            ota_rate: None,
            status_interval: Some(7),
            telemetry_to: None,
            telemetry_interval: None,
        };
        let file: NodeDefaults = toml::from_str(
            "listen = \"127.0.0.1:0\"\nconnect = [\"a:1\"]\nnode-id = 9\nroot = true\njson = true\n\
             max-unsynced-per-addr = 3\noutput-cap = 4096\nstatus-interval = 60\ntelemetry-to = 1001",
        )
        .unwrap();
        let o = Options::resolve(args, file).unwrap();
        assert_eq!(o.node.node_id, NodeId(5));
        assert!(o.node.root && o.json);
        assert_eq!(
            o.telemetry.status_interval,
            Some(meshfleet_mesh::Duration::from_secs(7))
        );
        assert_eq!(o.telemetry.gateway, Some(NodeId(1001)));
        assert_eq!(o.telemetry.producer.report_interval_s, 300);
        assert_eq!(o.runtime.connect, ["10.0.0.1:5555"]);
        assert_eq!(o.runtime.listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(o.runtime.queue_cap, 1000);
        assert_eq!(o.runtime.max_unsynced_per_addr, 3);
        assert_eq!(o.output_cap, 4096);
        assert!(toml::from_str::<NodeDefaults>("nodeid = 3").is_err());
    }

    #[test]
    fn connect_targets_need_a_port() {
        assert!(check_host_port("host:5555").is_ok());
        assert!(check_host_port("[::1]:5555").is_ok());
        assert!(check_host_port("host").is_err());
        assert!(check_host_port(":5555").is_err());
        assert!(check_host_port("host:99999").is_err());
    }

    #[test]
    fn random_ids_are_not_zero() {
        for _ in 0..100 {
            assert_ne!(random_node_id(), NodeId(0));
        }
    }
}
