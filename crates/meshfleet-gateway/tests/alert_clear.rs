//! Clearing an alert by hand (`POST /alerts/{id}/clear`) on a real gateway with real mesh
//! nodes over loopback TCP and a real SQLite file: refusals, the stored record, the audit
//! entry, the event, and the monitor's re-arm rule seen through the API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use meshfleet_runtime::MeshHandle;
use meshfleet_wire::Package;
use tokio::io::AsyncReadExt;

/// A 604 report with a given free heap (KiB) and uptime (s).
fn report(from: u32, mem_kb: u32, uptime: u32) -> Package {
    Package::from_text(format!(
        r#"{{"from":{from},"routing":2,"type":604,"status":1,"uptime":{uptime},"mem":{mem_kb},"wifi":80,"fw":"1.0.0","fwMD5":"abc","nodes":2,"conns":1,"msgRx":0,"msgTx":1,"msgDrop":0,"latency":50,"loss":1,"throughput":512,"alerts":0,"lastErr":""}}"#
    ))
    .unwrap()
}

async fn send(node: &MeshHandle, pkg: Package) {
    // Spaced beyond the monitor's flood gap (10 ms below): on loopback a report sent as soon
    // as the previous one shows in the API can arrive within it and be dropped as a flood.
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.with_node(move |n, now| n.send_package(now, &pkg))
        .await
        .unwrap()
        .unwrap();
}

async fn reports(f: &Fixture, id: u32) -> u64 {
    f.get(&format!("/status/{id}")).await.json()["reports"]
        .as_u64()
        .unwrap_or(0)
}

/// Active low-memory alerts of `node`: their ids.
async fn active_low_memory(f: &Fixture, node: u32) -> Vec<i64> {
    let v = f.get(&format!("/alerts?node={node}")).await.json();
    v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "low_memory")
        .map(|a| a["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_clears_an_alert_and_a_persisting_condition_does_not_reraise() {
    let dir = tempfile::tempdir().unwrap();
    let f = Fixture::start_with(dir.path().to_owned(), keygen(), |c| {
        // Reports a few ms apart are not a flood here (default gap 1 s), so the test is quick.
        c.monitor.min_report_gap_ms = 10;
    })
    .await;
    let (mut sse, head) = open_events(&f).await;
    let (a, a_task) = node(1001, f.mesh_addr).await;
    let (b, b_task) = node(1002, f.mesh_addr).await;
    wait_until("both nodes known", || async {
        f.get("/status/1001").await.status == 200 && f.get("/status/1002").await.status == 200
    })
    .await;
    joined(&f, &a, 1001).await;
    joined(&f, &b, 1002).await;

    send(&a, report(1001, 5, 100)).await;
    wait_until("the low-memory alert", || async {
        active_low_memory(&f, 1001).await.len() == 1
    })
    .await;
    let id = active_low_memory(&f, 1001).await[0];
    let path = format!("/alerts/{id}/clear");

    // Refusals: no token, a bad id, an unknown id, a bad body, a long note.
    let no_token = request(f.http, "POST", &path, &[], &[]).await;
    assert_eq!(no_token.status, 401, "{}", no_token.text());
    for (p, body, status, code) in [
        (
            "/alerts/abc/clear".to_owned(),
            &b""[..],
            400,
            "bad_alert_id",
        ),
        (
            "/alerts/999999/clear".to_owned(),
            &b""[..],
            404,
            "not_found",
        ),
        (path.clone(), &b"{\"why\":1}"[..], 400, "bad_json"),
    ] {
        let r = f.post(&p, "application/json", body).await;
        assert_eq!(r.status, status, "{p}: {}", r.text());
        assert_eq!(r.json()["code"], code, "{p}");
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("application/problem+json"));
    }
    let long = format!(r#"{{"note":"{}"}}"#, "x".repeat(501));
    assert_eq!(
        f.post(&path, "application/json", long.as_bytes())
            .await
            .status,
        400
    );
    assert_eq!(
        active_low_memory(&f, 1001).await,
        [id],
        "refusals changed nothing"
    );

    // Cleared with a note: stored with who and why, audited, on the event stream.
    let r = f
        .post(
            &path,
            "application/json",
            br#"{"note":"heap is fine, probe bug"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let cleared = r.json();
    assert!(cleared["clearedAt"].is_i64(), "{cleared}");
    assert_eq!(cleared["clearNote"], "heap is fine, probe bug");
    assert!(cleared["clearedBy"].as_str().unwrap().starts_with("token@"));
    assert!(active_low_memory(&f, 1001).await.is_empty());
    let again = f.post(&path, "application/json", b"").await;
    assert_eq!(again.status, 409, "{}", again.text());
    assert_eq!(again.json()["code"], "alert_not_active");
    let audit = f.db_audit().await;
    assert!(
        audit
            .iter()
            .any(|e| e.action == "alert.clear" && e.target == id.to_string()),
        "{audit:?}"
    );

    // The condition persists: 1001 reports low memory again. 1002's alert, raised by a report
    // sent after it, shows the ingest has evaluated 1001's report.
    send(&a, report(1001, 5, 101)).await;
    wait_until("1001's second report", || async {
        reports(&f, 1001).await == 2
    })
    .await;
    send(&b, report(1002, 5, 100)).await;
    wait_until("1002's alert (a barrier)", || async {
        active_low_memory(&f, 1002).await.len() == 1
    })
    .await;
    assert!(
        active_low_memory(&f, 1001).await.is_empty(),
        "a hand-cleared condition that persists re-raised"
    );

    // The condition goes away (two healthy reports, `datapoints_to_clear`) and comes back:
    // a new alert with a new id.
    send(&a, report(1001, 100, 102)).await;
    wait_until("report 3", || async { reports(&f, 1001).await == 3 }).await;
    send(&a, report(1001, 100, 103)).await;
    wait_until("report 4", || async { reports(&f, 1001).await == 4 }).await;
    send(&a, report(1001, 5, 104)).await;
    wait_until("the condition's return raises a new alert", || async {
        active_low_memory(&f, 1001).await.len() == 1
    })
    .await;
    assert!(active_low_memory(&f, 1001).await[0] > id);

    let mut seen = head;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(&format!("\"id\":{id}")) || !seen.contains("event: alert_cleared") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no alert_cleared in {seen}"
        );
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), sse.read(&mut buf)).await
        {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    a.shutdown().await;
    b.shutdown().await;
    a_task.await.unwrap();
    b_task.await.unwrap();
    f.stop().await;
}
