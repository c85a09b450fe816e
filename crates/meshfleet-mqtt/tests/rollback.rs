//! A campaign's rollback over MQTT against a real Mosquitto, in process, for what the
//! end-to-end test (`meshfleet-cli/tests/mqtt_rollback.rs`, real nodes that boot their
//! previous slot) cannot show: a stock node (no meshfleet telemetry, so no OTA role)
//! gets the previous artefact offered again, by a campaign, when the store holds it, and
//! is `UNAVAILABLE` with the reason when it does not; a meshfleet node without a route
//! stays `NO_ROUTE`; a campaign no node of which took the update is refused; every
//! request is audited.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use meshfleet_firmware::{Intent, SigningKey, Version};
use serde_json::{json, Value};

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
    // 1000 sends meshfleet telemetry (its OTA role is known); 1001 and 1002 are stock
    // nodes (status packages only). All three report 1.4.1.
    let mut opts = Opts::nodes(3).topics(&["mesh/ota/response/#", "mesh/ota/campaign/#"]);
    for n in &mut opts.nodes[1..] {
        n.role = None;
        n.hardware = None;
    }
    let Some(s) = Commanded::start(opts).await else {
        return;
    };
    let (op, gw, fleet) = (&s.op, &s.gw, &s.fleet_key);

    // The campaign of 1.4.1: every listed node reports it already, so it completes at once
    // with the three SUCCEEDED (the nodes "took" it).
    let (a141, _) = store(gw, fleet, "1.4.1").await;
    s.send(
        "create",
        "t-create",
        json!({"create": {"artefact": a141, "targets": {"nodes": [1000, 1001, 1002]},
                              "start": true}}),
    )
    .await;
    let r = s.reply("t-create").await;
    assert_eq!(r["ok"], true, "{r}");
    let id = r["campaign"]["id"].as_str().unwrap().to_owned();
    let topic = format!("mesh/ota/campaign/{id}");
    op.wait("the campaign completed", 20, |m| {
        m.iter()
            .any(|x| x.topic == topic && x.json()["status"] == "completed")
    })
    .await;

    // 1.4.0's image is not in the store yet: the stock nodes cannot be rolled back.
    let sha140 = pack_artefact(fleet, "1.4.0").manifest().sha256;
    let now_s = (meshfleet_gateway::now_millis() / 1000) as u64;
    let first = intent(fleet, "1.4.0", sha140, now_s - 10);
    s.send(
        "rollback",
        "t-rb1",
        json!({"campaign": id, "intent": first}),
    )
    .await;
    let r = s.reply("t-rb1").await;
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
    let (a140, sha) = store(gw, fleet, "1.4.0").await;
    assert_eq!(sha, sha140);
    let second = intent(fleet, "1.4.0", sha140, now_s - 5);
    s.send(
        "rollback",
        "t-rb2",
        json!({"campaign": id, "intent": second}),
    )
    .await;
    let r = s.reply("t-rb2").await;
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
    let (a2, _) = store(gw, fleet, "2.0.0").await;
    s.send(
        "create",
        "t-create2",
        json!({"create": {"artefact": a2, "targets": {"nodes": [1000]}}}),
    )
    .await;
    let r = s.reply("t-create2").await;
    let id2 = r["campaign"]["id"].as_str().unwrap().to_owned();
    s.send(
        "rollback",
        "t-rb3",
        json!({"campaign": id2, "intent": second}),
    )
    .await;
    let r = s.reply("t-rb3").await;
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
    s.stop().await;
}
