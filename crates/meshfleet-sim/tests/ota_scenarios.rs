//! OTA campaigns from scenario files and through `run_scenario`: the `[ota]` table and its
//! errors, the shipped OTA scenarios, the three strategies on one small mesh, the report in
//! `summary.json`, and determinism (one seed, one `summary.json`, campaign included).

use std::path::{Path, PathBuf};

use meshfleet_sim::ota::{FinalImage, OtaReport};
use meshfleet_sim::{load_scenario, parse_scenario, run_scenario, ScenarioError};

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/scenarios")
}

/// A 12-node random tree, a 32 KiB image from node 1 at t = 15 s.
fn small(strategy: &str, seed: u64) -> String {
    format!(
        r#"
name = "ota_small"
seed = {seed}
duration_s = 120

[topology]
kind = "random_tree"
nodes = 12
max_children = 3

[ota]
strategy = "{strategy}"
synthetic_kib = 32
source = 1
start_s = 15
"#
    )
}

fn ota(r: &meshfleet_sim::SimReport) -> &OtaReport {
    r.ota.as_ref().expect("the report has an ota section")
}

#[test]
fn every_strategy_updates_a_small_mesh_and_reports_it() {
    let mut makespans = Vec::new();
    for strategy in ["stock", "stock_broadcasted", "meshfleet"] {
        let s = parse_scenario(&small(strategy, 1), None).unwrap_or_else(|e| panic!("{e}"));
        let r = run_scenario(s, None, |_| {}).expect("runs");
        let o = ota(&r);
        assert_eq!(o.strategy, strategy);
        assert_eq!(
            (o.receivers, o.updated, o.final_new),
            (11, 11, 11),
            "{o:#?}"
        );
        assert_eq!(o.final_broken, 0);
        assert!(o.per_node.iter().all(|n| n.image == FinalImage::New));
        assert_eq!(o.started_s, Some(15.0));
        let lb = o.lower_bound.as_ref().expect("bound");
        let m = o.makespan_s.expect("all updated");
        assert!(
            m >= lb.bound_s,
            "{strategy}: makespan {m} below the bound {lb:?}"
        );
        // Without loss the stochastic bounds are not random, so this holds in every run.
        assert!(
            m >= lb.combined_bound_s && lb.combined_bound_s >= lb.bound_s,
            "{strategy}: makespan {m} below the combined bound {lb:?}"
        );
        assert_eq!(lb.stochastic_tree_chunked.se_s, 0.0);
        // Every receiver gets at least the payload (stock: the raw image, base64).
        assert!(o.ota_bytes_on_air >= 11 * o.payload_bytes, "{o:#?}");
        assert!(o.source_ota_bytes > 0);
        makespans.push(m);
    }
    // meshfleet is the fastest of the three even on 12 nodes.
    assert!(
        makespans[2] < makespans[0] && makespans[2] < makespans[1],
        "{makespans:?}"
    );
}

#[test]
fn the_campaign_is_in_summary_json_and_deterministic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let read = |p: &Path| std::fs::read_to_string(p.join("summary.json")).expect("written");
    let run = |seed: u64, out: &Path| {
        let s = parse_scenario(&small("meshfleet", seed), None).expect("parses");
        run_scenario(s, Some(out), |_| {}).expect("runs");
        read(out)
    };
    let a = run(7, &dir.path().join("a"));
    let b = run(7, &dir.path().join("b"));
    assert_eq!(a, b);
    let c = run(8, &dir.path().join("c"));
    assert_ne!(a, c);
    let v: serde_json::Value = serde_json::from_str(&a).expect("json");
    assert_eq!(v["ota"]["strategy"], "meshfleet");
    assert_eq!(v["ota"]["updated"], 11);
    assert!(v["ota"]["lower_bound"]["bound_s"].is_number());
    assert_eq!(v["ota"]["per_node"].as_array().map(Vec::len), Some(11));
    // A scenario without a campaign has no `ota` key at all.
    let plain = small("meshfleet", 7).replace("[ota]", "[ignored]");
    let plain: String = plain
        .split("[ignored]")
        .next()
        .unwrap_or_default()
        .to_owned();
    let s = parse_scenario(&plain, None).expect("parses");
    let r = run_scenario(s, None, |_| {}).expect("runs");
    assert!(!r.to_json().contains("\"ota\""));
}

