//! Fleet monitoring measured in the simulator (issue 10): the telemetry-and-faults workload
//! (`meshfleet_sim::telemetry`) with the agent's telemetry on every meshfleet node, 604 from
//! modelled stock nodes and the real monitor on the gateway node.
//!
//! The 1,000-node, 24-hour run of docs/benchmarks.md is the ignored test at the end:
//! `cargo test --release -p meshfleet-sim --test monitoring -- --ignored --nocapture`.

use std::path::{Path, PathBuf};

use meshfleet_mesh::Duration;
use meshfleet_sim::telemetry::{FaultClass, FaultSpec, TelemetrySetup};
use meshfleet_sim::{parse_scenario, run_scenario, run_scenario_file, Scenario, Topology};
use serde_json::Value;

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/scenarios")
}

fn telemetry(report: &meshfleet_sim::SimReport) -> &Value {
    report
        .workloads
        .get("telemetry")
        .expect("the telemetry workload reports")
}

fn print_table(t: &Value) {
    println!("| class | injected | detected | missed | p50 s | p95 s | p95 periods | false |");
    for (class, r) in t["detection"].as_object().expect("table") {
        println!(
            "| {class} | {} | {} | {} | {} | {} | {} | {} |",
            r["injected"],
            r["detected"],
            r["missed"],
            r["latency_p50_s"],
            r["latency_p95_s"],
            r["latency_p95_periods"],
            r["false_alerts"]
        );
    }
    if t["settling_alerts"].as_u64() != Some(0) {
        println!("while the mesh formed: {}", t["settling_alert_list"]);
    }
    println!(
        "alerts {} (settling {}) false {} not placed {}; telemetry {} B/node-hour (710), stock status {} B/node-hour (604); monitor accepted {} dropped {}",
        t["alerts_raised"],
        t["settling_alerts"],
        t["false_alerts"],
        t["not_placed"],
        t["telemetry_bytes_per_node_hour"],
        t["status_bytes_per_node_hour"],
        t["reports_accepted"],
        t["reports_dropped"]
    );
    if t["false_alerts"].as_u64() != Some(0) {
        println!("false alerts: {}", t["false_alert_list"]);
    }
}

/// Recall 100 %, no false alert, p95 within two report periods, for every class.
fn assert_goals(t: &Value, per_class: u64) {
    assert_eq!(t["false_alerts"], 0, "{}", t["false_alert_list"]);
    assert_eq!(t["not_placed"], 0);
    for (class, r) in t["detection"].as_object().expect("table") {
        assert_eq!(r["injected"].as_u64(), Some(per_class), "{class}");
        assert_eq!(r["false_alerts"], 0, "{class}");
        if class == "clock_jump" {
            // nothing may be raised for it: no detection column
            assert!(r["detected"].is_null(), "{class}");
            continue;
        }
        assert_eq!(r["detected"].as_u64(), Some(per_class), "{class}: recall");
        if per_class == 0 {
            continue;
        }
        let p95 = r["latency_p95_periods"].as_f64().expect("p95");
        assert!(p95 <= 2.0, "{class}: p95 {p95} report periods");
    }
}

#[test]
fn the_shipped_scenario_detects_one_fault_of_every_class_over_the_simulated_mesh() {
    let report = run_scenario_file(
        &scenarios_dir().join("monitoring_30.toml"),
        None,
        None,
        |_| {},
    )
    .expect("runs");
    let t = telemetry(&report);
    print_table(t);
    assert_goals(t, 1);
    assert_eq!(t["meshfleet_nodes"], 19);
    assert_eq!(t["stock_nodes"], 10);
    // every node is known to the monitor, from what crossed the mesh
    assert_eq!(t["nodes_known"], 29);
    let bytes = t["telemetry_bytes_per_node_hour"].as_f64().expect("bytes");
    assert!(bytes > 0.0 && bytes <= 1024.0, "{bytes} B per node-hour");
}

