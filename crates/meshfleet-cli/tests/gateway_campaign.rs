//! A firmware campaign through `meshfleet gateway` to three `meshfleet node --ota-dir`
//! processes over real TCP on loopback: created and started over REST, paused and
//! resumed, the gateway SIGKILLed in the middle of the transfer and restarted on the same
//! database; the campaign's state and the history survive, the campaign resumes and
//! completes, and `/status` shows every node on the new version.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{
    free_port, gateway_command, get_json, incompressible_image, meshfleet, ota_node, pack, text,
    wait_until, Proc,
};
use serde_json::{json, Value};

const TOKEN: &str = "campaign-test-token-0123456789";
const NODES: [u32; 3] = [7001, 7002, 7003];
/// Generous: CI runs this on 2 busy cores, next to other test binaries.
const TIMEOUT: Duration = Duration::from_secs(120);

fn gateway(dir: &Path, http: u16, mesh: u16, log: &str) -> Child {
    gateway_with(dir, http, mesh, log, &[])
}

/// The gateway with global flags `pre` (`--config FILE`), its log in `dir/log`.
fn gateway_with(dir: &Path, http: u16, mesh: u16, log: &str, pre: &[&str]) -> Child {
    let log = std::fs::File::create(dir.join(log)).unwrap();
    gateway_command(dir, pre, http, mesh, Some("fleet.key.pub"))
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

/// Waits for `f`, failing with the newest lines of the gateway's logs.
fn wait_for(dir: &Path, what: &str, f: impl FnMut() -> bool) {
    wait_until(what, TIMEOUT, f, || {
        let logs: Vec<String> = ["gw1.log", "gw2.log"]
            .iter()
            .filter_map(|l| std::fs::read_to_string(dir.join(l)).ok())
            .map(|t| t.lines().rev().take(40).collect::<Vec<_>>().join("\n"))
            .collect();
        format!("--- gateway logs (newest first):\n{logs:#?}")
    });
}

fn node(dir: &Path, id: u32, mesh: u16) -> Proc {
    ota_node(dir, id, mesh, "ESP32", true, TIMEOUT)
}

fn campaign(port: u16) -> Value {
    get(port, "/campaigns/c-000001")
}

fn node_states(c: &Value) -> Vec<String> {
    c["nodes"]
        .as_array()
        .map(|n| {
            n.iter()
                .map(|n| n["state"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn campaign_survives_a_sigkilled_gateway_and_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("token"), format!("{TOKEN}\n")).unwrap();
    let o = meshfleet(d, &["firmware", "keygen", "--out", "fleet.key"]);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(d.join("app.bin"), incompressible_image(400_000)).unwrap();
    let o = pack(
        d,
        "app.bin",
        "ESP32",
        "2.0.0",
        Some("fleet.key"),
        "app.mfw",
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let mfw = std::fs::read(d.join("app.mfw")).unwrap();

    let (hp, mp) = (free_port(), free_port());
    let mut gw = gateway(d, hp, mp, "gw1.log");
    wait_for(d, "gateway up", || {
        http(hp, "GET", "/readyz", "", b"").is_some_and(|(s, _)| s == 200)
    });
    // Two nodes now, the third once they are done (so the gateway is killed while one node
    // is in the middle of its transfer and two have finished).
    let mut nodes: Vec<Proc> = NODES[..2].iter().map(|&id| node(d, id, mp)).collect();
    wait_for(d, "nodes online and reporting", || {
        NODES[..2].iter().all(|id| {
            let n = get(hp, &format!("/status/{id}"));
            n["online"] == true && n["reports"].as_u64().is_some_and(|r| r > 0)
        })
    });

    let (s, art) = http(hp, "POST", "/firmware", "application/octet-stream", &mfw).unwrap();
    assert_eq!(s, 201, "{art}");
    let spec = json!({"artefact": art["id"], "targets": {"nodes": NODES}, "name": "to 2.0.0"});
    let (s, c) = http(
        hp,
        "POST",
        "/campaigns",
        "application/json",
        spec.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(s, 201, "{c}");
    assert_eq!(c["total_nodes"], 3, "{c}");
    let (s, c) = http(
        hp,
        "POST",
        "/campaigns/c-000001/start",
        "application/json",
        b"",
    )
    .unwrap();
    assert_eq!((s, c["state"].clone()), (200, json!("running")), "{c}");

    // Paused: the gateway stops serving; resumed: it goes on.
    wait_for(d, "transfer under way", || {
        campaign(hp)["progress"].as_f64().is_some_and(|p| p > 0.05)
    });
    let (s, c) = http(
        hp,
        "POST",
        "/campaigns/c-000001/pause",
        "application/json",
        b"",
    )
    .unwrap();
    assert_eq!((s, c["state"].clone()), (200, json!("paused")), "{c}");
    std::thread::sleep(Duration::from_secs(2));
    let held = campaign(hp)["progress"].as_f64().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let later = campaign(hp)["progress"].as_f64().unwrap();
    assert!(
        later - held < 0.02,
        "progress went on while paused: {held} -> {later}"
    );
    assert!(
        later < 0.6,
        "the transfer ended before the pause could be seen"
    );
    let (s, c) = http(
        hp,
        "POST",
        "/campaigns/c-000001/resume",
        "application/json",
        b"",
    )
    .unwrap();
    assert_eq!((s, c["state"].clone()), (200, json!("running")), "{c}");

    wait_for(d, "the first two nodes updated", || {
        node_states(&campaign(hp))[..2] == ["SUCCEEDED", "SUCCEEDED"]
    });
    nodes.push(node(d, NODES[2], mp));
    // SIGKILL in the middle of the third node's transfer.
    let node_progress = |c: &Value| c["nodes"][2]["progress"].as_f64().unwrap_or(0.0);
    wait_for(d, "the third node's transfer under way", || {
        node_progress(&campaign(hp)) > 0.1
    });
    let before = campaign(hp);
    assert!(node_progress(&before) < 1.0, "{before}");
    // Mid-way, an estimate of the end, in the future.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        before["estimated_completion_ms"]
            .as_i64()
            .is_some_and(|t| t > now_ms - 1000),
        "{before}"
    );
    let history_before: Vec<usize> = NODES
        .iter()
        .map(|id| {
            get(hp, &format!("/nodes/{id}/history"))["points"]
                .as_array()
                .map_or(0, Vec::len)
        })
        .collect();
    gw.kill().unwrap();
    gw.wait().unwrap();
    // What the finished nodes heard of offers so far.
    let offers = |p: &mut Proc| {
        p.all_lines()
            .iter()
            .filter(|v| {
                v["event"] == "plugin"
                    && ["offer_accepted", "offer_rejected", "update_started"]
                        .iter()
                        .any(|e| v["data"]["event"] == *e)
            })
            .count()
    };
    let offers_before: Vec<usize> = nodes[..2].iter_mut().map(offers).collect();
    assert!(offers_before.iter().all(|&n| n > 0), "{offers_before:?}");

    let mut gw = gateway(d, hp, mp, "gw2.log");
    wait_for(d, "gateway back", || {
        http(hp, "GET", "/readyz", "", b"").is_some_and(|(s, _)| s == 200)
    });
    // The campaign is there as it was acknowledged: running, the same nodes, two done.
    let after = campaign(hp);
    assert_eq!(after["state"], "running", "{after}");
    assert_eq!(after["total_nodes"], 3, "{after}");
    assert_eq!(after["artefact"], before["artefact"]);
    assert_eq!(
        node_states(&after)[..2],
        ["SUCCEEDED", "SUCCEEDED"],
        "{after}"
    );
    // History the API served before the kill was committed: all of it is still there.
    assert!(
        history_before[..2].iter().all(|&n| n > 0),
        "{history_before:?}"
    );
    for (id, n) in NODES.iter().zip(history_before) {
        let now = get(hp, &format!("/nodes/{id}/history"))["points"]
            .as_array()
            .map_or(0, Vec::len);
        assert!(
            now >= n,
            "node {id}: history {n} points before, {now} after"
        );
    }

    // It resumes and completes: every node SUCCEEDED, /status shows 2.0.0.
    wait_for(d, "campaign completed", || {
        campaign(hp)["state"] == "completed"
    });
    let done = campaign(hp);
    assert_eq!(node_states(&done), vec!["SUCCEEDED"; 3], "{done}");
    assert_eq!(done["updated_nodes"], 3);
    assert_eq!(done["progress"], 1.0);
    for id in NODES {
        let n = get(hp, &format!("/status/{id}"));
        assert_eq!(n["firmware"], "2.0.0", "node {id}: {n}");
        let hook = std::fs::read_to_string(d.join(format!("hook-{id}.txt"))).unwrap();
        assert_eq!(hook, "2.0.0", "node {id}: the hook saw another version");
    }
    let list = get(hp, "/campaigns");
    assert_eq!(list["campaigns"][0]["state"], "completed", "{list}");
    // The nodes that had succeeded before the kill were not offered the image again.
    let offers_after: Vec<usize> = nodes[..2].iter_mut().map(offers).collect();
    assert_eq!(
        offers_after, offers_before,
        "offers to finished nodes after the restart"
    );
    // The third node resumed from what it held when the gateway was killed: it took the
    // restarted gateway as its upstream again (or accepted a new offer holding chunks),
    // never starting over from nothing.
    let lines = nodes[2].all_lines();
    let ev = |v: &Value, e: &str| v["event"] == "plugin" && v["data"]["event"] == e;
    let fresh_starts = lines
        .iter()
        .filter(|v| ev(v, "offer_accepted") && v["data"]["have"] == 0)
        .count();
    let resumed = lines.iter().any(|v| {
        ev(v, "upstream_changed")
            || (ev(v, "offer_accepted") && v["data"]["have"].as_u64().is_some_and(|h| h > 0))
    });
    assert!(
        resumed && fresh_starts == 1,
        "node {}: no resumed transfer in {lines:?}",
        NODES[2]
    );

    for n in &mut nodes {
        n.kill();
    }
    gw.kill().unwrap();
    gw.wait().unwrap();
}

/// Outcomes that are not successes: a node on other hardware is `REJECTED` with the
/// engine's reason label, a listed node that never shows up is `TIMED_OUT` after the
/// per-node timeout, and the campaign ends `failed`.
#[test]
fn rejected_and_timed_out_nodes_fail_the_campaign() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(
        d.join("meshfleet.toml"),
        "[gateway]\ncampaign-node-timeout = 6\n",
    )
    .unwrap();
    let o = meshfleet(d, &["firmware", "keygen", "--out", "fleet.key"]);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(d.join("app.bin"), incompressible_image(20_000)).unwrap();
    let o = pack(
        d,
        "app.bin",
        "ESP32",
        "2.0.0",
        Some("fleet.key"),
        "app.mfw",
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let mfw = std::fs::read(d.join("app.mfw")).unwrap();
    let (hp, mp) = (free_port(), free_port());
    let config = d.join("meshfleet.toml");
    let mut gw = gateway_with(
        d,
        hp,
        mp,
        "gw1.log",
        &["--config", config.to_str().unwrap()],
    );
    wait_for(d, "gateway up", || {
        http(hp, "GET", "/readyz", "", b"").is_some_and(|(s, _)| s == 200)
    });
    let mut other = ota_node(d, 7101, mp, "ESP8266", true, TIMEOUT);
    wait_for(d, "node online", || {
        get(hp, "/status/7101")["online"] == true
    });
    let (s, art) = http(hp, "POST", "/firmware", "application/octet-stream", &mfw).unwrap();
    assert_eq!(s, 201, "{art}");
    let spec = json!({"artefact": art["id"], "targets": {"nodes": [7101, 7199]}, "start": true});
    let (s, c) = http(
        hp,
        "POST",
        "/campaigns",
        "application/json",
        spec.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!((s, c["state"].clone()), (201, json!("running")), "{c}");
    wait_for(d, "campaign finished", || campaign(hp)["state"] == "failed");
    let c = campaign(hp);
    let by_node = |id: u64| {
        c["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_node(7101)["state"], "REJECTED", "{c}");
    assert_eq!(by_node(7101)["reason"], "hardware", "{c}");
    assert_eq!(by_node(7199)["state"], "TIMED_OUT", "{c}");
    assert_eq!(c["failed_nodes"], 2, "{c}");
    assert_eq!(c["updated_nodes"], 0, "{c}");
    assert!(std::fs::read_to_string(d.join("hook-7101.txt")).is_err());
    other.kill();
    gw.kill().unwrap();
    gw.wait().unwrap();
}
