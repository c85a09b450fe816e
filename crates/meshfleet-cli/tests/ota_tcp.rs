//! OTA end to end over real TCP on loopback: `meshfleet ota offer` and `meshfleet node
//! --ota-dir` processes, driven and read through their pipes as an operator's scripts
//! would.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{args, incompressible_image, meshfleet, pack, run_ok, sha256_hex, text, words, Proc};

/// Generous: CI runs this on 2 busy cores, next to other test binaries.
const TIMEOUT: Duration = Duration::from_secs(90);

/// Pacing of every meshfleet sender in the tree test, bytes per second per link: slow
/// enough that a node can be killed in the middle of its transfer, fast enough for a test
/// (300 KB in about 6 s).
const RATE: &str = "50000";

fn spawn(name: &str, dir: &Path, args: &[String]) -> Proc {
    Proc::spawn(name, Some(dir), args, TIMEOUT)
}

/// `meshfleet firmware pack IMAGE` for role `sensor` on `ESP32`, signed with `key` if given.
fn pack_esp32(d: &Path, image: &str, version: &str, key: Option<&str>, out: &str) {
    let o = pack(d, image, "ESP32", version, key, out, &[]);
    assert!(o.status.success(), "pack {out} failed:\n{}", text(&o));
}

/// Where a receiving node sits in the mesh.
struct Spec {
    id: u32,
    listen: Option<String>,
    connect: Option<String>,
}

/// `meshfleet node` arguments for a receiver: role `sensor` on `ESP32`, its store in
/// `ota-<id>`, a hook that writes the version to `hook-<id>.txt`, confirmation after 1 s;
/// `extra` adds flags or replaces those defaults.
fn receiver_args(d: &Path, r: &Spec, extra: &[&str]) -> Vec<String> {
    let id = r.id.to_string();
    let dir = d.join(format!("ota-{}", r.id));
    let hook = format!(
        "printf %s \"$MESHFLEET_OTA_VERSION\" > '{}'",
        d.join(format!("hook-{}.txt", r.id)).display()
    );
    let mut a = args(&["node", "--json", "--node-id", &id]);
    if let Some(l) = &r.listen {
        a.extend(args(&["--listen", l]));
    }
    if let Some(c) = &r.connect {
        a.extend(args(&["--connect", c]));
    }
    a.extend(args(&[
        "--ota-dir",
        dir.to_str().unwrap(),
        "--ota-role",
        "sensor",
        "--ota-hardware",
        "ESP32",
    ]));
    for (flag, default) in [("--ota-hook", hook.as_str()), ("--ota-confirm-after", "1")] {
        if !extra.contains(&flag) {
            a.extend(args(&[flag, default]));
        }
    }
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    a
}

/// Checks that node `p` runs `version` with the image whose SHA-256 is `sha`, confirmed,
/// and that its hook ran.
fn check_updated(d: &Path, p: &mut Proc, id: u32, version: &str, sha: &str) {
    p.wait_for("the new image's confirmation", |v| {
        v["event"] == "ota_confirmed" && v["version"] == version
    });
    let state = p.request("ota", "ota");
    let running = &state["running"];
    assert_eq!(running["version"], version, "{}: state {state}", p.name);
    assert_eq!(running["trial"], false, "{}: state {state}", p.name);
    assert_eq!(running["sha256"], sha, "{}: state {state}", p.name);
    let path = PathBuf::from(running["path"].as_str().unwrap());
    assert!(
        path.starts_with(d.join(format!("ota-{id}"))),
        "{}: image outside its --ota-dir: {}",
        p.name,
        path.display()
    );
    let image = std::fs::read(&path).unwrap();
    assert_eq!(
        sha256_hex(&image),
        sha,
        "{}: {} differs",
        p.name,
        path.display()
    );
    let hook = std::fs::read_to_string(d.join(format!("hook-{id}.txt")))
        .unwrap_or_else(|e| panic!("{}: the hook did not run: {e}", p.name));
    assert_eq!(hook, version, "{}: hook saw another version", p.name);
}

