//! The web dashboard in a real headless Chromium (`docs/dashboard.md`).
//!
//! The gateway runs on a fake [`MeshPort`]: a 1,000-node tree and the nodes' status reports
//! are pushed into the gateway's ingest exactly as the mesh runtime delivers them
//! (`RuntimeEvent::Nodes`, `RuntimeEvent::Received`), so the monitor, registry, store,
//! REST API and event stream under the page are the real ones.
//!
//! Without chromium the browser tests skip loudly, unless `MESHFLEET_REQUIRE_CHROMIUM` is
//! set (CI sets it). Screenshots go to `target/screenshots/`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    unreachable_pub,
    missing_docs
)]

#[path = "dashboard/cdp.rs"]
mod cdp;
mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshfleet_gateway::mesh::{MeshPort, NodeJob};
use meshfleet_gateway::model::Sample;
use meshfleet_gateway::status::StatusReport;
use meshfleet_gateway::store::{HistoryStore, SqliteStore};
use meshfleet_gateway::{now_millis, Gateway, GatewayConfig, Stores};
use meshfleet_mesh::{NodeId, NodeTree};
use meshfleet_runtime::{MessageKind, RuntimeEvent, SendError, Stopped};
use tokio::sync::broadcast;

use cdp::Browser;
use common::{request, TOKEN};

const GATEWAY: u32 = 4242;

/// A mesh that is only what the test says it is.
struct FakeMesh {
    tx: broadcast::Sender<RuntimeEvent>,
    tree: Mutex<NodeTree>,
    running: AtomicBool,
    /// The gateway's own node, for `run_on_node` (the campaign engine's jobs).
    node: Mutex<meshfleet_mesh::Node>,
    started: Instant,
}

impl FakeMesh {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            tx: broadcast::channel(8192).0,
            tree: Mutex::new(NodeTree::leaf(NodeId(GATEWAY))),
            running: AtomicBool::new(true),
            node: Mutex::new(meshfleet_mesh::Node::new(meshfleet_mesh::Config::new(
                NodeId(GATEWAY),
            ))),
            started: Instant::now(),
        })
    }

    /// Replaces the tree and tells the gateway its node list changed.
    fn set_tree(&self, tree: NodeTree) {
        let mut ids = Vec::new();
        let mut stack = vec![&tree];
        while let Some(t) = stack.pop() {
            if t.node_id.0 != GATEWAY {
                ids.push(t.node_id);
            }
            stack.extend(t.subs.iter());
        }
        ids.sort();
        *self.tree.lock().unwrap() = tree;
        let _ = self.tx.send(RuntimeEvent::Nodes { nodes: ids });
    }

    /// A status package broadcast by `from`, as the runtime delivers it.
    fn report(&self, from: u32, text: String) {
        let _ = self.tx.send(RuntimeEvent::Received {
            from: NodeId(from),
            msg: text,
            kind: MessageKind::Broadcast,
        });
    }
}

impl MeshPort for FakeMesh {
    fn node_id(&self) -> NodeId {
        NodeId(GATEWAY)
    }

    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.tx.subscribe()
    }

    fn topology(&self) -> Pin<Box<dyn Future<Output = Result<NodeTree, Stopped>> + Send + '_>> {
        let t = self.tree.lock().unwrap().clone();
        Box::pin(async move { Ok(t) })
    }

    fn nodes(&self) -> Pin<Box<dyn Future<Output = Result<Vec<NodeId>, Stopped>> + Send + '_>> {
        let t = self.tree.lock().unwrap().clone();
        Box::pin(async move {
            let mut ids = Vec::new();
            let mut stack = vec![&t];
            while let Some(n) = stack.pop() {
                if n.node_id.0 != GATEWAY {
                    ids.push(n.node_id);
                }
                stack.extend(n.subs.iter());
            }
            ids.sort();
            Ok(ids)
        })
    }

    fn send_single(
        &self,
        _dest: NodeId,
        _text: String,
    ) -> Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + '_>> {
        Box::pin(async { Ok(()) })
    }

    fn probe_delay(
        &self,
        _dest: NodeId,
    ) -> Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + '_>> {
        Box::pin(async { Ok(()) })
    }

    fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.running.store(false, Ordering::Relaxed);
        Box::pin(async {})
    }

    fn run_on_node(
        &self,
        job: NodeJob,
    ) -> Pin<Box<dyn Future<Output = Result<(), Stopped>> + Send + '_>> {
        let now = meshfleet_mesh::Instant::from_micros(self.started.elapsed().as_micros() as u64);
        job(&mut self.node.lock().unwrap(), now);
        Box::pin(async { Ok(()) })
    }
}

/// A deterministic 1,000-node mesh under the gateway: a random recursive tree (each node
/// joins a uniformly chosen earlier one, seeded), like nodes joining one by one.
fn mesh_ids(n: usize) -> (Vec<u32>, Vec<usize>) {
    let mut seed: u64 = 0x5eed_1234;
    let mut next = || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize
    };
    let ids: Vec<u32> = (0..n).map(|i| 2_000_000_000 + (i as u32) * 7_919).collect();
    // parent[i] is an index into `ids`, or usize::MAX for the gateway. The gateway has a
    // handful of direct links, as a real root does.
    let parents = (0..n)
        .map(|i| if i < 4 { usize::MAX } else { next() % i })
        .collect();
    (ids, parents)
}

fn tree_of(ids: &[u32], parents: &[usize], present: &dyn Fn(usize) -> bool) -> NodeTree {
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); ids.len()];
    let mut top = Vec::new();
    for (i, &p) in parents.iter().enumerate() {
        if !present(i) {
            continue;
        }
        if p == usize::MAX {
            top.push(i);
        } else if present(p) {
            children[p].push(i);
        }
    }
    fn build(i: usize, ids: &[u32], children: &[Vec<usize>]) -> NodeTree {
        NodeTree {
            node_id: NodeId(ids[i]),
            subs: children[i]
                .iter()
                .map(|&c| build(c, ids, children))
                .collect(),
            ..NodeTree::default()
        }
    }
    NodeTree {
        node_id: NodeId(GATEWAY),
        root: true,
        subs: top.iter().map(|&i| build(i, ids, &children)).collect(),
        ..NodeTree::default()
    }
}

