//! `meshfleet gateway`: join the mesh as a node and serve the fleet's state over HTTP
//! (REST with OpenAPI, server-sent events, Prometheus metrics), kept in SQLite. The work is
//! done by the `meshfleet-gateway` crate; this is flags, config and signals.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::Context as _;
use meshfleet_gateway::GatewayConfig;
use meshfleet_mesh::{Config, NodeId};
use meshfleet_runtime::RuntimeConfig;
use tracing::info;

use crate::context::{tokio_runtime, usage, Context};

const LONG_ABOUT: &str = "\
Run the fleet gateway: join the mesh as a node (like `meshfleet node`) and serve the fleet's \
state over HTTP.

The gateway keeps every node it has seen (presence from node sync, status packages type 604), \
their history (full resolution for 7 days, hourly for 90, under a size cap), alerts, firmware \
artefacts and an audit log in one SQLite file (--db). The API (GET /openapi.json describes it) \
serves /status, /status/{nodeId}, /health, /topology, /nodes/{id}/history, /alerts, \
/firmware, /campaigns, /events (server-sent events), /metrics (Prometheus), /healthz and /readyz.

Campaigns (POST /campaigns, then /campaigns/{id}/start, pause, resume, cancel) offer an uploaded \
artefact from the gateway's own node to all nodes, a role, a hardware or listed nodes, and follow \
every node to an outcome (a node counts as updated once its status reports the new version; \
`campaign-node-timeout` seconds without progress, 1800 by default, time it out). A running \
campaign resumes after a restart.

Security: HTTP binds 127.0.0.1:8080 unless --http says otherwise. Every request that changes \
something needs `Authorization: Bearer <token>` (the first line of --token-file); without a \
token the gateway refuses changes. Uploaded firmware must be signed by --firmware-key.

Settings come from the [gateway] table of the --config file (same names as the flags); flags \
override it. --print-config shows the effective settings and exits. SIGINT and SIGTERM stop \
the gateway cleanly (requests finish, queued writes are committed, links closed). RUST_LOG \
chooses the log detail (default info).";

const AFTER_LONG_HELP: &str = "\
Examples:
  # Next to a mesh whose root listens on 10.0.0.2:5555:
  meshfleet gateway --connect 10.0.0.2:5555 --token-file /etc/meshfleet/token \\
      --firmware-key /etc/meshfleet/fleet.key.pub --db /var/lib/meshfleet/gateway.db
  curl -s localhost:8080/health

  # meshfleet.toml:
  [gateway]
  connect = [\"10.0.0.2:5555\"]
  http = \"0.0.0.0:8080\"
  db = \"/var/lib/meshfleet/gateway.db\"
  token-file = \"/etc/meshfleet/token\"";

/// Run the fleet gateway: mesh node + REST API + SQLite history.
#[derive(clap::Args, Debug)]
#[command(long_about = LONG_ABOUT, after_long_help = AFTER_LONG_HELP)]
pub(crate) struct Args {
    /// Accept mesh connections on ADDR:PORT (like `meshfleet node --listen`).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,

    /// Connect to the mesh node at HOST:PORT; repeat for several.
    #[arg(long, value_name = "HOST:PORT")]
    connect: Vec<String>,

    /// The gateway's node id, 1 to 4294967295 (default: random).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    node_id: Option<u32>,

    /// Make the gateway the mesh root.
    #[arg(long)]
    root: bool,

    /// Serve HTTP on ADDR:PORT (default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR:PORT")]
    http: Option<String>,

    /// The SQLite database (default meshfleet-gateway.db).
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,

    /// File whose first line is the API's bearer token (at least 16 characters).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// Public key uploaded firmware must be signed with (`meshfleet firmware keygen`).
    #[arg(long, value_name = "PUB")]
    firmware_key: Option<PathBuf>,

    /// Require the token for reads too.
    #[arg(long)]
    read_auth: bool,

    /// Bridge to an MQTT broker: mqtt://host:port, mqtt://user:pass@host:port, or
    /// mqtts://... for TLS; the config file's `[mqtt]` table has the other settings
    /// (docs/mqtt.md).
    #[arg(long, value_name = "URL")]
    mqtt: Option<String>,

    /// Print the effective configuration (file + flags) as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn resolve(args: Args, mut c: GatewayConfig) -> anyhow::Result<(GatewayConfig, bool)> {
    if args.listen.is_some() {
        c.listen = args.listen;
    }
    if !args.connect.is_empty() {
        c.connect = args.connect;
    }
    c.node_id = args.node_id.or(c.node_id);
    c.root |= args.root;
    if let Some(h) = args.http {
        c.http = socket_addr("--http", &h)?;
    }
    if let Some(db) = args.db {
        c.db = db;
    }
    if args.token_file.is_some() {
        c.token_file = args.token_file;
    }
    if args.firmware_key.is_some() {
        c.firmware_key = args.firmware_key;
    }
    c.read_auth |= args.read_auth;
    if c.node_id == Some(0) {
        return Err(usage("node-id must be between 1 and 4294967295"));
    }
    if let Some(l) = &c.listen {
        socket_addr("--listen", l)?;
    }
    for target in &c.connect {
        match target.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(usage(format!("--connect {target}: expected HOST:PORT"))),
        }
    }
    Ok((c, args.print_config))
}

