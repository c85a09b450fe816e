//! Three `meshfleet node --json` processes in a chain on loopback, A <- B <- C, driven
//! through stdin and read through stdout exactly as an external harness would.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{args, Proc};
use serde_json::Value;

/// Generous: CI runs this on 2 busy cores, next to other builds.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A `meshfleet node --json ARGS` process.
type Node = Proc;

fn node(name: &str, extra: &[&str]) -> Node {
    let mut a = args(&["node", "--json"]);
    a.extend(args(extra));
    Proc::spawn(name, None, &a, TIMEOUT)
}

fn received<'a>(lines: &'a [Value], msg: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    lines
        .iter()
        .filter(move |v| v["event"] == "received" && v["msg"] == msg)
}

/// `mesh time - local clock` on each node, read as close together as the pipes allow.
fn clock_offsets(nodes: &mut [&mut Node]) -> Vec<i64> {
    let t0 = Instant::now();
    nodes
        .iter_mut()
        .map(|n| {
            let t = n.request("time", "time").as_u64().unwrap();
            let local = i64::try_from(t0.elapsed().as_micros()).unwrap();
            // Mesh time is a wrapping u32: compare modulo 2^32.
            i64::from((t as u32).wrapping_sub(local as u32) as i32)
        })
        .collect()
}

fn spread(offsets: &[i64]) -> i64 {
    let base = offsets[0];
    let rel: Vec<i64> = offsets
        .iter()
        .map(|o| i64::from(((o - base) as u32) as i32))
        .collect();
    rel.iter().max().unwrap() - rel.iter().min().unwrap()
}

#[test]
fn three_nodes_in_a_chain() {
    let mut a = node("A", &["--listen", "127.0.0.1:0", "--node-id", "1001"]);
    let a_addr = format!("127.0.0.1:{}", a.listening_port());
    let start = a.wait_for("the start line", |v| v["event"] == "start");
    assert_eq!(start["nodeId"], 1001);

    let mut b = node(
        "B",
        &[
            "--listen",
            "127.0.0.1:0",
            "--connect",
            &a_addr,
            "--node-id",
            "2002",
        ],
    );
    let b_addr = format!("127.0.0.1:{}", b.listening_port());
    // C joins once A-B is up, so A learns of C through B's immediate re-sync rather
    // than its own first node sync 10 s after accepting B (see the runtime's tests).
    a.wait_nodes(&[2002]);
    let mut c = node("C", &["--connect", &b_addr, "--node-id", "3003"]);

    // Node lists converge: each sees the other two.
    a.wait_nodes(&[2002, 3003]);
    b.wait_nodes(&[1001, 3003]);
    c.wait_nodes(&[1001, 2002]);
    for (n, peers) in [
        (&mut a, &[2002][..]),
        (&mut b, &[1001, 3003]),
        (&mut c, &[2002]),
    ] {
        for &peer in peers {
            n.wait_for("new_connection", |v| {
                v["event"] == "new_connection" && v["nodeId"] == peer
            });
        }
    }

    // SINGLE both ways through B.
    c.send("single 1001 hello A, from C");
    let sent = c.wait_for("C's sent line", |v| v["event"] == "sent");
    assert_eq!(sent["ok"], true, "{sent}");
    let got = a.wait_for("A to receive C's single", |v| v["event"] == "received");
    assert_eq!(got["from"], 3003);
    assert_eq!(got["kind"], "single");
    assert_eq!(got["msg"], "hello A, from C");

    a.send("single 3003 hello C, from A");
    let got = c.wait_for("C to receive A's single", |v| v["event"] == "received");
    assert_eq!(got["from"], 1001);
    assert_eq!(got["msg"], "hello C, from A");

    // SINGLE to an unknown node: not sent, like sendSingle returning false.
    a.send("single 4242 nobody home");
    let sent = a.wait_for("A's sent line for 4242", |v| {
        v["event"] == "sent" && v["dest"] == 4242
    });
    assert_eq!(sent["ok"], false, "{sent}");

    // BROADCAST from A reaches B and C.
    a.send("broadcast hello everyone");
    for n in [&mut b, &mut c] {
        let got = n.wait_for("the broadcast", |v| {
            v["event"] == "received" && v["msg"] == "hello everyone"
        });
        assert_eq!(got["kind"], "broadcast");
        assert_eq!(got["from"], 1001);
    }

    // Topology on B: both neighbours, in the library's subConnectionJson shape.
    let topo = b.request("topology", "topology");
    assert_eq!(topo["nodeId"], 2002);
    let mut subs: Vec<u64> = topo["subs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["nodeId"].as_u64().unwrap())
        .collect();
    subs.sort_unstable();
    assert_eq!(subs, [1001, 3003], "{topo}");
    assert!(topo.get("root").is_none(), "root only when true: {topo}");

    // TIME_DELAY from A to C, through B.
    a.send("delay 3003");
    let d = a.wait_for("the delay measurement", |v| v["event"] == "delay");
    assert_eq!(d["nodeId"], 3003);
    assert!(d["us"].as_i64().unwrap() >= 0, "{d}");

    // Mesh time: within 5 ms on all three once synced (the first samples adjust in big
    // steps; the library converges within a few 200 ms retries).
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let offsets = clock_offsets(&mut [&mut a, &mut b, &mut c]);
        if spread(&offsets) < 5_000 {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "mesh times still {} us apart: offsets {offsets:?}",
                spread(&offsets)
            );
        }
        thread::sleep(Duration::from_millis(200));
    }

    // Nothing was delivered twice, echoed, or delivered to the relay.
    thread::sleep(Duration::from_millis(300));
    let (la, lb, lc) = (a.all_lines(), b.all_lines(), c.all_lines());
    assert_eq!(received(&lb, "hello everyone").count(), 1);
    assert_eq!(received(&lc, "hello everyone").count(), 1);
    assert_eq!(
        received(&la, "hello everyone").count(),
        0,
        "no echo to the sender"
    );
    assert_eq!(received(&la, "hello A, from C").count(), 1);
    assert_eq!(received(&lc, "hello C, from A").count(), 1);
    let b_received: Vec<&Value> = lb.iter().filter(|v| v["event"] == "received").collect();
    assert_eq!(
        b_received.len(),
        1,
        "B delivered a SINGLE it only relayed: {b_received:?}"
    );

    // Kill B: both ends notice at once (the OS closes its sockets) and shrink their lists.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    for n in [&mut a, &mut c] {
        let v = n.wait_for("B's dropped_connection", |v| {
            v["event"] == "dropped_connection" && v["nodeId"] == 2002
        });
        assert!(v["reason"].is_string(), "{v}");
        n.wait_for("the node list to shrink", |v| {
            v["event"] == "nodes" && v["nodes"] == serde_json::json!([])
        });
        n.wait_nodes(&[]);
    }

    // quit: graceful, exit status 0.
    for n in [&mut a, &mut c] {
        n.send("quit");
        let status = n.wait_exit();
        assert!(status.success(), "{}: exit status {status}", n.name);
    }
}

