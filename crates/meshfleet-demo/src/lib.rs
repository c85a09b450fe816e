//! `meshfleet demo`: a live fleet from one command, with no external service.
//!
//! ```text
//!  driver thread (driver.rs)                       tokio (the caller's runtime)
//!  ┌───────────────────────────────────────┐       ┌────────────────────────────────┐
//!  │ meshfleet-sim Simulation              │       │ meshfleet-gateway Gateway      │
//!  │  node 1: gateway node + status plugin │◀─cmd──│  MeshPort = SimMesh            │
//!  │  meshfleet nodes: Agent + Telemetry   │──ev──▶│  ingest (monitor on the mesh's │
//!  │  stock nodes: stock OTA + 604 status  │       │  virtual clock), REST, SSE,    │
//!  │ virtual time = speed × wall elapsed   │       │  SQLite in a temporary folder  │
//!  │ fault script at its virtual times     │       └────────────────────────────────┘
//!  └───────────────────────────────────────┘
//! ```
//!
//! The simulator runs the real node code ([`fleet`]); this crate is only the driver: it paces
//! the engine to the wall clock, forwards the gateway node's events (plugin events typed) to
//! the gateway, runs the gateway's jobs on that node ([`MeshPort::run_on_node`]), and plays
//! the fault script ([`faults`]). At start it generates a demo signing key, packs a signed
//! demo artefact (a newer version for the meshfleet nodes) with the firmware crate's own
//! packer, and puts it into the gateway's artefact store, so a campaign can be created at once.
//!
//! [`MeshPort::run_on_node`]: meshfleet_gateway::mesh::MeshPort::run_on_node

pub mod driver;
pub mod faults;
pub mod fleet;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use meshfleet_firmware::{keys, pack, PackOptions, SigningKey, Version};
use meshfleet_gateway::model::ArtefactInfo;
use meshfleet_gateway::store::SqliteStore;
use meshfleet_gateway::{Gateway, GatewayConfig, GatewayError, Stores};
use meshfleet_mesh::Duration;
use meshfleet_ota::SharedPages;
use meshfleet_sim::{Formation, MeshParams, Scenario, Topology};
use tokio::sync::broadcast;

pub use driver::{DemoEvent, DriverStats, SimMesh};
pub use faults::{parse_faults, Fault, FaultKind, FaultsError, DEFAULT_FAULTS};
pub use fleet::{kind_of, Kind, HARDWARE, NEW_VERSION, OLD_VERSION, ROLE};

/// Fewest nodes a demo runs (the gateway and one more).
pub const MIN_NODES: u32 = 2;
/// Most nodes a demo runs.
pub const MAX_NODES: u32 = 5_000;
/// Fastest pace.
pub const MAX_SPEED: f64 = 1_000.0;

/// How the demo runs.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Nodes in the mesh, the gateway's included.
    pub nodes: u32,
    /// Virtual seconds per wall-clock second (1 to [`MAX_SPEED`]).
    pub speed: f64,
    /// Where the gateway's HTTP API listens (port 0 picks one).
    pub http: SocketAddr,
    /// Seed of the mesh (topology, clocks, node seeds).
    pub seed: u64,
    /// The fault script.
    pub faults: Vec<Fault>,
    /// How often the nodes report (virtual).
    pub report_interval: Duration,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            nodes: 200,
            speed: 1.0,
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            seed: 1,
            // The default script is part of the crate and tested.
            faults: parse_faults(DEFAULT_FAULTS).unwrap_or_default(),
            report_interval: Duration::from_secs(30),
        }
    }
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// A setting out of range.
    #[error("{0}")]
    Config(String),
    /// The temporary folder, key or database could not be made.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The demo artefact could not be packed.
    #[error("cannot pack the demo firmware: {0}")]
    Pack(String),
    /// The database could not be opened or written.
    #[error("database: {0}")]
    Store(String),
    /// The gateway did not start (the HTTP address is taken, ...).
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

/// The demo artefact, stored in the gateway at start.
#[derive(Clone, Debug)]
pub struct DemoArtefact {
    /// Its id in the gateway (SHA-256 of the `.mfw`).
    pub id: String,
    /// Its version.
    pub version: String,
    /// Its size, bytes.
    pub size: u64,
}