fn socket_addr(flag: &str, text: &str) -> anyhow::Result<SocketAddr> {
    text.to_socket_addrs()
        .map_err(|e| usage(format!("{flag} {text}: {e} (expected ADDR:PORT)")))?
        .next()
        .ok_or_else(|| usage(format!("{flag} {text}: resolves to no address")))
}

pub(crate) fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    let mut mqtt: meshfleet_mqtt::MqttConfig = ctx.section("mqtt")?;
    if let Some(url) = &args.mqtt {
        mqtt.url.clone_from(url);
    }
    let (config, print) = resolve(args, ctx.section("gateway")?)?;
    if print {
        print!("{}", config.to_toml_masked());
        if mqtt.enabled() {
            println!("\n[mqtt]\n# url = {}", meshfleet_mqtt::config::mask(&mqtt.url));
        }
        return Ok(());
    }
    let mut hooks = Vec::new();
    if mqtt.enabled() {
        let bridge = meshfleet_mqtt::Prepared::new(mqtt).map_err(|e| usage(format!("--mqtt: {e}")))?;
        hooks.push(bridge.hook());
    }
    let node_id = config.node_id.map_or_else(random_node_id, NodeId);
    let mut node = Config::new(node_id);
    node.root = config.root;
    let mut runtime = RuntimeConfig::default();
    if let Some(l) = &config.listen {
        runtime.listen = Some(socket_addr("--listen", l)?);
    }
    runtime.connect = config.connect.clone();
    let rt = tokio_runtime()?;
    rt.block_on(async {
        let stop = async {
            let name = stop_signal().await;
            info!(signal = name, "stopping");
        };
        meshfleet_gateway::run_with(config, node, runtime, stop, hooks)
            .await
            .context("gateway failed")
    })
}

/// Waits for SIGINT or SIGTERM (Ctrl-C elsewhere); names the one that came.
pub(crate) async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                "Ctrl-C"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// A non-zero id from the OS-seeded hasher (0 means "unknown" on the wire).
fn random_node_id() -> NodeId {
    use std::hash::{BuildHasher, RandomState};
    let state = RandomState::new();
    (0u64..)
        .map(|salt| {
            let bits = state.hash_one((std::time::SystemTime::now(), std::process::id(), salt));
            (bits ^ (bits >> 32)) as u32
        })
        .find(|id| *id != 0)
        .map_or(NodeId(1), NodeId)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(flags: &[&str]) -> Args {
        Cli::try_parse_from(std::iter::once("gateway").chain(flags.iter().copied()))
            .unwrap()
            .args
    }

    fn file(text: &str) -> GatewayConfig {
        let table: toml::Table = text.parse().unwrap();
        table["gateway"].clone().try_into().unwrap()
    }

    #[test]
    fn flags_override_the_file() {
        let from_file = file(
            "[gateway]\nhttp = \"0.0.0.0:9000\"\nconnect = [\"a:1\"]\nnode-id = 5\n\
             max-upload = 1000\n[gateway.monitor]\ndeparture_grace_s = 7\n",
        );
        assert_eq!(from_file.monitor.departure_grace_s, 7);
        let (c, print) = resolve(args(&[]), from_file.clone()).unwrap();
        assert_eq!(c, from_file, "no flags: the file's values");
        assert!(!print);
        let (c, print) = resolve(
            args(&["--http", "127.0.0.1:7", "--connect", "b:2", "--node-id", "6", "--print-config"]),
            from_file,
        )
        .unwrap();
        assert!(print);
        assert_eq!(c.http.port(), 7);
        assert_eq!(c.connect, vec!["b:2".to_owned()]);
        assert_eq!(c.node_id, Some(6));
        assert_eq!(c.max_upload, 1000, "keys without a flag keep the file's value");
        assert_eq!(c.monitor.departure_grace_s, 7);
    }

    #[test]
    fn defaults_and_bad_values() {
        let (c, _) = resolve(args(&[]), GatewayConfig::default()).unwrap();
        assert_eq!(c.http.to_string(), "127.0.0.1:8080");
        assert!(resolve(args(&["--connect", "nohostport"]), GatewayConfig::default()).is_err());
        assert!(resolve(args(&["--http", "nonsense"]), GatewayConfig::default()).is_err());
        let bad: Result<GatewayConfig, _> =
            "[gateway]\nbogus = 1\n".parse::<toml::Table>().unwrap()["gateway"].clone().try_into();
        assert!(bad.is_err(), "unknown keys are refused");
    }
}
