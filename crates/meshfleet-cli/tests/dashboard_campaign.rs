//! Issue 12: a campaign started from the dashboard completes, and the node table shows the
//! new version. Real processes on loopback: `meshfleet gateway` and three `meshfleet node
//! --ota-dir` nodes; the page in headless Chromium (the DevTools client of the gateway's
//! dashboard tests) uploads the signed artefact, creates and starts the campaign, and
//! follows it live to the end.
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

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{free_port, gateway_command, meshfleet, ota_node, pack, text, Killed, Proc};

const TOKEN: &str = "dashboard-test-token-0123456789";
const NODES: [u32; 3] = [7101, 7102, 7103];
const TIMEOUT: Duration = Duration::from_secs(120);

fn get_status(port: u16, path: &str) -> Option<serde_json::Value> {
    common::http(port, "GET", path, None, "application/json", b"").map(|(_, v)| v)
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_started_from_the_page_completes_and_the_table_shows_the_new_version() {
    let Some(exe) = cdp::chromium_or_skip("dashboard campaign") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("token"), format!("{TOKEN}\n")).unwrap();
    let o = meshfleet(d, &["firmware", "keygen", "--out", "fleet.key"]);
    assert!(o.status.success(), "{}", text(&o));
    let image: Vec<u8> = (0..60_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(d.join("app.bin"), image).unwrap();
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

    let (hp, mp) = (free_port(), free_port());
    let log = std::fs::File::create(d.join("gw.log")).unwrap();
    let _gw = Killed(
        gateway_command(d, &[], hp, mp, Some("fleet.key.pub"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_until("the gateway", || get_status(hp, "/healthz").is_some()).await;
    let _nodes: Vec<Proc> = NODES
        .iter()
        .map(|&id| ota_node(d, id, mp, "ESP32", false, TIMEOUT))
        .collect();
    wait_until("nodes online and reporting", || {
        NODES.iter().all(|id| {
            get_status(hp, &format!("/status/{id}")).is_some_and(|n| {
                n["online"] == true && n["reports"].as_u64().is_some_and(|r| r > 0)
            })
        })
    })
    .await;

    let b = cdp::Browser::start(&exe, 1280, 860).await;
    b.goto(&format!("http://127.0.0.1:{hp}/#/firmware")).await;
    b.wait_for(
        "the firmware view",
        "document.getElementById('fw-file') !== null",
        20,
    )
    .await;
    // Upload through the file input; the change asks for the token.
    let input = b
        .call(
            "Runtime.evaluate",
            serde_json::json!({"expression": "document.getElementById('fw-file')"}),
        )
        .await;
    let mfw = d.join("app.mfw");
    b.call(
        "DOM.setFileInputFiles",
        serde_json::json!({"files": [mfw.to_str().unwrap()], "objectId": input["result"]["objectId"]}),
    )
    .await;
    b.eval("document.querySelector('#fw-file').form.requestSubmit()")
        .await;
    b.wait_for(
        "the token dialog",
        "document.getElementById('token-dialog').open",
        10,
    )
    .await;
    b.eval(&format!(
        "(() => {{ document.getElementById('token-input').value = '{TOKEN}'; document.getElementById('token-form').requestSubmit(); }})()"
    ))
    .await;
    b.wait_for(
        "the artefact in the list",
        "[...document.querySelectorAll('#fw-list td')].some(td => td.textContent === '2.0.0')",
        20,
    )
    .await;
    // A campaign for all nodes, started at once (the form's defaults).
    b.wait_for(
        "the artefact in the form",
        "document.getElementById('nc-artefact').options.length === 1",
        10,
    )
    .await;
    b.eval("document.getElementById('campaign-form').requestSubmit()")
        .await;
    b.wait_for(
        "the campaign page",
        "location.hash.startsWith('#/campaign/c-')",
        20,
    )
    .await;
    b.wait_for(
        "three nodes in the campaign",
        "document.querySelectorAll('#campaign-nodes tbody tr').length === 3",
        20,
    )
    .await;
    let t0 = Instant::now();
    let mut shot = false;
    let deadline = Instant::now() + TIMEOUT;
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
        if !shot
            && b.eval("[...document.querySelectorAll('#campaign-nodes .badge')].some(x => x.textContent === 'IN_PROGRESS')")
                .await
                == true
        {
            b.screenshot("campaign-running").await;
            shot = true;
        }
        assert!(
            Instant::now() < deadline,
            "the campaign did not complete in {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "campaign completed on the page after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let states = b
        .eval("[...document.querySelectorAll('#campaign-nodes tbody tr .badge')].map(x => x.textContent)")
        .await;
    assert_eq!(
        states,
        serde_json::json!(["SUCCEEDED", "SUCCEEDED", "SUCCEEDED"])
    );
    b.screenshot("campaign-completed").await;
    // The node table shows every node on the new version.
    b.goto(&format!("http://127.0.0.1:{hp}/#/nodes")).await;
    b.wait_for(
        "2.0.0 in every row",
        "(() => { const f = [...document.querySelectorAll('.vt-row .fw')].map(x => x.textContent); return f.length === 3 && f.every(v => v === '2.0.0'); })()",
        30,
    )
    .await;
    b.screenshot("nodes-updated").await;
    let errors = b.errors();
    assert!(errors.is_empty(), "page errors: {errors:#?}");
}