fn status(from: u32, mem_kb: u32, latency: u32, fw: &str, uptime: u32) -> String {
    format!(
        r#"{{"from":{from},"routing":2,"type":604,"status":1,"uptime":{uptime},"mem":{mem_kb},"wifi":72,"fw":"{fw}","fwMD5":"0123456789abcdef0123456789abcdef","nodes":1000,"conns":3,"msgRx":1200,"msgTx":340,"msgDrop":2,"latency":{latency},"loss":1,"throughput":512,"alerts":0,"lastErr":""}}"#
    )
}

/// The fleet key (fixed, so restarts on the same directory agree).
fn signing_key() -> meshfleet_firmware::SigningKey {
    meshfleet_firmware::SigningKey::from_bytes(&[7u8; 32])
}

struct Gw {
    gateway: Option<Gateway>,
    db: Arc<SqliteStore>,
    mesh: Arc<FakeMesh>,
    http: SocketAddr,
}

async fn start_gateway(dir: &std::path::Path, http: SocketAddr, mesh: Arc<FakeMesh>) -> Gw {
    start_gateway_with(dir, http, mesh, |_| {}).await
}

async fn start_gateway_with(
    dir: &std::path::Path,
    http: SocketAddr,
    mesh: Arc<FakeMesh>,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> Gw {
    let pub_file = dir.join("fleet.pub");
    if !pub_file.exists() {
        meshfleet_firmware::keys::write_public_key(&pub_file, &signing_key().verifying_key())
            .unwrap();
    }
    let mut cfg: GatewayConfig = common::config(dir);
    cfg.http = http;
    tweak(&mut cfg);
    let db = Arc::new(SqliteStore::open(&cfg.db).unwrap());
    let gateway = Gateway::start(cfg, mesh.clone(), Stores::sqlite(db.clone()), None)
        .await
        .unwrap();
    let http = gateway.http_addr();
    Gw {
        gateway: Some(gateway),
        db,
        mesh,
        http,
    }
}

impl Gw {
    async fn stop(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await;
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.close())
            .await
            .unwrap();
    }

    fn url(&self, hash: &str) -> String {
        format!("http://{}/{hash}", self.http)
    }
}

/// The 1,000-node mesh with one report from every node (three firmware versions, a few
/// nodes short of memory or slow), and a day of history for the first node.
/// Returns a clock for later reports: node `i`'s uptime now is `3600 + i + elapsed` (the
/// monitor refuses an uptime ahead of the time elapsed since the node's last report).
async fn populate(gw: &Gw, ids: &[u32], parents: &[usize]) -> Uptime {
    gw.mesh.set_tree(tree_of(ids, parents, &|_| true));
    let gw_http = gw.http;
    common::wait_until("1,000 nodes registered", || async move {
        let r = request(gw_http, "GET", "/health", &[], &[]).await;
        r.json()["online"].as_u64() == Some(ids.len() as u64)
    })
    .await;
    let t0 = Instant::now();
    for (i, &id) in ids.iter().enumerate() {
        let fw = match i % 10 {
            0..=5 => "1.4.1",
            6..=8 => "1.4.2",
            _ => "1.3.9",
        };
        let mem = if i % 97 == 13 { 6 } else { 30 + (i % 7) as u32 };
        let latency = if i % 89 == 7 {
            700
        } else {
            40 + (i % 13) as u32
        };
        gw.mesh
            .report(id, status(id, mem, latency, fw, Uptime(t0).of(i)));
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    common::wait_until("every node reported", || async move {
        let r = request(gw_http, "GET", "/status?firmware=1.3.9&limit=1", &[], &[]).await;
        r.json()["totalNodes"].as_u64() == Some(100)
    })
    .await;
    // A day of history for node 0: a slow leak and one reboot.
    let now = now_millis();
    let samples = (0..288)
        .map(|k| {
            let ts = now - (288 - k) * 300_000;
            // Rebooted at k = 200 (uptime and message counters restart from 0).
            let uptime = if k < 200 {
                40_000 + k * 300
            } else {
                (k - 200) * 300 + 100
            } as u32;
            let x = k as f64;
            Sample {
                node_id: ids[0],
                ts,
                report: StatusReport {
                    uptime,
                    free_memory_kb: (60 - (k % 200) / 8) as u16,
                    wifi_quality: (72.0 + 6.0 * (x / 20.0).sin()) as u8,
                    latency_ms: (45.0 + 12.0 * (x / 9.0).sin().abs() + (k % 3) as f64) as u16,
                    packet_loss: (1.5 + 1.5 * (x / 31.0).sin()) as u8,
                    firmware: "1.4.1".into(),
                    // 120 received, 60 sent and 6 dropped per minute since boot.
                    messages_received: uptime * 2,
                    messages_sent: uptime,
                    messages_dropped: uptime / 10,
                    ..StatusReport::default()
                },
            }
        })
        .collect();
    gw.db.append(samples);
    // Hourly rollups of that day, for the ranges beyond 2 days.
    gw.db
        .maintain(
            now,
            meshfleet_gateway::store::sqlite::Retention {
                raw_days: 7,
                rollup_days: 90,
                cap_bytes: 1 << 40,
            },
        )
        .await
        .unwrap();
    Uptime(Instant::now())
}

struct Uptime(Instant);

impl Uptime {
    fn of(&self, i: usize) -> u32 {
        3600 + i as u32 + self.0.elapsed().as_secs() as u32
    }
}

async fn browser(test: &str) -> Option<Browser> {
    let exe = cdp::chromium_or_skip(test)?;
    Some(Browser::start(&exe, 1280, 860).await)
}

/// WCAG 2.x contrast of every visible text on the page against its effective background
/// (the first opaque background up the tree): at least 4.5:1, 3:1 for large text (24 px, or
/// 18.66 px bold). Disabled controls are exempt, as WCAG exempts inactive components.
const CONTRAST: &str = r#"(() => {
    const parse = (c) => { const m = c.match(/rgba?\(([^)]+)\)/); if (!m) return null;
        const p = m[1].split(/[ ,\/]+/).filter(Boolean).map(Number); return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 }; };
    const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
        return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
    const bg = (el) => { for (let e = el; e; e = e.parentElement) { const c = parse(getComputedStyle(e).backgroundColor);
        if (c && c.a > 0.5) return c; } return { r: 255, g: 255, b: 255, a: 1 }; };
    const bad = [];
    let checked = 0;
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
        const el = n.parentElement;
        if (!n.textContent.trim() || !el || el.closest('option, [hidden], dialog:not([open]), :disabled')) continue;
        const r = el.getBoundingClientRect();
        if (r.width === 0 || r.height === 0 || r.bottom < 0 || r.top > innerHeight) continue;
        const st = getComputedStyle(el);
        if (st.visibility === 'hidden') continue;
        const fg = parse(st.color); const b = bg(el);
        const [l1, l2] = [lum(fg), lum(b)].sort((x, y) => y - x);
        const ratio = (l1 + 0.05) / (l2 + 0.05);
        const px = parseFloat(st.fontSize); const bold = Number(st.fontWeight) >= 700;
        const need = px >= 24 || (bold && px >= 18.66) ? 3 : 4.5;
        checked++;
        if (ratio < need) bad.push(`${ratio.toFixed(2)} < ${need}: "${n.textContent.trim().slice(0, 30)}" ${st.color} on rgb(${b.r},${b.g},${b.b})`);
    }
    return { checked, bad: bad.slice(0, 10) };
})()"#;

