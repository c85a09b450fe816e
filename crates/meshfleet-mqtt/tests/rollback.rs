//! A campaign's rollback over MQTT against a real Mosquitto, in process, for what the
//! end-to-end test (`meshfleet-cli/tests/mqtt_rollback.rs`, real nodes that boot their
//! previous slot) cannot show: a stock node (no meshfleet telemetry, so no OTA role)
//! gets the previous artefact offered again, by a campaign, when the store holds it, and
//! is `UNAVAILABLE` with the reason when it does not; a meshfleet node without a route
//! stays `NO_ROUTE`; a campaign no node of which took the update is refused; every
//! request is audited.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use meshfleet_firmware::{keys, pack, Intent, PackOptions, SigningKey, Version};
use meshfleet_gateway::model::ArtefactInfo;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn keygen() -> SigningKey {
    keys::keygen(&mut rand_core::OsRng)
}

static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn command(op: &str, transaction: &str, extra: Value) -> Value {
    let n = NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut v = json!({
        "op": op,
        "transaction": transaction,
        "ts": meshfleet_gateway::now_millis(),
        "nonce": format!("rb-{n:08}-{}", std::process::id()),
    });
    if let (Some(m), Value::Object(e)) = (v.as_object_mut(), extra) {
        m.extend(e);
    }
    v
}

/// Stores a signed `version` artefact for (sensor, esp32) as an upload would; its id and
/// image hash.
async fn store(
    gw: &Gw,
    key: &SigningKey,
    version: &str,
) -> (String, meshfleet_firmware::Sha256Digest) {
    let image: Vec<u8> = (0..20_000u32)
        .map(|i| (i * 7 % 251) as u8 ^ version.len() as u8)
        .chain(version.bytes())
        .collect();
    let mut opts = PackOptions::new("sensor", "esp32", Version::parse(version).unwrap());
    opts.signing_key = Some(key);
    let a = pack(&image, opts).unwrap();
    let bytes = a.to_bytes();
    let m = a.manifest();
    let id: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let info = ArtefactInfo {
        id: id.clone(),
        role: m.role.clone(),
        hardware: m.hardware.clone(),
        version: m.version.to_string(),
        size: bytes.len() as u64,
        image_size: m.size,
        image_sha256: m.sha256.to_string(),
        key_id: keys::key_id(&key.verifying_key()).to_string(),
        uploaded_at: meshfleet_gateway::now_millis(),
        uploaded_by: "test".into(),
    };
    gw.shared().stores.artefacts.put(info, bytes).await.unwrap();
    (id, m.sha256)
}

/// A fleet-signed rollback intent to `version` (image `sha`), issued `issued`.
fn intent(
    key: &SigningKey,
    version: &str,
    sha: meshfleet_firmware::Sha256Digest,
    issued: u64,
) -> Value {
    let mut i = Intent::rollback_to(
        "sensor",
        "esp32",
        Version::parse(version).unwrap(),
        sha,
        vec![],
        issued,
        3600,
    );
    i.sign(key);
    serde_json::from_slice(&i.to_json()).unwrap()
}

async fn reply(op: &Observer, transaction: &str) -> Value {
    op.reply(transaction, 15).await
}

