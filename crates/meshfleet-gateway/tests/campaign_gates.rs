//! The approval gate (`require-approval`) through the REST API over real TCP: a created
//! campaign waits in `awaiting_approval`, cannot be started, is approved only with the
//! write token (audited with the approver), then starts if its creation asked to; it can
//! be cancelled while waiting. Without the setting nothing changes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};

async fn post_json(f: &Fixture, path: &str, body: &Value) -> Resp {
    f.post(path, "application/json", body.to_string().as_bytes())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_waits_for_approval() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen();
    let f = Fixture::start_with(dir.path().to_owned(), key.clone(), |c| {
        c.require_approval = true;
    })
    .await;
    let (_a, _ta) = node(6301, f.mesh_addr).await;
    wait_until("node online", || async {
        f.get("/status/6301").await.status == 200
    })
    .await;
    let art = f.upload(&artefact(Some(&key), "2.0.0")).await;

    // Asked to start at once: it waits instead.
    let r = post_json(
        &f,
        "/campaigns",
        &json!({"artefact": art, "targets": {"nodes": [6301]}, "start": true}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["state"], "awaiting_approval", "{}", r.text());
    assert_eq!(r.json()["start_on_approval"], true, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    // Starting it is refused; approving needs the token.
    let r = f
        .post(&format!("/campaigns/{id}/start"), "application/json", b"")
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    let anon = request(
        f.http,
        "POST",
        &format!("/campaigns/{id}/approve"),
        &[("Content-Type", "application/json")],
        b"",
    )
    .await;
    assert_eq!(anon.status, 401, "{}", anon.text());
    assert_eq!(
        f.get(&format!("/campaigns/{id}")).await.json()["state"],
        "awaiting_approval"
    );
    // Approved: it starts, as its creation asked.
    let r = f
        .post(&format!("/campaigns/{id}/approve"), "application/json", b"")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "running", "{}", r.text());
    // Approving again is a transition its state does not allow.
    let r = f
        .post(&format!("/campaigns/{id}/approve"), "application/json", b"")
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    let audit = f.db_audit().await;
    let approve = audit
        .iter()
        .find(|a| a.action == "campaign.approve")
        .expect("the approval is audited");
    assert_eq!(approve.target, id);
    assert!(approve.actor.starts_with("http:"), "{approve:?}");
    let r = f
        .post(&format!("/campaigns/{id}/cancel"), "application/json", b"")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Not asked to start: approved, it is `created`; one still waiting can be cancelled.
    let r = post_json(
        &f,
        "/campaigns",
        &json!({"artefact": art, "targets": {"nodes": [6301]}}),
    )
    .await;
    let second = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(r.json()["state"], "awaiting_approval");
    let r = f
        .post(
            &format!("/campaigns/{second}/approve"),
            "application/json",
            b"",
        )
        .await;
    assert_eq!(r.json()["state"], "created", "{}", r.text());
    f.post(
        &format!("/campaigns/{second}/cancel"),
        "application/json",
        b"",
    )
    .await;
    let r = post_json(
        &f,
        "/campaigns",
        &json!({"artefact": art, "targets": {"nodes": [6301]}}),
    )
    .await;
    let third = r.json()["id"].as_str().unwrap().to_owned();
    let r = f
        .post(
            &format!("/campaigns/{third}/cancel"),
            "application/json",
            b"",
        )
        .await;
    assert_eq!(r.json()["state"], "cancelled", "{}", r.text());
    assert_eq!(r.json()["nodes"][0]["state"], "CANCELED", "{}", r.text());
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_setting_campaigns_need_no_approval_and_schedules_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen();
    let f = Fixture::start(dir.path().to_owned(), key.clone()).await;
    let art = f.upload(&artefact(Some(&key), "2.0.0")).await;
    let window = json!({"days": ["weekends"], "start": "02:00", "duration_min": 240,
                        "utc_offset": "+01:00"});
    let r = post_json(
        &f,
        "/campaigns",
        &json!({"artefact": art, "targets": {"nodes": [6401]}, "start_at": 1_900_000_000_000_i64,
                "window": window}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["state"], "created");
    let c = f.get("/campaigns/c-000001").await.json();
    assert_eq!(c["start_at"], 1_900_000_000_000_i64, "{c}");
    assert_eq!(
        c["window"],
        json!({"days": ["sat", "sun"], "start": "02:00", "duration_min": 240,
               "utc_offset": "+01:00"}),
        "{c}"
    );
    // A bad window is refused as bad input, naming the problem.
    let r = post_json(
        &f,
        "/campaigns",
        &json!({"artefact": art, "targets": {"nodes": [6402]},
                "window": {"days": ["someday"], "start": "02:00", "duration_min": 60}}),
    )
    .await;
    assert!(r.status == 400 || r.status == 422, "{}", r.text());
    assert!(r.text().contains("someday"), "{}", r.text());
    // Kept across a restart (the campaign's record).
    f.stop().await;
    let f = Fixture::start(dir.path().to_owned(), key).await;
    let c = f.get("/campaigns/c-000001").await.json();
    assert_eq!(c["window"]["days"], json!(["sat", "sun"]), "{c}");
    assert_eq!(c["start_at"], 1_900_000_000_000_i64, "{c}");
    f.stop().await;
}