async fn assert_contrast(b: &Browser, view: &str) {
    let r = b.eval(CONTRAST).await;
    assert!(
        r["checked"].as_u64().unwrap() > 5,
        "{view}: no text checked: {r}"
    );
    assert_eq!(
        r["bad"],
        serde_json::json!([]),
        "{view}: text below WCAG AA contrast"
    );
}

/// Fails with the page's errors, if any.
/// The overview counts the 1,000-node fleet.
const OVERVIEW_COUNTS_1000: &str =
    "document.querySelector('#health-cards .n')?.textContent === '1000'";
/// The topology view has laid out the gateway and its 1,000 nodes.
const TOPOLOGY_LAID_OUT: &str = "window.meshfleet?.topology?.layoutSize?.() === 1001";
/// The node table lists the whole 1,000-node fleet.
const ALL_1000_LISTED: &str =
    "document.getElementById('nodes-summary')?.textContent === '1000 of 1000 nodes'";

/// Opens the page at `hash` and waits up to `secs` until `ready` (a JS expression) holds;
/// what it evaluated to.
async fn open(
    b: &Browser,
    gw: &Gw,
    hash: &str,
    what: &str,
    ready: &str,
    secs: u64,
) -> serde_json::Value {
    b.goto(&gw.url(hash)).await;
    b.wait_for(what, ready, secs).await
}

