//! Snapshot tests: every shipped scenario in `examples/scenarios/` writes exactly the
//! `summary.json` recorded in `tests/snapshots/NAME.summary.json` (issue 9: refactors of the
//! simulator must not move a result). The snapshots of the scenarios that existed before the
//! workload interface were recorded before it was introduced. Each scenario runs twice, with
//! node syncs handed over flat and in shared pieces ([`TreeText`]): how nodes keep their
//! trees' text must not move a result either.
//!
//! A change that moves results on purpose re-records them:
//! `MESHFLEET_UPDATE_SNAPSHOTS=1 cargo test -p meshfleet-sim --test scenario_snapshots -- --include-ignored`
//! and the diff shows what moved.

use std::path::{Path, PathBuf};

use meshfleet_sim::{load_scenario, run_scenario, TreeText};

/// Too slow for a debug build in CI (146 s of CPU): run with `--ignored`.
const SLOW: &[&str] = &["random_tree_1000"];

fn dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(sub)
}

fn check(name: &str) {
    check_with(name, TreeText::Copied);
    check_with(name, TreeText::Shared);
}

fn check_with(name: &str, tree_text: TreeText) {
    let path = dir("../../examples/scenarios").join(format!("{name}.toml"));
    let mut scenario = load_scenario(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    // The shipped files leave it at its default (shared); it is set both ways here.
    assert_eq!(scenario.mesh.tree_text, TreeText::default(), "{name}");
    scenario.mesh.tree_text = tree_text;
    let report = run_scenario(scenario, None, |_| {})
        .unwrap_or_else(|e| panic!("{name} ({tree_text:?}): {e}"));
    let got = report.to_json();
    let snap = dir("tests/snapshots").join(format!("{name}.summary.json"));
    if std::env::var_os("MESHFLEET_UPDATE_SNAPSHOTS").is_some() && tree_text == TreeText::default()
    {
        std::fs::write(&snap, &got).expect("snapshot written");
        return;
    }
    let want = std::fs::read_to_string(&snap).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; record it with MESHFLEET_UPDATE_SNAPSHOTS=1",
            snap.display()
        )
    });
    if got != want {
        // Name the first differing top-level entries, not 50 KB of JSON.
        let (g, w): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&got).expect("json"),
            serde_json::from_str(&want).expect("json"),
        );
        let keys: Vec<&String> = w
            .as_object()
            .into_iter()
            .flat_map(|o| o.keys())
            .filter(|k| g.get(k.as_str()) != w.get(k.as_str()))
            .collect();
        panic!("{name} ({tree_text:?}): summary.json differs from its snapshot in {keys:?}");
    }
}

fn shipped() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir("../../examples/scenarios"))
        .expect("examples/scenarios")
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    names
}

#[test]
fn every_shipped_scenario_matches_its_snapshot() {
    let names = shipped();
    assert!(names.len() >= 14, "{names:?}");
    for name in names.iter().filter(|n| !SLOW.contains(&n.as_str())) {
        check(name);
    }
}

#[test]
#[ignore = "146 s of CPU in a debug build"]
fn the_slow_scenarios_match_their_snapshots() {
    for name in SLOW {
        check(name);
    }
}
