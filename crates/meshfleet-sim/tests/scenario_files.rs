//! Scenario files: the shipped examples load (and the small ones run), outputs are
//! written and deterministic, and every class of invalid file is reported with its line
//! and field.

use std::path::{Path, PathBuf};

use meshfleet_sim::{load_scenario, parse_scenario, run_scenario_file, ScenarioError, Simulation};

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/scenarios")
}

#[test]
fn every_shipped_scenario_loads() {
    let mut n = 0;
    for entry in std::fs::read_dir(scenarios_dir()).expect("examples/scenarios exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let s = load_scenario(&path).unwrap_or_else(|e| panic!("{e}"));
            // Generation errors (tree depth) surface here too.
            Simulation::try_new(s).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 6, "{n} scenarios");
}

#[test]
fn three_chain_runs_from_its_file_and_writes_deterministic_outputs() {
    let path = scenarios_dir().join("three_chain.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let r = run_scenario_file(&path, None, Some(&a), |_| {}).expect("runs");
    assert!(r.convergence.converged_at_end);
    run_scenario_file(&path, None, Some(&b), |_| {}).expect("runs");
    for f in [
        "summary.json",
        "run.json",
        "timeseries.csv",
        "nodes.csv",
        "links.csv",
        "delivered.svg",
        "bytes_on_air.svg",
        "bytes_per_node.svg",
        "latency_cdf.svg",
        "convergence.svg",
        "time_sync.svg",
    ] {
        assert!(a.join(f).is_file(), "{f} written");
    }
    let read = |p: &Path| std::fs::read_to_string(p).expect("readable");
    assert_eq!(read(&a.join("summary.json")), read(&b.join("summary.json")));
    assert_eq!(
        read(&a.join("timeseries.csv")),
        read(&b.join("timeseries.csv"))
    );
    let summary: serde_json::Value =
        serde_json::from_str(&read(&a.join("summary.json"))).expect("json");
    assert_eq!(summary["scenario"], "three_chain");
    assert!(summary.get("wall_time_s").is_none());
    let run: serde_json::Value = serde_json::from_str(&read(&a.join("run.json"))).expect("json");
    assert!(run["wall_time_s"].is_number());
    let csv = read(&a.join("timeseries.csv"));
    assert!(csv.starts_with("t_s,app_sent,app_delivered,"));
    assert_eq!(csv.lines().count(), 181);
    // The class columns add up to the bytes on air of the whole run.
    let cols: Vec<Vec<u64>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap_or(0)).collect())
        .collect();
    let on_air: u64 = cols.iter().map(|c| c[4]).sum();
    let by_class: u64 = cols.iter().map(|c| c[11..15].iter().sum::<u64>()).sum();
    assert!(
        by_class > 0
            && csv
                .lines()
                .next()
                .is_some_and(|h| h.ends_with(",bytes_application"))
    );
    assert_eq!(
        by_class, on_air,
        "node sync + time sync + OTA + application = all"
    );
    let svg = read(&a.join("latency_cdf.svg"));
    assert!(svg.starts_with("<svg") && svg.contains("latency (ms, log scale)"));
    // Bytes on air are split by traffic class, each with its total in the legend.
    let air = read(&a.join("bytes_on_air.svg"));
    for class in ["node sync (", "time sync (", "application ("] {
        assert!(air.contains(class), "{class} in bytes_on_air.svg");
    }
    // Sent and delivered are on separate axes (two panels).
    assert_eq!(read(&a.join("delivered.svg")).matches("<svg").count(), 3);
    let other = run_scenario_file(&path, Some(2), None, |_| {}).expect("runs");
    assert_ne!(other.to_json(), r.to_json());
}

