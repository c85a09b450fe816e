//! `meshfleet demo` through the binary: its help teaches, bad flags exit 2, and a small run
//! serves the API and stops cleanly on Ctrl-C (SIGINT), exit 0.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn meshfleet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshfleet"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn demo_help_teaches_and_bad_flags_exit_2() {
    let o = meshfleet(&["demo", "--help"]);
    assert!(o.status.success(), "{}", text(&o));
    let help = text(&o);
    for needle in [
        "--nodes",
        "--speed",
        "--http",
        "--seed",
        "--faults",
        "--json",
        "stock",
        "memory leak",
        "reboot loop",
        "partition",
        "Ctrl-C",
        "campaign",
        "[[fault]]",
        "meshfleet demo --nodes 500 --speed 10",
    ] {
        assert!(help.contains(needle), "help lacks {needle:?}:\n{help}");
    }

    let dir = tempfile::tempdir().unwrap();
    let bad_script = dir.path().join("faults.toml");
    std::fs::write(
        &bad_script,
        "[[fault]]\nat_s = 5\nnode = 3\nkind = \"melt\"\n",
    )
    .unwrap();
    let bad_script = bad_script.to_str().unwrap().to_owned();
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap().to_owned();
    for (args, says) in [
        (vec!["demo", "--speed", "0.5"], "--speed"),
        (vec!["demo", "--speed", "fast"], "--speed"),
        (vec!["demo", "--nodes", "1"], "--nodes"),
        (vec!["demo", "--nodes", "100000"], "--nodes"),
        (vec!["demo", "--http", "nowhere"], "--http"),
        (vec!["demo", "--bogus"], "--bogus"),
        (
            vec!["demo", "--faults", bad_script.as_str()],
            "unknown kind",
        ),
        (vec!["demo", "--faults", missing.as_str()], "missing.toml"),
    ] {
        let o = meshfleet(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains(says),
            "{args:?} should mention {says:?}: {}",
            text(&o)
        );
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn a_small_demo_serves_the_api_and_stops_cleanly_on_ctrl_c() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshfleet"))
        .args([
            "demo",
            "--nodes",
            "12",
            "--speed",
            "20",
            "--http",
            "127.0.0.1:0",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["event"], "started", "{first}");
    assert_eq!(first["nodes"], 12);
    let url = first["url"].as_str().unwrap();
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    assert_eq!(first["token"].as_str().unwrap().len(), 32);

    // The mesh forms and its nodes reach the gateway.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let r = http_get(&addr, "/topology");
        if r.contains("\"nodeCount\":12") {
            break;
        }
        assert!(Instant::now() < end, "the tree never had 12 nodes: {r}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The first scripted fault is told as a JSON line.
    let fault: serde_json::Value = loop {
        let v: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        if v["event"] == "fault" {
            break v;
        }
    };
    assert_eq!(fault["kind"], "leak", "{fault}");

    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{rest:?}");
    let last: serde_json::Value = serde_json::from_str(rest.last().unwrap()).unwrap();
    assert_eq!(last["event"], "stopped", "{rest:?}");
    assert!(last["virtual_s"].as_f64().unwrap() > 40.0, "{last}");
}
