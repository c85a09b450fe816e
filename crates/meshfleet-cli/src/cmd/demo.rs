//! `meshfleet demo`: a simulated mesh of a few hundred nodes behind the real gateway, from one
//! command. The work is done by the `meshfleet-demo` crate; this is flags, output and signals.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use meshfleet_demo::{parse_faults, Demo, DemoConfig, DEFAULT_FAULTS, MAX_NODES, MAX_SPEED};
use serde_json::json;
use tracing::info;

use crate::context::{outln, tokio_runtime, usage, Context};
use crate::cmd::gateway::stop_signal;

const LONG_ABOUT: &str = "\
Run a live fleet on this machine, with no external service: a simulated mesh of a few hundred \
nodes (the real node code: meshfleet nodes with their OTA receiver and telemetry, and modelled \
stock painlessMesh nodes that broadcast the status package), paced to the wall clock, with the \
gateway and all its services on it (REST API, server-sent events, metrics, SQLite in a \
temporary folder that is removed at exit).

Over the first minutes a fault script plays (examples/demo/faults.toml, built in; --faults \
replaces it): a memory leak, a reboot loop, a partition that heals, a node that dies. Each shows \
up as an alert.

At start the demo generates a signing key for this run, packs a signed firmware artefact \
(version 1.1.0 for the demo's meshfleet nodes, which run 1.0.0) and stores it in the gateway, \
so a campaign can be created at once. Uploads signed with the run's key (its path is printed) \
are accepted too. Changes need the printed bearer token.

--speed runs virtual time faster than the wall clock (virtual seconds per wall second; the \
monitor runs on the mesh's time, so alerts come sooner, not wrong). If the machine cannot keep \
up, the mesh falls behind its pace rather than skipping time. Ctrl-C (or SIGTERM) stops \
everything cleanly and exits 0.";

const AFTER_LONG_HELP: &str = "\
Examples:
  meshfleet demo                              # 200 nodes, real time, http://127.0.0.1:8080
  meshfleet demo --nodes 500 --speed 10       # bigger, ten times faster
  meshfleet demo --http 0.0.0.0:9000 --json   # reachable from the LAN, JSON lines on stdout

Fault script (TOML; times in virtual seconds, node 1 is the gateway):
  [[fault]]
  at_s = 40
  node = 7
  kind = \"leak\"            # also: reboot_loop (every_s, count), partition (duration_s), death
  bytes_per_min = 3072";

/// Run a simulated fleet with the gateway on it, in one command.
#[derive(clap::Args, Debug)]
#[command(long_about = LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
pub(crate) struct Args {
    /// Nodes in the mesh, the gateway's own node included (every third is a stock node).
    #[arg(long, value_name = "N", default_value_t = 200,
        value_parser = clap::value_parser!(u32).range(2..=i64::from(MAX_NODES)))]
    nodes: u32,

    /// Virtual seconds per wall-clock second (1 = real time).
    #[arg(long, value_name = "X", default_value_t = 1.0, value_parser = parse_speed)]
    speed: f64,

    /// Where the gateway's HTTP API listens.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
    http: String,

    /// Seed of the simulated mesh (the same seed forms the same mesh).
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,

    /// Fault script to play instead of the built-in one (see below).
    #[arg(long, value_name = "FILE")]
    faults: Option<PathBuf>,

    /// Print JSON lines on stdout (start, faults, updates, progress, stop) instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_speed(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if v.is_finite() && (1.0..=MAX_SPEED).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be between 1 and {MAX_SPEED}"))
    }
}

fn socket_addr(text: &str) -> anyhow::Result<SocketAddr> {
    text.to_socket_addrs()
        .map_err(|e| usage(format!("--http {text}: {e} (expected ADDR:PORT)")))?
        .next()
        .ok_or_else(|| usage(format!("--http {text}: resolves to no address")))
}

