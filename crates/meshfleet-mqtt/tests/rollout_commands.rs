//! Rollout commands over MQTT against a real Mosquitto (issue 14): signed commands create,
//! approve, pause and roll back a rollout of the gateway, refusals change nothing, and the
//! retained `<prefix>/ota/rollout/<id>` follows the rollout's state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};

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
    let opts = Opts::nodes(3).topics(&["mesh/ota/response/#", "mesh/ota/rollout/#"]);
    let Some(s) = Commanded::start(opts).await else {
        return;
    };
    let (op, gw) = (&s.op, &s.gw);
    // Rollout commands carry their arguments under `rollout`.
    let rollout = |args: Value| json!({ "rollout": args });
    let send = |opname: &str, t: &str, args: Value| s.sign(opname, t, rollout(args));
    let (art, _) = store(gw, &s.fleet_key, "2.0.0").await;
    op.publish(
        "mesh/ota/request/rollout_status",
        send("rollout_status", "t-unknown", json!({"id": "r-000009"})),
    )
    .await;
    assert_eq!(s.reply("t-unknown").await["error"]["code"], "not_found");

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
    let r = s.reply("t-create").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["rollout"]["id"], "r-000001");
    assert_eq!(r["rollout"]["previous_version"], "1.4.1");
    let status = retained_status(op, "awaiting_approval").await;
    assert_eq!(status["version"], "2.0.0");
    assert!(
        status["waves"].as_array().is_some_and(|w| !w.is_empty()),
        "{status}"
    );

    // Refusals change nothing: unsigned, a command that does not apply, a skip without
    // its wave, missing arguments, an unknown field.
    op.publish(
        "mesh/ota/request/rollout_approve",
        command(
            "rollout_approve",
            "t-unsigned",
            rollout(json!({"id": "r-000001"})),
        )
        .to_string(),
    )
    .await;
    assert_eq!(s.reply("t-unsigned").await["error"]["code"], "unsigned");
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
        let r = s.reply(t).await;
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
    let r = s.reply("t-approve").await;
    assert_eq!(r["rollout"]["status"], "running", "{r}");
    retained_status(op, "running").await;
    // Status: the whole rollout with its nodes.
    op.publish(
        "mesh/ota/request/rollout_status",
        send("rollout_status", "t-status", json!({"id": "r-000001"})),
    )
    .await;
    let r = s.reply("t-status").await;
    assert_eq!(r["rollout"]["nodes"].as_array().unwrap().len(), 3, "{r}");
    // Pause, then the emergency rollback.
    op.publish(
        "mesh/ota/request/rollout_pause",
        send("rollout_pause", "t-pause", json!({"id": "r-000001"})),
    )
    .await;
    assert_eq!(s.reply("t-pause").await["rollout"]["status"], "paused");
    op.publish(
        "mesh/ota/request/rollout_rollback",
        send("rollout_rollback", "t-rollback", json!({"id": "r-000001"})),
    )
    .await;
    assert_eq!(s.reply("t-rollback").await["rollout"]["status"], "aborted");
    let status = retained_status(op, "aborted").await;
    assert_eq!(status["status_detail"]["reason"], "emergency", "{status}");
    // A client that connects later gets the last status, retained.
    let late = Observer::connect(
        s.broker.port,
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
    s.stop().await;
}

trait ParseId {
    fn parse_id(&self) -> meshfleet_gateway::rollout::RolloutId;
}

impl ParseId for str {
    fn parse_id(&self) -> meshfleet_gateway::rollout::RolloutId {
        meshfleet_gateway::rollout::RolloutId::parse(self).unwrap()
    }
}