#[test]
fn partition_heals() {
    let r = run_scenario_file(
        &scenarios_dir().join("partition_heal.toml"),
        None,
        None,
        |_| {},
    )
    .expect("runs");
    let by = |c: &str| {
        r.convergence
            .after_events
            .iter()
            .find(|e| e.cause.starts_with(c))
            .cloned()
    };
    let p = by("partition").expect("partition entry");
    let h = by("heal").expect("heal entry");
    println!(
        "partition: lists right after {:?} s; heal: after {:?} s",
        p.converged_after_s, h.converged_after_s
    );
    assert!(p.converged_after_s.is_some_and(|s| s < 1.0));
    assert!(h.converged_after_s.is_some_and(|s| s < 5.0));
    assert!(r.convergence.converged_at_end);
    assert_eq!(r.convergence.components_at_end, 1);
    assert!(r.series.iter().any(|s| s.components == 2));
    assert!(
        r.drops.get("no_route").is_some_and(|n| *n > 0),
        "singles across the cut: {:?}",
        r.drops
    );
}

#[test]
fn explicit_edges_file_and_the_departures_scenario_run() {
    let r = run_scenario_file(
        &scenarios_dir().join("explicit_file.toml"),
        None,
        None,
        |_| {},
    )
    .expect("runs");
    assert!(r.convergence.converged_at_end);
    assert_eq!(r.app.broadcasts_complete, r.app.broadcasts);
    let r = run_scenario_file(&scenarios_dir().join("departures.toml"), None, None, |_| {})
        .expect("runs");
    assert!(
        r.link_closes
            .get("node_sync_timeout")
            .is_some_and(|n| *n > 0),
        "{:?}",
        r.link_closes
    );
    assert_eq!(r.per_node[4].boots, 2);
    assert!(r.per_link.iter().any(|l| l.retransmissions > 0));
    assert!(r.convergence.converged_at_end, "{:#?}", r.convergence);
}

/// Parses `text` and returns (line, field, message) of the error.
fn error(text: &str) -> (usize, Option<String>, String) {
    match parse_scenario(text, Some(Path::new("t.toml"))) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => {
            let shown = e.to_string();
            let l = e
                .location()
                .unwrap_or_else(|| panic!("no location: {shown}"));
            assert!(shown.starts_with(&format!("t.toml:{}:", l.line)), "{shown}");
            (l.line, l.field.clone(), l.message.clone())
        }
    }
}

const HEAD: &str = "duration_s = 10\n[topology]\n";

#[track_caller]
fn expect(body: &str, line: usize, field: Option<&str>, needle: &str) {
    let (l, f, m) = error(&format!("{HEAD}{body}"));
    assert_eq!((l, f.as_deref()), (line, field), "{m}");
    assert!(m.contains(needle), "{m:?} lacks {needle:?}");
}

#[test]
fn toml_errors_carry_the_line() {
    // Unknown field (deny_unknown_fields), reported by the TOML deserializer.
    expect(
        "kind = \"line\"\nnodes = 3\nnodez = 4\n",
        5,
        None,
        "unknown field `nodez`",
    );
    // Wrong type.
    expect(
        "kind = \"line\"\nnodes = \"three\"\n",
        4,
        None,
        "invalid type",
    );
    // Missing required key.
    let (l, _, m) = error("[topology]\nkind = \"line\"\nnodes = 3\n");
    assert!(m.contains("duration_s"), "{m} at {l}");
    // Not TOML at all.
    let (l, _, _) = error("duration_s = 10\n[topology\n");
    assert_eq!(l, 2);
}

