//! OTA driven over MQTT only, end to end: `meshfleet gateway --config` with the bridge on a
//! real Mosquitto, three `meshfleet node --ota-dir` processes over real TCP on loopback.
//!
//! 1. A campaign created by URL (a local HTTP server), checked with `status`, started and
//!    run to completion with signed MQTT commands only; at the end the retained
//!    `mesh/ota/campaign/<id>` equals the REST view (`GET /campaigns/<id>`).
//! 2. Home Assistant's `update` entity of a node in that campaign moves through the real
//!    OTA: `in_progress` true, `update_percentage` rising, then `installed_version` the new
//!    version with `in_progress` false.
//! 3. Home Assistant's install button (`allow-install`) on the third node starts a
//!    one-node campaign that updates it, seen on its `update` entity. That node sends no
//!    telemetry: its role and hardware come from its CAPS to the gateway's node.
//!
//! The campaign's strategy is `auto`; the untargeted third node keeps its firmware.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    args, free_port, gateway_command, get_json, incompressible_image, meshfleet, ota_receiver_args,
    pack, text, Killed, Proc,
};
use meshfleet_mqtt::testbroker::Broker;
use meshfleet_mqtt::testclient::{Msg, Observer};
use serde_json::{json, Value};

const TOKEN: &str = "mqtt-campaign-token-0123456789";
/// Generous: CI runs this on 2 busy cores, next to other test binaries.
const TIMEOUT: Duration = Duration::from_secs(120);

fn get(port: u16, path: &str) -> Value {
    get_json(port, path, Some(TOKEN))
}

/// Serves `body` to every connection (the artefact's download URL).
fn http_server(body: Vec<u8>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok) {
            let mut b = [0u8; 2048];
            let _ = s.read(&mut b);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    format!("http://{addr}/sensor-2.0.0.mfw")
}

fn node(dir: &Path, id: u32, mesh: u16) -> Proc {
    let connect = format!("127.0.0.1:{mesh}");
    let mut a = ota_receiver_args(dir, id, ["--connect", &connect], "sensor", "ESP32");
    a.extend(args(&["--ota-hook", "true", "--status-interval", "1"]));
    // Telemetry keyframes tell the gateway the node's role and hardware. 7003 sends none:
    // Home Assistant's view of it (the `update` entity's latest version, the install
    // button's artefact) must come from what else the gateway knows (its CAPS).
    if id != 7003 {
        a.extend(args(&["--telemetry-to", "900"]));
    }
    Proc::spawn(&format!("node {id}"), Some(dir), &a, TIMEOUT)
}

/// The shared test client; a timed-out wait shows the gateway's log.
async fn client(port: u16, id: &str, user: &str, topics: &[&str]) -> Observer {
    Observer::connect(port, id, user, topics, true)
        .await
        .with_context(|| {
            let log = LOG
                .get()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            format!("--- gateway log (newest first):\n{tail:#?}")
        })
}

/// The gateway's log, shown when a wait times out.
static LOG: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A signed command, as an operator's tool publishes it.
fn signed(key: &meshfleet_firmware::SigningKey, op: &str, t: &str, extra: Value) -> String {
    let n = NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut v = json!({"op": op, "transaction": t, "ts": now_ms(),
                       "nonce": format!("nonce-{n:06}-{}", std::process::id())});
    if let (Some(m), Value::Object(e)) = (v.as_object_mut(), extra) {
        m.extend(e);
    }
    meshfleet_mqtt::sign_command(key, &v)
}

async fn reply(op: &Observer, t: &str) -> Value {
    op.reply(t, TIMEOUT.as_secs()).await
}

/// The update entity's states of `node` so far.
fn updates(c: &Observer, node: u32) -> Vec<Value> {
    c.on(&format!("mesh/node/{node}/update"))
        .iter()
        .map(Msg::json)
        .collect()
}

/// `in_progress` true with a percentage that rises (at least two distinct values below
/// 100), then the new version installed and `in_progress` false.
fn assert_update_moved(states: &[Value], node: u32) {
    let during: Vec<u64> = states
        .iter()
        .filter(|s| s["in_progress"] == true)
        .filter_map(|s| s["update_percentage"].as_u64())
        .collect();
    assert!(
        during.windows(2).all(|w| w[0] <= w[1]),
        "node {node}: update_percentage went down: {during:?}"
    );
    let mut distinct = during.clone();
    distinct.dedup();
    assert!(
        distinct.iter().filter(|p| **p < 100).count() >= 2,
        "node {node}: no rising update_percentage seen: {states:?}"
    );
    let first_busy = states
        .iter()
        .position(|s| s["in_progress"] == true)
        .unwrap();
    let last = states.last().unwrap();
    assert_eq!(
        last["installed_version"], "2.0.0",
        "node {node}: {states:?}"
    );
    assert_eq!(last["in_progress"], false, "node {node}: {states:?}");
    assert!(
        states[..first_busy]
            .iter()
            .all(|s| s["installed_version"] != "2.0.0"),
        "{states:?}"
    );
}