/// Five receivers in a tree, a meshfleet source at the root, one relay killed in the
/// middle of its transfer and restarted: it resumes from its store, and every node ends up
/// running the new image.
///
/// ```text
/// offer -> R1 -+-> R2 -> R4 (killed, restarted) -> R5
///              +-> R3
/// ```
#[test]
fn broadcast_tree_survives_a_killed_relay() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let image = incompressible_image(300 * 1024);
    let sha = sha256_hex(&image);
    std::fs::write(d.join("app.bin"), &image).unwrap();
    run_ok(d, &["firmware", "keygen", "--out", "fleet.key"]);
    pack_esp32(d, "app.bin", "2.0.0", Some("fleet.key"), "app.mfw");
    // Processes run in `d`: relative paths are fine.
    let secure = ["--ota-key", "fleet.key.pub", "--ota-rate", RATE];

    let r1 = Spec {
        id: 101,
        listen: Some("127.0.0.1:0".into()),
        connect: None,
    };
    let mut p1 = spawn("R1", d, &receiver_args(d, &r1, &secure));
    let port1 = p1.listening_port();
    let r2 = Spec {
        id: 102,
        listen: Some("127.0.0.1:0".into()),
        connect: Some(format!("127.0.0.1:{port1}")),
    };
    let mut p2 = spawn("R2", d, &receiver_args(d, &r2, &secure));
    let port2 = p2.listening_port();
    let r3 = Spec {
        id: 103,
        listen: None,
        connect: Some(format!("127.0.0.1:{port1}")),
    };
    let mut p3 = spawn("R3", d, &receiver_args(d, &r3, &secure));
    let r4 = Spec {
        id: 104,
        listen: Some("127.0.0.1:0".into()),
        connect: Some(format!("127.0.0.1:{port2}")),
    };
    let mut p4 = spawn("R4", d, &receiver_args(d, &r4, &secure));
    let port4 = p4.listening_port();
    let r5 = Spec {
        id: 105,
        listen: None,
        connect: Some(format!("127.0.0.1:{port4}")),
    };
    let mut p5 = spawn("R5", d, &receiver_args(d, &r5, &secure));
    p1.wait_nodes(&[102, 103, 104, 105]);
    eprintln!("tree up after {:?}", t0.elapsed());

    let mut offer = spawn(
        "offer",
        d,
        &words(&format!(
            "ota offer app.mfw --strategy broadcast --connect 127.0.0.1:{port1} --node-id 100 \
             --json --exit-when-idle 5 --key fleet.key.pub --ota-rate {RATE}"
        )),
    );
    let started = offer.wait_for("offer_started", |v| v["event"] == "offer_started");
    assert_eq!(started["signature"], "verified");
    assert!(
        started["chunks"].as_u64().unwrap() >= 290,
        "{} chunks: the image should not compress",
        started["chunks"]
    );
    // Progress counts transfer units: the chunks and the hash pages of the chunk table.
    let chunks = started["units"].as_u64().unwrap();
    assert!(chunks > started["chunks"].as_u64().unwrap());

    // Kill R4 once it holds at least 30% of the chunks, well before the end.
    let seen = p4.wait_plugin("30% progress", |e| {
        e["event"] == "progress" && e["have"].as_u64().unwrap() * 10 >= chunks * 3
    });
    let have_at_kill = seen["have"].as_u64().unwrap();
    assert!(
        have_at_kill < chunks,
        "R4 finished before it could be killed: make RATE slower"
    );
    p4.kill();
    eprintln!(
        "R4 killed holding >= {have_at_kill}/{chunks} chunks after {:?}",
        t0.elapsed()
    );

    // Same store, same port: R5 reconnects to it.
    let r4 = Spec {
        id: 104,
        listen: Some(format!("127.0.0.1:{port4}")),
        connect: Some(format!("127.0.0.1:{port2}")),
    };
    let mut p4 = spawn("R4 (restarted)", d, &receiver_args(d, &r4, &secure));
    let resume = p4.wait_for("ota_resume", |v| v["event"] == "ota_resume");
    let resumed = resume["have"].as_u64().unwrap();
    // The bitmap is saved every 16 chunks: at most 15 are fetched again.
    assert!(
        resumed > 0 && resumed + 16 > have_at_kill && resumed < chunks,
        "R4 resumed with {resumed} chunks, had at least {have_at_kill} of {chunks}"
    );
    assert_eq!(resume["chunks"].as_u64(), Some(chunks));

    for (p, id) in [
        (&mut p1, 101),
        (&mut p2, 102),
        (&mut p3, 103),
        (&mut p4, 104),
        (&mut p5, 105),
    ] {
        check_updated(d, p, id, "2.0.0", &sha);
    }
    eprintln!("every node updated after {:?}", t0.elapsed());

    // The restarted R4 fetched only what it lacked.
    let state = p4.request("ota", "ota");
    let received = state["stats"]["chunksReceived"].as_u64().unwrap();
    let duplicates = state["stats"]["duplicates"].as_u64().unwrap();
    assert_eq!(received + resumed, chunks, "R4 after its restart: {state}");
    assert!(
        received + duplicates < chunks,
        "R4 fetched everything again: {state}"
    );

    // The source stops by itself and reports R1 (its only neighbour) updated, and every
    // node behind it with the outcome it reported.
    let summary = offer.wait_for("the summary", |v| v["event"] == "summary");
    assert!(offer.wait_exit().success(), "offer: {summary}");
    let nodes = summary["nodes"].as_array().unwrap();
    assert_eq!(
        nodes.len(),
        5,
        "every node of the mesh is listed: {summary}"
    );
    assert_eq!(nodes[0]["nodeId"], 101);
    assert_eq!(nodes[0]["status"], "updated");
    assert_eq!(nodes[0]["neighbour"], true);
    // The nodes behind R1 report their outcome to the origin (REPORT, 706), so the
    // offer accounts for them too.
    for n in &nodes[1..] {
        assert_eq!(
            (&n["status"], &n["neighbour"]),
            (&serde_json::json!("updated"), &serde_json::json!(false)),
            "{summary}"
        );
    }
    assert_eq!(summary["exit_code"], 0);
    // Every chunk went to R1 at least once (the payload does not compress).
    assert!(
        nodes[0]["bytes"].as_u64().unwrap() >= image.len() as u64,
        "{summary}"
    );
    assert!(summary["bytes_sent"].as_u64().unwrap() >= nodes[0]["bytes"].as_u64().unwrap());
    eprintln!("done after {:?}", t0.elapsed());
}