fn small(seed: u64) -> Scenario {
    Scenario::new(Topology::RandomTree {
        nodes: 30,
        max_children: 4,
    })
    .seed(seed)
    .duration(Duration::from_secs(2 * 3_600))
}

#[test]
fn a_fault_free_run_raises_no_alert() {
    let s = small(11).workload(TelemetrySetup {
        seed: 11,
        ..TelemetrySetup::default()
    });
    let report = run_scenario(s, None, |_| {}).expect("runs");
    let t = telemetry(&report);
    print_table(t);
    assert_eq!(t["alerts_raised"], 0, "{}", t["false_alert_list"]);
    assert_eq!(t["nodes_known"], 29);
    assert!(t["reports_accepted"].as_u64().expect("count") > 29 * 20);
}

#[test]
fn a_fault_on_a_named_node_is_found_on_that_node_and_results_are_deterministic() {
    let s = || {
        small(12).workload(TelemetrySetup {
            seed: 12,
            faults: vec![FaultSpec {
                class: FaultClass::RssiDrop,
                at: Duration::from_secs(3_000),
                node: Some(7),
                duration: Duration::from_secs(1_800),
            }],
            ..TelemetrySetup::default()
        })
    };
    let a = run_scenario(s(), None, |_| {}).expect("runs");
    let b = run_scenario(s(), None, |_| {}).expect("runs");
    assert_eq!(a.to_json(), b.to_json(), "same seed, same summary.json");
    let t = telemetry(&a);
    let r = &t["detection"]["rssi_drop"];
    assert_eq!(r["injected"], 1);
    assert_eq!(r["detected"], 1);
    assert_eq!(t["false_alerts"], 0, "{}", t["false_alert_list"]);
    // the summary carries the workload under its key
    let json: Value = serde_json::from_str(&a.to_json()).expect("json");
    assert!(json["telemetry"]["detection"].is_object());
}

#[test]
fn a_fault_the_monitor_cannot_see_is_counted_missed() {
    // Thresholds nothing reaches: the leak is injected and missed, not silently dropped.
    let mut setup = TelemetrySetup {
        seed: 13,
        faults: vec![FaultSpec {
            class: FaultClass::SlowLink,
            at: Duration::from_secs(3_000),
            node: None,
            duration: Duration::from_secs(1_800),
        }],
        ..TelemetrySetup::default()
    };
    setup.monitor.high_latency_ms = 100_000;
    setup.monitor.high_latency_clear_ms = 90_000;
    let report = run_scenario(small(13).workload(setup), None, |_| {}).expect("runs");
    let r = &telemetry(&report)["detection"]["slow_link"];
    assert_eq!(r["injected"], 1);
    assert_eq!(r["detected"], 0);
    assert_eq!(r["missed"], 1);
}

#[test]
fn bad_telemetry_tables_say_what_is_wrong() {
    let base = "duration_s = 60\n[topology]\nkind = \"line\"\nnodes = 5\n";
    let err = |extra: &str| {
        parse_scenario(&format!("{base}{extra}"), None)
            .expect_err("refused")
            .to_string()
    };
    let e = err("[telemetry]\n[[telemetry.fault]]\nkind = \"melt\"\nat_s = 1\n");
    assert!(
        e.contains("telemetry.fault[0].kind") && e.contains("unknown fault class"),
        "{e}"
    );
    let e = err("[telemetry]\n[[telemetry.fault]]\nkind = \"partition\"\nat_s = 1\nnode = 1\n");
    assert!(e.contains("gateway"), "{e}");
    let e = err("[telemetry]\n[[telemetry.fault]]\nkind = \"partition\"\nat_s = 1\nnode = 9\n");
    assert!(e.contains("telemetry.fault[0].node"), "{e}");
    let e = err("[telemetry]\nreport_every = 3\n");
    assert!(
        e.contains("telemetry.report_every") && e.contains("unknown field"),
        "{e}"
    );
    let e = err("[telemetry]\nstock_every = 1\n");
    assert!(e.contains("stock_every"), "{e}");
    // faults are not injected while the mesh forms
    let e = err("[telemetry]\n[[telemetry.fault]]\nkind = \"clock_jump\"\nat_s = 10\n");
    assert!(
        e.contains("telemetry.fault[0].at_s") && e.contains("settle_s"),
        "{e}"
    );
    // the scenario's own fields are still checked, with their lines
    let e = err("bogus = 1\n[telemetry]\n");
    assert!(e.contains("bogus") && e.contains("line 5"), "{e}");
    // and a valid table parses
    let s = parse_scenario(
        &format!("{base}[telemetry]\nsettle_s = 0\ninject_from_s = 0\nfaults_per_class = 2\n[[telemetry.fault]]\nkind = \"clock_jump\"\nat_s = 10\n"),
        None,
    )
    .expect("valid");
    assert_eq!(s.workloads.len(), 1);
}