pub(crate) fn run(args: Args, _ctx: &Context) -> anyhow::Result<()> {
    let http = socket_addr(&args.http)?;
    let script = match &args.faults {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| usage(format!("--faults {}: {e}", path.display())))?,
        None => DEFAULT_FAULTS.to_owned(),
    };
    let faults = parse_faults(&script).map_err(|e| {
        let name = args
            .faults
            .as_ref()
            .map_or_else(|| "the built-in fault script".to_owned(), |p| p.display().to_string());
        usage(format!("{name}: {e}"))
    })?;
    let config = DemoConfig {
        nodes: args.nodes,
        speed: args.speed,
        http,
        seed: args.seed,
        faults,
        ..DemoConfig::default()
    };
    let json = args.json;
    let rt = tokio_runtime()?;
    rt.block_on(async move {
        let demo = Demo::start(config).await.context("the demo did not start")?;
        announce(&demo, json)?;
        let mut events = demo.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        tick.tick().await;
        let stop = stop_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                name = &mut stop => {
                    info!(signal = name, "stopping");
                    break;
                }
                e = events.recv() => match e {
                    Ok(e) if json => outln!("{}", serde_json::to_string(&e)?),
                    Ok(e) => outln!("{}", describe(&e)),
                    Err(_) => {}
                },
                _ = tick.tick() => {
                    if json {
                        outln!("{}", json!({"event": "progress", "virtual_s": demo.virtual_secs(),
                            "lag_s": demo.lag_secs(), "running_nodes": demo.running_nodes()}));
                    } else if demo.lag_secs() > 5.0 {
                        outln!("the simulation is {:.0} s behind its pace (--speed {}): this \
                            machine cannot keep up", demo.lag_secs(), demo.config().speed);
                    }
                }
            }
        }
        let virtual_s = demo.virtual_secs();
        demo.shutdown().await;
        if json {
            outln!("{}", json!({"event": "stopped", "virtual_s": virtual_s}));
        } else {
            outln!("stopped after {virtual_s:.0} virtual seconds");
        }
        Ok(())
    })
}

fn announce(demo: &Demo, json: bool) -> anyhow::Result<()> {
    let addr = demo.http_addr();
    let url = format!("http://{addr}/");
    let c = demo.config();
    let key = demo.dir().join("demo.key");
    if json {
        outln!(
            "{}",
            json!({"event": "started", "url": url, "token": demo.token(),
                "nodes": c.nodes, "speed": c.speed, "seed": c.seed,
                "artefact": demo.artefact().id, "artefact_version": demo.artefact().version,
                "signing_key": key.display().to_string()})
        );
        for f in demo.skipped_faults() {
            outln!("{}", json!({"event": "fault_skipped", "node": f.node, "kind": f.kind.label()}));
        }
        return Ok(());
    }
    let a = demo.artefact();
    outln!(
        "meshfleet demo: {} simulated nodes (every third a stock node) at {}x, gateway at {url}\n\
         \n\
         What to try:\n  \
         open {url} in a browser (the dashboard), or the API:\n  \
         curl -s {url}health                 # counts by health\n  \
         curl -s '{url}status?limit=5'        # nodes, firmware, memory\n  \
         curl -s {url}topology               # the live tree\n  \
         curl -s {url}alerts                 # the scripted faults' alerts, over the first minutes\n  \
         curl -sN {url}events                # live changes (server-sent events)\n\
         \n\
         Demo firmware {} ({} bytes) is stored as artefact {}; campaigns (POST {url}campaigns)\n\
         need the token: Authorization: Bearer {}\n\
         Uploads signed with {} are accepted (meshfleet firmware pack ... --sign {}).\n\
         Ctrl-C stops.{}",
        c.nodes,
        c.speed,
        a.version,
        a.size,
        a.id,
        demo.token(),
        key.display(),
        key.display(),
        demo.skipped_faults()
            .iter()
            .map(|f| format!(
                "\n(the fault script's {} on node {} is skipped: the mesh has {} nodes)",
                f.kind.label(),
                f.node,
                c.nodes
            ))
            .collect::<String>(),
    );
    Ok(())
}

fn describe(e: &meshfleet_demo::DemoEvent) -> String {
    use meshfleet_demo::DemoEvent;
    match e {
        DemoEvent::Fault {
            t_s,
            node,
            node_id,
            kind,
            nodes,
        } => match *kind {
            "partition" => format!(
                "[{t_s:>6.0} s] fault: partition: node {node} ({node_id}) and {} below it cut off",
                nodes.saturating_sub(1)
            ),
            k => format!("[{t_s:>6.0} s] fault: {k} on node {node} ({node_id})"),
        },
        DemoEvent::FaultSkipped { node, kind } => {
            format!("fault {kind} on node {node} skipped: the mesh has fewer nodes")
        }
        DemoEvent::Healed { t_s } => format!("[{t_s:>6.0} s] the partition healed"),
        DemoEvent::Updated { t_s, node_id } => {
            format!("[{t_s:>6.0} s] node {node_id} installed new firmware and restarts")
        }
        other => format!("{other:?}"),
    }
}