/// One receiver node `id` (with `extra` flags) listening in `d`, and `ota offer` of a
/// packed image (a real firmware image if the shared set is there, else a synthetic one)
/// with `strategy`, connected to it. Returns (image, its sha256, node, offer).
fn one_receiver(
    d: &Path,
    id: u32,
    name: &str,
    extra: &[&str],
    strategy: &str,
) -> (Vec<u8>, String, Proc, Proc) {
    let shared = Path::new("/work/shared/firmware/ath9k-htc-9271-1.4.0-110.fw");
    let image = std::fs::read(shared).unwrap_or_else(|_| incompressible_image(51 * 1024));
    let sha = sha256_hex(&image);
    std::fs::write(d.join("fw.bin"), &image).unwrap();
    pack_esp32(d, "fw.bin", "1.4.0", None, "fw.mfw");
    let r = Spec {
        id,
        listen: Some("127.0.0.1:0".into()),
        connect: None,
    };
    let mut node = spawn(name, d, &receiver_args(d, &r, extra));
    let port = node.listening_port();
    let offer = spawn(
        "offer",
        d,
        &words(&format!(
            "ota offer fw.mfw --strategy {strategy} --connect 127.0.0.1:{port} --json \
             --exit-when-idle 3"
        )),
    );
    (image, sha, node, offer)
}

/// The stock flow end to end: the library's sender (`--strategy stock`) and a node that
/// accepts only stock updates.
#[test]
fn stock_offer_updates_a_stock_receiver() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (image, sha, mut node, mut offer) = one_receiver(
        d,
        201,
        "stock receiver",
        &["--ota-accept", "stock"],
        "stock",
    );
    let started = offer.wait_for("offer_started", |v| v["event"] == "offer_started");
    let parts = started["parts"].as_u64().unwrap();
    assert_eq!(parts, (image.len() as u64).div_ceil(1024));

    let begun = node.wait_plugin("the stock update", |e| e["event"] == "update_started");
    assert_eq!(begun["from_part"], 0);
    node.wait_plugin("the stock image", |e| e["event"] == "updated");
    let applied = node.wait_plugin("the commit", |e| e["event"] == "applied");
    assert_eq!(applied["via"], "stock");
    let version = applied["version"].as_str().unwrap().to_owned();
    assert!(version.starts_with("0.0.0+stock."), "{applied}");
    check_updated(d, &mut node, 201, &version, &sha);
    let state = node.request("ota", "ota");
    assert_eq!(state["accept"], serde_json::json!(["stock"]));

    // The sender saw every part go out, and stops once nobody asks any more.
    let done = offer.wait_for("node_completed", |v| v["event"] == "node_completed");
    assert_eq!(done["node"], 201);
    assert_eq!(done["plugin"], "ota-stock-sender");
    let summary = offer.wait_for("the summary", |v| v["event"] == "summary");
    assert!(offer.wait_exit().success(), "offer: {summary}");
    assert_eq!(summary["stopped"], "idle");
    let n = &summary["nodes"][0];
    assert_eq!(
        (n["nodeId"].as_u64(), n["status"].as_str()),
        (Some(201), Some("updated"))
    );
    assert_eq!(n["bytes"].as_u64(), Some(image.len() as u64));
}

