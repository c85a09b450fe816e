//! `meshfleet node --status-interval`: the status package (604) a node broadcasts, seen in
//! a second node's `--json` output and accepted by the monitor's decoder.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{args, Proc};

const TIMEOUT: Duration = Duration::from_secs(30);

fn node(name: &str, extra: &[&str]) -> Proc {
    let mut a = args(&["node", "--json"]);
    a.extend(args(extra));
    Proc::spawn(name, None, &a, TIMEOUT)
}

#[test]
fn a_node_broadcasts_the_status_package_the_monitor_accepts() {
    let mut a = node("A", &["--listen", "127.0.0.1:0", "--node-id", "1001"]);
    let addr = format!("127.0.0.1:{}", a.listening_port());
    let mut b = node(
        "B",
        &[
            "--connect",
            &addr,
            "--node-id",
            "1002",
            "--status-interval",
            "1",
            "--telemetry-to",
            "1001",
        ],
    );
    a.wait_nodes(&[1002]);
    // The first broadcast may leave before the node sync completes; take one sent after.
    let mut seen = Vec::new();
    let report = loop {
        let v = a.wait_for("a status broadcast from 1002", |v| {
            v["event"] == "received" && v["from"] == 1002 && v["kind"] == "broadcast"
        });
        let msg = v["msg"].as_str().unwrap().to_owned();
        let json: serde_json::Value = serde_json::from_str(&msg).unwrap();
        assert_eq!(json["type"], 604, "{msg}");
        let d = meshfleet_monitor::status::decode(&msg).unwrap();
        assert!(d.faults.is_empty(), "{:?}", d.faults);
        assert_eq!(d.unknown_keys, 0);
        seen.push(d.report.clone());
        if d.report.nodes == Some(1) || seen.len() > 5 {
            break d.report;
        }
    };
    assert_eq!(report.nodes, Some(1), "{seen:?}");
    assert_eq!(report.conns, Some(1));
    assert_eq!(report.firmware.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert!(report.uptime_s.unwrap() >= 1);
    assert!(report.msg_tx.unwrap() > 0);
    // Broadcast periodically: the next one reports a later uptime.
    let next = a.wait_for("the next status broadcast", |v| {
        v["event"] == "received" && v["from"] == 1002
    });
    let next = meshfleet_monitor::status::decode(next["msg"].as_str().unwrap())
        .unwrap()
        .report;
    assert!(next.uptime_s > report.uptime_s);
    a.send("quit");
    b.send("quit");
    assert!(a.wait_exit().success());
    assert!(b.wait_exit().success());
}