fn states(v: &Value) -> Vec<(u64, String, String)> {
    v["rollback"]["nodes"]
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
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_nodes_get_the_previous_artefact_again_or_are_told_it_is_missing() {
    let (_d, dir) = tempdir();
    let Some(broker) = Broker::start(&dir) else {
        return;
    };
    let fleet = keygen();
    keys::write_public_key(&dir.join("fleet.pub"), &fleet.verifying_key()).unwrap();
    let op_key = keygen();
    keys::write_public_key(&dir.join("operator.pub"), &op_key.verifying_key()).unwrap();
    // 1000 sends meshfleet telemetry (its OTA role is known); 1001 and 1002 are stock
    // nodes (status packages only). All three report 1.4.1.
    let mut seeded = nodes(3, meshfleet_gateway::now_millis());
    for n in &mut seeded[1..] {
        n.role = None;
        n.hardware = None;
    }
    seed_nodes(&dir, seeded);
    let mut cfg = mqtt_config(&broker);
    cfg.commands.operator_keys = vec![dir.join("operator.pub")];
    let op = Observer::connect(
        broker.port,
        "operator",
        "operator",
        &["mesh/ota/response/#", "mesh/ota/campaign/#"],
        true,
    )
    .await;
    let gw = Gw::start(&dir, cfg).await;
    let send = |op_name: &str, t: &str, extra: Value| {
        meshfleet_mqtt::sign_command(&op_key, &command(op_name, t, extra))
    };
    for i in 0..50 {
        op.publish(
            "mesh/ota/request/list",
            send("list", &format!("t-ready-{i}"), json!({})),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if op.messages().iter().any(|m| m.topic.contains("t-ready")) {
            break;
        }
    }

    // The campaign of 1.4.1: every listed node reports it already, so it completes at once
    // with the three SUCCEEDED (the nodes "took" it).
    let (a141, _) = store(&gw, &fleet, "1.4.1").await;
    op.publish(
        "mesh/ota/request/create",
        send(
            "create",
            "t-create",
            json!({"create": {"artefact": a141, "targets": {"nodes": [1000, 1001, 1002]},
                              "start": true}}),
        ),
    )
    .await;
    let r = reply(&op, "t-create").await;
    assert_eq!(r["ok"], true, "{r}");
    let id = r["campaign"]["id"].as_str().unwrap().to_owned();
    let topic = format!("mesh/ota/campaign/{id}");
    op.wait("the campaign completed", 20, |m| {
        m.iter()
            .any(|x| x.topic == topic && x.json()["status"] == "completed")
    })
    .await;

    // 1.4.0's image is not in the store yet: the stock nodes cannot be rolled back.
    let sha140 = {
        let image: Vec<u8> = (0..20_000u32)
            .map(|i| (i * 7 % 251) as u8 ^ 5)
            .chain("1.4.0".bytes())
            .collect();
        let mut opts = PackOptions::new("sensor", "esp32", Version::parse("1.4.0").unwrap());
        opts.signing_key = Some(&fleet);
        pack(&image, opts).unwrap().manifest().sha256
    };
    let now_s = (meshfleet_gateway::now_millis() / 1000) as u64;
    let first = intent(&fleet, "1.4.0", sha140, now_s - 10);
    op.publish(
        "mesh/ota/request/rollback",
        send(
            "rollback",
            "t-rb1",
            json!({"campaign": id, "intent": first}),
        ),
    )
    .await;
    let r = reply(&op, "t-rb1").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["transaction"], "t-rb1");
    let c = &r["campaign"];
    assert_eq!(
        states(c),
        vec![
            (1000, "command".into(), "NO_ROUTE".into()),
            (1001, "reoffer".into(), "UNAVAILABLE".into()),
            (1002, "reoffer".into(), "UNAVAILABLE".into()),
        ],
        "{c}"
    );
    let reason = c["rollback"]["nodes"][1]["reason"].as_str().unwrap();
    assert!(reason.contains("not in the store"), "{reason}");

    // Stored now; a new intent (issued later): the stock nodes get 1.4.0 offered again by a
    // campaign of their own.
    let (a140, sha) = store(&gw, &fleet, "1.4.0").await;
    assert_eq!(sha, sha140);
    let second = intent(&fleet, "1.4.0", sha140, now_s - 5);
    op.publish(
        "mesh/ota/request/rollback",
        send(
            "rollback",
            "t-rb2",
            json!({"campaign": id, "intent": second}),
        ),
    )
    .await;
    let r = reply(&op, "t-rb2").await;
    assert_eq!(r["ok"], true, "{r}");
    let c = &r["campaign"];
    assert_eq!(
        states(c),
        vec![
            (1000, "command".into(), "NO_ROUTE".into()),
            (1001, "reoffer".into(), "REOFFERED".into()),
            (1002, "reoffer".into(), "REOFFERED".into()),
        ],
        "{c}"
    );
    let reoffer = c["rollback"]["nodes"][1]["campaign"].as_str().unwrap();
    let svc = &gw.shared().campaigns;
    let rc = svc
        .get(&meshfleet_gateway::campaign::CampaignId::parse(reoffer).unwrap())
        .await
        .unwrap();
    assert_eq!(rc.artefact, a140);
    let targeted: Vec<u32> = rc.nodes.iter().map(|n| n.node).collect();
    assert_eq!(targeted, [1001, 1002]);
    // The retained status carries the view too (without the intent's text).
    op.wait("the retained status with the re-offer", 10, |m| {
        m.iter().any(|x| {
            x.topic == topic
                && x.json()["rollback"]["nodes"][1]["state"] == "REOFFERED"
                && x.json()["rollback"].get("intent").is_none()
        })
    })
    .await;

    // A campaign no node of which took the update: nothing to roll back.
    let (a2, _) = store(&gw, &fleet, "2.0.0").await;
    op.publish(
        "mesh/ota/request/create",
        send(
            "create",
            "t-create2",
            json!({"create": {"artefact": a2, "targets": {"nodes": [1000]}}}),
        ),
    )
    .await;
    let r = reply(&op, "t-create2").await;
    let id2 = r["campaign"]["id"].as_str().unwrap().to_owned();
    op.publish(
        "mesh/ota/request/rollback",
        send(
            "rollback",
            "t-rb3",
            json!({"campaign": id2, "intent": second}),
        ),
    )
    .await;
    let r = reply(&op, "t-rb3").await;
    assert_eq!(r["error"]["code"], "nothing_to_roll_back", "{r}");
    assert!(svc
        .get(&meshfleet_gateway::campaign::CampaignId::parse(&id2).unwrap())
        .await
        .unwrap()
        .rollback
        .is_none());

    // Audited: the MQTT commands and the campaign service's rollbacks.
    let audit = gw.shared().stores.audit.recent(200).await.unwrap();
    let rollbacks = audit
        .iter()
        .filter(|a| a.action == "campaign.rollback" && a.target == id)
        .count();
    assert_eq!(rollbacks, 2, "{audit:?}");
    assert!(
        audit.iter().filter(|a| a.action == "mqtt.rollback").count() >= 3,
        "{audit:?}"
    );
    gw.stop().await;
}