/// A meshfleet node that can give its decompressor only 8 KiB (`--ota-window 8K`, an
/// ESP8266's budget) is not offered an artefact packed with the default 32 KiB window; with
/// `--strategy auto` it falls back to the stock flow and is updated by it.
#[test]
fn a_node_with_a_small_window_gets_the_stock_flow_under_auto() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_image, sha, mut node, mut offer) =
        one_receiver(d, 251, "small receiver", &["--ota-window", "8K"], "auto");
    let skipped = offer.wait_for("peer_cannot_decode", |v| v["event"] == "peer_cannot_decode");
    assert_eq!(skipped["peer"], 251);
    assert_eq!(
        skipped["reason"],
        "the payload needs a 32768-byte decompression window, it can give 8192"
    );
    let applied = node.wait_plugin("the commit", |e| e["event"] == "applied");
    assert_eq!(applied["via"], "stock", "{applied}");
    let version = applied["version"].as_str().unwrap().to_owned();
    check_updated(d, &mut node, 251, &version, &sha);

    let summary = offer.wait_for("the summary", |v| v["event"] == "summary");
    assert!(offer.wait_exit().success(), "offer: {summary}");
    // One row for the node, with its one outcome: the stock flow updated it.
    let nodes = summary["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{summary}");
    assert_eq!(nodes[0]["nodeId"], 251, "{summary}");
    assert_eq!(nodes[0]["via"], "stock", "{summary}");
    assert_eq!(nodes[0]["status"], "updated", "{summary}");
    // Not one meshfleet chunk was sent to it: its bytes are the stock parts, the image.
    assert_eq!(
        nodes[0]["bytes"].as_u64(),
        summary["bytes_sent"].as_u64(),
        "{summary}"
    );
}

/// A node that trusts a key refuses an unsigned artefact; the source reports it failed.
#[test]
fn unsigned_artefact_is_refused_by_a_node_that_trusts_a_key() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("app.bin"), incompressible_image(4096)).unwrap();
    run_ok(d, &["firmware", "keygen", "--out", "fleet.key"]);
    pack_esp32(d, "app.bin", "3.0.0", None, "unsigned.mfw");
    let r = Spec {
        id: 301,
        listen: Some("127.0.0.1:0".into()),
        connect: None,
    };
    let mut node = spawn(
        "receiver",
        d,
        &receiver_args(d, &r, &["--ota-key", "fleet.key.pub"]),
    );
    let port = node.listening_port();
    let mut offer = spawn(
        "offer",
        d,
        &words(&format!(
            "ota offer unsigned.mfw --strategy auto --connect 127.0.0.1:{port} --json \
             --exit-when-idle 3"
        )),
    );
    let rejected = node.wait_plugin("the refusal", |e| e["event"] == "offer_rejected");
    assert!(
        rejected["reason"].as_str().unwrap().contains("signature"),
        "{rejected}"
    );
    let summary = offer.wait_for("the summary", |v| v["event"] == "summary");
    // Every target refused: exit status 5 (issue 8, item 6), and the reason is shown.
    assert_eq!(offer.wait_exit().code(), Some(5), "{summary}");
    assert_eq!(summary["exit_code"], 5, "{summary}");
    let n = &summary["nodes"][0];
    assert_eq!(
        (n["nodeId"].as_u64(), n["status"].as_str()),
        (Some(301), Some("refused")),
        "{summary}"
    );
    assert!(
        n["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("signature"),
        "{summary}"
    );
    // With a key, stock updates are off: the stock announce of `auto` was not taken up.
    let state = node.request("ota", "ota");
    assert_eq!(state["accept"], serde_json::json!(["meshfleet"]));
    assert_eq!(state["phase"], "idle", "{state}");
    assert!(state["running"].is_null(), "{state}");
}

