//! Progressive rollouts through the gateway (issue 14): REST, the controller on the
//! gateway's clock, campaigns with OFFER scope, health from the registry, persistence and a
//! real restart.
//!
//! The gateway, its SQLite file and the mesh are real: nodes are `meshfleet-runtime` nodes
//! joined over loopback TCP that send the library's status package (604). Their firmware is
//! played by the test: a node "takes" the image when the rollout's campaign lists it (its
//! status reports the new version, its uptime restarts), a bad build crash-loops (its
//! uptime resets every few seconds), and a node ordered back reports the old version again.
//! The OTA transfer itself is not in these tests (no OTA engine on the nodes; see
//! `crates/meshfleet-demo/tests/rollout.rs` for real agent nodes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use meshfleet_gateway::GatewayConfig;
use meshfleet_runtime::MeshHandle;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

const OLD: &str = "1.0.0";
const NEW: &str = "2.0.0";

/// One simulated device's firmware, as its status reports show it.
struct Device {
    fw: String,
    booted: Instant,
    mem_kb: u32,
    /// The new build crash-loops: uptime resets this often.
    crash_every: Option<Duration>,
    /// Flipped by the test's "OTA layer".
    took_new: bool,
    rolled_back: bool,
    /// Ignores its first offer (takes the image only once offered again).
    misses_first_offer: bool,
}

type Shared = Arc<Mutex<Device>>;

fn device() -> Shared {
    Arc::new(Mutex::new(Device {
        fw: OLD.into(),
        // An uptime well past the monitor's 30 s slack, so a reboot reads as one.
        booted: Instant::now() - Duration::from_secs(300),
        mem_kb: 120,
        crash_every: None,
        took_new: false,
        rolled_back: false,
        misses_first_offer: false,
    }))
}

fn status(id: u32, d: &Device) -> String {
    let mut up = d.booted.elapsed();
    if let (Some(every), true) = (d.crash_every, d.fw == NEW) {
        up = Duration::from_millis((up.as_millis() % every.as_millis()) as u64);
    }
    format!(
        r#"{{"from":{id},"routing":2,"type":604,"status":1,"uptime":{},"mem":{},"wifi":80,"fw":"{}","fwMD5":"abc","nodes":2,"conns":1,"msgRx":0,"msgTx":1,"msgDrop":0,"latency":20,"loss":0,"throughput":100,"alerts":0,"lastErr":""}}"#,
        up.as_secs(),
        d.mem_kb,
        d.fw
    )
}

