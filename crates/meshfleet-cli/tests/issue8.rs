//! Regression tests for issue 8 (items 4-7), through the binary: nodes that never update
//! are reported and fail the offer; the offer accounts for every node of the mesh; exit
//! codes; CLI hygiene (closed pipes, doubled errors, colours, noise, config tables,
//! `pack --force`, hardware names, help texts).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    args, incompressible_image, meshfleet, ota_receiver_args, pack, run_ok, text, words, Proc,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(90);

fn spawn(name: &str, dir: &Path, a: &[String]) -> Proc {
    Proc::spawn(name, Some(dir), a, TIMEOUT)
}

/// A small image in `d/app.bin`, packed for `sensor` on `hardware` as `out`.
fn pack_small(d: &Path, version: &str, hardware: &str, out: &str) {
    if !d.join("app.bin").exists() {
        let image: Vec<u8> = (0..6000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(d.join("app.bin"), image).unwrap();
    }
    let o = pack(d, "app.bin", hardware, version, None, out, &[]);
    assert!(o.status.success(), "pack {out} failed:\n{}", text(&o));
}

/// A receiving node listening on a free port.
fn receiver(d: &Path, id: u32, role: &str, extra: &[&str]) -> Proc {
    let mut a = ota_receiver_args(d, id, ["--listen", "127.0.0.1:0"], role, "ESP32");
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    spawn(&format!("receiver {id}"), d, &a)
}

fn offer(d: &Path, file: &str, port: u16, extra: &str) -> Proc {
    spawn(
        "offer",
        d,
        &words(&format!(
            "ota offer {file} --connect 127.0.0.1:{port} --json --exit-when-idle 3 {extra}"
        )),
    )
}

fn summary(p: &mut Proc) -> Value {
    p.wait_for("the summary", |v| v["event"] == "summary")
}

// ---------------------------------------------------------------------- item 4

/// A lowercase `--hardware` is normalised (a lowercase artefact would match no node) and
/// a made-up one is refused.
#[test]
fn hardware_names_are_normalised_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    pack_small(d, "1.0.0", "esp8266", "a.mfw");
    let o = run_ok(d, &["firmware", "inspect", "a.mfw", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["hardware"], "ESP8266", "{v}");
    let o = meshfleet(
        d,
        &[
            "firmware",
            "pack",
            "app.bin",
            "--role",
            "sensor",
            "--hardware",
            "ESP9000",
            "--version",
            "1.0.0",
            "--out",
            "b.mfw",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("ESP9000"), "{}", text(&o));
}

/// A role mismatch and a refused downgrade are reported with their reason and make the
/// offer fail (exit 5) instead of exiting 0 with nothing updated.
#[test]
fn refusals_are_reported_with_their_reason_and_fail_the_offer() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    pack_small(d, "2.0.0", "ESP32", "new.mfw");
    // Another image: the same bytes would be the image the node runs (already current).
    std::fs::write(d.join("app.bin"), vec![0x5a; 5000]).unwrap();
    pack_small(d, "1.0.0", "ESP32", "old.mfw");

    // A node of another role.
    let mut other = receiver(d, 401, "actuator", &[]);
    let port = other.listening_port();
    // The source does not offer it the artefact: the report says why, with the values, and
    // the offer does not succeed (nothing updated: exit 6; the node is not a target).
    let mut o = offer(d, "new.mfw", port, "--strategy broadcast");
    let s = summary(&mut o);
    assert_eq!(o.wait_exit().code(), Some(6), "{s}");
    let n = &s["nodes"][0];
    assert_eq!(
        (n["nodeId"].as_u64(), n["status"].as_str()),
        (Some(401), Some("incompatible")),
        "{s}"
    );
    assert_eq!(
        n["reason"], "role actuator, the artefact is for role sensor",
        "{s}"
    );
    // With --require-all it is a target that cannot update: exit 5.
    let mut o = offer(d, "new.mfw", port, "--strategy broadcast --require-all");
    let s = summary(&mut o);
    assert_eq!(o.wait_exit().code(), Some(5), "{s}");
    drop(other);

    // A downgrade: 2.0.0 first, then 1.0.0.
    let mut r = receiver(d, 402, "sensor", &[]);
    let port = r.listening_port();
    let mut o = offer(d, "new.mfw", port, "--strategy broadcast");
    let s = summary(&mut o);
    assert_eq!(o.wait_exit().code(), Some(0), "{s}");
    r.wait_for("the confirmation", |v| v["event"] == "ota_confirmed");
    let mut o = offer(d, "old.mfw", port, "--strategy broadcast");
    let s = summary(&mut o);
    assert_eq!(o.wait_exit().code(), Some(5), "{s}");
    let n = &s["nodes"][0];
    assert_eq!(n["status"], "refused", "{s}");
    assert!(
        n["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("downgrade"),
        "{s}"
    );

    // Offered again, the image it runs: already current, success.
    let mut o = offer(d, "new.mfw", port, "--strategy broadcast");
    let s = summary(&mut o);
    assert_eq!(o.wait_exit().code(), Some(0), "{s}");
    assert_eq!(s["nodes"][0]["status"], "already_current", "{s}");
}

// ---------------------------------------------------------------------- item 6

/// Never connected: exit 4, with the report.
#[test]
fn an_offer_that_never_connects_exits_4() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    pack_small(d, "1.0.0", "ESP32", "a.mfw");
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut o = offer(d, "a.mfw", port, "");
    let s = summary(&mut o);
    assert_eq!(o.wait_exit().code(), Some(4), "{s}");
    assert_eq!(s["exit"], "never_connected", "{s}");
}

/// Connected to a node that takes no updates: nothing updated, exit 6; `--expect` and
/// `--require-all` count nodes that never answered.
#[test]
fn nothing_updated_exits_6() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    pack_small(d, "1.0.0", "ESP32", "a.mfw");
    let mut plain = spawn(
        "plain",
        d,
        &args(&[
            "node",
            "--json",
            "--node-id",
            "501",
            "--listen",
            "127.0.0.1:0",
        ]),
    );
    let port = plain.listening_port();
    let mut o = offer(d, "a.mfw", port, "--require-all");
    let s = summary(&mut o);
    assert_eq!(o.wait_exit().code(), Some(6), "{s}");
    let n = &s["nodes"][0];
    assert_eq!(
        (n["nodeId"].as_u64(), n["status"].as_str()),
        (Some(501), Some("unknown")),
        "{s}"
    );
    // item 7: the plain node took the OTA packages without a word.
    plain.send("nodes");
    plain.wait_for("the node list", |v| v.get("nodes").is_some());
    let noise: Vec<Value> = plain
        .all_lines()
        .into_iter()
        .filter(|v| v["event"] == "frame_dropped")
        .collect();
    assert!(
        noise.is_empty(),
        "plain node reported OTA frames: {noise:?}"
    );
    assert!(
        !plain
            .stderr_lines()
            .iter()
            .any(|l| l.contains("no handler")),
        "{:?}",
        plain.stderr_lines()
    );
}