fn assert_no_errors(b: &Browser, when: &str) {
    let errors = b.errors();
    assert!(errors.is_empty(), "page errors {when}: {errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_topology_of_1000_nodes_and_an_alert_within_two_report_periods() {
    let Some(b) = browser("dashboard views").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mesh = FakeMesh::new();
    let gw = start_gateway(dir.path(), "127.0.0.1:0".parse().unwrap(), mesh).await;
    let (ids, parents) = mesh_ids(1000);
    let uptime = populate(&gw, &ids, &parents).await;

    // Overview: loads with no console errors and counts the fleet.
    open(
        &b,
        &gw,
        "#/overview",
        "the overview's node count",
        OVERVIEW_COUNTS_1000,
        20,
    )
    .await;
    b.wait_for(
        "the live indicator",
        "document.querySelector('#live.on') !== null",
        10,
    )
    .await;
    let firmware = b
        .eval("[...document.querySelectorAll('section[aria-labelledby=ov-fw] li')].map(l => l.textContent)")
        .await;
    assert_eq!(
        firmware,
        serde_json::json!(["1.4.1600", "1.4.2300", "1.3.9100"]),
        "firmware counts"
    );
    b.screenshot("overview").await;
    assert_contrast(&b, "overview").await;
    // The check itself catches a pale grey on white (2.0:1).
    b.eval("(() => { const p = document.createElement('p'); p.id = 'pale'; p.textContent = 'pale text'; p.style.color = '#aaaaaa'; p.style.background = '#ffffff'; document.getElementById('main').prepend(p); })()").await;
    let r = b.eval(CONTRAST).await;
    assert!(
        r["bad"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x.as_str().unwrap().contains("pale text")),
        "{r}"
    );
    b.eval("document.getElementById('pale').remove()").await;
    assert_no_errors(&b, "on the overview");

    // Topology: every node of the mesh is drawn on the canvas. The page's layout says where
    // each node is; the pixel there must be a node's colour, not the background.
    open(
        &b,
        &gw,
        "#/topology",
        "the topology layout",
        TOPOLOGY_LAID_OUT,
        20,
    )
    .await;
    // Let the first frame settle (layout animation is 400 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let check = b
        .eval(&format!(
            r#"(() => {{
                const t = window.meshfleet.topology;
                const c = t.canvas(); const ctx = c.getContext('2d');
                const img = ctx.getImageData(0, 0, c.width, c.height).data;
                const ids = {ids:?};
                let onScreen = 0, painted = 0; const missing = [];
                for (const id of ids) {{
                    const p = t.screenPos(id);
                    if (!p || p.x < 0 || p.y < 0 || p.x >= c.width || p.y >= c.height) {{ missing.push(id); continue; }}
                    onScreen++;
                    const i = (Math.round(p.y) * c.width + Math.round(p.x)) * 4;
                    // The background is #fbfcfd and links are light grey; nodes are saturated.
                    const [r, g, b] = [img[i], img[i+1], img[i+2]];
                    if (Math.max(r, g, b) - Math.min(r, g, b) > 40 || Math.max(r, g, b) < 170) painted++; else missing.push(id);
                }}
                const drawn = new Set(t.drawnIds);
                return {{ onScreen, painted, drawn: ids.filter(id => drawn.has(id)).length, missing: missing.slice(0, 10) }};
            }})()"#,
            ids = ids
        ))
        .await;
    assert_eq!(
        check["drawn"], 1000,
        "nodes drawn in the last frame: {check}"
    );
    assert_eq!(check["onScreen"], 1000, "nodes inside the canvas: {check}");
    assert_eq!(
        check["painted"], 1000,
        "nodes with a node colour at their centre: {check}"
    );
    b.screenshot("topology").await;
    // Find a deep node: it is selected, its path to the gateway listed.
    b.eval(&format!(
        "(() => {{ const i = document.getElementById('topo-search'); i.value = '{}'; i.form.requestSubmit(); }})()",
        ids[999]
    ))
    .await;
    let path = b
        .wait_for(
            "the path to the gateway",
            "[...document.querySelectorAll('.topo-side dd')].map(d => d.textContent).find(t => t.includes('→'))",
            5,
        )
        .await;
    let path = path.as_str().unwrap();
    assert!(
        path.starts_with(&ids[999].to_string()) && path.ends_with(&GATEWAY.to_string()),
        "{path}"
    );
    b.screenshot("topology-selected").await;
    // Keyboard: on the focused canvas, `+` zooms in (a node moves away from the centre) and
    // Enter opens the selected node.
    let before = b
        .eval(&format!("window.meshfleet.topology.screenPos({})", ids[0]))
        .await;
    b.eval("document.getElementById('topo').focus()").await;
    b.key("+").await;
    let after = b
        .wait_for(
            "the zoom",
            &format!(
                "(() => {{ const p = window.meshfleet.topology.screenPos({}); return p.x !== {} ? p : null; }})()",
                ids[0], before["x"]
            ),
            5,
        )
        .await;
    assert_ne!(before, after);
    b.key("Enter").await;
    b.wait_for(
        "the node detail from the keyboard",
        &format!("location.hash === '#/node/{}'", ids[999]),
        5,
    )
    .await;
    assert_contrast(&b, "topology-selected").await;
    assert_no_errors(&b, "on the topology");

    // Nodes table: virtualised (a few dozen rows in the DOM for 1,000 nodes), sortable.
    open(&b, &gw, "#/nodes", "the node table", ALL_1000_LISTED, 20).await;
    let rows = b
        .eval("document.querySelectorAll('#nodes-table .vt-row').length")
        .await
        .as_u64()
        .unwrap();
    assert!((10..100).contains(&rows), "{rows} rows in the DOM");
    b.eval("document.querySelector('.vt-head button[data-key=freeMemory]').click()")
        .await;
    let first = b
        .wait_for(
            "sorted by free memory",
            "document.querySelector('.vt-head button[data-key=freeMemory]').getAttribute('aria-sort') === 'ascending' && document.querySelector('.vt-row').dataset.node",
            5,
        )
        .await;
    // Node 13 is the first of those short of memory (6 KiB).
    assert_eq!(first, serde_json::json!(ids[13].to_string()));
    b.screenshot("nodes").await;
    // Stale highlighting: eleven minutes later (the page's clock moved on; nothing heard
    // from the nodes meanwhile) every online row is stale, and "stale only" keeps them.
    b.eval("(() => { window.__now = Date.now; const t = Date.now() + 11 * 60e3; Date.now = () => t; const c = document.getElementById('nodes-stale'); c.checked = true; c.dispatchEvent(new Event('input')); })()").await;
    b.wait_for(
        "stale rows",
        "document.getElementById('nodes-summary').textContent === '1000 of 1000 nodes' && document.querySelectorAll('.vt-row.stale').length > 10 && document.querySelectorAll('.vt-row:not(.stale)').length === 0",
        5,
    )
    .await;
    b.screenshot("nodes-stale").await;
    b.eval("(() => { Date.now = window.__now; const c = document.getElementById('nodes-stale'); c.checked = true; c.dispatchEvent(new Event('input')); })()").await;
    b.wait_for(
        "no stale rows now",
        "document.getElementById('nodes-summary').textContent === '0 of 1000 nodes'",
        5,
    )
    .await;
    b.eval("(() => { const c = document.getElementById('nodes-stale'); c.checked = false; c.dispatchEvent(new Event('input')); })()").await;
    // Keyboard: arrow down into the rows, Enter opens one.
    b.eval("document.querySelector('.vt-scroll').focus()").await;
    b.key("ArrowDown").await;
    b.key("ArrowDown").await;
    let focused = b
        .wait_for(
            "a focused row",
            "document.activeElement.classList.contains('vt-row') && document.activeElement.dataset.node",
            5,
        )
        .await;
    // A live update repaints the rows; the focus stays on the same row.
    b.eval("window.__frames = window.meshfleet.state.eventAt.status || 0")
        .await;
    gw.mesh
        .report(ids[300], status(ids[300], 30, 40, "1.4.1", uptime.of(300)));
    b.wait_for(
        "the status event",
        "(window.meshfleet.state.eventAt.status || 0) > window.__frames",
        5,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        b.eval("document.activeElement.dataset.node").await,
        focused,
        "focus kept across a live update"
    );
    b.key("Enter").await;
    b.wait_for(
        "the node detail from the table",
        &format!("location.hash === '#/node/{}'", focused.as_str().unwrap()),
        5,
    )
    .await;
    assert_contrast(&b, "nodes").await;
    assert_no_errors(&b, "on the node table");

    // Node detail: charts from the day of history.
    open(
        &b,
        &gw,
        &format!("#/node/{}", ids[0]),
        "the history charts",
        "document.querySelectorAll('#node-charts svg path.line').length === 8",
        20,
    )
    .await;
    // Message rates from the counters, across the reboot (a counter reset is not a negative
    // rate): raw for 1 h and 24 h, hourly rollups for 7 d and 90 d. The newest raw point is
    // the node's live report (other counters, after an uptime going back: a reset), so raw
    // ranges are checked in the history the page charts and rollups by the chart's label.
    let messages = "[...document.querySelectorAll('#node-charts svg')].map(s => s.getAttribute('aria-label')).find(l => l.startsWith('Messages'))";
    let day = request(
        gw.http,
        "GET",
        &format!("/nodes/{}/history?resolution=raw", ids[0]),
        &[],
        &[],
    )
    .await
    .json();
    let pts = day["points"].as_array().unwrap();
    assert!(pts.len() >= 288, "{}", pts.len());
    for p in &pts[1..pts.len() - 1] {
        assert_eq!(
            [
                &p["messagesReceivedPerMin"],
                &p["messagesSentPerMin"],
                &p["messagesDroppedPerMin"]
            ],
            [120.0, 60.0, 6.0],
            "{p}"
        );
    }
    for range in ["1 h", "7 d", "90 d", "24 h"] {
        b.eval(&format!(
            "[...document.querySelectorAll('.ranges button')].find(b => b.textContent === '{range}').click()"
        ))
        .await;
        let label = b
            .wait_for(
                &format!("the message-rate chart for {range}"),
                &format!("document.querySelectorAll('#node-charts svg path.line').length === 8 && {messages}"),
                10,
            )
            .await;
        if range.ends_with(" d") {
            assert_eq!(
                label.as_str().unwrap(),
                "Messages: received last 120.0, sent last 60.0, dropped last 6.0 per min",
                "{range}"
            );
        }
        let lowest = b
            .eval("Math.min(...[...document.querySelectorAll('#node-charts figure')].filter(f => f.textContent.startsWith('Messages')).flatMap(f => [...f.querySelectorAll('svg text')]).map(t => Number(t.textContent)).filter(Number.isFinite))")
            .await;
        assert!(
            lowest.as_f64().unwrap() >= 0.0,
            "{range}: axis down to {lowest}"
        );
    }
    b.eval("[...document.querySelectorAll('#node-charts figure')].find(f => f.textContent.startsWith('Messages')).scrollIntoView()")
        .await;
    b.screenshot("node-messages").await;
    b.eval("window.scrollTo(0, 0)").await;
    let reboots = b
        .eval("document.querySelectorAll('#node-charts svg:first-of-type line.reboot').length")
        .await;
    assert!(reboots.as_u64().unwrap() >= 1, "the reboot is marked");
    b.screenshot("node").await;
    assert_contrast(&b, "node").await;
    assert_no_errors(&b, "on the node detail");

    // A fault: a node reporting every second runs short of memory. The alert must be on
    // the page within two report periods (2 s) of the faulty report.
    open(
        &b,
        &gw,
        "#/alerts",
        "the alert table",
        "document.getElementById('alerts-list') !== null",
        10,
    )
    .await;
    let victim = ids[500];
    for _ in 0..3 {
        gw.mesh
            .report(victim, status(victim, 40, 30, "1.4.1", uptime.of(500)));
        tokio::time::sleep(Duration::from_millis(1050)).await;
    }
    b.eval(&format!(
        r#"(() => {{
            window.__seen = 0;
            const look = () => {{
                if (!window.__seen && document.querySelector('#alerts-list tr[data-node="{victim}"][data-kind="low_memory"]'))
                    window.__seen = performance.timeOrigin + performance.now();
            }};
            new MutationObserver(look).observe(document.body, {{ subtree: true, childList: true }});
            look();
        }})()"#
    ))
    .await;
    let injected = now_millis();
    gw.mesh
        .report(victim, status(victim, 5, 30, "1.4.1", uptime.of(500)));
    let seen = b
        .wait_for("the low-memory alert on the page", "window.__seen", 10)
        .await
        .as_f64()
        .unwrap();
    let latency_ms = seen - injected as f64;
    eprintln!("fault to alert on screen: {latency_ms:.0} ms");
    assert!(
        latency_ms < 2000.0,
        "the alert took {latency_ms:.0} ms (more than 2 report periods of 1 s)"
    );
    b.screenshot("alerts").await;
    assert_contrast(&b, "alerts").await;
    // Acknowledge it from the page, with a note: the first change asks for the token.
    b.eval(&format!(
        "document.querySelector('#alerts-list tr[data-node=\"{victim}\"][data-kind=\"low_memory\"] button').click()"
    ))
    .await;
    b.wait_for(
        "the note dialog",
        "document.getElementById('ack-dialog').open",
        5,
    )
    .await;
    b.eval("(() => { document.getElementById('ack-note').value = 'replacing the sensor'; document.getElementById('ack-form').requestSubmit(); })()")
        .await;
    b.wait_for(
        "the token dialog",
        "document.getElementById('token-dialog').open",
        5,
    )
    .await;
    b.screenshot("token").await;
    b.eval(&format!(
        "(() => {{ document.getElementById('token-input').value = '{TOKEN}'; document.getElementById('token-form').requestSubmit(); }})()"
    ))
    .await;
    let state = b
        .wait_for(
            "the alert acknowledged",
            &format!("[...document.querySelectorAll('#alerts-list tr[data-node=\"{victim}\"] td')].map(t => t.textContent).find(t => t.startsWith('acknowledged'))"),
            10,
        )
        .await;
    assert!(
        state.as_str().unwrap().ends_with(": replacing the sensor"),
        "{state}"
    );
    let stored = request(gw.http, "GET", &format!("/alerts?node={victim}"), &[], &[])
        .await
        .json();
    assert_eq!(stored["alerts"][0]["ackNote"], "replacing the sensor");
    assert_no_errors(&b, "on the alerts");
    // Clear it by hand, with a note (the token is stored since the acknowledgement): it leaves
    // the active list, and the store has who and why.
    let alert_id = stored["alerts"][0]["id"].as_i64().unwrap();
    b.eval(&format!(
        "document.querySelector('#alerts-list button[data-key=\"clear-{alert_id}\"]').click()"
    ))
    .await;
    b.wait_for(
        "the clear dialog",
        "document.getElementById('ack-dialog').open && document.getElementById('ack-title').textContent === 'Clear alert'",
        5,
    )
    .await;
    b.screenshot("alert-clear").await;
    b.eval("(() => { document.getElementById('ack-note').value = 'sensor replaced'; document.getElementById('ack-form').requestSubmit(); })()")
        .await;
    b.wait_for(
        "the alert gone from the active list",
        &format!("document.querySelector('#alerts-list tr[data-alert=\"{alert_id}\"]') === null && document.getElementById('alerts-list').textContent.length > 0"),
        10,
    )
    .await;
    let all = request(
        gw.http,
        "GET",
        &format!("/alerts?node={victim}&state=all"),
        &[],
        &[],
    )
    .await
    .json();
    let cleared = all["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == alert_id)
        .cloned()
        .unwrap();
    assert_eq!(cleared["clearNote"], "sensor replaced", "{cleared}");
    assert!(cleared["clearedAt"].is_i64(), "{cleared}");
    assert_no_errors(&b, "after clearing an alert");

    // Ask the node now, from its page (the token is stored): it reported a second ago, so the
    // monitor answers from its cache without asking the mesh.
    open(
        &b,
        &gw,
        &format!("#/node/{victim}"),
        "the node page",
        "document.getElementById('node-ask') !== null",
        10,
    )
    .await;
    b.eval("document.getElementById('node-ask').click()").await;
    let asked = b
        .wait_for(
            "the answer to Ask now",
            "(() => { const t = document.getElementById('node-query').textContent; return t && t !== 'Asking…' ? t : false; })()",
            10,
        )
        .await;
    assert!(
        asked
            .as_str()
            .unwrap()
            .starts_with("Not asked: its data is recent"),
        "{asked}"
    );
    b.screenshot("node-ask").await;
    assert_no_errors(&b, "after Ask now");

    // Firmware & campaigns.
    open(
        &b,
        &gw,
        "#/firmware",
        "the firmware view",
        "document.getElementById('fw-list') !== null",
        10,
    )
    .await;
    b.wait_for(
        "the campaign list",
        "document.getElementById('campaign-list').textContent.length > 0",
        10,
    )
    .await;
    // Upload an artefact from the page.
    let mfw = dir.path().join("sensor-1.5.0.mfw");
    std::fs::write(&mfw, common::artefact(Some(&signing_key()), "1.5.0")).unwrap();
    let input = b
        .call(
            "Runtime.evaluate",
            serde_json::json!({"expression": "document.getElementById('fw-file')"}),
        )
        .await;
    b.call(
        "DOM.setFileInputFiles",
        serde_json::json!({"files": [mfw.to_str().unwrap()], "objectId": input["result"]["objectId"]}),
    )
    .await;
    // (The token is stored since the acknowledgement.)
    b.eval("document.querySelector('#fw-file').form.requestSubmit()")
        .await;
    b.wait_for(
        "the uploaded artefact in the list",
        "[...document.querySelectorAll('#fw-list td')].some(td => td.textContent === '1.5.0')",
        10,
    )
    .await;
    // A campaign for two nodes, created and started from the page, then paused and
    // cancelled from it.
    b.eval(&format!(
        r#"(() => {{ document.getElementById('nc-targets').value = 'nodes';
            document.getElementById('nc-targets').dispatchEvent(new Event('change'));
            document.getElementById('nc-target-value').value = '{}, {}';
            document.getElementById('nc-name').value = 'dashboard test';
            document.getElementById('campaign-form').requestSubmit(); }})()"#,
        ids[1], ids[2]
    ))
    .await;
    b.wait_for(
        "the campaign page",
        "location.hash.startsWith('#/campaign/c-')",
        10,
    )
    .await;
    b.wait_for(
        "the campaign's two nodes",
        "document.querySelectorAll('#campaign-nodes tbody tr').length === 2",
        10,
    )
    .await;
    b.wait_for(
        "the campaign running",
        "document.querySelector('#main .kv .badge')?.textContent === 'running'",
        10,
    )
    .await;
    b.screenshot("campaign").await;
    assert_contrast(&b, "campaign").await;
    for (action, state) in [("pause", "paused"), ("cancel", "cancelled")] {
        b.eval(&format!(
            "document.querySelector('#main button[data-action={action}]').click()"
        ))
        .await;
        b.wait_for(
            state,
            &format!("document.querySelector('#main .kv .badge')?.textContent === '{state}'"),
            10,
        )
        .await;
    }
    let listed = request(gw.http, "GET", "/campaigns", &[], &[]).await.json();
    assert_eq!(listed["campaigns"][0]["state"], "cancelled");
    assert_eq!(listed["campaigns"][0]["total_nodes"], 2);
    open(
        &b,
        &gw,
        "#/firmware",
        "the campaign in the list",
        "document.querySelector('#campaign-list tr[data-campaign]') !== null",
        10,
    )
    .await;
    b.screenshot("firmware").await;
    assert_contrast(&b, "firmware").await;
    assert_no_errors(&b, "on firmware and campaigns");
    // On a phone.
    b.viewport(390, 844, true).await;
    open(
        &b,
        &gw,
        "#/overview",
        "the overview on a phone",
        OVERVIEW_COUNTS_1000,
        20,
    )
    .await;
    let overflow = b
        .eval("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        .await;
    assert_eq!(overflow, 0, "no horizontal scrolling on a phone");
    b.screenshot("overview-phone").await;
    assert_contrast(&b, "overview-phone").await;
    for (view, ready) in [("topology", TOPOLOGY_LAID_OUT), ("nodes", ALL_1000_LISTED)] {
        open(&b, &gw, &format!("#/{view}"), view, ready, 20).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let overflow = b
            .eval("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            .await;
        assert_eq!(overflow, 0, "no horizontal scrolling on a phone ({view})");
        b.screenshot(&format!("{view}-phone")).await;
        assert_contrast(&b, view).await;
    }
    assert_no_errors(&b, "on a phone");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reconnects_after_a_gateway_restart() {
    let Some(b) = browser("dashboard reconnect").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ids, parents) = mesh_ids(50);
    let mesh = FakeMesh::new();
    let gw = start_gateway(dir.path(), "127.0.0.1:0".parse().unwrap(), mesh).await;
    let addr = gw.http;
    // Node 49 is away at first.
    gw.mesh.set_tree(tree_of(&ids, &parents, &|i| i != 49));
    open(
        &b,
        &gw,
        "#/nodes",
        "49 nodes",
        "document.getElementById('nodes-summary')?.textContent === '49 of 49 nodes'",
        20,
    )
    .await;
    b.wait_for("live", "document.querySelector('#live.on') !== null", 10)
        .await;
    gw.stop().await;
    b.wait_for(
        "the reconnecting banner",
        "!document.getElementById('banner').hidden",
        10,
    )
    .await;
    b.screenshot("reconnecting").await;
    // The same port, the same database; the mesh now has node 49. Its node_up event is
    // published before the page is back, so only the full refresh after reconnecting shows
    // it.
    let mesh = FakeMesh::new();
    mesh.set_tree(tree_of(&ids, &parents, &|_| true));
    let t0 = Instant::now();
    let gw = start_gateway(dir.path(), addr, mesh).await;
    b.wait_for(
        "the banner to go",
        "document.getElementById('banner').hidden && document.querySelector('#live.on') !== null",
        20,
    )
    .await;
    b.wait_for(
        "node 49 after the refresh",
        "document.getElementById('nodes-summary')?.textContent === '50 of 50 nodes'",
        10,
    )
    .await;
    eprintln!(
        "back live {} ms after the restart",
        t0.elapsed().as_millis()
    );
    // Losing the event stream is expected here, and so is a request that met the gateway
    // down (refused, or cut as the socket closed); anything else is an error.
    let errors: Vec<String> = b
        .errors()
        .into_iter()
        .filter(|e| {
            !e.contains("/events")
                && !e.contains("ERR_CONNECTION_REFUSED")
                && !e.contains("ERR_SOCKET_NOT_CONNECTED")
        })
        .collect();
    assert!(errors.is_empty(), "page errors: {errors:#?}");
    gw.stop().await;
}

/// With `read-auth` on, the page asks for the token at its first read, then goes live: its
/// event stream opens with a single-use ticket (EventSource cannot send the header) and a
/// fault reported afterwards reaches the page through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_goes_live_with_read_auth_on() {
    let Some(b) = browser("dashboard read-auth").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ids, parents) = mesh_ids(20);
    let gw = start_gateway_with(
        dir.path(),
        "127.0.0.1:0".parse().unwrap(),
        FakeMesh::new(),
        |c| c.read_auth = true,
    )
    .await;
    gw.mesh.set_tree(tree_of(&ids, &parents, &|_| true));
    open(
        &b,
        &gw,
        "#/nodes",
        "the token dialog",
        "document.getElementById('token-dialog').open",
        10,
    )
    .await;
    let before = b.errors().len();
    // When the token was given (page clock): a read sent before it may still come back
    // 401 afterwards (the page's first reads go out together), one sent after it must not.
    b.eval(&format!(
        "(() => {{ window.tokenAt = performance.now(); document.getElementById('token-input').value = '{TOKEN}'; document.getElementById('token-form').requestSubmit(); }})()"
    ))
    .await;
    b.wait_for(
        "the nodes",
        "document.getElementById('nodes-summary')?.textContent === '20 of 20 nodes'",
        20,
    )
    .await;
    b.wait_for("live", "document.querySelector('#live.on') !== null", 10)
        .await;
    // A fault now can only reach the page over the event stream.
    let victim = ids[3];
    gw.mesh.report(victim, status(victim, 5, 30, "1.4.1", 100));
    b.wait_for(
        "the alert count from the event stream",
        "document.getElementById('alert-count').textContent === '1'",
        10,
    )
    .await;
    b.screenshot("read-auth-live").await;
    // The token never went into a URL: the stream was opened with a ticket.
    let urls = b
        .eval("performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/events'))")
        .await;
    let urls: Vec<String> = serde_json::from_value(urls).unwrap();
    assert!(urls.iter().all(|u| !u.contains(TOKEN)), "{urls:?}");
    let auth = format!("Bearer {TOKEN}");
    let metrics = request(gw.http, "GET", "/metrics", &[("Authorization", &auth)], &[])
        .await
        .text();
    let count = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    };
    assert!(
        count("meshfleet_gateway_event_tickets_redeemed_total ") >= 1,
        "the stream was not opened with a ticket"
    );
    assert_eq!(count("meshfleet_gateway_event_tickets_refused_total "), 0);
    // Before the token was given, the reads (and a plain /events) were refused: expected,
    // also when the refusal of a read sent before it is logged after it. Nothing sent
    // after it may be refused, and nothing else may fail.
    let refused_after = b
        .eval("performance.getEntriesByType('resource').filter(e => e.startTime > window.tokenAt && e.responseStatus === 401).map(e => e.name)")
        .await;
    let refused_after: Vec<String> = serde_json::from_value(refused_after).unwrap();
    assert!(
        refused_after.is_empty(),
        "refused after the token: {refused_after:?}"
    );
    let errors: Vec<String> = b
        .errors()
        .into_iter()
        .skip(before)
        .filter(|e| !e.contains("status of 401 (Unauthorized)"))
        .collect();
    assert!(
        errors.is_empty(),
        "page errors after the token: {errors:#?}"
    );
    gw.stop().await;
}

