//! Rollout commands over MQTT against a real Mosquitto (issue 14): signed commands create,
//! approve, pause and roll back a rollout of the gateway, refusals change nothing, and the
//! retained `<prefix>/ota/rollout/<id>` follows the rollout's state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use meshfleet_firmware::{keys, pack, Artefact, PackOptions, SigningKey, Version};
use meshfleet_gateway::model::ArtefactInfo;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn command(op: &str, transaction: &str, rollout: Value) -> Value {
    let n = NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    json!({
        "op": op,
        "transaction": transaction,
        "ts": meshfleet_gateway::now_millis(),
        "nonce": format!("rnonce-{n:08}-{}", std::process::id()),
        "rollout": rollout,
    })
}

/// Stores a signed 2.0.0 artefact for the seeded nodes (sensor, esp32) as an upload would.
async fn store_artefact(gw: &Gw, key: &SigningKey) -> String {
    let image: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut opts = PackOptions::new("sensor", "esp32", Version::parse("2.0.0").unwrap());
    opts.signing_key = Some(key);
    let bytes = pack(&image, opts).unwrap().to_bytes();
    let a = Artefact::from_bytes(&bytes).unwrap();
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
    id
}

async fn reply(op: &Observer, transaction: &str) -> Value {
    let topic = format!("mesh/ota/response/{transaction}");
    op.wait(&topic, 10, |m| m.iter().any(|x| x.topic == topic))
        .await
        .into_iter()
        .rfind(|x| x.topic == topic)
        .unwrap()
        .json()
}