/// Ctrl-C in the middle of a transfer: exit 3.
#[test]
fn an_interrupted_offer_exits_3() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let image = incompressible_image(200_000);
    std::fs::write(d.join("app.bin"), image).unwrap();
    pack_small(d, "1.0.0", "ESP32", "a.mfw");
    let mut r = receiver(d, 601, "sensor", &[]);
    let port = r.listening_port();
    let mut o = offer(d, "a.mfw", port, "--strategy broadcast --ota-rate 20000");
    r.wait_for("the transfer", |v| {
        v["event"] == "plugin" && v["data"]["event"] == "offer_accepted"
    });
    o.interrupt();
    let s = summary(&mut o);
    assert_eq!(o.wait_exit().code(), Some(3), "{s}");
    assert_eq!(s["nodes"][0]["status"], "in_progress", "{s}");
}

// ---------------------------------------------------------------------- item 7

/// A closed stdout ends a command quietly: no panic, no backtrace.
#[test]
fn a_closed_pipe_is_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    pack_small(d, "1.0.0", "ESP32", "a.mfw");
    std::fs::write(
        d.join("s.toml"),
        "name = \"tiny\"\nseed = 1\nduration_s = 5\n[topology]\nkind = \"line\"\nnodes = 3\n",
    )
    .unwrap();
    for a in [
        vec!["firmware", "inspect", "a.mfw", "--json"],
        vec!["firmware", "inspect", "a.mfw"],
        vec!["sim", "s.toml", "--json"],
        vec!["sim", "s.toml"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(env!("CARGO_BIN_EXE_meshfleet"))
            .current_dir(d)
            .args(&a)
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{a:?}: {err}");
        assert!(!err.contains("panicked"), "{a:?}: {err}");
    }
}

