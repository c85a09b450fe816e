//! Campaigns through the REST API over real TCP: the state machine, the bad-input table
//! for campaigns, concurrent creation for the same nodes, the audit log and SSE events.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};

fn auth() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}

fn json_ct() -> (&'static str, String) {
    ("Content-Type", "application/json".into())
}

/// (name, method, path, headers, body, status, problem code)
type Case = (
    &'static str,
    &'static str,
    String,
    Vec<(&'static str, String)>,
    String,
    u16,
    &'static str,
);

async fn post_json(f: &Fixture, path: &str, body: &Value) -> Resp {
    f.post(path, "application/json", body.to_string().as_bytes())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_api_state_machine_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen();
    let f = Fixture::start(dir.path().to_owned(), key.clone()).await;
    let (_a, _ta) = node(6001, f.mesh_addr).await;
    let (_b, _tb) = node(6002, f.mesh_addr).await;
    wait_until("nodes online", || async {
        f.get("/status/6001").await.status == 200 && f.get("/status/6002").await.status == 200
    })
    .await;
    let r = f
        .post(
            "/firmware",
            "application/octet-stream",
            &artefact(Some(&key), "2.0.0"),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let art = r.json()["id"].as_str().unwrap().to_owned();

    // The bad-input table: each a clear problem+json, nothing stored.
    let spec = |targets: Value| json!({"artefact": art, "targets": targets}).to_string();
    let cases: Vec<Case> = vec![
        (
            "create without token",
            "POST",
            "/campaigns".into(),
            vec![json_ct()],
            spec(json!({"all": true})),
            401,
            "missing_token",
        ),
        (
            "create with a wrong token",
            "POST",
            "/campaigns".into(),
            vec![json_ct(), ("Authorization", "Bearer wrong".into())],
            spec(json!({"all": true})),
            401,
            "bad_token",
        ),
        (
            "unknown artefact",
            "POST",
            "/campaigns".into(),
            vec![auth(), json_ct()],
            json!({"artefact": "0".repeat(64), "targets": {"all": true}}).to_string(),
            422,
            "unknown_artefact",
        ),
        (
            "targets with two keys",
            "POST",
            "/campaigns".into(),
            vec![auth(), json_ct()],
            spec(json!({"all": true, "role": "sensor"})),
            400,
            "bad_json",
        ),
        (
            "node ids of the wrong type",
            "POST",
            "/campaigns".into(),
            vec![auth(), json_ct()],
            spec(json!({"nodes": ["6001"]})),
            400,
            "bad_json",
        ),
        (
            "unknown strategy",
            "POST",
            "/campaigns".into(),
            vec![auth(), json_ct()],
            json!({"artefact": art, "targets": {"all": true}, "strategy": "carrier-pigeon"})
                .to_string(),
            400,
            "bad_json",
        ),
        (
            "unknown field",
            "POST",
            "/campaigns".into(),
            vec![auth(), json_ct()],
            json!({"artefact": art, "targets": {"all": true}, "priority": 1}).to_string(),
            400,
            "bad_json",
        ),
        (
            "malformed JSON",
            "POST",
            "/campaigns".into(),
            vec![auth(), json_ct()],
            "{\"artefact\":".into(),
            400,
            "bad_json",
        ),
        (
            "wrong content type",
            "POST",
            "/campaigns".into(),
            vec![auth(), ("Content-Type", "text/plain".into())],
            spec(json!({"all": true})),
            415,
            "bad_content_type",
        ),
        (
            "no node has the role",
            "POST",
            "/campaigns".into(),
            vec![auth(), json_ct()],
            spec(json!({"role": "toaster"})),
            422,
            "no_targets",
        ),
        (
            "empty node list",
            "POST",
            "/campaigns".into(),
            vec![auth(), json_ct()],
            spec(json!({"nodes": []})),
            422,
            "invalid_campaign",
        ),
        (
            "unknown campaign",
            "GET",
            "/campaigns/c-999999".into(),
            vec![],
            String::new(),
            404,
            "not_found",
        ),
        (
            "malformed campaign id",
            "GET",
            "/campaigns/..%2Fetc".into(),
            vec![],
            String::new(),
            404,
            "not_found",
        ),
        (
            "start an unknown campaign",
            "POST",
            "/campaigns/c-999999/start".into(),
            vec![auth()],
            String::new(),
            404,
            "not_found",
        ),
        (
            "start without token",
            "POST",
            "/campaigns/c-000001/start".into(),
            vec![],
            String::new(),
            401,
            "missing_token",
        ),
    ];
    for (name, method, path, headers, body, status, code) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = request(f.http, method, path, &h, body.as_bytes()).await;
        assert_eq!(r.status, *status, "{name}: {}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{name}"
        );
        assert_eq!(r.json()["code"], *code, "{name}: {}", r.text());
        assert_eq!(f.get("/healthz").await.status, 200, "after {name}");
    }
    assert_eq!(f.get("/campaigns").await.json(), json!({"campaigns": []}));

    // SSE: the campaign events arrive on /events.
    let (mut sse, head) = open_events(&f).await;

    // Create (not started): every targeted node QUEUED.
    let r = post_json(
        &f,
        "/campaigns",
        &json!({"artefact": art, "targets": {"nodes": [6001]}, "name": "one"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let c = r.json();
    let id = c["id"].as_str().unwrap().to_owned();
    assert_eq!(id, "c-000001");
    assert_eq!(r.header("location"), Some("/campaigns/c-000001"));
    assert_eq!(c["state"], "created");
    assert_eq!(c["version"], "2.0.0");
    assert_eq!(c["strategy"], "auto");
    assert_eq!(c["total_nodes"], 1);
    assert_eq!(c["nodes"][0]["node"], 6001);
    assert_eq!(c["nodes"][0]["state"], "QUEUED");

    // The state machine; transitions it does not allow are 409.
    let act = |a: &'static str| {
        let path = format!("/campaigns/{id}/{a}");
        let f = &f;
        async move { f.post(&path, "application/json", b"").await }
    };
    let r = act("pause").await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (409, json!("invalid_transition"))
    );
    let r = act("resume").await;
    assert_eq!(r.status, 409);
    let r = act("start").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "running");
    assert_eq!(act("start").await.status, 409);
    let r = act("pause").await;
    assert_eq!(r.json()["state"], "paused");
    let r = act("resume").await;
    assert_eq!(r.json()["state"], "running");
    let r = act("bogus").await;
    assert_eq!(r.status, 404);

    // A second campaign for the same node: 409 while the first is not finished.
    let r = post_json(
        &f,
        "/campaigns",
        &json!({"artefact": art, "targets": {"nodes": [6001, 6002]}}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["code"], "campaign_conflict");

    let r = act("cancel").await;
    assert_eq!(r.status, 200);
    let c = r.json();
    assert_eq!(c["state"], "cancelled");
    if c["nodes"][0]["state"] != "SUCCEEDED" {
        assert_eq!(c["nodes"][0]["state"], "CANCELED", "{c}");
    }
    assert_eq!(act("cancel").await.status, 409);
    assert_eq!(act("start").await.status, 409);

    // Concurrent creation for the same nodes: exactly one 201, the other 409.
    let body = json!({"artefact": art, "targets": {"nodes": [6001, 6002]}}).to_string();
    let (r1, r2) = tokio::join!(
        f.post("/campaigns", "application/json", body.as_bytes()),
        f.post("/campaigns", "application/json", body.as_bytes())
    );
    let mut statuses = [r1.status, r2.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409], "{} / {}", r1.text(), r2.text());

    // The list: newest first, without nodes.
    let list = f.get("/campaigns").await.json();
    let list = list["campaigns"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], "c-000002");
    assert!(list[0].get("nodes").is_none(), "{}", list[0]);
    let second = f.get("/campaigns/c-000002").await.json();
    assert_eq!(second["total_nodes"], 2);
    assert_eq!(second["targets"], json!({"nodes": [6001, 6002]}));

    // The audit log: who did what, in order (newest first).
    let audit = f.db_audit().await;
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .filter(|e| e.action.starts_with("campaign."))
        .map(|e| (e.action.as_str(), e.target.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("campaign.create", "c-000002"),
            ("campaign.cancel", "c-000001"),
            ("campaign.resume", "c-000001"),
            ("campaign.pause", "c-000001"),
            ("campaign.start", "c-000001"),
            ("campaign.create", "c-000001"),
        ]
    );
    assert!(audit
        .iter()
        .all(|e| !e.action.starts_with("campaign.") || e.actor.starts_with("http:token@")));

    // The event stream carried the campaign's changes.
    let mut seen = head;
    {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 65536];
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !seen.contains("event: campaign\n") || !seen.contains("\"state\":\"cancelled\"") {
            let n = tokio::time::timeout_at(deadline, sse.read(&mut buf))
                .await
                .expect("SSE events in time")
                .unwrap();
            assert!(n > 0, "SSE closed: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(seen.contains("event: campaign_node\n"), "{seen}");

    f.stop().await;
}

/// A running campaign for `all` picks up a node that joins later; a campaign for listed
/// nodes does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_nodes_are_picked_up_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen();
    let f = Fixture::start(dir.path().to_owned(), key.clone()).await;
    let (_a, _ta) = node(6101, f.mesh_addr).await;
    wait_until("node online", || async {
        f.get("/status/6101").await.status == 200
    })
    .await;
    let art = f.upload(&artefact(Some(&key), "2.0.0")).await;
    let r = post_json(
        &f,
        "/campaigns",
        &json!({"artefact": art, "targets": {"all": true}, "start": true}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["state"], "running");
    assert_eq!(r.json()["total_nodes"], 1);
    let (_b, _tb) = node(6102, f.mesh_addr).await;
    wait_until("the late node in the campaign", || async {
        let c = f.get("/campaigns/c-000001").await.json();
        c["total_nodes"] == 2
            && c["nodes"].as_array().is_some_and(|n| {
                n.iter()
                    .any(|n| n["node"] == 6102 && n["state"] == "QUEUED")
            })
    })
    .await;
    // The late node belongs to this campaign now: another for it conflicts.
    let r = post_json(
        &f,
        "/campaigns",
        &json!({"artefact": art, "targets": {"nodes": [6102]}}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    f.stop().await;
}

/// The API refuses to delete an artefact an unfinished campaign uses (409). A campaign
/// whose artefact vanished anyway (taken out of the store behind the API's back) ends
/// `failed`, its nodes `FAILED` with reason `artefact_missing`, and the gateway keeps
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_without_its_artefact_fails() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen();
    let f = Fixture::start(dir.path().to_owned(), key.clone()).await;
    let art = f.upload(&artefact(Some(&key), "2.0.0")).await;
    let r = post_json(
        &f,
        "/campaigns",
        &json!({"artefact": art, "targets": {"nodes": [6201]}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = f.delete(&format!("/firmware/{art}")).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["code"], "artefact_in_use", "{}", r.text());
    assert_eq!(
        f.get("/firmware").await.json()["artefacts"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    {
        use meshfleet_gateway::store::ArtefactStore;
        assert!(f.db.delete(art.clone()).await.unwrap());
    }
    let r = f
        .post("/campaigns/c-000001/start", "application/json", b"")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until("campaign failed", || async {
        f.get("/campaigns/c-000001").await.json()["state"] == "failed"
    })
    .await;
    let c = f.get("/campaigns/c-000001").await.json();
    assert_eq!(c["nodes"][0]["state"], "FAILED", "{c}");
    assert_eq!(c["nodes"][0]["reason"], "artefact_missing", "{c}");
    assert_eq!(c["failed_nodes"], 1);
    let audit = f.db_audit().await;
    assert_eq!(audit[0].action, "campaign.failed");
    assert_eq!(audit[0].actor, "gateway");
    assert_eq!(f.get("/healthz").await.status, 200);
    f.stop().await;
}