/// A node that sends its status every 400 ms until dropped.
struct SimNode {
    id: u32,
    dev: Shared,
    /// Kept so the node stays up while the test runs.
    _handle: MeshHandle,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for SimNode {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn sim_node(id: u32, gateway: std::net::SocketAddr) -> SimNode {
    let (handle, task) = node(id, gateway).await;
    let dev = device();
    let (h, d) = (handle.clone(), dev.clone());
    let sender = tokio::spawn(async move {
        loop {
            let text = status(id, &d.lock().unwrap());
            let _ = h.broadcast(text).await;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    });
    SimNode {
        id,
        dev,
        _handle: handle,
        tasks: vec![task, sender],
    }
}

/// The test's OTA layer: a node listed by a campaign of the rollout takes the new build
/// (reboots into it); a node with a rollback order goes back to the old one.
fn play_ota(nodes: &[SimNode], rollout: &Value, listed: &[u32]) {
    for n in nodes {
        let mut d = n.dev.lock().unwrap();
        let view = rollout["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|v| v["node"] == n.id));
        let ordered_back = view.is_some_and(|v| !v["rollback"].is_null());
        if ordered_back && d.fw == NEW {
            d.fw = OLD.into();
            d.booted = Instant::now();
            d.rolled_back = true;
        } else {
            let waits_for_retry =
                d.misses_first_offer && view.is_some_and(|v| v["offers"].as_u64() < Some(2));
            if !listed.contains(&n.id) || d.took_new || ordered_back || waits_for_retry {
                continue;
            }
            d.fw = NEW.into();
            d.booted = Instant::now();
            d.took_new = true;
        }
    }
}

/// The unfinished nodes of the rollout's campaigns that carry the new artefact.
async fn listed(f: &Fixture, rollout: &Value, new_art: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for c in rollout["campaigns"].as_array().into_iter().flatten() {
        let c = f
            .get(&format!("/campaigns/{}", c.as_str().unwrap()))
            .await
            .json();
        if c["artefact"] != new_art {
            continue;
        }
        for n in c["nodes"].as_array().into_iter().flatten() {
            if n["state"] == "QUEUED" || n["state"] == "IN_PROGRESS" {
                out.push(n["node"].as_u64().unwrap() as u32);
            }
        }
    }
    out
}

async fn post_json(f: &Fixture, path: &str, body: &Value) -> Resp {
    f.post(path, "application/json", body.to_string().as_bytes())
        .await
}

async fn upload(f: &Fixture, key: &meshfleet_firmware::SigningKey, v: &str) -> String {
    let r = f
        .post(
            "/firmware",
            "application/octet-stream",
            &artefact(Some(key), v),
        )
        .await;
    assert!(r.status == 201 || r.status == 200, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

/// Short deadlines for a test: a 2 s health window with 2 reports.
fn fast(waves: Value) -> Value {
    json!({
        "seed": 7,
        "waves": waves,
        "max_in_flight": 10,
        "timeouts": {
            "offer": 20_000_000u64, "download": 20_000_000u64, "reboot": 10_000_000u64,
            "health_reports": 5_000_000u64, "offline_grace": 20_000_000u64,
            "rollback_retry": 3_000_000u64
        },
        "health": {
            "window": 2_000_000u64, "min_samples": 2, "max_reboots": 0,
            "max_heap_drop_percent": 20, "leak_horizon": 3_600_000_000u64, "min_free_heap": 0,
            "max_rejoin": 10_000_000u64, "max_alerts": 3, "app_unhealthy_reports": 2
        }
    })
}

/// Drives the test's OTA layer until `done` says so (or 60 s).
async fn drive_until(
    f: &Fixture,
    nodes: &[SimNode],
    id: &str,
    new_art: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let r = f.get(&format!("/rollouts/{id}")).await.json();
        if done(&r) {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}: {r:#}"
        );
        let l = listed(f, &r, new_art).await;
        play_ota(nodes, &r, &l);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn fleet(f: &Fixture, ids: impl Iterator<Item = u32>) -> Vec<SimNode> {
    let mut nodes = Vec::new();
    for id in ids {
        nodes.push(sim_node(id, f.mesh_addr).await);
    }
    for n in &nodes {
        let id = n.id;
        wait_until("node reported", || async {
            f.get(&format!("/status/{id}")).await.json()["firmware"] == OLD
        })
        .await;
    }
    nodes
}

/// A rollout test's world: a gateway in a temp dir (reports every 200 ms count), the
/// nodes on [`OLD`], both artefacts uploaded.
struct World {
    f: Fixture,
    nodes: Vec<SimNode>,
    key: meshfleet_firmware::SigningKey,
    old_art: String,
    new_art: String,
    /// Bind it by name (not `..`): the directory goes when it is dropped.
    _dir: tempfile::TempDir,
}

async fn world(ids: impl Iterator<Item = u32>) -> World {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen();
    let f = Fixture::start_with(dir.path().to_owned(), key.clone(), fast_reports).await;
    let nodes = fleet(&f, ids).await;
    let old_art = upload(&f, &key, OLD).await;
    let new_art = upload(&f, &key, NEW).await;
    World {
        f,
        nodes,
        key,
        old_art,
        new_art,
        _dir: dir,
    }
}

/// The nodes report every 400 ms: let the monitor take a report every 200 ms.
fn fast_reports(c: &mut GatewayConfig) {
    c.monitor.min_report_gap_ms = 200;
}

/// Creates rollout `r-000001` from `old_art` to `new_art` with `config` (201 asserted).
async fn create(f: &Fixture, old_art: &str, new_art: &str, config: Value) {
    let body = json!({"artefact": new_art, "previous_artefact": old_art, "config": config});
    let r = post_json(f, "/rollouts", &body).await;
    assert_eq!(r.status, 201, "{}", r.text());
}

/// A command without a body (`/rollouts/<id>/<command>`).
async fn post_empty(f: &Fixture, path: &str) -> Resp {
    f.post(path, "application/json", b"").await
}

/// The rollout completed with every node healthy.
fn all_healthy(r: &Value) -> bool {
    r["state"] == "completed"
        && r["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["state"] == "healthy")
}

fn kinds(r: &Value) -> Vec<String> {
    r["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// A healthy build goes through every wave; nodes count only after their health window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_rollout_completes_wave_by_wave() {
    let World {
        f,
        nodes,
        old_art,
        new_art,
        _dir,
        ..
    } = world(7001..=7006).await;
    let r = post_json(
        &f,
        "/rollouts",
        &json!({
            "artefact": new_art, "previous_artefact": old_art, "name": "healthy",
            "config": fast(json!([
                {"until": {"count": 2}}, {"until": {"percent": 50}}, {"until": {"percent": 100}}
            ]))
        }),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("location"), Some("/rollouts/r-000001"));
    let v = r.json();
    assert_eq!(v["state"], "running");
    assert_eq!(v["previous_version"], OLD);
    assert_eq!(v["waves"].as_array().unwrap().len(), 3);
    // The canary is offered at once, through a campaign scoped to it.
    assert_eq!(v["campaigns"].as_array().unwrap().len(), 1);
    let c = f
        .get(&format!(
            "/campaigns/{}",
            v["campaigns"][0].as_str().unwrap()
        ))
        .await
        .json();
    assert_eq!(c["total_nodes"], 2, "{c:#}");

    let done = drive_until(&f, &nodes, "r-000001", &new_art, "completion", all_healthy).await;
    let k = kinds(&done);
    for want in [
        "planned",
        "wave_started",
        "boot_confirmed",
        "healthy",
        "wave_passed",
        "completed",
    ] {
        assert!(k.iter().any(|x| x == want), "no {want} in {k:?}");
    }
    assert_eq!(done["exposed"], 6);
    assert_eq!(done["rolled_back"], 0);
    // Success needs the health window: the first node turned healthy at least 2 s after its
    // confirmed boot.
    let at = |kind: &str| {
        done["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["kind"] == kind)
            .map(|d| d["at_ms"].as_i64().unwrap())
            .unwrap()
    };
    assert!(at("healthy") - at("boot_confirmed") >= 2_000);
    for n in &nodes {
        assert_eq!(n.dev.lock().unwrap().fw, NEW);
    }
    // Audit and list.
    let audit = f.db_audit().await;
    assert!(audit
        .iter()
        .any(|e| e.action == "rollout.create" && e.target == "r-000001"));
    let list = f.get("/rollouts").await.json();
    assert_eq!(list["rollouts"][0]["state"], "completed");
    assert!(list["rollouts"][0].get("nodes").is_none());
    drop(nodes);
    f.stop().await;
}

/// A crash-looping build is caught in the canary: the rollout aborts, only canary nodes
/// were exposed, and each of them is ordered back and reports the old version again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_build_aborts_in_the_canary_and_is_rolled_back() {
    let World {
        f,
        nodes,
        old_art,
        new_art,
        _dir,
        ..
    } = world(7101..=7108).await;
    for n in &nodes {
        n.dev.lock().unwrap().crash_every = Some(Duration::from_millis(1500));
    }
    let mut cfg = fast(json!([
        {"until": {"count": 2}, "failure": {"count": 1}}, {"until": {"percent": 100}}
    ]));
    // A 5 s window: several crashes (uptime resets every 1.5 s) fall inside it even when
    // the machine is busy and a report or a step comes late.
    cfg["health"]["window"] = json!(5_000_000u64);
    create(&f, &old_art, &new_art, cfg).await;
    let done = drive_until(&f, &nodes, "r-000001", &new_art, "abort and restore", |r| {
        r["state"] == "aborted" && !r["restored_s"].is_null()
    })
    .await;
    let k = kinds(&done);
    assert!(k.iter().any(|x| x == "aborted"), "{k:?}");
    assert!(k.iter().any(|x| x == "rollback_ordered"), "{k:?}");
    assert!(k.iter().any(|x| x == "all_restored"), "{k:?}");
    let failed = done["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "failed")
        .unwrap();
    assert!(
        failed["detail"]["reason"]["health"]["reboot_loop"].is_object(),
        "{failed:#}"
    );
    // Contained to the canary: exposed ≤ 2, nobody outside it took the build.
    let exposed: Vec<u32> = nodes
        .iter()
        .filter(|n| n.dev.lock().unwrap().took_new)
        .map(|n| n.id)
        .collect();
    assert!(!exposed.is_empty() && exposed.len() <= 2, "{exposed:?}");
    assert_eq!(done["exposed"].as_u64().unwrap() as usize, exposed.len());
    for n in &nodes {
        assert_eq!(n.dev.lock().unwrap().fw, OLD, "node {}", n.id);
    }
    // Stock nodes (no meshfleet telemetry): the previous artefact was offered again.
    let camps: Vec<String> = done["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let mut reoffered = false;
    for c in &camps {
        let c = f.get(&format!("/campaigns/{c}")).await.json();
        reoffered |= c["artefact"] == old_art.as_str();
    }
    assert!(reoffered, "no campaign re-offered the previous artefact");
    drop(nodes);
    f.stop().await;
}

/// A gateway on a fixed mesh port (the nodes reconnect to it after a restart).
async fn start_at(
    dir: &std::path::Path,
    key: meshfleet_firmware::SigningKey,
    mesh_port: u16,
) -> Fixture {
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], mesh_port));
    Fixture::start_listening(dir.to_owned(), key, listen, fast_reports).await
}

/// A gateway restart in the middle of wave 2: the rollout is read back from SQLite,
/// resumes (`restarted` decision) and completes; its decision log survives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restart_mid_wave_resumes_the_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let f = start_at(dir.path(), key.clone(), port).await;
    let nodes = fleet(&f, 7201..=7205).await;
    let old_art = upload(&f, &key, OLD).await;
    let new_art = upload(&f, &key, NEW).await;
    let mut cfg = fast(json!([{"until": {"count": 2}}, {"until": {"percent": 100}}]));
    // A longer window in wave 2, so the restart lands inside it.
    cfg["health"]["window"] = json!(6_000_000u64);
    create(&f, &old_art, &new_art, cfg).await;
    let mid = drive_until(&f, &nodes, "r-000001", &new_art, "wave 2 under way", |r| {
        r["current_wave"] == 1
            && r["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["wave"] == 1 && n["state"] == "booted")
    })
    .await;
    let before = kinds(&mid).len();
    f.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let f = start_at(dir.path(), key.clone(), port).await;
    let back = f.get("/rollouts/r-000001").await.json();
    assert_eq!(back["current_wave"], 1, "{back:#}");
    assert!(kinds(&back).len() >= before, "the decision log was lost");
    let done = drive_until(
        &f,
        &nodes,
        "r-000001",
        &new_art,
        "completion after restart",
        all_healthy,
    )
    .await;
    let k = kinds(&done);
    assert!(k.iter().any(|x| x == "restarted"), "{k:?}");
    // Numbered without a gap across the restart.
    let ns: Vec<u64> = done["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["n"].as_u64().unwrap())
        .collect();
    assert!(ns.windows(2).all(|w| w[1] == w[0] + 1), "{ns:?}");
    drop(nodes);
    f.stop().await;
}

/// Bad input: problem+json with a stable code, nothing created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_requests_are_checked() {
    let World {
        f,
        nodes,
        old_art,
        new_art,
        _dir,
        key,
    } = world(7301..=7303).await;
    let code = |r: &Resp| r.json()["code"].as_str().unwrap_or("").to_owned();

    let r = f.post("/rollouts", "application/json", b"{").await;
    assert_eq!((r.status, code(&r)), (400, "bad_json".into()));
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let r = post_json(&f, "/rollouts", &json!({"artefact": new_art, "bogus": 1})).await;
    assert_eq!((r.status, code(&r)), (400, "bad_json".into()));
    let r = f.post("/rollouts", "text/plain", b"{}").await;
    assert_eq!(r.status, 415);
    let r = request(
        f.http,
        "POST",
        "/rollouts",
        &[("Content-Type", "application/json")],
        json!({"artefact": new_art}).to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = post_json(&f, "/rollouts", &json!({"artefact": "00".repeat(32)})).await;
    assert_eq!((r.status, code(&r)), (422, "unknown_artefact".into()));
    let r = post_json(&f, "/rollouts", &json!({"artefact": new_art, "nodes": []})).await;
    assert_eq!((r.status, code(&r)), (422, "invalid_rollout".into()));
    let r = post_json(&f, "/rollouts", &json!({"artefact": new_art, "nodes": [0]})).await;
    assert_eq!((r.status, code(&r)), (422, "invalid_rollout".into()));
    // Rolling 2.0.0 "back" to 2.0.0 is meaningless.
    let r = post_json(
        &f,
        "/rollouts",
        &json!({"artefact": new_art, "previous_version": NEW}),
    )
    .await;
    assert_eq!((r.status, code(&r)), (422, "cannot_plan".into()));
    let r = post_json(
        &f,
        "/rollouts",
        &json!({"artefact": new_art, "config": {"waves": []}}),
    )
    .await;
    assert_eq!((r.status, code(&r)), (422, "cannot_plan".into()));
    let r = post_json(
        &f,
        "/rollouts",
        &json!({"artefact": new_art, "config": {"max_in_flight": 1, "nope": 2}}),
    )
    .await;
    assert_eq!((r.status, code(&r)), (400, "bad_json".into()));

    // Rollback intents: an install intent, an unsigned one, one by another key, an expired
    // one, one for another version, one that leaves a targeted node out: all refused.
    let old_bytes = artefact(Some(&key), OLD);
    let old_a = meshfleet_firmware::Artefact::from_bytes(&old_bytes).unwrap();
    let m = old_a.manifest();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let rb = |nodes: Vec<u32>, version: &str, expires: u64| {
        meshfleet_firmware::Intent::rollback_to(
            "sensor",
            "ESP32",
            meshfleet_firmware::Version::parse(version).unwrap(),
            m.sha256,
            nodes,
            now,
            expires,
        )
    };
    let signed = |mut i: meshfleet_firmware::Intent, k: &meshfleet_firmware::SigningKey| {
        i.sign(k);
        serde_json::from_slice::<Value>(&i.to_json()).unwrap()
    };
    let mut install = meshfleet_firmware::Intent::for_manifest(m, vec![], now, 3600);
    install.sign(&key);
    let install = serde_json::from_slice::<Value>(&install.to_json()).unwrap();
    let unsigned = serde_json::from_slice::<Value>(&rb(vec![], OLD, 3600).to_json()).unwrap();
    let bad_intents = [
        install,
        unsigned,
        signed(rb(vec![], OLD, 3600), &keygen()),
        signed(rb(vec![], "1.5.0", 3600), &key),
        signed(rb(vec![7301], OLD, 3600), &key),
        signed(rb(vec![], OLD, 0), &key),
        json!({"format": 1}),
    ];
    for (i, intent) in bad_intents.into_iter().enumerate() {
        let r = post_json(
            &f,
            "/rollouts",
            &json!({"artefact": new_art, "previous_artefact": old_art, "rollback_intent": intent}),
        )
        .await;
        assert_eq!(
            (r.status, code(&r)),
            (422, "invalid_rollback_intent".into()),
            "intent {i}: {}",
            r.text()
        );
    }
    assert_eq!(f.get("/rollouts").await.json()["rollouts"], json!([]));

    // A good one, waiting for approval: commands in the wrong state are 409.
    let good = signed(rb(vec![7301, 7302, 7303], OLD, 3600), &key);
    let r = post_json(
        &f,
        "/rollouts",
        &json!({"artefact": new_art, "previous_artefact": old_art, "rollback_intent": good,
                "config": {"start": "await_approval"}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["state"], "awaiting_approval");
    assert_eq!(v["auto_rollback"], true);
    assert_eq!(v["campaigns"], json!([]));
    let r = post_empty(&f, "/rollouts/r-000001/resume").await;
    assert_eq!((r.status, code(&r)), (409, "command_not_applicable".into()));
    let r = post_empty(&f, "/rollouts/r-000001/skip").await;
    assert_eq!((r.status, code(&r)), (400, "bad_json".into()));
    let r = f
        .post(
            "/rollouts/r-000001/skip",
            "application/json",
            br#"{"to": 9}"#,
        )
        .await;
    assert_eq!((r.status, code(&r)), (409, "command_not_applicable".into()));
    let r = post_empty(&f, "/rollouts/r-000001/launch").await;
    assert_eq!(r.status, 404);
    let r = post_empty(&f, "/rollouts/r-9/approve").await;
    assert_eq!(r.status, 404);
    let r = post_empty(&f, "/rollouts/r-000002/approve").await;
    assert_eq!(r.status, 404);
    assert_eq!(f.get("/rollouts/r-00000x").await.status, 404);
    let r = request(f.http, "POST", "/rollouts/r-000001/approve", &[], b"").await;
    assert_eq!(r.status, 401);
    // Approve: the canary's campaign opens.
    let r = post_empty(&f, "/rollouts/r-000001/approve").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "running");
    assert_eq!(r.json()["campaigns"].as_array().unwrap().len(), 1);
    // Pause, then the emergency rollback from the paused state.
    let r = post_empty(&f, "/rollouts/r-000001/pause").await;
    assert_eq!(r.json()["state"], "paused");
    let r = post_empty(&f, "/rollouts/r-000001/rollback").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "aborted");
    let r = post_empty(&f, "/rollouts/r-000001/abort").await;
    assert_eq!((r.status, code(&r)), (409, "command_not_applicable".into()));
    let audit = f.db_audit().await;
    for a in [
        "rollout.create",
        "rollout.approve",
        "rollout.pause",
        "rollout.rollback",
    ] {
        assert!(
            audit.iter().any(|e| e.action == a),
            "no {a} in the audit log"
        );
    }
    drop(nodes);
    f.stop().await;
}

/// A node that does not answer its first offer is cancelled at the offer deadline and
/// offered again, and then takes the image: the retry's new offer reaches it (the driver
/// carries out the cancel before the new offer; the other way round the new offer was
/// cancelled at once and the node failed after its retries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_misses_its_first_offer_is_retried_and_updated() {
    let World {
        f,
        nodes,
        old_art,
        new_art,
        _dir,
        ..
    } = world(7601..=7603).await;
    nodes[0].dev.lock().unwrap().misses_first_offer = true;
    let mut cfg = fast(json!([{"until": {"percent": 100}}]));
    cfg["timeouts"]["offer"] = json!(2_000_000u64);
    create(&f, &old_art, &new_art, cfg).await;
    let done = drive_until(&f, &nodes, "r-000001", &new_art, "completion", all_healthy).await;
    let retried = done["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["kind"] == "retry" && d["detail"]["node"] == 7601);
    assert!(retried, "{:?}", kinds(&done));
    assert_eq!(nodes[0].dev.lock().unwrap().fw, NEW);
    drop(nodes);
    f.stop().await;
}

/// A node that joins the mesh after the rollout was planned is added to the last wave
/// (`node_added`) and updated with it; the first wave never includes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_later_is_updated_in_the_last_wave() {
    let World {
        f,
        mut nodes,
        old_art,
        new_art,
        _dir,
        ..
    } = world(7701..=7703).await;
    let cfg = fast(json!([
        {"until": {"count": 1}, "then": "pause_for_approval"}, {"until": {"percent": 100}}
    ]));
    create(&f, &old_art, &new_art, cfg).await;
    drive_until(&f, &nodes, "r-000001", &new_art, "the canary passed", |r| {
        r["state"] == "awaiting_approval"
    })
    .await;
    // A fourth node joins now.
    nodes.extend(fleet(&f, 7704..=7704).await);
    let r = drive_until(
        &f,
        &nodes,
        "r-000001",
        &new_art,
        "the newcomer planned",
        |r| r["nodes"].as_array().unwrap().len() == 4,
    )
    .await;
    let late = r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == 7704)
        .unwrap();
    assert_eq!(late["wave"], 1, "{late}");
    assert_eq!(late["state"], "pending", "{late}");
    let r = post_empty(&f, "/rollouts/r-000001/approve").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let done = drive_until(&f, &nodes, "r-000001", &new_art, "completion", all_healthy).await;
    assert!(kinds(&done).iter().any(|k| k == "node_added"));
    assert_eq!(nodes[3].dev.lock().unwrap().fw, NEW);
    drop(nodes);
    f.stop().await;
}

/// A node that is offline when its wave runs is decided without after the grace
/// (`deferred`), and offered when it comes back, after the rollout completed: it ends
/// healthy on the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_offline_during_its_wave_is_updated_when_it_returns() {
    let World {
        f,
        mut nodes,
        old_art,
        new_art,
        _dir,
        ..
    } = world(7801..=7803).await;
    // 7803 leaves the mesh (its process stops).
    drop(nodes.pop());
    wait_until("7803 offline", || async {
        f.get("/status/7803").await.json()["online"] == false
    })
    .await;
    let mut cfg = fast(json!([{"until": {"percent": 100}}]));
    cfg["timeouts"]["offline_grace"] = json!(3_000_000u64);
    create(&f, &old_art, &new_art, cfg).await;
    let r = drive_until(
        &f,
        &nodes,
        "r-000001",
        &new_art,
        "completed without 7803",
        |r| r["state"] == "completed",
    )
    .await;
    assert!(kinds(&r).iter().any(|k| k == "deferred"), "{:?}", kinds(&r));
    let n = |r: &Value, id: u32| {
        r["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(n(&r, 7803)["state"], "pending");
    assert_eq!(n(&r, 7803)["offers"], 0);
    // It comes back (a fresh process on the old version) and is updated.
    nodes.extend(fleet(&f, 7803..=7803).await);
    let done = drive_until(&f, &nodes, "r-000001", &new_art, "7803 updated", |r| {
        n(r, 7803)["state"] == "healthy"
    })
    .await;
    assert_eq!(done["state"], "completed");
    assert_eq!(nodes[2].dev.lock().unwrap().fw, NEW);
    drop(nodes);
    f.stop().await;
}
