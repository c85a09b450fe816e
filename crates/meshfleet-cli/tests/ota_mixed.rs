//! Signed OTA through mixed meshes over real TCP on loopback (issue 8, first "Must show"):
//! `ota offer` reaches a signed receiver across a middle node that has no meshfleet OTA,
//! with the remote-peer design of `docs/ota-protocol.md` §2.7 (SINGLE-routed CAPS, OFFER,
//! NAK, STATUS and JSON chunks).
//!
//! ```text
//! ota offer (source) -> middle (no meshfleet OTA) -> signed receiver (--ota-key)
//! ```
//!
//! The middle node is either a plain `meshfleet node` (no `--ota-dir`) or a faithful stock
//! relay: a bare mesh node run by `meshfleet-runtime` in this test with no plugin at all,
//! which only routes painlessMesh frames (SINGLE packages by destination, BROADCAST
//! flooded) and handles none of the types 700-709, like a C++ painlessMesh node; one test
//! puts two such relays in a row.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{
    args, incompressible_image, ota_receiver_args, pack, run_ok, sha256_hex, text, words, Proc,
};
use meshfleet_mesh::{Config, Node, NodeId};
use meshfleet_runtime::{Runtime, RuntimeConfig};
use serde_json::Value;

/// Generous: CI runs this on 2 busy cores, next to other test binaries.
const TIMEOUT: Duration = Duration::from_secs(60);

fn spawn(name: &str, dir: &Path, a: &[String]) -> Proc {
    Proc::spawn(name, Some(dir), a, TIMEOUT)
}

/// Size of the test image: 20 payload chunks.
const IMAGE_LEN: usize = 20 * 1024;

/// A fleet key, and `app.bin` packed for `sensor` on `ESP32` as version 2.0.0 signed with
/// it (`app.mfw`). Returns the image's SHA-256.
fn signed_artefact(d: &Path) -> String {
    let img = incompressible_image(IMAGE_LEN);
    std::fs::write(d.join("app.bin"), &img).unwrap();
    run_ok(d, &["firmware", "keygen", "--out", "fleet.key"]);
    let o = pack(
        d,
        "app.bin",
        "ESP32",
        "2.0.0",
        Some("fleet.key"),
        "app.mfw",
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    sha256_hex(&img)
}

/// The signed receiver `id`, listening on a free port: role `sensor` on `ESP32`, trusting
/// `fleet.key.pub`, its store in `ota-<id>`, a hook that writes the version to
/// `hook-<id>.txt`, confirmation after 1 s.
fn signed_receiver(d: &Path, id: u32) -> Proc {
    let hook = format!(
        "printf %s \"$MESHFLEET_OTA_VERSION\" > '{}'",
        d.join(format!("hook-{id}.txt")).display()
    );
    let mut a = ota_receiver_args(d, id, ["--listen", "127.0.0.1:0"], "sensor", "ESP32");
    a.extend(args(&["--ota-key", "fleet.key.pub", "--ota-hook", &hook]));
    spawn(&format!("receiver {id}"), d, &a)
}

/// `ota offer app.mfw --strategy broadcast` connected to `port`.
fn offer(d: &Path, port: u16) -> Proc {
    spawn(
        "offer",
        d,
        &words(&format!(
            "ota offer app.mfw --strategy broadcast --connect 127.0.0.1:{port} --json \
             --exit-when-idle 4"
        )),
    )
}

/// The receiver runs 2.0.0, confirmed, with the image whose SHA-256 is `sha` stored in its
/// `--ota-dir`, and its hook ran.
fn check_updated(d: &Path, p: &mut Proc, id: u32, sha: &str) {
    p.wait_for("the new image's confirmation", |v| {
        v["event"] == "ota_confirmed" && v["version"] == "2.0.0"
    });
    let state = p.request("ota", "ota");
    let running = &state["running"];
    assert_eq!(running["version"], "2.0.0", "{}: state {state}", p.name);
    assert_eq!(running["trial"], false, "{}: state {state}", p.name);
    assert_eq!(running["sha256"], sha, "{}: state {state}", p.name);
    let path = PathBuf::from(running["path"].as_str().unwrap());
    assert!(
        path.starts_with(d.join(format!("ota-{id}"))),
        "{}: image outside its --ota-dir: {}",
        p.name,
        path.display()
    );
    assert_eq!(
        sha256_hex(&std::fs::read(&path).unwrap()),
        sha,
        "{}",
        p.name
    );
    let hook = std::fs::read_to_string(d.join(format!("hook-{id}.txt")))
        .unwrap_or_else(|e| panic!("{}: the hook did not run: {e}", p.name));
    assert_eq!(hook, "2.0.0", "{}: hook saw another version", p.name);
}

/// The receiver took the meshfleet flow (not the stock one), and the offer's final report
/// lists it as `updated` (and the middle node as not targeted by anything), exit 0.
fn check_offer(offer: &mut Proc, receiver: &mut Proc, receiver_id: u32, middle_id: u32) {
    // The meshfleet flow's commit names its campaign and the artefact's version (the stock
    // flow's names no campaign and a `0.0.0+stock.*` version).
    let applied = receiver.wait_plugin("the commit", |e| e["event"] == "applied");
    assert_eq!(applied["version"], "2.0.0", "{applied}");
    assert!(applied["campaign"].is_u64(), "{applied}");
    let summary = offer.wait_for("the summary", |v| v["event"] == "summary");
    let status = offer.wait_exit();
    assert!(status.success(), "offer exited {status}: {summary}");
    assert_eq!(summary["exit_code"], 0, "{summary}");
    let nodes = summary["nodes"].as_array().unwrap();
    let row = |id: u32| nodes.iter().find(|n| n["nodeId"] == id);
    let r = row(receiver_id).unwrap_or_else(|| panic!("no row for the receiver: {summary}"));
    assert_eq!(r["status"], "updated", "{summary}");
    assert_eq!(r["via"], "meshfleet", "{summary}");
    assert_eq!(r["neighbour"], false, "{summary}");
    assert_eq!(r["have"], r["total"], "{summary}");
    // The image does not compress: all of it crossed the middle node.
    assert!(
        r["bytes"].as_u64().unwrap() >= IMAGE_LEN as u64,
        "{summary}"
    );
    assert_ne!(
        row(middle_id).map(|n| n["status"].clone()),
        Some(Value::from("updated")),
        "{summary}"
    );
}

/// offer -> plain `meshfleet node` (no `--ota-dir`) -> signed receiver.
#[test]
fn a_signed_receiver_behind_a_plain_node_is_updated() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sha = signed_artefact(d);
    let mut receiver = signed_receiver(d, 811);
    let rport = receiver.listening_port();
    let mut plain = spawn(
        "plain",
        d,
        &args(&[
            "node",
            "--json",
            "--node-id",
            "810",
            "--listen",
            "127.0.0.1:0",
            "--connect",
            &format!("127.0.0.1:{rport}"),
        ]),
    );
    let pport = plain.listening_port();
    plain.wait_nodes(&[811]);
    let mut o = offer(d, pport);
    check_updated(d, &mut receiver, 811, &sha);
    check_offer(&mut o, &mut receiver, 811, 810);
    // The plain node routed the SINGLE packages; it dropped none of them (no route, or a
    // package nobody handles).
    plain.send("nodes");
    plain.wait_for("the node list", |v| v.get("nodes").is_some());
    let dropped: Vec<Value> = plain
        .all_lines()
        .into_iter()
        .filter(|v| v["event"] == "frame_dropped")
        .collect();
    assert!(dropped.is_empty(), "plain node dropped frames: {dropped:?}");
}