/// `ota offer` checks its input before joining anything.
#[test]
fn offer_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("app.bin"), incompressible_image(8192)).unwrap();
    run_ok(d, &["firmware", "keygen", "--out", "fleet.key"]);
    run_ok(d, &["firmware", "keygen", "--out", "other.key"]);
    pack_esp32(d, "app.bin", "1.0.0", Some("fleet.key"), "app.mfw");
    let mut bytes = std::fs::read(d.join("app.mfw")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(d.join("broken.mfw"), &bytes).unwrap();
    // A port nothing listens on: the command must fail before it would connect.
    let target = "127.0.0.1:9";

    let o = meshfleet(d, &["ota", "offer", "broken.mfw", "--connect", target]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("verification failed"), "{}", text(&o));

    let o = meshfleet(
        d,
        &[
            "ota",
            "offer",
            "app.mfw",
            "--key",
            "other.key.pub",
            "--connect",
            target,
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("verification failed"), "{}", text(&o));

    let o = meshfleet(d, &["ota", "offer", "missing.mfw", "--connect", target]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // Usage errors: 2.
    for bad in [
        &["ota", "offer", "app.mfw"][..],
        &["ota", "offer", "app.mfw", "--connect", "nohost"],
        &[
            "ota",
            "offer",
            "app.mfw",
            "--connect",
            target,
            "--strategy",
            "broadcast",
            "--broadcasted",
        ],
        &[
            "ota",
            "offer",
            "app.mfw",
            "--connect",
            target,
            "--stock-style",
            "v1.4",
            "--broadcasted",
        ],
        &[
            "ota",
            "offer",
            "app.mfw",
            "--connect",
            target,
            "--strategy",
            "gossip",
        ],
        &["node", "--ota-dir", "x"],
        &["node", "--ota-role", "sensor"],
        &[
            "node",
            "--ota-dir",
            "x",
            "--ota-role",
            "r",
            "--ota-hardware",
            "h",
            "--ota-key",
            "fleet.key.pub",
            "--ota-accept",
            "stock",
        ],
    ] {
        let o = meshfleet(d, bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", text(&o));
    }

    let o = meshfleet(d, &["ota", "offer", "--help"]);
    assert!(o.status.success());
    for word in ["stock", "broadcast", "auto", "--exit-when-idle", "Examples"] {
        assert!(text(&o).contains(word), "--help lacks {word}");
    }
}

/// After a commit: a failing hook rolls the update back at once; an image that was never
/// confirmed (the node died first) boots on trial again at the next start.
#[test]
fn failed_hooks_roll_back_and_unconfirmed_images_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let image = incompressible_image(8 * 1024);
    let sha = sha256_hex(&image);
    std::fs::write(d.join("app.bin"), &image).unwrap();
    pack_esp32(d, "app.bin", "1.1.0", None, "app.mfw");
    let spec = |id, listen: String| Spec {
        id,
        listen: Some(listen),
        connect: None,
    };
    // A: its hook fails. B: dies before its confirmation.
    let a_args = |listen: String| receiver_args(d, &spec(401, listen), &["--ota-hook", "exit 3"]);
    let mut a = spawn("A", d, &a_args("127.0.0.1:0".into()));
    let port_a = a.listening_port();
    let b_args = |listen: String, confirm: &str| {
        receiver_args(d, &spec(402, listen), &["--ota-confirm-after", confirm])
    };
    let mut b = spawn("B", d, &b_args("127.0.0.1:0".into(), "600"));
    let port_b = b.listening_port();
    let mut offer = spawn(
        "offer",
        d,
        &words(&format!(
            "ota offer app.mfw --strategy broadcast --json --exit-when-idle 3 \
             --connect 127.0.0.1:{port_a} --connect 127.0.0.1:{port_b}"
        )),
    );

    let hook = a.wait_for("the hook", |v| v["event"] == "ota_hook");
    assert_eq!(
        (hook["ok"].as_bool(), hook["exitCode"].as_i64()),
        (Some(false), Some(3))
    );
    let back = a.wait_for("the rollback", |v| {
        v["event"] == "ota_boot" && v["reason"] == "rollback"
    });
    // A fresh device: nothing to go back to but "no image", and no hook to run for it.
    assert!(back["image"].is_null() && back["trial"] == false, "{back}");
    let state = a.request("ota", "ota");
    assert!(
        state["running"].is_null() && state["pending"].is_null(),
        "{state}"
    );
    assert_eq!(state["phase"], "idle", "{state}");

    let boot = b.wait_for("the trial boot", |v| {
        v["event"] == "ota_boot" && v["reason"] == "update"
    });
    assert_eq!(boot["trial"], true);
    assert_eq!(b.request("ota", "ota")["phase"], "trial");
    b.kill();
    let mut b = spawn(
        "B (restarted)",
        d,
        &b_args(format!("127.0.0.1:{port_b}"), "1"),
    );
    let boot = b.wait_for("the boot decision", |v| v["event"] == "ota_boot");
    assert_eq!(boot["reason"], "start");
    assert_eq!(boot["trial"], true, "{boot}");
    assert_eq!(boot["image"]["sha256"], sha.as_str(), "{boot}");
    // The application may run anything after a crash: the hook gets the trial image.
    let hook = b.wait_for("the hook", |v| v["event"] == "ota_hook");
    assert_eq!(
        (hook["ok"].as_bool(), hook["version"].as_str()),
        (Some(true), Some("1.1.0"))
    );
    // Connected again (the offer reconnects), it confirms.
    b.wait_for("the confirmation", |v| v["event"] == "ota_confirmed");
    let state = b.request("ota", "ota");
    assert_eq!(state["running"]["version"], "1.1.0", "{state}");
    assert_eq!(state["running"]["trial"], false, "{state}");

    let summary = offer.wait_for("the summary", |v| v["event"] == "summary");
    assert!(offer.wait_exit().success(), "{summary}");
}

/// A downgrade through the binary (issue 15, item 1): `--forced` alone does not move a
/// meshfleet node back to an older image; the operator's signed intent
/// (`firmware intent`, `ota offer --intent`) does.
#[test]
fn a_downgrade_needs_the_operators_signed_intent() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let old = incompressible_image(4096);
    let mut new = old.clone();
    new[0] ^= 0xff;
    std::fs::write(d.join("old.bin"), &old).unwrap();
    std::fs::write(d.join("new.bin"), &new).unwrap();
    run_ok(d, &["firmware", "keygen", "--out", "fleet.key"]);
    pack_esp32(d, "old.bin", "1.0.0", Some("fleet.key"), "old.mfw");
    pack_esp32(d, "new.bin", "2.0.0", Some("fleet.key"), "new.mfw");
    let r = Spec {
        id: 401,
        listen: Some("127.0.0.1:0".into()),
        connect: None,
    };
    let mut node = spawn(
        "receiver",
        d,
        &receiver_args(d, &r, &["--ota-key", "fleet.key.pub"]),
    );
    let port = node.listening_port();
    let offer = |file: &str, extra: &str| {
        words(&format!(
            "ota offer {file} --strategy broadcast --connect 127.0.0.1:{port} --json \
             --exit-when-idle 3 {extra}"
        ))
    };
    // 2.0.0 first.
    let mut o = spawn("offer 2.0.0", d, &offer("new.mfw", ""));
    check_updated(d, &mut node, 401, "2.0.0", &sha256_hex(&new));
    o.wait_for("the summary", |v| v["event"] == "summary");
    o.wait_exit();
    // 1.0.0 with the stock flag only: not offered to (or refused by) the meshfleet node.
    let mut o = spawn("offer 1.0.0 --forced", d, &offer("old.mfw", "--forced"));
    o.wait_for("the summary", |v| v["event"] == "summary");
    o.wait_exit();
    let state = node.request("ota", "ota");
    assert_eq!(state["running"]["version"], "2.0.0", "{state}");
    // With the intent for this node: installed.
    run_ok(
        d,
        &[
            "firmware",
            "intent",
            "old.mfw",
            "--sign",
            "fleet.key",
            "--node",
            "401",
            "--out",
            "old.intent",
        ],
    );
    let mut o = spawn(
        "offer 1.0.0 --intent",
        d,
        &offer("old.mfw", "--intent old.intent"),
    );
    check_updated(d, &mut node, 401, "1.0.0", &sha256_hex(&old));
    o.wait_for("the summary", |v| v["event"] == "summary");
    o.wait_exit();
}