async fn retained_status(op: &Observer, want: &str) -> Value {
    let topic = "mesh/ota/rollout/r-000001";
    op.wait(&format!("retained status {want}"), 10, |m| {
        m.iter()
            .rfind(|x| x.topic == topic)
            .is_some_and(|x| x.json()["status"] == want)
    })
    .await
    .into_iter()
    .rfind(|x| x.topic == topic)
    .unwrap()
    .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_are_driven_by_signed_commands_with_a_retained_status() {
    let (_d, dir) = tempdir();
    let Some(broker) = Broker::start(&dir) else {
        return;
    };
    let fleet_key = keys::keygen(&mut rand_core::OsRng);
    keys::write_public_key(&dir.join("fleet.pub"), &fleet_key.verifying_key()).unwrap();
    let op_key = keys::keygen(&mut rand_core::OsRng);
    keys::write_public_key(&dir.join("operator.pub"), &op_key.verifying_key()).unwrap();
    seed_nodes(&dir, nodes(3, meshfleet_gateway::now_millis()));
    let mut cfg = mqtt_config(&broker);
    cfg.commands.operator_keys = vec![dir.join("operator.pub")];
    let op = Observer::connect(
        broker.port,
        "operator",
        "operator",
        &["mesh/ota/response/#", "mesh/ota/rollout/#"],
        true,
    )
    .await;
    let gw = Gw::start(&dir, cfg).await;
    let art = store_artefact(&gw, &fleet_key).await;
    let send = |opname: &str, t: &str, args: Value| {
        meshfleet_mqtt::sign_command(&op_key, &command(opname, t, args))
    };
    // The bridge subscribes after connecting: retry a status until it answers.
    for i in 0..50 {
        let t = format!("t-ready-{i}");
        op.publish(
            "mesh/ota/request/rollout_status",
            send("rollout_status", &t, json!({"id": "r-000009"})),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !op.on(&format!("mesh/ota/response/{t}")).is_empty() {
            assert_eq!(reply(&op, &t).await["error"]["code"], "not_found");
            break;
        }
    }

    // Create, waiting for approval.
    op.publish(
        "mesh/ota/request/rollout_create",
        send(
            "rollout_create",
            "t-create",
            json!({"create": {"artefact": art, "name": "over mqtt",
                              "config": {"start": "await_approval"}}}),
        ),
    )
    .await;
    let r = reply(&op, "t-create").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["rollout"]["id"], "r-000001");
    assert_eq!(r["rollout"]["previous_version"], "1.4.1");
    let s = retained_status(&op, "awaiting_approval").await;
    assert_eq!(s["version"], "2.0.0");
    assert!(s["waves"].as_array().is_some_and(|w| !w.is_empty()), "{s}");

    // Refusals change nothing: unsigned, a command that does not apply, a skip without
    // its wave, missing arguments, an unknown field.
    op.publish(
        "mesh/ota/request/rollout_approve",
        command("rollout_approve", "t-unsigned", json!({"id": "r-000001"})).to_string(),
    )
    .await;
    assert_eq!(reply(&op, "t-unsigned").await["error"]["code"], "unsigned");
    for (opname, t, args, code) in [
        (
            "rollout_resume",
            "t-resume",
            json!({"id": "r-000001"}),
            "command_not_applicable",
        ),
        (
            "rollout_skip",
            "t-skip",
            json!({"id": "r-000001"}),
            "bad_command",
        ),
        ("rollout_approve", "t-noid", json!({}), "bad_command"),
        (
            "rollout_approve",
            "t-extra",
            json!({"id": "r-000001", "x": 1}),
            "bad_command",
        ),
        (
            "rollout_create",
            "t-badart",
            json!({"create": {"artefact": "00"}}),
            "unknown_artefact",
        ),
    ] {
        op.publish(&format!("mesh/ota/request/{opname}"), send(opname, t, args))
            .await;
        let r = reply(&op, t).await;
        assert_eq!(
            (r["ok"].clone(), r["error"]["code"].clone()),
            (json!(false), json!(code)),
            "{t}: {r}"
        );
    }
    let st = gw.shared().rollouts.get(&"r-000001".parse_id()).unwrap();
    assert_eq!(st.state, "awaiting_approval");

    // Approve: the canary starts; the retained status follows.
    op.publish(
        "mesh/ota/request/rollout_approve",
        send("rollout_approve", "t-approve", json!({"id": "r-000001"})),
    )
    .await;
    let r = reply(&op, "t-approve").await;
    assert_eq!(r["rollout"]["status"], "running", "{r}");
    retained_status(&op, "running").await;
    // Status: the whole rollout with its nodes.
    op.publish(
        "mesh/ota/request/rollout_status",
        send("rollout_status", "t-status", json!({"id": "r-000001"})),
    )
    .await;
    let r = reply(&op, "t-status").await;
    assert_eq!(r["rollout"]["nodes"].as_array().unwrap().len(), 3, "{r}");
    // Pause, then the emergency rollback.
    op.publish(
        "mesh/ota/request/rollout_pause",
        send("rollout_pause", "t-pause", json!({"id": "r-000001"})),
    )
    .await;
    assert_eq!(reply(&op, "t-pause").await["rollout"]["status"], "paused");
    op.publish(
        "mesh/ota/request/rollout_rollback",
        send("rollout_rollback", "t-rollback", json!({"id": "r-000001"})),
    )
    .await;
    assert_eq!(
        reply(&op, "t-rollback").await["rollout"]["status"],
        "aborted"
    );
    let s = retained_status(&op, "aborted").await;
    assert_eq!(s["status_detail"]["reason"], "emergency", "{s}");
    // A client that connects later gets the last status, retained.
    let late = Observer::connect(
        broker.port,
        "late",
        "operator",
        &["mesh/ota/rollout/#"],
        true,
    )
    .await;
    let m = late
        .wait("the retained status", 10, |m| !m.is_empty())
        .await;
    assert!(
        m[0].retain && m[0].json()["status"] == "aborted",
        "{:?}",
        m[0].json()
    );
    // The audit log names the operator's key for the gateway's own entries.
    use meshfleet_gateway::store::AuditLog;
    let audit = gw.db.recent(200).await.unwrap();
    for a in [
        "rollout.create",
        "rollout.approve",
        "rollout.pause",
        "rollout.rollback",
    ] {
        assert!(
            audit
                .iter()
                .any(|e| e.action == a && e.actor.starts_with("mqtt:")),
            "no {a} by an MQTT operator"
        );
    }
    assert!(audit.iter().any(|e| e.action == "mqtt.rolloutapprove"));
    gw.stop().await;
}

trait ParseId {
    fn parse_id(&self) -> meshfleet_gateway::rollout::RolloutId;
}

impl ParseId for str {
    fn parse_id(&self) -> meshfleet_gateway::rollout::RolloutId {
        meshfleet_gateway::rollout::RolloutId::parse(self).unwrap()
    }
}