/// A faithful stock relay on its own tokio runtime: a bare mesh node (no plugin) listening
/// on a free port and connected to `connect`. Dropping the guard stops it.
struct StockRelay {
    port: u16,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<u64>>,
}

impl StockRelay {
    fn start(id: u32, connect: String) -> Self {
        let (port_tx, port_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // Nothing but the mesh core: no OTA plugin, no quiet OTA sink.
                let node = Node::new(Config::new(NodeId(id)));
                let cfg = RuntimeConfig::default()
                    .with_listen("127.0.0.1:0".parse().unwrap())
                    .with_connect(connect);
                let (mesh, task) = Runtime::start(node, cfg).await.unwrap();
                port_tx.send(mesh.listen_addr().unwrap().port()).unwrap();
                // Wait for the stop signal off the runtime's thread.
                let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                let forwarded = mesh.stats().await.map_or(0, |s| s.node.forwarded);
                mesh.shutdown().await;
                let _ = task.await;
                forwarded
            })
        });
        let port = port_rx.recv_timeout(TIMEOUT).unwrap();
        Self {
            port,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl StockRelay {
    /// Stops the relay; returns how many frames its mesh core forwarded for others.
    fn stop(mut self) -> u64 {
        drop(self.stop.take());
        self.thread.take().map_or(0, |t| t.join().unwrap())
    }
}

impl Drop for StockRelay {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// offer -> stock relay (routes painlessMesh frames only) -> signed receiver.
#[test]
fn a_signed_receiver_behind_a_stock_relay_is_updated() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sha = signed_artefact(d);
    let mut receiver = signed_receiver(d, 821);
    let rport = receiver.listening_port();
    let relay = StockRelay::start(820, format!("127.0.0.1:{rport}"));
    receiver.wait_nodes(&[820]);
    let mut o = offer(d, relay.port);
    check_updated(d, &mut receiver, 821, &sha);
    check_offer(&mut o, &mut receiver, 821, 820);
    // The OFFER, every chunk as a SINGLE-routed JSON package, and the receiver's NAKs and
    // STATUS went through the relay's routing, not through any OTA code of its own.
    let forwarded = relay.stop();
    assert!(
        forwarded >= (IMAGE_LEN / 1024) as u64 + 2,
        "the relay forwarded only {forwarded} frames"
    );
}

/// offer -> stock relay -> stock relay -> signed receiver: the remote-peer packages cross
/// two hops of plain painlessMesh routing.
#[test]
fn a_signed_receiver_behind_two_stock_relays_is_updated() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sha = signed_artefact(d);
    let mut receiver = signed_receiver(d, 832);
    let rport = receiver.listening_port();
    let inner = StockRelay::start(831, format!("127.0.0.1:{rport}"));
    let outer = StockRelay::start(830, format!("127.0.0.1:{}", inner.port));
    receiver.wait_nodes(&[830, 831]);
    let mut o = offer(d, outer.port);
    check_updated(d, &mut receiver, 832, &sha);
    check_offer(&mut o, &mut receiver, 832, 830);
    for (name, relay) in [("outer", outer), ("inner", inner)] {
        let forwarded = relay.stop();
        assert!(
            forwarded >= (IMAGE_LEN / 1024) as u64 + 2,
            "the {name} relay forwarded only {forwarded} frames"
        );
    }
}
