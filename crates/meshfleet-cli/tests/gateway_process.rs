//! `meshfleet gateway` as a process: a `meshfleet node` joins it and reports, an artefact is
//! uploaded and an alert acknowledged; the gateway is SIGKILLed and restarted on the same
//! database (nothing it acknowledged is lost), then stopped with SIGTERM (clean exit 0).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, gateway_command, wait_until};
use meshfleet_firmware::{keys, pack, PackOptions, Version};

const TOKEN: &str = "process-test-token-0123456789";

fn gateway(dir: &Path, http: u16, mesh: u16) -> Child {
    gateway_command(dir, &[], http, mesh, Some("fleet.pub"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn http(port: u16, method: &str, path: &str, body: &[u8]) -> Option<(u16, serde_json::Value)> {
    common::http(
        port,
        method,
        path,
        Some(TOKEN),
        "application/octet-stream",
        body,
    )
}

fn wait_for(what: &str, f: impl FnMut() -> bool) {
    wait_until(what, Duration::from_secs(20), f, String::new);
}

#[test]
fn sigkill_keeps_what_was_acknowledged_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let key = keys::keygen(&mut rand_core::OsRng);
    keys::write_public_key(&dir.path().join("fleet.pub"), &key.verifying_key()).unwrap();
    let (http_port, mesh_port) = (free_port(), free_port());

    let mut gw = gateway(dir.path(), http_port, mesh_port);
    wait_for("gateway up", || {
        http(http_port, "GET", "/readyz", b"").is_some_and(|(s, _)| s == 200)
    });
    let mut node = Command::new(env!("CARGO_BIN_EXE_meshfleet"))
        .args([
            "node",
            "--node-id",
            "7",
            "--connect",
            &format!("127.0.0.1:{mesh_port}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("node 7 online", || {
        http(http_port, "GET", "/status/7", b"").is_some_and(|(_, b)| b["online"] == true)
    });
    let status = r#"{"from":7,"routing":2,"type":604,"status":1,"uptime":60,"mem":5,"wifi":80,"fw":"1.0.0","fwMD5":"x","nodes":1,"conns":1,"msgRx":0,"msgTx":1,"msgDrop":0,"latency":50,"loss":1,"throughput":512,"alerts":2,"lastErr":""}"#;
    writeln!(node.stdin.as_mut().unwrap(), "broadcast {status}").unwrap();
    wait_for("history stored", || {
        http(http_port, "GET", "/nodes/7/history", b"")
            .is_some_and(|(_, b)| b["points"].as_array().is_some_and(|p| p.len() == 1))
    });

    // Acknowledged changes: an upload and an alert acknowledgement.
    let image = vec![0x5au8; 10_000];
    let mut opts = PackOptions::new("sensor", "ESP32", Version::parse("2.0.0").unwrap());
    opts.signing_key = Some(&key);
    let mfw = pack(&image, opts).unwrap().to_bytes();
    let (s, uploaded) = http(http_port, "POST", "/firmware", &mfw).unwrap();
    assert_eq!(s, 201, "{uploaded}");
    let (_, alerts) = http(http_port, "GET", "/alerts", b"").unwrap();
    let alert = alerts["alerts"][0]["id"]
        .as_i64()
        .expect("a low-memory alert");
    let (s, _) = http(http_port, "POST", &format!("/alerts/{alert}/ack"), b"").unwrap();
    assert_eq!(s, 200);

    // SIGKILL: no chance to flush or close anything.
    gw.kill().unwrap();
    gw.wait().unwrap();
    let mut gw = gateway(dir.path(), http_port, mesh_port);
    wait_for("gateway back", || {
        http(http_port, "GET", "/readyz", b"").is_some_and(|(s, _)| s == 200)
    });
    let (_, fw) = http(http_port, "GET", "/firmware", b"").unwrap();
    assert_eq!(fw["artefacts"][0]["id"], uploaded["id"]);
    let (_, all) = http(http_port, "GET", "/alerts?state=all", b"").unwrap();
    let kept = all["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == alert)
        .expect("alert kept")
        .clone();
    assert!(kept["ackedAt"].is_i64(), "{kept}");
    let (_, h) = http(http_port, "GET", "/nodes/7/history", b"").unwrap();
    assert_eq!(h["points"].as_array().unwrap().len(), 1, "{h}");
    // The node reconnects by itself (backoff) and is online again.
    wait_for("node 7 back", || {
        http(http_port, "GET", "/status/7", b"").is_some_and(|(_, b)| b["online"] == true)
    });

    // SIGTERM: a clean exit with status 0.
    let term = Command::new("kill")
        .args(["-TERM", &gw.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(code) = gw.try_wait().unwrap() {
            break code;
        }
        assert!(Instant::now() < deadline, "gateway did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "{code:?}");
    let _ = node.kill();
    let _ = node.wait();
}
