//! The dashboard's rollout view in a real headless Chromium (issue 14): a rollout is
//! created from the page, its canary is approved from the page, and the page follows it
//! live. The gateway, its mesh (runtime nodes over loopback TCP sending status packages)
//! and SQLite are real. Without chromium the test skips loudly, unless
//! `MESHFLEET_REQUIRE_CHROMIUM` is set. Screenshots: `target/screenshots/rollout-*.png`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    unreachable_pub,
    missing_docs,
    dead_code
)]

#[path = "dashboard/cdp.rs"]
mod cdp;
mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn status(id: u32, fw: &str) -> String {
    format!(
        r#"{{"from":{id},"routing":2,"type":604,"status":1,"uptime":300,"mem":120,"wifi":80,"fw":"{fw}","fwMD5":"abc","nodes":4,"conns":1,"msgRx":0,"msgTx":1,"msgDrop":0,"latency":20,"loss":0,"throughput":100,"alerts":0,"lastErr":""}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_is_created_and_approved_from_the_page() {
    let Some(exe) = cdp::chromium_or_skip("dashboard rollouts") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = keygen();
    let f = Fixture::start(dir.path().to_owned(), key.clone()).await;
    let mut nodes = Vec::new();
    for id in 7401..=7404u32 {
        let (n, t) = node(id, f.mesh_addr).await;
        joined(&f, &n, id).await;
        n.broadcast(status(id, "1.0.0")).await.unwrap();
        nodes.push((n, t));
    }
    for id in 7401..=7404u32 {
        wait_until("node reported", || async {
            f.get(&format!("/status/{id}")).await.json()["firmware"] == "1.0.0"
        })
        .await;
    }
    let mut ids = Vec::new();
    for v in ["1.0.0", "2.0.0"] {
        let r = f
            .post(
                "/firmware",
                "application/octet-stream",
                &artefact(Some(&key), v),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let (old, new) = (ids[0].clone(), ids[1].clone());

    let b = cdp::Browser::start(&exe, 1280, 1000).await;
    b.goto(&format!("http://{}/#/rollouts", f.http)).await;
    b.eval(&format!(
        "localStorage.setItem('meshfleet.token', '{TOKEN}')"
    ))
    .await;
    b.wait_for(
        "both artefacts in the form",
        "document.querySelectorAll('#nr-artefact option').length === 2",
        10,
    )
    .await;
    b.wait_for(
        "the empty list",
        "document.querySelector('#rollout-list .empty') !== null",
        10,
    )
    .await;
    // Fill in the form as a user would and submit it.
    b.eval(&format!(
        r#"(() => {{
            document.getElementById('nr-artefact').value = '{new}';
            document.getElementById('nr-previous').value = '{old}';
            document.getElementById('nr-waves').value = '50, 100';
            document.getElementById('nr-approval').checked = true;
            document.getElementById('nr-name').value = 'from the page';
            document.getElementById('nr-submit').click();
        }})()"#
    ))
    .await;
    b.wait_for(
        "the rollout's page, waiting for approval",
        "location.hash === '#/rollout/r-000001' && document.querySelector('#ro-state .badge')?.textContent === 'awaiting_approval'",
        10,
    )
    .await;
    let r = f.get("/rollouts/r-000001").await.json();
    assert_eq!(r["name"], "from the page");
    assert_eq!(r["previous_artefact"], old.as_str());
    assert_eq!(r["waves"].as_array().unwrap().len(), 2);
    assert_eq!(r["campaigns"], json!([]));
    b.wait_for(
        "two waves and four nodes shown",
        "document.querySelectorAll('#rollout-waves tbody tr').length === 2 && document.querySelectorAll('#rollout-nodes tbody tr').length === 4",
        10,
    )
    .await;
    b.screenshot("rollout-awaiting").await;
    // Approve the canary from the page.
    b.eval("document.querySelector('button[data-command=approve]').click()")
        .await;
    b.wait_for(
        "the canary running",
        "document.querySelector('#ro-state .badge')?.textContent === 'running' && [...document.querySelectorAll('#rollout-log li')].some(li => li.dataset.kind === 'wave_started')",
        10,
    )
    .await;
    let r = f.get("/rollouts/r-000001").await.json();
    assert_eq!(r["state"], "running");
    assert_eq!(r["campaigns"].as_array().unwrap().len(), 1, "{r:#}");
    let c = f
        .get(&format!(
            "/campaigns/{}",
            r["campaigns"][0].as_str().unwrap()
        ))
        .await
        .json();
    assert_eq!(c["total_nodes"], 2, "the canary's campaign: {c:#}");
    // Live: a canary node reporting the new version shows up without a reload.
    let canary = c["nodes"][0]["node"].as_u64().unwrap() as u32;
    let n = nodes.iter().find(|(h, _)| h.node_id().0 == canary).unwrap();
    n.0.broadcast(status(canary, "2.0.0")).await.unwrap();
    b.wait_for(
        "the canary node's new firmware on the page",
        &format!("document.querySelector('#rollout-nodes tr[data-node=\"{canary}\"]')?.textContent.includes('2.0.0')"),
        15,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // `docs/img/rollout.png` is a copy of this one.
    b.screenshot("rollout-running").await;
    let errors = b.errors();
    assert!(errors.is_empty(), "page errors: {errors:#?}");
    assert!(f
        .db_audit()
        .await
        .iter()
        .any(|e| e.action == "rollout.approve" && e.actor.starts_with("http:")));
    drop(nodes);
    f.stop().await;
}