#[test]
fn impossible_topologies_are_rejected() {
    expect(
        "kind = \"grid\"\nrows = 0\ncols = 5\n",
        4,
        Some("topology.rows"),
        "at least 1",
    );
    expect(
        "kind = \"random_tree\"\nnodes = 10\nmax_children = 0\n",
        5,
        Some("topology.max_children"),
        "at least 1",
    );
    expect(
        "kind = \"line\"\nnodes = 0\n",
        4,
        Some("topology.nodes"),
        "at least 1",
    );
    expect(
        "kind = \"line\"\nnodes = 129\n",
        4,
        Some("topology.nodes"),
        "levels",
    );
    expect(
        "kind = \"star\"\nnodes = 12\nmax_children = 4\n",
        5,
        Some("topology.max_children"),
        "hub with 11 stations",
    );
    expect(
        "kind = \"grid\"\nrows = 3\n",
        3,
        Some("topology.cols"),
        "needs `cols`",
    );
    expect(
        "kind = \"line\"\nnodes = 3\nrows = 2\n",
        5,
        Some("topology.rows"),
        "not used by topology kind `line`",
    );
    expect(
        "kind = \"ring\"\nnodes = 3\n",
        3,
        Some("topology.kind"),
        "unknown topology kind `ring`",
    );
    expect(
        "kind = \"geometric\"\nnodes = 5\nwidth_m = 100\nheight_m = -1\nradio_range_m = 30\n",
        6,
        Some("topology.height_m"),
        "positive",
    );
}

#[test]
fn bad_explicit_edges_are_rejected_at_the_edge() {
    let t = |edges: &str| format!("kind = \"explicit\"\nnodes = 4\nedges = [\n{edges}\n]\n");
    expect(
        &t("[1, 2],\n[2, 9],"),
        7,
        Some("topology.edges"),
        "names node 9",
    );
    expect(
        &t("[1, 2],\n[2, 3],\n[3, 1],"),
        8,
        Some("topology.edges"),
        "cycle",
    );
    expect(
        &t("[1, 2],\n[3, 2],"),
        7,
        Some("topology.edges"),
        "two parents",
    );
    expect(
        &t("[1, 2, 3],"),
        6,
        Some("topology.edges"),
        "[parent, child]",
    );
    expect(
        "kind = \"explicit\"\nnodes = 4\n",
        3,
        Some("topology.edges"),
        "needs `edges` or `file`",
    );
}

#[test]
fn bad_edges_file_names_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("e.edges"), "1 2\n# ok\n2 x\n").expect("write");
    let scen = dir.path().join("s.toml");
    std::fs::write(
        &scen,
        format!("{HEAD}kind = \"explicit\"\nnodes = 3\nfile = \"e.edges\"\n"),
    )
    .expect("write");
    let e = load_scenario(&scen).expect_err("bad file");
    let l = e.location().expect("located");
    assert_eq!(l.line, 3);
    assert!(l.path.as_ref().is_some_and(|p| p.ends_with("e.edges")));
    std::fs::write(
        &scen,
        format!("{HEAD}kind = \"explicit\"\nnodes = 3\nfile = \"missing.edges\"\n"),
    )
    .expect("write");
    assert!(matches!(
        load_scenario(&scen),
        Err(ScenarioError::Read { .. })
    ));
}