/// A running demo.
pub struct Demo {
    gateway: Gateway,
    mesh: SimMesh,
    thread: Option<std::thread::JoinHandle<()>>,
    db: Arc<SqliteStore>,
    dir: tempfile::TempDir,
    token: String,
    artefact: DemoArtefact,
    stats: Arc<DriverStats>,
    events: broadcast::Sender<DemoEvent>,
    config: DemoConfig,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("http", &self.gateway.http_addr())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> DemoError {
    move |source| DemoError::Io { what, source }
}

/// A random hex string of `bytes` bytes from the OS.
fn random_hex(bytes: usize) -> String {
    use rand_core::RngCore as _;
    let mut b = vec![0u8; bytes];
    rand_core::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Demo {
    /// Starts the mesh, the gateway on it, and the fault script. Call within a tokio runtime.
    pub async fn start(config: DemoConfig) -> Result<Self, DemoError> {
        if !(MIN_NODES..=MAX_NODES).contains(&config.nodes) {
            return Err(DemoError::Config(format!(
                "--nodes must be {MIN_NODES} to {MAX_NODES} (got {})",
                config.nodes
            )));
        }
        if !(config.speed.is_finite() && (1.0..=MAX_SPEED).contains(&config.speed)) {
            return Err(DemoError::Config(format!(
                "--speed must be 1 to {MAX_SPEED} (got {})",
                config.speed
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix("meshfleet-demo-")
            .tempdir()
            .map_err(io("cannot create a temporary folder"))?;
        // A key of this run only: it signs the demo artefact and whatever the user packs with
        // the secret key file (its path is printed), and the gateway accepts uploads signed
        // with it.
        let key = keys::keygen(&mut rand_core::OsRng);
        let secret = dir.path().join("demo.key");
        let public = dir.path().join("demo.key.pub");
        keys::write_secret_key(&secret, &key).map_err(|e| DemoError::Io {
            what: "cannot write the demo key",
            source: std::io::Error::other(e.to_string()),
        })?;
        keys::write_public_key(&public, &key.verifying_key()).map_err(|e| DemoError::Io {
            what: "cannot write the demo key",
            source: std::io::Error::other(e.to_string()),
        })?;
        let token = random_hex(16);
        let old = meshfleet_sim::ota::synthetic_image(fleet::IMAGE_BYTES, config.seed);
        let new = meshfleet_sim::ota::synthetic_image(fleet::IMAGE_BYTES, config.seed ^ 0xF1F1);
        let (mfw, info) = demo_artefact(&new, &key)?;

        let db_path = dir.path().join("gateway.db");
        let db =
            Arc::new(SqliteStore::open(&db_path).map_err(|e| DemoError::Store(e.to_string()))?);
        let stores = Stores::sqlite(db.clone());
        stores
            .artefacts
            .put(info.clone(), mfw)
            .await
            .map_err(|e| DemoError::Store(e.to_string()))?;

        let scenario = scenario(&config);
        let gateway_id = scenario.id_of(1);
        let pages = SharedPages::new(&[&old, &new]);
        let fleet = Arc::new(fleet::Fleet::new(
            config.seed,
            gateway_id,
            fleet::Images { old, new, pages },
            key.verifying_key(),
            config.report_interval,
        ));
        let scenario = scenario.node_factory({
            let f = fleet.factory();
            move |init| f(init)
        });
        let stats = Arc::new(DriverStats::default());
        let events = broadcast::channel(1_024).0;
        let (mesh, thread) = driver::start(driver::DriverSetup {
            scenario,
            fleet,
            faults: config.faults.clone(),
            speed: config.speed,
            stats: stats.clone(),
            demo_events: events.clone(),
        })
        .map_err(io("cannot start the simulation thread"))?;

        let gw_config = gateway_config(&config, db_path, public, &token);
        let started =
            Gateway::start(gw_config, Arc::new(mesh.clone()), stores, Some(db.clone())).await;
        let gateway = match started {
            Ok(g) => g,
            Err(e) => {
                stop_mesh(&mesh, thread, &db).await;
                return Err(e.into());
            }
        };
        Ok(Self {
            gateway,
            mesh,
            thread: Some(thread),
            db,
            dir,
            token,
            artefact: DemoArtefact {
                id: info.id,
                version: info.version,
                size: info.size,
            },
            stats,
            events,
            config,
        })
    }

    /// The gateway's HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.gateway.http_addr()
    }

    /// The bearer token changes need (random per run).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The demo artefact in the gateway's store.
    pub fn artefact(&self) -> &DemoArtefact {
        &self.artefact
    }

    /// The temporary folder (database, demo key); removed at shutdown.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The settings it runs with.
    pub fn config(&self) -> &DemoConfig {
        &self.config
    }

    /// The script's faults that name a node the mesh does not have (they do not happen).
    pub fn skipped_faults(&self) -> Vec<&Fault> {
        self.config
            .faults
            .iter()
            .filter(|f| f.node > self.config.nodes)
            .collect()
    }

    /// The gateway (its shared state, for tests and embedding).
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Virtual seconds simulated so far.
    pub fn virtual_secs(&self) -> f64 {
        self.stats.virtual_us.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// How far the simulation is behind its pace, seconds (0 when it keeps up).
    pub fn lag_secs(&self) -> f64 {
        self.stats.lag_us.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Nodes running now (booted, not crashed).
    pub fn running_nodes(&self) -> u64 {
        self.stats.running.load(Ordering::Relaxed)
    }

    /// Faults and updates as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<DemoEvent> {
        self.events.subscribe()
    }

    /// Stops the gateway (requests finish, writes are committed), then the simulation, then
    /// the database, and removes the temporary folder.
    pub async fn shutdown(mut self) {
        self.gateway.shutdown().await;
        if let Some(t) = self.thread.take() {
            stop_mesh(&self.mesh, t, &self.db).await;
        }
        drop(self.dir);
    }
}

async fn stop_mesh(mesh: &SimMesh, thread: std::thread::JoinHandle<()>, db: &Arc<SqliteStore>) {
    use meshfleet_gateway::mesh::MeshPort as _;
    mesh.shutdown().await;
    let db = db.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let _ = thread.join();
        db.close();
    })
    .await;
}

/// The mesh: a random tree (up to 4 stations per access point, like an ESP8266), node 1 the
/// gateway and mesh root, one node joining every 50 ms, running for as long as the demo runs.
fn scenario(c: &DemoConfig) -> Scenario {
    Scenario::new(Topology::RandomTree {
        nodes: c.nodes,
        max_children: meshfleet_sim::ESP8266_MAX_CONN,
    })
    .name("meshfleet demo")
    .seed(c.seed)
    // Ten years of virtual time: the demo stops when the user stops it.
    .duration(Duration::from_secs(10 * 365 * 86_400))
    .formation(Formation {
        start: Duration::ZERO,
        interval: Duration::from_millis(50),
        jitter: Duration::from_millis(20),
    })
    .mesh(MeshParams {
        root: Some(1),
        ..MeshParams::default()
    })
    .sample_interval(Duration::from_secs(10))
}

/// The gateway's settings: SQLite in the temporary folder, the run's token and key, and a
/// monitor tuned to the demo's report period and minutes-long story (a leak is called after
/// ~4 virtual minutes of steady fall instead of half an hour).
fn gateway_config(c: &DemoConfig, db: PathBuf, public_key: PathBuf, token: &str) -> GatewayConfig {
    let mut g = GatewayConfig {
        http: c.http,
        db,
        token: Some(token.to_owned()),
        firmware_key: Some(public_key),
        ..GatewayConfig::default()
    };
    let period = u32::try_from(c.report_interval.as_micros() / 1_000_000).unwrap_or(30);
    g.monitor.report_interval_s = period;
    g.monitor.departure_grace_s = 2 * period;
    g.monitor.leak_window_s = 300;
    g.monitor.leak_samples = 10;
    g.monitor.reboot_window_s = 600;
    g
}

/// Packs `image` as the demo artefact ([`NEW_VERSION`], signed with `key`) and describes it
/// as the gateway's upload does.
fn demo_artefact(image: &[u8], key: &SigningKey) -> Result<(Vec<u8>, ArtefactInfo), DemoError> {
    let version = Version::parse(NEW_VERSION).map_err(|e| DemoError::Pack(e.to_string()))?;
    let mut opts = PackOptions::new(ROLE, HARDWARE, version);
    opts.signing_key = Some(key);
    // ESP8266s have ~40 KB free: an 8 KiB window keeps the decompressor at 18 KiB.
    opts.window = 8 * 1024;
    opts.created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs());
    let artefact = pack(image, opts).map_err(|e| DemoError::Pack(e.to_string()))?;
    let bytes = artefact.to_bytes();
    let key_id = keys::key_id(&key.verifying_key());
    let info = ArtefactInfo::verified(&bytes, artefact.manifest(), &key_id, "demo");
    Ok((bytes, info))
}
