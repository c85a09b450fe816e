//! The demo in-process: a small mesh at high speed behind the real gateway, checked over HTTP.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshfleet_demo::{kind_of, parse_faults, Demo, DemoConfig, Kind, DEFAULT_FAULTS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// GET `path`, as JSON.
async fn get(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, v) = request(addr, "GET", path, None, "").await;
    assert_eq!(status, 200, "{path}: {v}");
    v
}

/// A request; the status and the JSON body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut b = &body[..];
        while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
            let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
            b = &b[eol + 4 + n..];
        }
        body = out;
    }
    (status, serde_json::from_slice(&body).unwrap())
}

/// Polls `f` until it gives `Some`, or fails after `secs` of wall time with the last state.
async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(state) if Instant::now() > end => panic!("timed out waiting for {what}: {state}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn count(tree: &serde_json::Value) -> usize {
    1 + tree["subs"]
        .as_array()
        .map_or(0, |s| s.iter().map(count).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fast_demo_shows_its_nodes_tree_firmware_and_scripted_faults() {
    const NODES: u32 = 30;
    let demo = Demo::start(DemoConfig {
        nodes: NODES,
        speed: 40.0,
        http: "127.0.0.1:0".parse().unwrap(),
        seed: 3,
        faults: parse_faults(DEFAULT_FAULTS).unwrap(),
        ..DemoConfig::default()
    })
    .await
    .unwrap();
    let addr = demo.http_addr();
    let base = 3_000_000_000u32;
    let mut events = demo.subscribe();

    // The demo artefact is there at once, for a campaign.
    let fw = get(addr, "/firmware").await;
    let a = &fw["artefacts"][0];
    assert_eq!(a["id"], demo.artefact().id.as_str());
    assert_eq!(a["version"], "1.1.0");
    assert_eq!(a["role"], "sensor");

    // The whole tree forms, as the gateway's node sees it.
    let topo = wait_for("the whole tree", 60, || async {
        let t = get(addr, "/topology").await;
        let n = t["nodeCount"].as_u64().unwrap_or(0);
        if n == u64::from(NODES) {
            Ok(t)
        } else {
            Err(format!("{n} nodes in the tree"))
        }
    })
    .await;
    assert_eq!(topo["tree"]["nodeId"], base + 1);
    assert_eq!(count(&topo["tree"]), NODES as usize);

    // Every node reports: meshfleet nodes their telemetry, stock nodes the status package.
    wait_for("every node reporting", 60, || async {
        let s = get(addr, "/status?limit=1000").await;
        let reporting: Vec<u32> = s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["uptime"].is_u64() && n["firmware"].is_string())
            .map(|n| n["nodeId"].as_u64().unwrap() as u32 - base)
            .collect();
        let firmware_ok = s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["firmware"].is_null() || n["firmware"] == "1.0.0");
        if reporting.len() >= NODES as usize - 1 && firmware_ok {
            Ok(())
        } else {
            Err(format!(
                "reporting: {reporting:?}; firmware ok: {firmware_ok}"
            ))
        }
    })
    .await;
    let s = get(addr, "/status/3000000003").await;
    assert_eq!(kind_of(3), Kind::Stock);
    assert!(
        s["status"].is_object(),
        "a stock node sends the status package: {s}"
    );
    let s = get(addr, "/status/3000000002").await;
    assert_eq!(kind_of(2), Kind::Meshfleet);
    assert_eq!(
        s["role"], "sensor",
        "a meshfleet node's telemetry names its role: {s}"
    );
    assert!(s["freeMemory"].as_u64().unwrap() > 20_000, "{s}");

    // A campaign of the demo artefact to the meshfleet nodes (they report role `sensor`;
    // stock nodes report no role) is created and started at once, and completes: every
    // targeted node reports the new version.
    let stock: Vec<u32> = (2..=NODES).filter(|n| kind_of(*n) == Kind::Stock).collect();
    let mut stock_before = Vec::new();
    for n in &stock {
        let s = get(addr, &format!("/status/{}", 3_000_000_000u32 + n)).await;
        stock_before.push(s["firmware"].clone());
    }
    let spec = serde_json::json!({"artefact": demo.artefact().id, "targets": {"role": "sensor"},
        "name": "demo test", "start": true});
    let (status, _) = request(addr, "POST", "/campaigns", None, &spec.to_string()).await;
    assert_eq!(status, 401, "changes need the demo's token");
    let (status, c) = request(
        addr,
        "POST",
        "/campaigns",
        Some(demo.token()),
        &spec.to_string(),
    )
    .await;
    assert_eq!(status, 201, "{c}");
    let meshfleet_nodes = (2..=NODES)
        .filter(|n| kind_of(*n) == Kind::Meshfleet)
        .count();
    assert_eq!(c["total_nodes"], meshfleet_nodes, "{c}");
    assert_eq!(c["version"], "1.1.0");
    let id = c["id"].as_str().unwrap().to_owned();
    let done = wait_for("the campaign to complete", 120, || async {
        let c = get(addr, &format!("/campaigns/{id}")).await;
        if c["state"] == "completed" {
            Ok(c)
        } else {
            Err(format!(
                "virtual {:.0} s: {}",
                demo.virtual_secs(),
                serde_json::json!({"state": c["state"], "updated": c["updated_nodes"],
                    "failed": c["failed_nodes"], "nodes": c["nodes"]})
            ))
        }
    })
    .await;
    assert_eq!(done["updated_nodes"], meshfleet_nodes, "{done}");
    let s = get(addr, "/status/3000000002").await;
    assert_eq!(s["firmware"], "1.1.0", "{s}");
    // Stock nodes are not in that campaign (they report no role), yet they hear its stock
    // announce (a broadcast by role): they asked for parts and were not served, and still run
    // what they ran (issue 12: they used to take it).
    let (tx, rx) = tokio::sync::oneshot::channel();
    demo.gateway()
        .shared()
        .mesh
        .run_on_node(Box::new(move |node, _now| {
            let _ = tx.send(
                node.plugin::<meshfleet_gateway::campaign_engine::GatewayOta>()
                    .map(|p| (p.out_of_scope, p.stock_served())),
            );
        }))
        .await
        .unwrap();
    let (unserved, served) = rx.await.unwrap().unwrap();
    assert!(unserved > 0, "no stock node asked: the test shows nothing");
    let served_stock: Vec<u32> = served
        .iter()
        .filter(|id| stock.iter().any(|n| 3_000_000_000u32 + n == **id))
        .copied()
        .collect();
    assert!(
        served_stock.is_empty(),
        "stock nodes outside the campaign were sent parts: {served_stock:?}"
    );
    for (n, before) in stock.iter().zip(&stock_before) {
        let s = get(addr, &format!("/status/{}", 3_000_000_000u32 + n)).await;
        assert_eq!(
            &s["firmware"], before,
            "stock node {n} took the campaign: {s}"
        );
    }

    // The gateway's jobs run on the simulated gateway node (the campaign engine's way in).
    let (tx, rx) = tokio::sync::oneshot::channel();
    demo.gateway()
        .shared()
        .mesh
        .run_on_node(Box::new(move |node, _now| {
            let _ = tx.send(node.nodes().len());
        }))
        .await
        .unwrap();
    // It saw the gateway node's own view: other nodes (never itself), how many depends on
    // which scripted faults (partition, death, reboots) are under way at this instant.
    let known = rx.await.unwrap();
    assert!((1..NODES as usize).contains(&known), "{known} nodes");

    // The scripted faults raise their alerts: the reboot loop, the leak, the dead node (seen
    // as offline, or as a partition when it took nodes below it along).
    let want = [
        (&["reboot_loop"][..], base + 10),
        (&["memory_leak"][..], base + 7),
        (&["node_offline", "partition"][..], base + 12),
    ];
    let alerts = wait_for("the scripted faults' alerts", 90, || async {
        let a = get(addr, "/alerts?state=all&limit=1000").await;
        let have: Vec<(String, u64)> = a["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["kind"].as_str().unwrap_or("").to_owned(),
                    x["nodeId"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let missing: Vec<_> = want
            .iter()
            .filter(|(k, n)| {
                !have
                    .iter()
                    .any(|(hk, hn)| k.contains(&hk.as_str()) && *hn == u64::from(*n))
            })
            .collect();
        if missing.is_empty() {
            Ok(have)
        } else {
            Err(format!(
                "missing {missing:?}; have {have:?}; virtual {:.0} s, lag {:.1} s",
                demo.virtual_secs(),
                demo.lag_secs()
            ))
        }
    })
    .await;
    assert!(!alerts.is_empty());

    // The script was played and told: four faults, the partition healed.
    let mut told = Vec::new();
    while let Ok(e) = events.try_recv() {
        told.push(serde_json::to_value(&e).unwrap());
    }
    let kinds: Vec<_> = told
        .iter()
        .filter(|e| e["event"] == "fault")
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        ["leak", "reboot_loop", "partition", "death"],
        "{told:?}"
    );
    let partition = told.iter().find(|e| e["kind"] == "partition").unwrap();
    assert!(partition["nodes"].as_u64().unwrap() >= 1);

    let dir = demo.dir();
    assert!(dir.exists());
    demo.shutdown().await;
    assert!(!dir.exists(), "the temporary folder is removed");
}
