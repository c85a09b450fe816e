//! Helpers shared by the runtime's integration tests.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::future::Future;
use std::time::Duration;

use meshfleet_mesh::{Config, Node, NodeId};
use meshfleet_runtime::{BackoffConfig, MeshHandle, Runtime, RuntimeConfig, RuntimeEvent};
use tokio::sync::broadcast::{error::RecvError, Receiver};
use tokio::task::JoinHandle;

/// Generous: these tests run on 2 busy cores in CI.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Logs go to the test's captured output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A running runtime plus the receiver subscribed before it started.
pub struct Peer {
    pub id: NodeId,
    pub mesh: MeshHandle,
    pub task: JoinHandle<()>,
    pub events: Receiver<RuntimeEvent>,
}

impl Peer {
    /// The `host:port` others connect to.
    pub fn addr(&self) -> String {
        self.mesh
            .listen_addr()
            .expect("this peer listens")
            .to_string()
    }
}

/// Fast reconnects, so restart tests take a second rather than half a minute.
pub fn fast_backoff() -> BackoffConfig {
    BackoffConfig {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(800),
        reset_after: Duration::from_secs(15),
    }
}

pub async fn start(id: u32, listen: bool, connect: &[String]) -> Peer {
    start_on(
        id,
        listen.then(|| "127.0.0.1:0".to_owned()),
        connect,
        Config::new(NodeId(id)),
    )
    .await
}

pub async fn start_on(id: u32, listen: Option<String>, connect: &[String], config: Config) -> Peer {
    init_tracing();
    let mut cfg = RuntimeConfig::default();
    cfg.listen = listen.map(|a| a.parse().unwrap());
    cfg.connect = connect.to_vec();
    cfg.backoff = fast_backoff();
    let (mesh, task) = Runtime::start(Node::new(config), cfg).await.unwrap();
    let events = mesh.subscribe();
    Peer {
        id: NodeId(id),
        mesh,
        task,
        events,
    }
}

/// Runs `f` until it returns `Some`, every 20 ms, failing the test after [`TIMEOUT`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let poll = async {
        loop {
            if let Some(v) = f().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    match tokio::time::timeout(TIMEOUT, poll).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {TIMEOUT:?} waiting for {what}"),
    }
}

/// Waits until `mesh` sees exactly `expected` (sorted) as its node list.
pub async fn wait_nodes(who: &str, mesh: &MeshHandle, expected: &[NodeId]) {
    let mut last = Vec::new();
    let what = format!("{who} to see nodes {expected:?}");
    let r = tokio::time::timeout(TIMEOUT, async {
        loop {
            last = mesh.nodes().await.unwrap();
            if last == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if r.is_err() {
        panic!("timed out after {TIMEOUT:?} waiting for {what}; last saw {last:?}");
    }
}

/// The next event matching `pred`, skipping others; fails after `limit`.
pub async fn next_event<F>(
    rx: &mut Receiver<RuntimeEvent>,
    what: &str,
    limit: Duration,
    mut pred: F,
) -> RuntimeEvent
where
    F: FnMut(&RuntimeEvent) -> bool,
{
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("runtime stopped while waiting for {what}"),
            }
        }
    };
    match tokio::time::timeout(limit, wait).await {
        Ok(e) => e,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Every event already buffered in `rx`.
pub fn buffered(rx: &mut Receiver<RuntimeEvent>) -> Vec<RuntimeEvent> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(e) => out.push(e),
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => return out,
        }
    }
}
