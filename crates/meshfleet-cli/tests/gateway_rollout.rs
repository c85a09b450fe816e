//! Progressive rollouts end to end (issue 14): `meshfleet gateway` and three
//! `meshfleet node --ota-dir` processes (the agent as shipped: meshfleet OTA, A/B slots,
//! confirmed boots, the signed ROLLBACK command) over real TCP on loopback.
//!
//! 1. The nodes get 1.0.0 by a plain campaign (so their other slot holds it).
//! 2. A rollout of 2.0.0 in two waves (1 node, then the rest) with the operator's signed
//!    rollback intent completes: every node booted 2.0.0 and survived its health window.
//! 3. The emergency rollback sends the signed ROLLBACK to every node; each boots 1.0.0
//!    again, and the rollout reports every exposed node restored.
//! 4. A build that fails its start-up (the node's hook refuses 3.0.0, so the node falls
//!    back by itself) is caught in the canary: the rollout aborts, and the nodes of the
//!    later wave are never offered it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{
    free_port, gateway_command, get_json, meshfleet, pack_version, telemetry_ota_node, text,
    wait_until, Proc,
};
use serde_json::{json, Value};

const TOKEN: &str = "rollout-test-token-0123456789";
const NODES: [u32; 3] = [7501, 7502, 7503];
/// Generous: CI runs this on 2 busy cores, next to other test binaries.
const TIMEOUT: Duration = Duration::from_secs(150);

