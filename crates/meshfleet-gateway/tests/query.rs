//! `POST /query`: on-demand queries through the real gateway, over real TCP on loopback.
//! A meshfleet node (the agent's telemetry plugin) is asked with a telemetry query (711)
//! and answers with a keyframe; a node without telemetry is asked with painlessMesh's delay
//! probe. The 711 goes out as a package of its own: sent as the text of a SINGLE (as the
//! gateway did until the simulator found it), it never reached the plugin and the node was
//! reported missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use meshfleet_agent::telemetry::Identity;
use meshfleet_agent::{Telemetry, TelemetryConfig};
use meshfleet_mesh::{Config, Node, NodeId};
use meshfleet_runtime::{MeshHandle, Runtime, RuntimeConfig};
use tokio::task::JoinHandle;

/// A meshfleet node with the agent's telemetry plugin, reporting to the gateway once an
/// hour (so every fresh answer in this test is an answer to a query).
async fn telemetry_node(id: u32, gateway: std::net::SocketAddr) -> (MeshHandle, JoinHandle<()>) {
    let mut cfg = TelemetryConfig {
        gateway: Some(NodeId(GATEWAY_ID)),
        ..TelemetryConfig::default()
    };
    cfg.producer.report_interval_s = 3_600;
    let mut t = Telemetry::new(cfg);
    t.set_identity(Identity {
        firmware: "3.1.4".into(),
        role: "sensor".into(),
        hardware: "ESP32".into(),
    });
    let mut node = Node::new(Config::new(NodeId(id)));
    node.add_plugin(Box::new(t)).unwrap();
    Runtime::start(
        node,
        RuntimeConfig::default().with_connect(gateway.to_string()),
    )
    .await
    .unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    let mut out: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    out.sort_unstable();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_asks_meshfleet_nodes_with_711_and_stock_nodes_with_a_probe() {
    let dir = tempfile::tempdir().unwrap();
    // No cache: every target is really asked.
    let f = Fixture::start_with(dir.path().to_owned(), keygen(), |c| {
        c.monitor.cache_ttl_s = 0;
    })
    .await;
    let (_a, _a_task) = telemetry_node(1001, f.mesh_addr).await;
    let (_b, _b_task) = node(1002, f.mesh_addr).await;
    // 1001's first keyframe makes it a telemetry node for the monitor.
    wait_until("1001 reported, 1002 online", || async {
        let a = f.get("/status/1001").await;
        let b = f.get("/status/1002").await;
        a.status == 200
            && a.json()["firmware"] == "3.1.4"
            && b.status == 200
            && b.json()["online"] == true
    })
    .await;

    let json = "application/json";
    let one = f.post("/query", json, br#"{"nodeId":1001}"#).await;
    assert_eq!(one.status, 200, "{}", one.text());
    let v = one.json();
    assert_eq!(v["partial"], false, "{v}");
    assert_eq!(ids(&v["answered"]), vec![1001], "{v}");
    assert_eq!(ids(&v["missing"]), Vec::<u64>::new(), "{v}");
    assert_eq!(v["nodes"][0]["nodeId"], 1001);
    assert_eq!(v["nodes"][0]["firmware"], "3.1.4");
    let first = v["queryId"].as_u64().unwrap();

    // Every node: the telemetry node by 711, the plain node by a delay probe.
    let all = f.post("/query", json, b"").await;
    assert_eq!(all.status, 200, "{}", all.text());
    let v = all.json();
    assert_eq!(v["partial"], false, "{v}");
    assert_eq!(ids(&v["answered"]), vec![1001, 1002], "{v}");
    assert!(v["queryId"].as_u64().unwrap() > first);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 2);

    // The cache is off: a node that just answered is asked again.
    let again = f.post("/query", json, br#"{"nodeId":1002}"#).await;
    assert_eq!(ids(&again.json()["answered"]), vec![1002]);

    // Bad requests change nothing and say why.
    let unknown = f.post("/query", json, br#"{"nodeId":999999}"#).await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert_eq!(unknown.json()["code"], "not_found");
    let wrong_type = f.post("/query", json, br#"{"nodeId":"x"}"#).await;
    assert_eq!(wrong_type.status, 400);
    assert_eq!(wrong_type.json()["code"], "bad_json");
    let typo = f.post("/query", json, br#"{"node":1001}"#).await;
    assert_eq!(typo.status, 400, "unknown fields are refused");
    let not_json = f.post("/query", "text/plain", br#"{"nodeId":1001}"#).await;
    assert_eq!(not_json.status, 415);
    // It sends traffic into the mesh: the write token is needed.
    let anonymous = request(f.http, "POST", "/query", &[], b"").await;
    assert_eq!(anonymous.status, 401);

    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_answer_makes_the_query_partial() {
    let dir = tempfile::tempdir().unwrap();
    let f = Fixture::start_with(dir.path().to_owned(), keygen(), |c| {
        c.monitor.cache_ttl_s = 0;
        c.monitor.query_timeout_s = 2;
    })
    .await;
    let (_a, _a_task) = telemetry_node(1001, f.mesh_addr).await;
    wait_until("1001 reported", || async {
        f.get("/status/1001").await.json()["firmware"] == "3.1.4"
    })
    .await;
    let (c, c_task) = telemetry_node(1003, f.mesh_addr).await;
    wait_until("1003 reported", || async {
        f.get("/status/1003").await.json()["firmware"] == "3.1.4"
    })
    .await;
    // 1003 reported, then stops: it cannot answer, so the query waits out the monitor's
    // query timeout (2 s here) and comes back partial, naming it.
    c.shutdown().await;
    let _ = c_task.await;
    let r = f
        .post("/query", "application/json", br#"{"nodeId":1003}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["partial"], true, "{v}");
    assert_eq!(ids(&v["missing"]), vec![1003], "{v}");
    assert!(v["nodes"].as_array().unwrap().is_empty(), "{v}");
    f.stop().await;
}
