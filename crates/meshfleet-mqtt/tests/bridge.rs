//! The status bridge and the outbox against a real Mosquitto.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_topics_birth_and_clean_offline() {
    let (_d, dir) = tempdir();
    let Some(broker) = Broker::start(&dir) else {
        return;
    };
    let now = meshfleet_gateway::now_millis();
    seed_nodes(&dir, nodes(3, now));
    let obs = Observer::connect(broker.port, "obs1", "observer", &["mesh/#"], true).await;
    let mut cfg = mqtt_config(&broker);
    cfg.node_interval_s = 1;
    let gw = Gw::start(&dir, cfg).await;
    obs.wait("birth and every state topic", 10, |m| {
        let has = |t: &str| m.iter().any(|x| x.topic == t);
        has("mesh/bridge/state")
            && has("mesh/status/nodes")
            && has("mesh/topology")
            && has("mesh/metrics")
            && has("mesh/alerts")
            && has("mesh/node/1000")
    })
    .await;
    let birth = obs.on("mesh/bridge/state");
    assert_eq!(birth[0].payload, b"online");
    let status = obs.on("mesh/status/nodes").last().unwrap().json();
    assert_eq!(status["totalNodes"], 3, "{status}");
    assert_eq!(status["nodes"][0]["nodeId"], 1000);
    assert_eq!(status["nodes"][0]["freeMemory"], 180 * 1024);
    let topo = obs.on("mesh/topology").last().unwrap().json();
    assert_eq!(topo["tree"]["nodeId"], GATEWAY_ID, "{topo}");
    let node = obs.on("mesh/node/1001").last().unwrap().json();
    assert_eq!(node["uptime"], 3601);
    assert_eq!(
        node["online"], false,
        "restored nodes are offline until seen"
    );

    // Intervals: a second status message within ~1 s.
    let n = obs.on("mesh/status/nodes").len();
    obs.wait("the next status", 5, |m| {
        m.iter().filter(|x| x.topic == "mesh/status/nodes").count() > n
    })
    .await;

    // State topics are retained: a late subscriber gets them at once.
    let late = Observer::connect(broker.port, "late", "observer", &["mesh/#"], true).await;
    let got = late
        .wait("retained state", 5, |m| {
            m.iter().any(|x| x.topic == "mesh/status/nodes" && x.retain)
                && m.iter().any(|x| x.topic == "mesh/bridge/state" && x.retain)
        })
        .await;
    assert!(got
        .iter()
        .any(|x| x.topic == "mesh/bridge/state" && x.payload == b"online"));

    // The bridge's counters are on the gateway's /metrics.
    let text = meshfleet_gateway::metrics::render(gw.shared(), None);
    assert!(text.contains("meshfleet_mqtt_connected 1"), "{text}");
    assert!(
        text.contains("meshfleet_mqtt_state_dropped_total 0"),
        "{text}"
    );

    // A clean shutdown says offline (retained).
    obs.clear();
    gw.stop().await;
    let m = obs
        .wait("offline", 5, |m| {
            m.iter().any(|x| x.topic == "mesh/bridge/state")
        })
        .await;
    let last = m.iter().rfind(|x| x.topic == "mesh/bridge/state").unwrap();
    assert_eq!(last.payload, b"offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_queue_is_bounded_while_the_broker_is_away() {
    let (_d, dir) = tempdir();
    let Some(mut broker) = Broker::start(&dir) else {
        return;
    };
    seed_nodes(&dir, nodes(2, meshfleet_gateway::now_millis()));
    let mut cfg = mqtt_config(&broker);
    cfg.state_queue = 3;
    let gw = Gw::start(&dir, cfg).await;
    let connected = || {
        gw.metrics
            .connected
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    };
    for _ in 0..100 {
        if connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(connected());
    broker.stop();
    // Four state topics a second, three kept: drops are counted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dropped = gw
        .metrics
        .state_dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped >= 4, "dropped {dropped}");
    let text = meshfleet_gateway::metrics::render(gw.shared(), None);
    assert!(
        text.contains(&format!("meshfleet_mqtt_state_dropped_total {dropped}"))
            || text.contains("meshfleet_mqtt_state_dropped_total "),
        "{text}"
    );
    assert!(text.contains("meshfleet_mqtt_connected 0"), "{text}");
    // Back: reconnects (back-off at most 500 ms here) and publishes again.
    broker.restart();
    let obs = Observer::connect(broker.port, "obs", "observer", &["mesh/#"], true).await;
    obs.wait("fresh state after reconnect", 10, |m| {
        m.iter().any(|x| x.topic == "mesh/status/nodes")
    })
    .await;
    assert!(
        gw.metrics
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    gw.stop().await;
}

/// Alert ids received on `mesh/alerts/events` (raised events), in arrival order.
fn raised_ids(m: &[Msg]) -> Vec<i64> {
    m.iter()
        .filter(|x| x.topic == "mesh/alerts/events")
        .filter_map(|x| {
            let v = x.json();
            (v["event"] == "alert_raised").then(|| v["alert"]["id"].as_i64().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_survives_a_broker_outage_and_a_gateway_restart() {
    let (_d, dir) = tempdir();
    let Some(mut broker) = Broker::start(&dir) else {
        return;
    };
    // A persistent QoS 1 session: the broker keeps what arrives while we are away, also
    // across its own restart (persistence on).
    let obs = Observer::connect(
        broker.port,
        "alerts-obs",
        "observer",
        &["mesh/alerts/events"],
        false,
    )
    .await;
    let gw = Gw::start(&dir, mqtt_config(&broker)).await;
    for i in 0..5 {
        gw.raise(1000 + i, &format!("before {i}")).await;
    }
    obs.wait("5 alerts", 10, |m| raised_ids(m).len() >= 5).await;
    let pending = |gw: &Gw| {
        meshfleet_mqtt::outbox::Outbox::open(&gw.shared().config.db)
            .unwrap()
            .len()
            .unwrap()
    };
    for _ in 0..100 {
        if pending(&gw) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pending(&gw), 0, "delivered messages are deleted on PUBACK");

    // Outage: alerts raised now wait in the outbox.
    broker.stop();
    for i in 5..10 {
        gw.raise(1000 + i, &format!("outage {i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pending(&gw), 5);
    // The gateway restarts mid-outage.
    gw.stop().await;
    // An alert committed by a gateway that died before the bridge queued it: the store
    // has it, the outbox does not (the restart reconciles from the watermark).
    {
        use meshfleet_gateway::store::{AlertStore, SqliteStore};
        let db = SqliteStore::open(&dir.join("gateway.db")).unwrap();
        db.raise(meshfleet_gateway::model::NewAlert {
            node_id: 7,
            kind: meshfleet_gateway::model::AlertKind::LowMemory,
            severity: meshfleet_gateway::model::Severity::Warning,
            message: "committed, never queued".into(),
            raised_at: meshfleet_gateway::now_millis(),
        })
        .await
        .unwrap();
        db.close();
    }
    let gw = Gw::start(&dir, mqtt_config(&broker)).await;
    for i in 11..13 {
        gw.raise(1000 + i, &format!("after restart {i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        pending(&gw),
        8,
        "5 from before the restart, 1 reconciled, 2 new"
    );
    broker.restart();
    let m = obs
        .wait("all 13 alerts", 20, |m| {
            let mut ids = raised_ids(m);
            ids.dedup();
            ids.len() >= 13
        })
        .await;
    let ids = raised_ids(&m);
    let mut firsts = ids.clone();
    firsts.dedup();
    // Alerts raised by the gateway are 1..5 and 6..10 and 12..13; 11 was the one the
    // dead gateway committed. Order: the outbox's, i.e. queueing order.
    let mut sorted = firsts.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (1..=13).collect::<Vec<_>>(),
        "every alert, once: {ids:?}"
    );
    assert!(
        ids.windows(2).all(|w| w[0] <= w[1]),
        "in order, no duplicate out of order: {ids:?}"
    );
    for _ in 0..100 {
        if pending(&gw) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pending(&gw), 0);
    gw.stop().await;
}