#[test]
fn bad_rates_probabilities_and_references_are_rejected() {
    let topo = "kind = \"line\"\nnodes = 3\n";
    let tr = |body: &str| format!("{topo}[[traffic]]\n{body}");
    expect(
        &tr("kind = \"broadcast\"\nrate_per_s = 0\n"),
        7,
        Some("traffic[0].rate_per_s"),
        "positive",
    );
    expect(
        &tr("kind = \"broadcast\"\nrate_per_s = -2.5\n"),
        7,
        Some("traffic[0].rate_per_s"),
        "positive",
    );
    expect(
        &tr("kind = \"single\"\nfrom = 1\nto = 4\nrate_per_s = 1\n"),
        8,
        Some("traffic[0].to"),
        "numbered 1..=3",
    );
    expect(
        &tr("kind = \"single\"\nfrom = 2\nto = 2\nrate_per_s = 1\n"),
        8,
        Some("traffic[0].to"),
        "itself",
    );
    expect(
        &tr("kind = \"broadcast\"\nrate_per_s = 1\npayload_bytes = 70000\n"),
        8,
        Some("traffic[0].payload_bytes"),
        "65535",
    );
    expect(
        &tr("kind = \"multicast\"\nrate_per_s = 1\n"),
        6,
        Some("traffic[0].kind"),
        "unknown traffic kind",
    );
    expect(
        &format!("{topo}[link]\nloss = 1.5\n"),
        6,
        Some("link.loss"),
        "[0, 1]",
    );
    expect(
        &format!("{topo}[link]\ngoodput_bytes_per_s = 0\n"),
        6,
        Some("link.goodput_bytes_per_s"),
        "positive",
    );
    let ev = |body: &str| format!("{topo}[[events]]\nat_s = 5\n{body}");
    expect(
        &ev("kind = \"crash\"\nnode = 7\n"),
        8,
        Some("events[0].node"),
        "numbered 1..=3",
    );
    expect(
        &ev("kind = \"crash\"\n"),
        7,
        Some("events[0].node"),
        "needs `node`",
    );
    expect(
        &ev("kind = \"crash\"\nnode = 1\nloss = 0.5\n"),
        9,
        Some("events[0].loss"),
        "not used by event kind `crash`",
    );
    expect(
        &ev("kind = \"set_link\"\nlink = [1, 2]\nloss = -0.1\n"),
        9,
        Some("events[0].loss"),
        "[0, 1]",
    );
    expect(
        &ev("kind = \"set_link\"\nlink = [1, 1]\nloss = 0.1\n"),
        8,
        Some("events[0].link"),
        "two different nodes",
    );
    expect(
        &ev("kind = \"move\"\nnode = 2\nparent = 2\n"),
        9,
        Some("events[0].parent"),
        "own access point",
    );
    expect(
        &ev("kind = \"explode\"\n"),
        7,
        Some("events[0].kind"),
        "unknown event kind",
    );
    expect(
        &format!("{topo}[[events]]\nat_s = -1\nkind = \"heal\"\n"),
        6,
        Some("events[0].at_s"),
        "negative",
    );
}

#[test]
fn geometric_channel_needs_positions() {
    let (l, f, m) = error(&format!(
        "{HEAD}kind = \"random_tree\"\nnodes = 5\n[channel]\nmodel = \"geometric\"\n"
    ));
    assert_eq!((l, f.as_deref()), (6, Some("channel.model")));
    assert!(m.contains("needs node positions"), "{m}");
}

#[test]
fn plots_without_data_are_not_written() {
    // No application traffic: no "0 sent" plot and no empty latency CDF.
    let scenario = meshfleet_sim::Scenario::new(meshfleet_sim::Topology::Line {
        nodes: 3,
        spacing_m: 30.0,
    })
    .duration(meshfleet_mesh::Duration::from_secs(20));
    let dir = tempfile::tempdir().expect("tempdir");
    meshfleet_sim::run_scenario(scenario, Some(dir.path()), |_| {}).expect("runs");
    for f in ["delivered.svg", "latency_cdf.svg"] {
        assert!(!dir.path().join(f).exists(), "{f} written without traffic");
    }
    for f in ["bytes_on_air.svg", "convergence.svg", "time_sync.svg"] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
}

#[test]
fn mesh_tree_text_is_copied_or_shared() {
    let topo = "kind = \"line\"\nnodes = 3\n";
    let parse =
        |v: &str| parse_scenario(&format!("{HEAD}{topo}[mesh]\ntree_text = \"{v}\"\n"), None);
    let shared = parse("shared").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(shared.mesh.tree_text, meshfleet_sim::TreeText::Shared);
    let copied = parse("copied").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(copied.mesh.tree_text, meshfleet_sim::TreeText::Copied);
    expect(
        &format!("{topo}[mesh]\ntree_text = \"rope\"\n"),
        6,
        Some("mesh.tree_text"),
        "\"copied\" or \"shared\"",
    );
}
