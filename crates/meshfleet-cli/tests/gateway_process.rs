//! `meshfleet gateway` as a process: a `meshfleet node` joins it and reports, an artefact is
//! uploaded and an alert acknowledged; the gateway is SIGKILLed and restarted on the same
//! database (nothing it acknowledged is lost), then stopped with SIGTERM (clean exit 0).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshfleet_firmware::{keys, pack, PackOptions, Version};

const TOKEN: &str = "process-test-token-0123456789";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn gateway(dir: &Path, http: u16, mesh: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_meshfleet"))
        .args(["gateway", "--node-id", "900"])
        .args(["--listen", &format!("127.0.0.1:{mesh}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .arg("--db")
        .arg(dir.join("gw.db"))
        .arg("--token-file")
        .arg(dir.join("token"))
        .arg("--firmware-key")
        .arg(dir.join("fleet.pub"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// One HTTP/1.1 request (`Connection: close`); `None` if the server is not there.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> Option<(u16, serde_json::Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let body = serde_json::from_slice(&raw[split + 4..]).unwrap_or(serde_json::Value::Null);
    Some((status, body))
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
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