fn gateway(dir: &Path, http: u16, mesh: u16) -> Child {
    let log = std::fs::File::create(dir.join("gw.log")).unwrap();
    gateway_command(dir, &[], http, mesh, Some("fleet.key.pub"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn http(port: u16, method: &str, path: &str, ct: &str, body: &[u8]) -> Option<(u16, Value)> {
    common::http(port, method, path, Some(TOKEN), ct, body)
}

fn get(port: u16, path: &str) -> Value {
    get_json(port, path, Some(TOKEN))
}

fn post(port: u16, path: &str, body: &Value) -> (u16, Value) {
    http(
        port,
        "POST",
        path,
        "application/json",
        body.to_string().as_bytes(),
    )
    .unwrap()
}

/// Waits for `f`, failing with the newest lines of the gateway's log.
fn wait_for(dir: &Path, what: &str, f: impl FnMut() -> bool) {
    wait_until(what, TIMEOUT, f, || {
        let log = std::fs::read_to_string(dir.join("gw.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        format!("--- gateway log (newest first):\n{tail:#?}")
    });
}

fn node(dir: &Path, id: u32, mesh: u16) -> Proc {
    // The application's start-up: 3.0.0 is a bad build that fails it.
    telemetry_ota_node(
        dir,
        id,
        mesh,
        "test \"$MESHFLEET_OTA_VERSION\" != 3.0.0",
        TIMEOUT,
    )
}

fn upload(hp: u16, bytes: &[u8]) -> String {
    let (s, a) = http(hp, "POST", "/firmware", "application/octet-stream", bytes).unwrap();
    assert_eq!(s, 201, "{a}");
    a["id"].as_str().unwrap().to_owned()
}

fn firmware(hp: u16, id: u32) -> String {
    get(hp, &format!("/status/{id}"))["firmware"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// The controller's settings for a quick test: a 4 s health window with 2 reports.
fn fast(waves: Value) -> Value {
    json!({
        "seed": 3,
        "waves": waves,
        "timeouts": {
            "offer": 30_000_000u64, "download": 60_000_000u64, "reboot": 30_000_000u64,
            "health_reports": 10_000_000u64, "offline_grace": 30_000_000u64,
            "rollback_retry": 5_000_000u64
        },
        "health": {
            "window": 4_000_000u64, "min_samples": 2, "max_reboots": 0,
            "max_heap_drop_percent": 50, "leak_horizon": 3_600_000_000u64, "min_free_heap": 0,
            "max_rejoin": 30_000_000u64, "max_alerts": 3, "app_unhealthy_reports": 2
        }
    })
}

fn decisions(r: &Value) -> Vec<String> {
    r["decisions"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|d| d["kind"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn rollouts_complete_roll_back_by_signed_command_and_stop_a_bad_build_in_the_canary() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("token"), format!("{TOKEN}\n")).unwrap();
    let o = meshfleet(d, &["firmware", "keygen", "--out", "fleet.key"]);
    assert!(o.status.success(), "{}", text(&o));
    let v1 = pack_version(d, "1.0.0");
    let v2 = pack_version(d, "2.0.0");
    let v3 = pack_version(d, "3.0.0");
    let o = meshfleet(
        d,
        &[
            "firmware",
            "intent",
            "app-1.0.0.mfw",
            "--rollback",
            "--sign",
            "fleet.key",
            "--node",
            "7501",
            "--node",
            "7502",
            "--node",
            "7503",
            "--out",
            "rollback.intent",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let intent: Value =
        serde_json::from_slice(&std::fs::read(d.join("rollback.intent")).unwrap()).unwrap();

    let (hp, mp) = (free_port(), free_port());
    let mut gw = gateway(d, hp, mp);
    wait_for(d, "gateway up", || {
        http(hp, "GET", "/readyz", "", b"").is_some_and(|(s, _)| s == 200)
    });
    let _nodes: Vec<Proc> = NODES.iter().map(|&id| node(d, id, mp)).collect();
    wait_for(d, "nodes online and reporting", || {
        NODES.iter().all(|id| {
            let n = get(hp, &format!("/status/{id}"));
            n["online"] == true && n["reports"].as_u64().is_some_and(|r| r > 0)
        })
    });
    let a1 = upload(hp, &v1);
    let a2 = upload(hp, &v2);
    let a3 = upload(hp, &v3);

    // 1. 1.0.0 everywhere by a plain campaign.
    let (s, c) = post(
        hp,
        "/campaigns",
        &json!({"artefact": a1, "targets": {"nodes": NODES}, "start": true}),
    );
    assert_eq!(s, 201, "{c}");
    wait_for(d, "1.0.0 on every node", || {
        NODES.iter().all(|&id| firmware(hp, id) == "1.0.0")
    });
    // The gateway knows them as meshfleet nodes (their telemetry names the OTA role).
    wait_for(d, "the nodes' role known", || {
        NODES
            .iter()
            .all(|id| get(hp, &format!("/status/{id}"))["role"] == "sensor")
    });

    // The nodes confirm 1.0.0 one second after booting it (`--ota-confirm-after 1`); until
    // then they refuse offers as on trial (the rollout would retry them after its offer
    // deadline, which only makes the test slower).
    std::thread::sleep(Duration::from_secs(3));

    // 2. A rollout of 2.0.0 with the signed rollback intent completes.
    let (s, r) = post(
        hp,
        "/rollouts",
        &json!({
            "artefact": a2, "previous_artefact": a1, "rollback_intent": intent,
            "config": fast(json!([{"until": {"count": 1}}, {"until": {"percent": 100}}]))
        }),
    );
    assert_eq!(s, 201, "{r}");
    let started = Instant::now();
    assert_eq!(r["auto_rollback"], true);
    assert!(r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["kind"] == "meshfleet"));
    wait_for(d, "the rollout completed", || {
        let r = get(hp, "/rollouts/r-000001");
        r["state"] == "completed"
            && r["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().all(|n| n["state"] == "healthy"))
    });
    eprintln!(
        "figure: 3-node 2-wave rollout completed in {:.1} s wall (4 s health window)",
        started.elapsed().as_secs_f64()
    );
    for id in NODES {
        assert_eq!(firmware(hp, id), "2.0.0");
    }
    let r = get(hp, "/rollouts/r-000001");
    // The canary went first: the second wave started after a node was healthy.
    let k = decisions(&r);
    let healthy = k.iter().position(|x| x == "healthy").unwrap();
    let second = k
        .iter()
        .enumerate()
        .filter(|(_, x)| *x == "wave_started")
        .nth(1)
        .unwrap()
        .0;
    assert!(healthy < second, "{k:?}");

    // 3. Emergency rollback: the signed ROLLBACK to every node, each back on 1.0.0.
    let (s, r) = post(hp, "/rollouts/r-000001/rollback", &json!({}));
    assert_eq!((s, r["state"].clone()), (200, json!("aborted")), "{r}");
    wait_for(d, "every node back on 1.0.0, restored", || {
        let r = get(hp, "/rollouts/r-000001");
        !r["restored_s"].is_null() && NODES.iter().all(|&id| firmware(hp, id) == "1.0.0")
    });
    let r = get(hp, "/rollouts/r-000001");
    assert_eq!(r["rolled_back"], 3, "{r:#}");
    eprintln!(
        "figure: emergency rollback of 3 nodes restored in {} s (controller's restored_s)",
        r["restored_s"]
    );
    let k = decisions(&r);
    assert!(!k.iter().any(|x| x == "rollback_unavailable"), "{k:?}");

    // 4. A bad build: the canary falls back by itself, the rollout aborts, the other nodes
    //    are never offered 3.0.0.
    let (s, r) = post(
        hp,
        "/rollouts",
        &json!({
            "artefact": a3, "previous_artefact": a1, "rollback_intent": intent,
            "config": fast(json!([{"until": {"count": 1}, "failure": {"count": 1}}, {"until": {"percent": 100}}]))
        }),
    );
    assert_eq!(s, 201, "{r}");
    wait_for(d, "the bad build's rollout aborted", || {
        get(hp, "/rollouts/r-000002")["state"] == "aborted"
    });
    let r = get(hp, "/rollouts/r-000002");
    eprintln!(
        "figure: bad build aborted {:.1} s after its rollout was created",
        (r["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["kind"] == "aborted")
            .unwrap()["at_ms"]
            .as_i64()
            .unwrap()
            - r["created_at_ms"].as_i64().unwrap()) as f64
            / 1000.0
    );
    let offered: Vec<u64> = r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["offers"].as_u64().unwrap_or(0) > 0)
        .map(|n| n["node"].as_u64().unwrap())
        .collect();
    assert_eq!(offered.len(), 1, "only the canary was offered 3.0.0: {r:#}");
    wait_for(d, "every node on 1.0.0 after the bad build", || {
        NODES.iter().all(|&id| firmware(hp, id) == "1.0.0")
    });
    let failed = r["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == "failed")
        .cloned();
    assert!(failed.is_some(), "{:?}", decisions(&r));
    eprintln!("bad build: {}", failed.unwrap());
    if std::env::var_os("ROLLOUT_TRACE").is_some() {
        for id in ["r-000001", "r-000002"] {
            let r = get(hp, &format!("/rollouts/{id}"));
            for d in r["decisions"].as_array().unwrap() {
                eprintln!("{id} {} {} {}", d["at_ms"], d["kind"], d["detail"]);
            }
            for c in r["campaigns"].as_array().unwrap() {
                eprintln!(
                    "{}",
                    get(hp, &format!("/campaigns/{}", c.as_str().unwrap()))
                );
            }
        }
    }
    let _ = gw.kill();
    let _ = gw.wait();
}