#[test]
fn end_of_stdin_keeps_the_node_running() {
    let mut a = node("A", &["--listen", "127.0.0.1:0", "--node-id", "7"]);
    let port = a.listening_port();
    // A harness may close stdin: the node must stay up (and keep listening).
    a.close_stdin();
    // Not "sleep, then see that it did not exit": wait until the node has read the end of
    // its input (it says so on stderr), then check that it is still running.
    let deadline = Instant::now() + TIMEOUT;
    while !a
        .stderr_lines()
        .iter()
        .any(|l| l.contains("end of stdin: running until SIGINT or SIGTERM"))
    {
        assert!(
            Instant::now() < deadline,
            "A never reported the end of its input: {:?}",
            a.stderr_lines()
        );
        assert!(
            a.child.try_wait().unwrap().is_none(),
            "A exited at end of stdin"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        a.child.try_wait().unwrap().is_none(),
        "A exited at end of stdin"
    );
    let mut b = node(
        "B",
        &["--connect", &format!("127.0.0.1:{port}"), "--node-id", "8"],
    );
    b.wait_nodes(&[7]);
    b.send("quit");
    assert!(b.wait_exit().success());
    a.wait_for("B's departure", |v| {
        v["event"] == "dropped_connection" && v["nodeId"] == 8
    });
}

#[test]
fn usage_errors_exit_with_status_2() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_meshfleet"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(run(&["node", "--node-id", "0"]), Some(2));
    assert_eq!(run(&["node", "--no-such-flag"]), Some(2));
    assert_eq!(run(&["node", "--connect", "no-port"]), Some(2));
    assert_eq!(
        run(&["node", "--config", "/nonexistent/meshfleet.toml"]),
        Some(2)
    );
    assert_eq!(run(&["--help"]), Some(0));
}