/// An error is said once; no colour codes when stderr is not a terminal.
#[test]
fn errors_are_not_doubled_and_not_coloured() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let o = meshfleet(
        d,
        &[
            "node",
            "--listen",
            "127.0.0.1:0",
            "--ota-dir",
            "ota",
            "--ota-role",
            "s",
            "--ota-hardware",
            "ESP32",
            "--ota-key",
            "/nope.pub",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(err.matches("/nope.pub").count(), 1, "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    assert!(!err.contains('\u{1b}'), "colour codes in a pipe: {err:?}");
}

/// `--config` tables that nothing reads are refused, not silently ignored.
#[test]
fn config_tables_that_nothing_reads_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("c.toml"), "[sim]\nseed = 3\n").unwrap();
    let o = meshfleet(d, &["--config", "c.toml", "sim", "--demo"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("[sim]"), "{}", text(&o));
}

/// `meshfleet gateway` reads its `[gateway]` table from `--config` (the file loader once
/// refused every table but `[node]`), and flags override it.
#[test]
fn the_gateway_reads_its_config_table() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("g.toml"),
        "[gateway]\nhttp = \"127.0.0.1:9191\"\nnode-id = 77\n",
    )
    .unwrap();
    let o = meshfleet(d, &["--config", "g.toml", "gateway", "--print-config"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("127.0.0.1:9191"), "{out}");
    assert!(out.contains("77"), "{out}");
    let o = meshfleet(
        d,
        &[
            "--config",
            "g.toml",
            "gateway",
            "--http",
            "127.0.0.1:9292",
            "--print-config",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("127.0.0.1:9292"), "{}", text(&o));
    // The MQTT bridge's `[mqtt]` table is read from the same file (it was refused as an
    // unknown table), and the password in its URL is masked when printed.
    std::fs::write(
        d.join("m.toml"),
        "[gateway]\nhttp = \"127.0.0.1:9191\"\n[mqtt]\nurl = \"mqtt://farm:s3cret@127.0.0.1:1883\"\n",
    )
    .unwrap();
    let o = meshfleet(d, &["--config", "m.toml", "gateway", "--print-config"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("[mqtt]"), "{out}");
    assert!(out.contains("mqtt://farm:****@127.0.0.1:1883"), "{out}");
    assert!(!out.contains("s3cret"), "{out}");
}

/// `firmware pack` refuses to replace an artefact unless `--force`.
#[test]
fn pack_replaces_an_artefact_only_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    pack_small(d, "1.0.0", "ESP32", "a.mfw");
    let base = [
        "firmware",
        "pack",
        "app.bin",
        "--role",
        "sensor",
        "--hardware",
        "ESP32",
        "--version",
        "1.0.1",
        "--out",
        "a.mfw",
    ];
    let o = meshfleet(d, &base);
    assert!(!o.status.success());
    assert!(text(&o).contains("--force"), "{}", text(&o));
    let mut forced = base.to_vec();
    forced.push("--force");
    run_ok(d, &forced);
    let o = run_ok(d, &["firmware", "inspect", "a.mfw", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["version"], "1.0.1");
}

/// The stdin `help` lists `ota`; keygen's public key name is the one the help uses.
#[test]
fn help_texts_say_what_is_true() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut n = spawn(
        "node",
        d,
        &args(&["node", "--json", "--listen", "127.0.0.1:0"]),
    );
    n.listening_port();
    let help = n.request("help", "help");
    assert!(help.as_str().unwrap().contains("ota"), "{help}");
    let o = run_ok(d, &["firmware", "keygen", "--out", "fleet.key"]);
    assert!(d.join("fleet.key.pub").exists(), "{}", text(&o));
    let h = run_ok(d, &["firmware", "--help"]);
    let h = text(&h);
    assert!(
        h.contains("fleet.key.pub") && !h.contains("fleet.pub"),
        "{h}"
    );
    // Every flag the README cites is in some --help (none is hidden).
    let node_help = text(&run_ok(d, &["node", "--help"]));
    assert!(node_help.contains("--max-frame-len"), "{node_help}");
}

/// A signed receiver does not warn at the stock announces of `--strategy auto`.
#[test]
fn a_signed_receiver_ignores_stock_announces_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    run_ok(d, &["firmware", "keygen", "--out", "fleet.key"]);
    pack_small(d, "1.0.0", "ESP32", "a.mfw");
    let mut r = receiver(d, 701, "sensor", &["--ota-key", "fleet.key.pub"]);
    let port = r.listening_port();
    let mut o = offer(d, "a.mfw", port, "--strategy auto");
    let _ = summary(&mut o);
    o.wait_exit();
    let warns: Vec<String> = r
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("WARN"))
        .collect();
    assert!(warns.is_empty(), "{warns:?}");
    let dropped: Vec<Value> = r
        .all_lines()
        .into_iter()
        .filter(|v| v["event"] == "frame_dropped")
        .collect();
    assert!(dropped.is_empty(), "{dropped:?}");
}

// ---------------------------------------------------------------------- item 5

/// A transfer resumed by a second offer starts its progress at what the node already held,
/// not at 0.
#[test]
fn a_resumed_transfer_starts_at_what_the_node_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let image = incompressible_image(150_000);
    std::fs::write(d.join("app.bin"), image).unwrap();
    pack_small(d, "1.0.0", "ESP32", "a.mfw");
    let mut r = receiver(d, 801, "sensor", &[]);
    let port = r.listening_port();
    let mut first = offer(d, "a.mfw", port, "--strategy broadcast --ota-rate 20000");
    let p = r.wait_for("a third of the image", |v| {
        v["event"] == "plugin"
            && v["data"]["event"] == "progress"
            && v["data"]["have"].as_u64().unwrap_or(0) * 3
                >= v["data"]["chunks"].as_u64().unwrap_or(u64::MAX)
    });
    first.kill();
    let held = p["data"]["have"].as_u64().unwrap();
    let mut second = offer(d, "a.mfw", port, "--strategy broadcast");
    let s = summary(&mut second);
    assert_eq!(second.wait_exit().code(), Some(0), "{s}");
    let start = second
        .stderr_lines()
        .into_iter()
        .find(|l| l.contains("node 801 (meshfleet): fetching"))
        .unwrap_or_else(|| panic!("no progress line: {:?}", second.stderr_lines()));
    let holds: u64 = start
        .rsplit("holds ")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{start}"));
    assert!(
        holds >= held,
        "bar starts at {holds}, the node held {held}: {start}"
    );
}