fn gateway(dir: &Path, http: u16, mesh: u16) -> Killed {
    let log = std::fs::File::create(dir.join("gw.log")).unwrap();
    let _ = LOG.set(dir.join("gw.log"));
    let config = dir.join("meshfleet.toml");
    let pre = ["--config", config.to_str().unwrap()];
    gateway_command(dir, &pre, http, mesh, Some("fleet.key.pub"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Killed)
        .unwrap()
}

fn pack_signed(d: &Path, version: &str, image: &str, out: &str) {
    let o = pack(d, image, "ESP32", version, Some("fleet.key"), out, &[]);
    assert!(o.status.success(), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_only_campaign_completes_and_home_assistant_sees_and_installs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let Some(broker) = Broker::start(d) else {
        return;
    };
    std::fs::write(d.join("token"), format!("{TOKEN}\n")).unwrap();
    for key in ["fleet.key", "operator.key"] {
        let o = meshfleet(d, &["firmware", "keygen", "--out", key]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let op_key = meshfleet_firmware::keys::read_secret_key(&d.join("operator.key")).unwrap();
    // The nodes start with an empty OTA store; the campaign brings 2.0.0.
    std::fs::write(d.join("app.bin"), incompressible_image(300_000)).unwrap();
    pack_signed(d, "2.0.0", "app.bin", "app.mfw");
    let url = http_server(std::fs::read(d.join("app.mfw")).unwrap());
    std::fs::write(
        d.join("meshfleet.toml"),
        format!(
            "[mqtt]\nurl = \"{}\"\nstatus-interval-s = 1\nreconnect-min-ms = 100\n\
             reconnect-max-ms = 500\n\n[mqtt.homeassistant]\nenabled = true\n\
             allow-install = true\n\n[mqtt.commands]\noperator-keys = [\"{}\"]\n",
            broker.url("gateway"),
            d.join("operator.key.pub").display()
        ),
    )
    .unwrap();

    let op = client(
        broker.port,
        "operator-1",
        "operator",
        &["mesh/ota/response/#", "mesh/ota/campaign/#"],
    )
    .await;
    let ha = client(
        broker.port,
        "ha-1",
        "homeassistant",
        &["mesh/node/+/update"],
    )
    .await;

    let (hp, mp) = (free_port(), free_port());
    let gw = gateway(d, hp, mp);
    let mut nodes: Vec<Proc> = [7001, 7002, 7003]
        .iter()
        .map(|&id| node(d, id, mp))
        .collect();
    let start = Instant::now();
    while ![7001, 7002, 7003].iter().all(|id| {
        let n = get(hp, &format!("/status/{id}"));
        n["online"] == true
            && n["reports"].as_u64().is_some_and(|r| r > 0)
            && (*id == 7003 || n["role"] == "sensor")
    }) {
        assert!(
            start.elapsed() < TIMEOUT,
            "nodes never reported: {}",
            std::fs::read_to_string(d.join("gw.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 1. Create by URL (not started), status, start: each signed, each replied. It may
    // serve no node before `start_at`, a few seconds after it is started.
    let start_at = now_ms() + 6_000;
    op.publish(
        "mesh/ota/request/create",
        signed(
            &op_key,
            "create",
            "t-create",
            // `auto`: the meshfleet protocol scoped to the targets, and the stock flow for
            // stock nodes, scoped too. 7003, not targeted, must not take the image (its
            // update entity stays before 2.0.0 until Home Assistant's install below; last
            // session's run with `auto` saw the stock broadcast reach it).
            json!({"create": {"url": url, "targets": {"nodes": [7001, 7002]},
                              "strategy": "auto",
                              "name": "2.0.0 over MQTT", "start_at": start_at}}),
        ),
    )
    .await;
    let r = reply(&op, "t-create").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["campaign"]["state"], "created", "{r}");
    let id = r["campaign"]["id"].as_str().unwrap().to_owned();
    op.publish(
        "mesh/ota/request/status",
        signed(&op_key, "status", "t-status", json!({"campaign": id})),
    )
    .await;
    let r = reply(&op, "t-status").await;
    assert_eq!(r["campaign"]["status"], "created", "{r}");
    assert_eq!(r["campaign"]["nodes"].as_array().unwrap().len(), 2, "{r}");
    op.publish(
        "mesh/ota/request/start",
        signed(&op_key, "start", "t-start", json!({"campaign": id})),
    )
    .await;
    let r = reply(&op, "t-start").await;
    assert_eq!(r["campaign"]["state"], "running", "{r}");
    assert!(
        now_ms() < start_at,
        "the test was too slow to see start_at work"
    );

    let topic = format!("mesh/ota/campaign/{id}");
    op.wait(
        "the campaign completed (retained topic)",
        TIMEOUT.as_secs(),
        |m| {
            m.iter()
                .any(|x| x.topic == topic && x.json()["status"] == "completed")
        },
    )
    .await;
    // The retained status a late subscriber gets equals the REST view.
    let late = client(broker.port, "operator-2", "operator", &[&topic]).await;
    late.wait("retained campaign status", TIMEOUT.as_secs(), |m| {
        m.iter().any(|x| x.topic == topic && x.retain)
    })
    .await;
    let retained = late.on(&topic).pop().unwrap().json();
    let rest = get(hp, &format!("/campaigns/{id}"));
    assert_eq!(retained["status"], rest["state"], "{retained} vs {rest}");
    for k in [
        "progress",
        "updated_nodes",
        "failed_nodes",
        "total_nodes",
        "version",
        "artefact",
        "name",
    ] {
        assert_eq!(retained[k], rest[k], "{k}: {retained} vs {rest}");
    }
    assert_eq!(
        retained["estimated_completion"],
        rest["estimated_completion_ms"]
    );
    assert_eq!(retained["updated_at"], rest["updated_at_ms"]);
    let per_node = |v: &Value, state: &str| -> Vec<(u64, String)> {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["node"].as_u64().unwrap(),
                    n[state].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(per_node(&retained, "status"), per_node(&rest, "state"));
    assert_eq!(
        per_node(&retained, "status"),
        vec![(7001, "SUCCEEDED".into()), (7002, "SUCCEEDED".into())]
    );
    assert_eq!(retained["updated_nodes"], 2);

    // 2. Home Assistant's view of a node in that campaign moved through the OTA.
    ha.wait("7001's update entity at 2.0.0", TIMEOUT.as_secs(), |_| {
        updates(&ha, 7001)
            .last()
            .is_some_and(|s| s["installed_version"] == "2.0.0" && s["in_progress"] == false)
    })
    .await;
    assert_update_moved(&updates(&ha, 7001), 7001);
    // Nothing was under way before `start_at`.
    let first_busy = ha
        .on("mesh/node/7001/update")
        .into_iter()
        .find(|m| m.json()["in_progress"] == true)
        .unwrap();
    assert!(
        first_busy.at_ms >= start_at,
        "in progress {} ms before start_at",
        start_at - first_busy.at_ms
    );

    // `auto` reached the targets only: 7003 still runs what it ran (no stock broadcast
    // reached it).
    let before = get(hp, "/status/7003");
    assert_ne!(before["firmware"], "2.0.0", "{before}");
    // What a node that took the image through the stock flow reports.
    assert!(
        !before["firmware"]
            .as_str()
            .unwrap_or("")
            .starts_with("0.0.0+stock"),
        "{before}"
    );
    assert!(
        updates(&ha, 7003)
            .iter()
            .all(|s| s["installed_version"] != "2.0.0" && s["in_progress"] != true),
        "{:?}",
        updates(&ha, 7003)
    );

    // 3. Home Assistant's install button on the third node: a one-node campaign with the
    // newest stored artefact for it (2.0.0, downloaded above).
    assert_eq!(
        updates(&ha, 7003).last().unwrap()["latest_version"],
        "2.0.0",
        "{:?} / {} / {}",
        updates(&ha, 7003),
        get(hp, "/status/7003"),
        get(hp, "/firmware")
    );
    ha.publish("mesh/ha/install/7003", "install").await;
    let deadline = Instant::now() + TIMEOUT;
    while !updates(&ha, 7003)
        .last()
        .is_some_and(|s| s["installed_version"] == "2.0.0" && s["in_progress"] == false)
    {
        if Instant::now() > deadline {
            let c = get(hp, "/campaigns");
            let last = c["campaigns"][0]["id"].as_str().unwrap_or("").to_owned();
            nodes[2].fail(&format!(
                "7003's update entity never reached 2.0.0: {:?}\ncampaign: {}",
                updates(&ha, 7003),
                get(hp, &format!("/campaigns/{last}"))
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_update_moved(&updates(&ha, 7003), 7003);
    let list = get(hp, "/campaigns");
    assert_eq!(list["campaigns"][0]["state"], "completed", "{list}");
    assert_eq!(list["campaigns"][0]["total_nodes"], 1, "{list}");

    for n in &mut nodes {
        n.kill();
    }
    drop(gw);
}
