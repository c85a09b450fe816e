//! Mesh nodes → gateway → REST, over real TCP on loopback, with a real SQLite file; then a
//! restart on the same database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use meshfleet_wire::Package;
use tokio::io::AsyncReadExt;

async fn node_field(f: &Fixture, id: u32, field: &str) -> serde_json::Value {
    let r = f.get(&format!("/status/{id}")).await;
    if r.status != 200 {
        return serde_json::Value::Null;
    }
    r.json()[field].clone()
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["nodeId"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_to_gateway_to_rest_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen();
    let f = Fixture::start(dir.path().to_owned(), key.clone()).await;

    // The event stream, open before anything happens.
    let (mut sse, head) = open_events(&f).await;

    let (a, a_task) = node(1001, f.mesh_addr).await;
    let (b, b_task) = node(1002, f.mesh_addr).await;
    wait_until("both nodes online", || async {
        node_field(&f, 1001, "online").await == true && node_field(&f, 1002, "online").await == true
    })
    .await;
    joined(&f, &a, 1001).await;
    joined(&f, &b, 1002).await;

    // Node 1002 sends its status as broadcast text (what the library's examples do);
    // node 1001 as a top-level type-604 package (what its documentation shows).
    b.broadcast(status_text(1002, 100, 0, "1.0.0"))
        .await
        .unwrap();
    let pkg = Package::from_text(status_text(1001, 5, 1, "2.0.0")).unwrap();
    a.with_node(move |n, now| n.send_package(now, &pkg))
        .await
        .unwrap()
        .unwrap();
    wait_until("both reports", || async {
        node_field(&f, 1001, "reports").await == 1 && node_field(&f, 1002, "reports").await == 1
    })
    .await;

    // The seeds' /status with filters, sorting, pagination.
    let all = f.get("/status").await.json();
    assert_eq!(all["totalNodes"], 2);
    assert_eq!(ids(&all), vec![1001, 1002]);
    assert_eq!(
        ids(&f.get("/status?health=critical").await.json()),
        vec![1001]
    );
    assert_eq!(
        ids(&f.get("/status?firmware=1.0.0").await.json()),
        vec![1002]
    );
    assert_eq!(
        ids(&f.get("/status?sort=freeMemory&order=desc").await.json()),
        vec![1002, 1001]
    );
    let page = f.get("/status?limit=1&offset=1").await.json();
    assert_eq!(ids(&page), vec![1002]);
    assert_eq!(page["totalNodes"], 2);
    let one = f.get("/status/1002").await.json();
    assert_eq!(one["health"], "healthy");
    assert_eq!(one["freeMemory"], 100 * 1024);
    assert_eq!(one["parent"], GATEWAY_ID);
    assert_eq!(one["status"]["firmware"], "1.0.0");

    let health = f.get("/health").await.json();
    assert_eq!(health["gatewayNodeId"], GATEWAY_ID);
    assert_eq!(health["critical"], 1);
    assert_eq!(health["healthy"], 1);
    // The alert is raised by the monitor's evaluation, which may run just after the report
    // that made the node critical: wait for it rather than race it.
    wait_until("the low-memory alert of 1001", || async {
        f.get("/health").await.json()["activeAlerts"] == 1
    })
    .await;

    let topo = f.get("/topology").await.json();
    assert_eq!(topo["tree"]["nodeId"], GATEWAY_ID);
    assert_eq!(topo["nodeCount"], 3);
    let subs: Vec<u64> = topo["tree"]["subs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["nodeId"].as_u64().unwrap())
        .collect();
    assert!(subs.contains(&1001) && subs.contains(&1002), "{topo}");

    // History reaches SQLite within the ingest's flush period (1 s).
    wait_until("history stored", || async {
        f.get("/nodes/1001/history").await.json()["points"]
            .as_array()
            .is_some_and(|p| p.len() == 1)
    })
    .await;
    let h = f.get("/nodes/1001/history?resolution=raw").await.json();
    assert_eq!(h["points"][0]["freeMemoryKb"], 5.0);
    assert_eq!(h["points"][0]["alerting"], 1);

    // Metrics: base units, one node label, at most 25 series per node.
    let m = f.get("/metrics").await;
    assert!(m
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = m.text();
    assert!(
        text.contains("meshfleet_node_free_memory_bytes{node=\"1002\"} 102400"),
        "{text}"
    );
    assert!(text.contains("meshfleet_node_up{node=\"1001\"} 1"));
    assert!(text.contains("meshfleet_gateway_status_accepted_total 2"));
    assert!(text.contains("meshfleet_node_health{node=\"1001\",state=\"critical\"} 1"));
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some(rest) = line.split("node=\"").nth(1) {
            if line.starts_with("meshfleet_node_") {
                *per_node
                    .entry(rest.split('"').next().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
    }
    assert_eq!(per_node.len(), 2, "{per_node:?}");
    assert!(per_node.values().all(|n| *n <= 25), "{per_node:?}");

    // A node leaves: offline, and an alert.
    b.shutdown().await;
    b_task.await.unwrap();
    wait_until("1002 offline", || async {
        node_field(&f, 1002, "health").await == "offline"
    })
    .await;
    // The monitor raises node_offline once the departure grace (1 s here) has passed.
    wait_until("node_offline alert", || async {
        f.get("/alerts").await.text().contains("node_offline")
    })
    .await;
    let alerts = f.get("/alerts").await.json();
    let offline = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "node_offline")
        .unwrap_or_else(|| panic!("no node_offline alert in {alerts}"))
        .clone();
    assert_eq!(offline["nodeId"], 1002);
    assert_eq!(offline["severity"], "critical");
    let id = offline["id"].as_i64().unwrap();
    let acked = f
        .post(
            &format!("/alerts/{id}/ack"),
            "application/json",
            br#"{"note":"battery swap"}"#,
        )
        .await;
    assert_eq!(acked.status, 200, "{}", acked.text());
    assert_eq!(acked.json()["ackNote"], "battery swap");
    assert!(acked.json()["ackedBy"]
        .as_str()
        .unwrap()
        .starts_with("token@"));

    // The event stream saw it all, in order of happening.
    let mut seen = head;
    let mut buf = [0u8; 4096];
    let needed = [
        "event: node_up",
        "event: status",
        "event: alert_raised",
        "event: node_down",
        "event: alert_acked",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !needed.iter().all(|n| seen.contains(n)) && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), sse.read(&mut buf)).await
        {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    for n in needed {
        assert!(seen.contains(n), "missing {n} in {seen}");
    }
    assert!(seen.contains("text/event-stream"));

    // Restart on the same database: nodes, history and alerts are still there.
    a.shutdown().await;
    a_task.await.unwrap();
    f.stop().await;
    drop(sse);
    let f = Fixture::start(dir.path().to_owned(), key).await;
    let n = f.get("/status/1001").await.json();
    assert_eq!(n["health"], "offline");
    assert_eq!(n["reports"], 1);
    assert_eq!(n["firmware"], "2.0.0");
    let h = f.get("/nodes/1001/history").await.json();
    assert_eq!(h["points"].as_array().unwrap().len(), 1, "{h}");
    let all = f.get("/alerts?state=all").await.json();
    let kept = all["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .expect("alert kept")
        .clone();
    assert_eq!(kept["ackNote"], "battery swap");
    f.stop().await;
}
