//! Rolling a campaign back over MQTT (issue 13), end to end: `meshfleet gateway --config`
//! with the bridge on a real Mosquitto and two `meshfleet node --ota-dir` processes (the
//! agent as shipped: A/B slots, confirmed boots, the signed ROLLBACK command) over real
//! TCP on loopback.
//!
//! 1. The nodes get 1.0.0 by a plain campaign (REST), so their other slot holds it.
//! 2. A campaign of 2.0.0 (strategy `auto`), created and started over MQTT, completes.
//! 3. Rollback commands that must change nothing, each answered with an error reply: a
//!    rollback intent signed by a key that is not the fleet key (forged), one altered
//!    after signing, a command without the operator's signature, one without an intent,
//!    an intent for 2.0.0 itself; nothing is sent, the nodes stay on 2.0.0.
//! 4. The operator-signed `rollback` with the fleet-signed intent: each node boots 1.0.0
//!    again; the campaign's rollback view (REST and the retained status topic) says
//!    `ROLLED_BACK` for both.
//! 5. The same command replayed (same nonce) is refused as `replayed`; the same intent in a
//!    new transaction is answered without acting again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    free_port, gateway_command, get_json, http, meshfleet, pack, pack_version, telemetry_ota_node,
    text, Killed, Proc,
};
use meshfleet_mqtt::testbroker::Broker;
use meshfleet_mqtt::testclient::Observer;
use serde_json::{json, Value};

const TOKEN: &str = "mqtt-rollback-token-0123456789";
const NODES: [u32; 2] = [7601, 7602];
/// Generous: CI runs this on 2 busy cores, next to other test binaries.
const TIMEOUT: Duration = Duration::from_secs(150);

fn get(port: u16, path: &str) -> Value {
    get_json(port, path, Some(TOKEN))
}

fn node(dir: &Path, id: u32, mesh: u16) -> Proc {
    telemetry_ota_node(dir, id, mesh, "true", TIMEOUT)
}

fn upload(hp: u16, bytes: &[u8]) -> String {
    let (s, a) = http(
        hp,
        "POST",
        "/firmware",
        Some(TOKEN),
        "application/octet-stream",
        bytes,
    )
    .unwrap();
    assert_eq!(s, 201, "{a}");
    a["id"].as_str().unwrap().to_owned()
}