/// The must-show: 1,000 nodes, 24 virtual hours, 100 faults of every class, and a
/// fault-free day. Release build; its figures and CPU time are in docs/benchmarks.md.
/// `MONITORING_NODES` / `MONITORING_HOURS` / `MONITORING_PER_CLASS` run a smaller cell;
/// `MONITORING_SKIP_CLEAN` / `MONITORING_SKIP_FAULTS` leave out one of the two days.
#[test]
#[ignore = "1,000 nodes x 24 virtual hours: run in release by hand (docs/benchmarks.md)"]
fn thousand_nodes_one_day() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let nodes = env("MONITORING_NODES", 1_000) as u32;
    let hours = env("MONITORING_HOURS", 24);
    let per_class = env("MONITORING_PER_CLASS", 100) as u32;
    let scenario = |seed: u64, per_class: u32| {
        Scenario::new(Topology::RandomTree {
            nodes,
            max_children: 4,
        })
        .name(format!("monitoring_{nodes}_{hours}h"))
        .seed(seed)
        // 24 h of monitoring after the mesh formed (settle_s, 600 s)
        .duration(Duration::from_secs(hours * 3_600 + 600))
        .workload(TelemetrySetup {
            seed,
            faults_per_class: per_class,
            ..TelemetrySetup::default()
        })
    };
    if std::env::var_os("MONITORING_SKIP_CLEAN").is_none() {
        let cpu = cpu_time();
        let clean = run_scenario(scenario(21, 0), None, progress()).expect("runs");
        println!(
            "{nodes} nodes, {hours} h, no faults ({:.1} s CPU)",
            cpu_time() - cpu
        );
        print_table(telemetry(&clean));
        let t = telemetry(&clean);
        assert_eq!(
            t["alerts_raised"].as_u64(),
            t["settling_alerts"].as_u64(),
            "after the mesh formed: {}",
            t["false_alert_list"]
        );
    }
    if std::env::var_os("MONITORING_SKIP_FAULTS").is_some() {
        return;
    }
    let cpu = cpu_time();
    let report = run_scenario(scenario(22, per_class), None, progress()).expect("runs");
    println!(
        "{nodes} nodes, {hours} h, {per_class} faults per class ({:.1} s CPU)",
        cpu_time() - cpu
    );
    let t = telemetry(&report);
    print_table(t);
    assert_goals(t, u64::from(per_class));
}

/// Prints every tenth of the run with the CPU time so far (the cost of a long run shows
/// early).
fn progress() -> impl FnMut(f64) + 'static {
    let mut next = 0.1;
    move |f| {
        if f >= next {
            eprintln!(
                "  {:.0} % of virtual time, {:.1} s CPU",
                f * 100.0,
                cpu_time()
            );
            next += 0.1;
        }
    }
}

/// CPU time of this process, seconds (user + system), from /proc (Linux); 0 elsewhere.
fn cpu_time() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // fields after the command name's closing parenthesis; utime and stime are 14 and 15
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
