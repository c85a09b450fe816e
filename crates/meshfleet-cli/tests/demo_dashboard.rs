//! Issue 12: the dashboard against `meshfleet demo` itself (the real binary, small and fast:
//! 40 nodes at 20x on a free port) in headless Chromium: the page loads with no console
//! errors, the topology shows every demo node, a scripted fault's alert appears, and a
//! campaign of the demo artefact started from the page completes with the node table showing
//! the new version.
//!
//! Without chromium this skips loudly, unless `MESHFLEET_REQUIRE_CHROMIUM` is set (CI).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    unreachable_pub,
    missing_docs
)]

// Not every helper of the client is used here.
#[allow(dead_code)]
#[path = "../../meshfleet-gateway/tests/dashboard/cdp.rs"]
mod cdp;
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Killed;

const NODES: u32 = 40;
/// Node ids: 3,000,000,000 + n; node 1 is the gateway.
const BASE: u32 = 3_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_on_meshfleet_demo_shows_the_mesh_a_fault_and_runs_a_campaign() {
    let Some(exe) = cdp::chromium_or_skip("dashboard on meshfleet demo") else {
        return;
    };
    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshfleet"))
        .args(["demo", "--nodes", &NODES.to_string(), "--speed", "20"])
        .args(["--http", "127.0.0.1:0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _demo = Killed(child);
    let mut lines = BufReader::new(stdout).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["event"], "started", "{first}");
    let url = first["url"]
        .as_str()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let token = first["token"].as_str().unwrap().to_owned();
    // Keep reading its JSON lines so the demo never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});

    let b = cdp::Browser::start(&exe, 1280, 860).await;
    // The topology: every demo node (the gateway node included) laid out.
    b.goto(&format!("{url}/#/topology")).await;
    b.wait_for(
        "every demo node on the topology",
        &format!("window.meshfleet?.topology?.layoutSize?.() === {NODES}"),
        60,
    )
    .await;
    b.wait_for("live", "document.querySelector('#live.on') !== null", 10)
        .await;
    b.screenshot("demo-topology").await;

    // A scripted fault (node 10's reboot loop, from 60 virtual seconds: 3 s at 20x) shows on
    // the alerts page.
    b.goto(&format!("{url}/#/alerts")).await;
    let looping = BASE + 10;
    b.wait_for(
        "node 10's reboot loop on the alerts page",
        &format!(
            "document.querySelector('#alerts-list tr[data-node=\"{looping}\"][data-kind=\"reboot_loop\"]') !== null"
        ),
        60,
    )
    .await;
    b.screenshot("demo-alerts").await;
    // What a newcomer sees first, and a node with a fault (for the screenshots).
    b.goto(&format!("{url}/#/overview")).await;
    b.wait_for(
        "the overview",
        "document.querySelectorAll('#main .panel').length > 2",
        20,
    )
    .await;
    b.screenshot("demo-overview").await;
    b.goto(&format!("{url}/#/node/{}", BASE + 7)).await;
    // Node 7 is a meshfleet node: it sends telemetry (710), no 604; its history is kept from
    // the telemetry, so its memory chart has points (it used to be empty).
    b.wait_for(
        "the leaking node's memory chart with points",
        "document.querySelectorAll('#node-charts svg').length === 6 && /^Free memory: [0-9]+ points/.test(document.querySelector('#node-charts svg').getAttribute('aria-label'))",
        20,
    )
    .await;
    b.screenshot("demo-node").await;

    // A campaign of the demo artefact (in the store from the start) to the role `sensor`
    // (the meshfleet nodes: stock nodes report no role), created and started from the page.
    b.goto(&format!("{url}/#/firmware")).await;
    b.wait_for(
        "the demo artefact in the form",
        "document.getElementById('nc-artefact')?.options.length === 1",
        20,
    )
    .await;
    b.eval(
        r#"(() => { document.getElementById('nc-targets').value = 'role';
            document.getElementById('nc-targets').dispatchEvent(new Event('change'));
            document.getElementById('nc-target-value').value = 'sensor';
            document.getElementById('nc-name').value = 'from the page';
            document.getElementById('campaign-form').requestSubmit(); })()"#,
    )
    .await;
    b.wait_for(
        "the token dialog",
        "document.getElementById('token-dialog').open",
        10,
    )
    .await;
    b.eval(&format!(
        "(() => {{ document.getElementById('token-input').value = '{token}'; document.getElementById('token-form').requestSubmit(); }})()"
    ))
    .await;
    b.wait_for(
        "the campaign page",
        "location.hash.startsWith('#/campaign/c-')",
        20,
    )
    .await;
    let meshfleet_nodes = (2..=NODES).filter(|n| n % 3 != 0).count();
    b.wait_for(
        "the campaign's nodes",
        &format!(
            "document.querySelectorAll('#campaign-nodes tbody tr').length === {meshfleet_nodes}"
        ),
        20,
    )
    .await;
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = b
            .eval("document.querySelector('#main .kv .badge')?.textContent || ''")
            .await;
        if s == "completed" {
            break;
        }
        assert!(
            s != "failed" && s != "cancelled",
            "campaign {s}: {}",
            b.eval("document.getElementById('campaign-nodes').textContent")
                .await
        );
        assert!(
            Instant::now() < deadline,
            "the campaign did not complete in 60 s: {}",
            b.eval("document.getElementById('campaign-nodes').textContent")
                .await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "campaign completed on the page {:.1} s after it started",
        started.elapsed().as_secs_f64()
    );
    b.screenshot("demo-campaign").await;
    // The node table, filtered by the new version (the table is virtualised: only rows in
    // view exist): every meshfleet node, and the rows in view all say 1.1.0.
    b.goto(&format!("{url}/#/nodes?q=1.1.0")).await;
    b.wait_for(
        "1.1.0 on every meshfleet node in the table",
        &format!("document.getElementById('nodes-summary')?.textContent.startsWith('{meshfleet_nodes} of ')"),
        30,
    )
    .await;
    let shown = b
        .eval("[...document.querySelectorAll('.vt-row .fw')].map(x => x.textContent)")
        .await;
    let shown: Vec<String> = serde_json::from_value(shown).unwrap();
    assert!(
        !shown.is_empty() && shown.iter().all(|v| v == "1.1.0"),
        "{shown:?}"
    );
    b.screenshot("demo-nodes").await;
    let errors = b.errors();
    assert!(errors.is_empty(), "page errors: {errors:#?}");
    eprintln!("whole test {:.1} s", t0.elapsed().as_secs_f64());
}