fn firmware(hp: u16, id: u32) -> String {
    get(hp, &format!("/status/{id}"))["firmware"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A command with a fresh nonce (unsigned).
fn command(op: &str, t: &str, nonce: &str, extra: Value) -> Value {
    let mut v = json!({"op": op, "transaction": t, "ts": now_ms(), "nonce": nonce});
    if let (Some(m), Value::Object(e)) = (v.as_object_mut(), extra) {
        m.extend(e);
    }
    v
}

/// `meshfleet firmware intent <mfw> --rollback` signed with `key`.
fn intent(d: &Path, mfw: &str, key: &str, out: &str) -> Value {
    let mut a = vec!["firmware", "intent", mfw, "--rollback", "--sign", key];
    let ids: Vec<String> = NODES.iter().map(u32::to_string).collect();
    for id in &ids {
        a.extend(["--node", id.as_str()]);
    }
    a.extend(["--out", out]);
    let o = meshfleet(d, &a);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&std::fs::read(d.join(out)).unwrap()).unwrap()
}

fn wait_for(d: &Path, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < TIMEOUT,
            "timed out waiting for {what}\n{}",
            log_tail(d)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn log_tail(d: &Path) -> String {
    let log = std::fs::read_to_string(d.join("gw.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    format!("--- gateway log (newest first):\n{tail:#?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_is_rolled_back_over_mqtt_by_a_signed_intent_and_forgeries_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_owned();
    let Some(broker) = Broker::start(&d) else {
        return;
    };
    std::fs::write(d.join("token"), format!("{TOKEN}\n")).unwrap();
    for key in ["fleet.key", "operator.key", "other.key"] {
        let o = meshfleet(&d, &["firmware", "keygen", "--out", key]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let op_key = meshfleet_firmware::keys::read_secret_key(&d.join("operator.key")).unwrap();
    let v1 = pack_version(&d, "1.0.0");
    // The same 1.0.0 image signed by another key: its intent is a forgery to the gateway.
    let o = pack(
        &d,
        "app.bin",
        "ESP32",
        "1.0.0",
        Some("other.key"),
        "other.mfw",
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v2 = pack_version(&d, "2.0.0");
    let good = intent(&d, "app-1.0.0.mfw", "fleet.key", "rollback.intent");
    let forged = intent(&d, "other.mfw", "other.key", "forged.intent");
    let same_version = intent(&d, "app-2.0.0.mfw", "fleet.key", "same.intent");
    // Signed by the fleet key, then one field changed: the signature no longer holds.
    let mut altered = good.clone();
    altered["expires"] = json!(altered["expires"].as_u64().unwrap() + 3600);
    std::fs::write(
        d.join("meshfleet.toml"),
        format!(
            "[mqtt]\nurl = \"{}\"\nstatus-interval-s = 1\nreconnect-min-ms = 100\n\
             reconnect-max-ms = 500\n\n[mqtt.commands]\noperator-keys = [\"{}\"]\n",
            broker.url("gateway"),
            d.join("operator.key.pub").display()
        ),
    )
    .unwrap();
    let dd = d.clone();
    let op = Observer::connect(
        broker.port,
        "operator-rb",
        "operator",
        &["mesh/ota/response/#", "mesh/ota/campaign/#"],
        true,
    )
    .await
    .with_context(move || log_tail(&dd));

    let (hp, mp) = (free_port(), free_port());
    let log = std::fs::File::create(d.join("gw.log")).unwrap();
    let config = d.join("meshfleet.toml");
    let _gw = gateway_command(
        &d,
        &["--config", config.to_str().unwrap()],
        hp,
        mp,
        Some("fleet.key.pub"),
    )
    .env("RUST_LOG", "info")
    .stdout(Stdio::null())
    .stderr(log)
    .spawn()
    .map(Killed)
    .unwrap();
    let _nodes: Vec<Proc> = NODES.iter().map(|&id| node(&d, id, mp)).collect();
    wait_for(&d, "nodes online, reporting, role known", || {
        NODES.iter().all(|id| {
            let n = get(hp, &format!("/status/{id}"));
            n["online"] == true
                && n["reports"].as_u64().is_some_and(|r| r > 0)
                && n["role"] == "sensor"
        })
    });

    // 1. 1.0.0 everywhere (REST), so the other slot holds it after 2.0.0.
    let a1 = upload(hp, &v1);
    let a2 = upload(hp, &v2);
    let body = json!({"artefact": a1, "targets": {"nodes": NODES}, "start": true});
    let (s, c) = http(
        hp,
        "POST",
        "/campaigns",
        Some(TOKEN),
        "application/json",
        body.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(s, 201, "{c}");
    wait_for(&d, "1.0.0 on every node", || {
        NODES.iter().all(|&id| firmware(hp, id) == "1.0.0")
    });
    // The nodes confirm 1.0.0 a second after booting it; until then they refuse offers.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 2. 2.0.0 over MQTT, strategy `auto`.
    let mut n = 0u32;
    let mut send = |op_name: &str, t: &str, extra: Value| {
        n += 1;
        let v = command(op_name, t, &format!("rb-{n}-{}", std::process::id()), extra);
        (meshfleet_mqtt::sign_command(&op_key, &v), v)
    };
    let (create, _) = send(
        "create",
        "t-create",
        json!({"create": {"artefact": a2, "targets": {"nodes": NODES}, "strategy": "auto",
                          "start": true}}),
    );
    op.publish("mesh/ota/request/create", create).await;
    let r = op.reply("t-create", TIMEOUT.as_secs()).await;
    assert_eq!(r["ok"], true, "{r}");
    let id = r["campaign"]["id"].as_str().unwrap().to_owned();
    let topic = format!("mesh/ota/campaign/{id}");
    op.wait("2.0.0 campaign completed", TIMEOUT.as_secs(), |m| {
        m.iter()
            .any(|x| x.topic == topic && x.json()["status"] == "completed")
    })
    .await;
    wait_for(&d, "2.0.0 on every node", || {
        NODES.iter().all(|&id| firmware(hp, id) == "2.0.0")
    });
    let rest = get(hp, &format!("/campaigns/{id}"));
    assert_eq!(rest["updated_nodes"], 2, "{rest}");

    // 3. Refused, each with a reply, nothing changed.
    let cases: [(&str, Value, &str); 4] = [
        (
            "t-forged",
            json!({"campaign": id, "intent": forged}),
            "invalid_rollback_intent",
        ),
        (
            "t-altered",
            json!({"campaign": id, "intent": altered}),
            "invalid_rollback_intent",
        ),
        (
            "t-same",
            json!({"campaign": id, "intent": same_version}),
            "invalid_rollback_intent",
        ),
        ("t-nointent", json!({"campaign": id}), "bad_command"),
    ];
    for (t, extra, code) in cases {
        let (signed, _) = send("rollback", t, extra);
        op.publish("mesh/ota/request/rollback", signed).await;
        let r = op.reply(t, TIMEOUT.as_secs()).await;
        assert_eq!(r["ok"], false, "{t}: {r}");
        assert_eq!(r["error"]["code"], code, "{t}: {r}");
    }
    // Not signed by the operator (the bare command, and the envelope of another key).
    let (_, bare) = send(
        "rollback",
        "t-unsigned",
        json!({"campaign": id, "intent": good}),
    );
    op.publish("mesh/ota/request/rollback", bare.to_string())
        .await;
    let r = op.reply("t-unsigned", TIMEOUT.as_secs()).await;
    assert_eq!(r["ok"], false, "{r}");
    let other = meshfleet_firmware::keys::read_secret_key(&d.join("other.key")).unwrap();
    let (_, v) = send(
        "rollback",
        "t-otherkey",
        json!({"campaign": id, "intent": good}),
    );
    op.publish(
        "mesh/ota/request/rollback",
        meshfleet_mqtt::sign_command(&other, &v),
    )
    .await;
    let r = op.reply("t-otherkey", TIMEOUT.as_secs()).await;
    assert_eq!(r["ok"], false, "{r}");
    let after = get(hp, &format!("/campaigns/{id}"));
    assert!(after["rollback"].is_null(), "{after}");
    for id in NODES {
        assert_eq!(firmware(hp, id), "2.0.0");
    }

    // 4. The real one: every node boots 1.0.0 again.
    let (signed, _) = send(
        "rollback",
        "t-rollback",
        json!({"campaign": id, "intent": good}),
    );
    op.publish("mesh/ota/request/rollback", signed.clone())
        .await;
    let r = op.reply("t-rollback", TIMEOUT.as_secs()).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["transaction"], "t-rollback");
    let rb = &r["campaign"]["rollback"];
    assert_eq!(rb["version"], "1.0.0", "{r}");
    let vias: Vec<(u64, String, String)> = rb["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_u64().unwrap(),
                n["via"].as_str().unwrap().to_owned(),
                n["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(vias.len(), 2, "{r}");
    assert!(
        vias.iter()
            .all(|(_, via, s)| via == "command" && s == "SENT"),
        "{vias:?}"
    );
    let started = Instant::now();
    wait_for(&d, "every node back on 1.0.0", || {
        NODES.iter().all(|&id| firmware(hp, id) == "1.0.0")
    });
    eprintln!(
        "figure: campaign rollback of 2 nodes over MQTT: both report 1.0.0 {:.1} s after the reply",
        started.elapsed().as_secs_f64()
    );
    op.wait(
        "the retained status says ROLLED_BACK",
        TIMEOUT.as_secs(),
        |m| {
            m.iter()
                .any(|x| x.topic == topic && x.json()["rollback"]["rolled_back"] == 2)
        },
    )
    .await;
    let rest = get(hp, &format!("/campaigns/{id}"));
    let states: Vec<&str> = rest["rollback"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["ROLLED_BACK", "ROLLED_BACK"], "{rest}");

    // 5. Replayed (same nonce): refused. The same intent in a new transaction: answered,
    // nothing done again (the view is unchanged).
    op.publish("mesh/ota/request/rollback", signed).await;
    op.wait("the replay's reply", TIMEOUT.as_secs(), |m| {
        m.iter()
            .filter(|x| x.topic == "mesh/ota/response/t-rollback")
            .count()
            >= 2
    })
    .await;
    let replay = op.on("mesh/ota/response/t-rollback").pop().unwrap().json();
    assert_eq!(replay["ok"], false, "{replay}");
    assert_eq!(replay["error"]["code"], "replayed", "{replay}");
    let (again, _) = send(
        "rollback",
        "t-rollback-2",
        json!({"campaign": id, "intent": good}),
    );
    op.publish("mesh/ota/request/rollback", again).await;
    let r = op.reply("t-rollback-2", TIMEOUT.as_secs()).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["campaign"]["rollback"]["rolled_back"], 2, "{r}");
    let later = get(hp, &format!("/campaigns/{id}"));
    assert_eq!(
        later["rollback"]["requested_at_ms"], rest["rollback"]["requested_at_ms"],
        "a repeat must not start a new rollback"
    );
    for id in NODES {
        assert_eq!(firmware(hp, id), "1.0.0");
    }
}