#[test]
fn shipped_ota_scenarios_load_with_their_campaign() {
    for (file, strategy, nodes) in [
        ("ota_meshfleet_100.toml", "meshfleet", 100),
        ("ota_stock_50.toml", "stock", 50),
    ] {
        let s = load_scenario(&scenarios_dir().join(file)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.topology.node_count(), nodes);
        let c = meshfleet_sim::ota::campaign(&s).expect("campaign");
        assert_eq!(c.strategy.label(), strategy);
        assert_eq!(c.source, 1);
        assert!(c.start.is_some());
    }
}

fn error(text: &str) -> meshfleet_sim::Located {
    match parse_scenario(text, Some(Path::new("t.toml"))) {
        Err(ScenarioError::Invalid(l)) => *l,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("accepted:\n{text}"),
    }
}

#[test]
fn ota_table_errors_name_the_line_and_field() {
    let base = small("meshfleet", 1);
    let line_of = |needle: &str, text: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
            .expect("needle")
    };
    let cases: Vec<(String, &str, &str, &str)> = vec![
        (
            base.replace("\"meshfleet\"", "\"magic\""),
            "strategy = \"magic\"",
            "ota.strategy",
            "unknown OTA strategy",
        ),
        (
            base.replace("source = 1", "source = 13"),
            "source = 13",
            "ota.source",
            "names node 13",
        ),
        (
            base.replace("start_s = 15", "start_s = 120"),
            "start_s = 120",
            "ota.start_s",
            "before the end of the run",
        ),
        (
            base.replace(
                "synthetic_kib = 32",
                "synthetic_kib = 32\nimage = \"fw.bin\"",
            ),
            "synthetic_kib = 32",
            "ota.synthetic_kib",
            "not both",
        ),
        (
            base.replace("synthetic_kib = 32", "synthetic_kib = 0"),
            "synthetic_kib = 0",
            "ota.synthetic_kib",
            "at least 1",
        ),
        (
            base.replace("source = 1", "source = 1\nbroadcast_root = 2"),
            "broadcast_root = 2",
            "ota.broadcast_root",
            "not used by strategy `meshfleet`",
        ),
        (
            small("stock_broadcasted", 1).replace("source = 1", "source = 1\nbroadcast_root = 1"),
            "broadcast_root = 1",
            "ota.broadcast_root",
            "must be a receiver",
        ),
    ];
    for (text, needle, field, message) in cases {
        let e = error(&text);
        assert_eq!(e.line, line_of(needle, &text), "{e}");
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
        assert!(e.message.contains(message), "{e}");
    }
    // Unknown keys come from the deserializer, with their line.
    let text = base.replace("source = 1", "source = 1\nspeed = 3");
    let e = error(&text);
    assert_eq!(e.line, line_of("speed = 3", &text), "{e}");
    assert!(e.message.contains("unknown field `speed`"), "{e}");
    // Neither an image nor a synthetic size.
    let e = error(&base.replace("synthetic_kib = 32\n", ""));
    assert!(e.message.contains("needs `image"), "{e}");
}

#[test]
fn an_image_file_is_read_relative_to_the_scenario() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("fw.bin"), vec![0xe9u8; 5000]).expect("write");
    let text = small("meshfleet", 1).replace("synthetic_kib = 32", "image = \"fw.bin\"");
    let path = dir.path().join("s.toml");
    std::fs::write(&path, &text).expect("write");
    let s = load_scenario(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        meshfleet_sim::ota::campaign(&s).map(|c| c.image().len()),
        Some(5000)
    );
    // A missing file is a read error naming it.
    std::fs::remove_file(dir.path().join("fw.bin")).expect("rm");
    match load_scenario(&path) {
        Err(ScenarioError::Read { path, .. }) => assert!(path.ends_with("fw.bin")),
        other => panic!("{other:?}"),
    }
}