/// The page and its assets: content types, ETag revalidation, the security headers, and
/// no token needed even when reads require one.
#[tokio::test]
async fn assets_are_served_with_types_etags_and_csp() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = FakeMesh::new();
    let mut cfg: GatewayConfig = common::config(dir.path());
    cfg.firmware_key = None;
    cfg.read_auth = true;
    let db = Arc::new(SqliteStore::open(&cfg.db).unwrap());
    let gateway = Gateway::start(cfg, mesh, Stores::sqlite(db.clone()), None)
        .await
        .unwrap();
    let http = gateway.http_addr();
    let page = request(http, "GET", "/", &[], &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    assert!(!csp.contains("unsafe"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let html = String::from_utf8(page.body.clone()).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN"
    );
    for (path, ty) in [
        ("/assets/js/app.js", "text/javascript; charset=utf-8"),
        ("/assets/style.css", "text/css; charset=utf-8"),
        ("/assets/icon.svg", "image/svg+xml"),
    ] {
        let r = request(http, "GET", path, &[], &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(ty), "{path}");
        let etag = r.header("etag").unwrap().to_owned();
        assert_eq!(r.header("cache-control"), Some("no-cache"));
        let again = request(http, "GET", path, &[("If-None-Match", &etag)], &[]).await;
        assert_eq!(again.status, 304, "{path} revalidates");
        assert!(again.body.is_empty());
    }
    assert_eq!(
        request(http, "GET", "/assets/nope.js", &[], &[])
            .await
            .status,
        404
    );
    assert_eq!(
        request(http, "GET", "/assets/../Cargo.toml", &[], &[])
            .await
            .status,
        404
    );
    // The API itself still needs the token for reads here.
    assert_eq!(request(http, "GET", "/status", &[], &[]).await.status, 401);
    let auth = format!("Bearer {TOKEN}");
    assert_eq!(
        request(http, "GET", "/status", &[("Authorization", &auth)], &[])
            .await
            .status,
        200
    );
    gateway.shutdown().await;
    tokio::task::spawn_blocking(move || db.close())
        .await
        .unwrap();
}

/// Figures for `docs/benchmarks.md`: fps while panning the 1,000-node topology, mesh change
/// to screen, page weight, gateway CPU per open tab.
/// `cargo test -p meshfleet-gateway --test dashboard -- --ignored --nocapture bench`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures"]
async fn bench_dashboard() {
    let Some(exe) = cdp::chromium_or_skip("dashboard benchmark") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mesh = FakeMesh::new();
    let gw = start_gateway(dir.path(), "127.0.0.1:0".parse().unwrap(), mesh).await;
    let (ids, parents) = mesh_ids(1000);
    let uptime = populate(&gw, &ids, &parents).await;
    let b = Browser::start(&exe, 1280, 860).await;

    // Page weight: what a first visit transfers (HTML + assets + API reads).
    b.call("Network.enable", serde_json::json!({})).await;
    open(&b, &gw, "#/topology", "layout", TOPOLOGY_LAID_OUT, 20).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let weight = b
        .eval(
            r#"(() => {
            const e = performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'));
            const api = ['/status', '/topology', '/alerts', '/health', '/firmware', '/campaigns', '/events', '/openapi.json'];
            const assets = e.filter(x => !api.some(p => new URL(x.name).pathname.startsWith(p)));
            const sum = (l) => l.reduce((s, x) => s + (x.encodedBodySize || 0), 0);
            const by = Object.fromEntries(api.map(p => [p, sum(e.filter(x => new URL(x.name).pathname.startsWith(p)))]));
            const decoded = (l) => l.reduce((s, x) => s + (x.decodedBodySize || 0), 0);
            return { assets: sum(assets), files: assets.length, all: sum(e), api: by,
                     decoded: { assets: decoded(assets), all: decoded(e) } };
        })()"#,
        )
        .await;
    eprintln!("page weight: {weight}");

    // fps while panning: a drag across the canvas driven through real input events for 5 s;
    // the page counts animation frames and the frames the topology actually drew.
    let canvas = b
        .eval("(() => { const r = document.getElementById('topo').getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        .await;
    let (cx, cy) = (canvas[0].as_f64().unwrap(), canvas[1].as_f64().unwrap());
    b.eval(
        r#"(() => { window.__raf = 0; window.__drawn0 = window.meshfleet.topology.frames;
            const tick = () => { window.__raf++; if (!window.__stop) requestAnimationFrame(tick); };
            requestAnimationFrame(tick); })()"#,
    )
    .await;
    b.mouse("mousePressed", cx, cy, 1).await;
    let t0 = Instant::now();
    let mut k = 0u32;
    while t0.elapsed() < Duration::from_secs(5) {
        k += 1;
        let a = f64::from(k) * 0.05;
        b.mouse(
            "mouseMoved",
            cx + 200.0 * a.sin(),
            cy + 120.0 * (a * 0.7).cos(),
            1,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    b.mouse("mouseReleased", cx, cy, 0).await;
    let secs = t0.elapsed().as_secs_f64();
    let r = b
        .eval("(() => { window.__stop = true; return [window.__raf, window.meshfleet.topology.frames - window.__drawn0, window.meshfleet.topology.lastDrawMs]; })()")
        .await;
    let raf = r[0].as_f64().unwrap();
    let drawn = r[1].as_f64().unwrap();
    eprintln!(
        "panning 1,000 nodes for {secs:.1} s: {:.1} fps (animation frames), {:.1} topology redraws/s, {k} mouse moves, last draw {:.2} ms",
        raf / secs,
        drawn / secs,
        r[2].as_f64().unwrap()
    );

    // Mesh change to screen: a node leaves the mesh; time until the node table shows it
    // offline (node_down event -> status re-read -> repaint). Ten samples.
    open(&b, &gw, "#/nodes", "table", ALL_1000_LISTED, 20).await;
    let mut lat = Vec::new();
    let mut page = Vec::new();
    for k in 0..10usize {
        let victim = ids[k];
        b.eval(&format!(
            r#"(() => {{ window.__seen = 0;
                const look = () => {{ const r = document.querySelector('.vt-row[data-node="{victim}"]');
                    if (!window.__seen && r && r.classList.contains('offline')) window.__seen = performance.timeOrigin + performance.now(); }};
                new MutationObserver(look).observe(document.getElementById('nodes-table'), {{ subtree: true, childList: true, attributes: true }}); }})()"#
        ))
        .await;
        let t = now_millis();
        gw.mesh.set_tree(tree_of(&ids, &parents, &|i| i != k));
        let seen = b
            .wait_for("offline row", "window.__seen", 10)
            .await
            .as_f64()
            .unwrap();
        let event = b
            .eval("window.meshfleet.state.lastEventAt")
            .await
            .as_f64()
            .unwrap();
        lat.push(seen - t as f64);
        page.push(seen - event);
        gw.mesh.set_tree(tree_of(&ids, &parents, &|_| true));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    lat.sort_by(f64::total_cmp);
    page.sort_by(f64::total_cmp);
    eprintln!(
        "mesh change to screen (node leaves -> row offline), 10 samples: median {:.0} ms, max {:.0} ms; of which the node_down event's arrival in the page -> row offline: median {:.0} ms, max {:.0} ms",
        lat[5], lat[9], page[5], page[9]
    );

    // Gateway CPU per open tab: this process's CPU time (the gateway and the fake mesh
    // idle) over 20 s with 0 and with 1 open tab on the overview while 20 nodes report
    // every second.
    let reporters = 100..120usize;
    let cpu = || -> f64 {
        let s = std::fs::read_to_string("/proc/self/stat").unwrap();
        let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
    };
    let mut figures = Vec::new();
    for tabs in [0, 1] {
        if tabs == 0 {
            b.goto("about:blank").await;
        } else {
            b.goto(&gw.url("#/overview")).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let c0 = cpu();
        let t0 = Instant::now();
        for _ in 0..20 {
            for i in reporters.clone() {
                gw.mesh
                    .report(ids[i], status(ids[i], 30, 40, "1.4.1", uptime.of(i)));
            }
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        let used = cpu() - c0;
        figures.push(used / t0.elapsed().as_secs_f64());
    }
    eprintln!(
        "gateway CPU, 20 nodes reporting every second: no tab {:.2} %, one tab on the overview {:.2} % (difference per tab {:.2} % of one core)",
        figures[0] * 100.0,
        figures[1] * 100.0,
        (figures[1] - figures[0]) * 100.0
    );
    assert_no_errors(&b, "during the benchmark");
    gw.stop().await;
}
