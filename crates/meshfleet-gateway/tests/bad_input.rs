//! The bad-input table: every request below gets a clear problem+json error with the right
//! status and code, stores nothing, and the gateway keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn auth() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}

fn json_ct() -> (&'static str, String) {
    ("Content-Type", "application/json".into())
}

fn case(
    name: &'static str,
    method: &'static str,
    path: impl Into<String>,
    headers: Vec<(&'static str, String)>,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        headers,
        body: body.into(),
        status,
        code,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_table() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen();
    let f = Fixture::start(dir.path().to_owned(), key.clone()).await;

    // One real node with one real alert, so "unknown id" cases are not trivially empty.
    let (n, _task) = node(2001, f.mesh_addr).await;
    joined(&f, &n, 2001).await;
    n.broadcast(status_text(2001, 5, 0, "1.0.0")).await.unwrap();
    wait_until("alert raised", || async {
        f.get("/alerts").await.json()["alerts"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    let alert_id = f.get("/alerts").await.json()["alerts"][0]["id"]
        .as_i64()
        .unwrap();

    let good = artefact(Some(&key), "1.2.3");
    let other_key = keygen();
    let wrong_signer = artefact(Some(&other_key), "1.2.3");
    let unsigned = artefact(None, "1.2.3");
    let truncated = good[..good.len() - 100].to_vec();
    let mut tampered = good.clone();
    let last = tampered.len() - 10;
    tampered[last] ^= 0x55;
    let oversized = vec![0u8; 1024 * 1024 + 1];
    let big_json = format!(r#"{{"note":"{}"}}"#, "x".repeat(70 * 1024));
    let ack = format!("/alerts/{alert_id}/ack");
    let octet = ("Content-Type", "application/octet-stream".to_owned());

    let cases = vec![
        // Tokens.
        case(
            "ack without token",
            "POST",
            &ack,
            vec![],
            "",
            401,
            "missing_token",
        ),
        case(
            "ack with a wrong token",
            "POST",
            &ack,
            vec![("Authorization", "Bearer nope".into())],
            "",
            401,
            "bad_token",
        ),
        case(
            "ack with basic auth",
            "POST",
            &ack,
            vec![("Authorization", "Basic dXNlcjpwYXNz".into())],
            "",
            401,
            "missing_token",
        ),
        case(
            "upload without token",
            "POST",
            "/firmware",
            vec![octet.clone()],
            good.clone(),
            401,
            "missing_token",
        ),
        case(
            "delete without token",
            "DELETE",
            format!("/firmware/{}", "a".repeat(64)),
            vec![],
            "",
            401,
            "missing_token",
        ),
        // JSON bodies.
        case(
            "malformed JSON",
            "POST",
            &ack,
            vec![auth(), json_ct()],
            "{\"note\":",
            400,
            "bad_json",
        ),
        case(
            "wrong type",
            "POST",
            &ack,
            vec![auth(), json_ct()],
            r#"{"note":5}"#,
            400,
            "bad_json",
        ),
        case(
            "unknown field",
            "POST",
            &ack,
            vec![auth(), json_ct()],
            r#"{"nope":1}"#,
            400,
            "bad_json",
        ),
        case(
            "not an object",
            "POST",
            &ack,
            vec![auth(), json_ct()],
            "[1,2]",
            400,
            "bad_json",
        ),
        case(
            "note too long",
            "POST",
            &ack,
            vec![auth(), json_ct()],
            format!(r#"{{"note":"{}"}}"#, "x".repeat(600)),
            400,
            "bad_json",
        ),
        case(
            "oversized JSON",
            "POST",
            &ack,
            vec![auth(), json_ct()],
            big_json,
            413,
            "body_too_large",
        ),
        case(
            "wrong content type",
            "POST",
            &ack,
            vec![auth(), ("Content-Type", "text/plain".into())],
            r#"{"note":"x"}"#,
            415,
            "bad_content_type",
        ),
        // Unknown and malformed ids.
        case(
            "unknown alert",
            "POST",
            "/alerts/999999/ack",
            vec![auth()],
            "",
            404,
            "not_found",
        ),
        case(
            "alert id not a number",
            "POST",
            "/alerts/abc/ack",
            vec![auth()],
            "",
            400,
            "bad_alert_id",
        ),
        case(
            "negative alert id",
            "POST",
            "/alerts/-1/ack",
            vec![auth()],
            "",
            400,
            "bad_alert_id",
        ),
        case(
            "node id not a number",
            "GET",
            "/status/abc",
            vec![],
            "",
            400,
            "bad_node_id",
        ),
        case(
            "node id zero",
            "GET",
            "/status/0",
            vec![],
            "",
            400,
            "bad_node_id",
        ),
        case(
            "node id too large",
            "GET",
            "/status/4294967296",
            vec![],
            "",
            400,
            "bad_node_id",
        ),
        case(
            "unknown node",
            "GET",
            "/status/12345",
            vec![],
            "",
            404,
            "not_found",
        ),
        case(
            "history of unknown node",
            "GET",
            "/nodes/12345/history",
            vec![],
            "",
            404,
            "not_found",
        ),
        // Query strings.
        case(
            "limit zero",
            "GET",
            "/status?limit=0",
            vec![],
            "",
            400,
            "bad_query",
        ),
        case(
            "limit not a number",
            "GET",
            "/status?limit=ten",
            vec![],
            "",
            400,
            "bad_query",
        ),
        case(
            "unknown health",
            "GET",
            "/status?health=purple",
            vec![],
            "",
            400,
            "bad_query",
        ),
        case(
            "unknown parameter",
            "GET",
            "/status?bogus=1",
            vec![],
            "",
            400,
            "bad_query",
        ),
        case(
            "reversed range",
            "GET",
            "/nodes/2001/history?from=10&to=5",
            vec![],
            "",
            400,
            "bad_range",
        ),
        case(
            "bad resolution",
            "GET",
            "/nodes/2001/history?resolution=minute",
            vec![],
            "",
            400,
            "bad_query",
        ),
        case(
            "alert limit too large",
            "GET",
            "/alerts?limit=100000",
            vec![],
            "",
            400,
            "bad_query",
        ),
        // Uploads.
        case(
            "empty upload",
            "POST",
            "/firmware",
            vec![auth(), octet.clone()],
            "",
            400,
            "empty_body",
        ),
        case(
            "garbage upload",
            "POST",
            "/firmware",
            vec![auth(), octet.clone()],
            "not a firmware file",
            422,
            "bad_artefact",
        ),
        case(
            "truncated artefact",
            "POST",
            "/firmware",
            vec![auth(), octet.clone()],
            truncated,
            422,
            "bad_artefact",
        ),
        case(
            "tampered artefact",
            "POST",
            "/firmware",
            vec![auth(), octet.clone()],
            tampered,
            422,
            "verification_failed",
        ),
        case(
            "unsigned artefact",
            "POST",
            "/firmware",
            vec![auth(), octet.clone()],
            unsigned,
            422,
            "verification_failed",
        ),
        case(
            "artefact signed by another key",
            "POST",
            "/firmware",
            vec![auth(), octet.clone()],
            wrong_signer,
            422,
            "verification_failed",
        ),
        case(
            "oversized upload",
            "POST",
            "/firmware",
            vec![auth(), octet.clone()],
            oversized,
            413,
            "body_too_large",
        ),
        // Path tricks: ids are parsed, never used as paths.
        case(
            "dot-dot id",
            "DELETE",
            "/firmware/..%2F..%2Fetc%2Fpasswd",
            vec![auth()],
            "",
            400,
            "bad_artefact_id",
        ),
        case(
            "uppercase hex id",
            "DELETE",
            format!("/firmware/{}", "A".repeat(64)),
            vec![auth()],
            "",
            400,
            "bad_artefact_id",
        ),
        case(
            "unknown artefact",
            "DELETE",
            format!("/firmware/{}", "0".repeat(64)),
            vec![auth()],
            "",
            404,
            "not_found",
        ),
        case(
            "dot-dot route",
            "GET",
            "/firmware/../../etc/passwd",
            vec![],
            "",
            404,
            "not_found",
        ),
        case(
            "unknown route",
            "GET",
            "/admin",
            vec![],
            "",
            404,
            "not_found",
        ),
        case(
            "wrong method",
            "PUT",
            "/status",
            vec![auth()],
            "",
            405,
            "method_not_allowed",
        ),
    ];

    for c in &cases {
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = request(f.http, c.method, &c.path, &headers, &c.body).await;
        assert_eq!(r.status, c.status, "{}: {}", c.name, r.text());
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{}",
            c.name
        );
        let p = r.json();
        assert_eq!(p["code"], c.code, "{}: {p}", c.name);
        assert_eq!(p["status"], c.status, "{}", c.name);
        assert!(!p["detail"].as_str().unwrap().is_empty(), "{}", c.name);
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "{}",
            c.name
        );
        if c.status == 401 {
            assert!(r.header("www-authenticate").is_some(), "{}", c.name);
        }
        // Still serving after each one.
        assert_eq!(f.get("/healthz").await.status, 200, "after {}", c.name);
    }

    // Nothing was stored: no artefact, no acknowledgement, no audit entry.
    assert_eq!(
        f.get("/firmware").await.json()["artefacts"],
        serde_json::json!([])
    );
    let a = f.get("/alerts").await.json();
    assert!(a["alerts"][0]["ackedAt"].is_null(), "{a}");
    assert!(f.db_audit().await.is_empty());

    // The good upload works, once; a second time changes nothing; then it is deleted.
    let r = f.post("/firmware", "application/octet-stream", &good).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.header("location"),
        Some(format!("/firmware/{id}").as_str())
    );
    assert_eq!(r.json()["version"], "1.2.3");
    let again = f.post("/firmware", "application/octet-stream", &good).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        f.get("/firmware").await.json()["artefacts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(f.delete(&format!("/firmware/{id}")).await.status, 204);
    assert_eq!(f.delete(&format!("/firmware/{id}")).await.status, 404);
    let audit = f.db_audit().await;
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, vec!["firmware.delete", "firmware.upload"]);

    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_nothing_can_be_changed_and_read_auth_guards_reads() {
    let dir = tempfile::tempdir().unwrap();
    let f = Fixture::start_with(dir.path().to_owned(), keygen(), |c| {
        c.token_file = None;
    })
    .await;
    let r = f.post("/firmware", "application/octet-stream", b"x").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "no_token_configured");
    f.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let f = Fixture::start_with(dir.path().to_owned(), keygen(), |c| c.read_auth = true).await;
    assert_eq!(f.get("/status").await.status, 401);
    assert_eq!(f.get("/healthz").await.status, 200, "probes stay open");
    assert_eq!(f.get("/readyz").await.status, 200, "probes stay open");
    let auth = format!("Bearer {TOKEN}");
    let r = request(f.http, "GET", "/status", &[("Authorization", &auth)], &[]).await;
    assert_eq!(r.status, 200);
    f.stop().await;
}

/// Malformed status packages from the mesh are counted and dropped; good ones still count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_status_packages_are_counted_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let f = Fixture::start(dir.path().to_owned(), keygen()).await;
    let (n, _task) = node(3001, f.mesh_addr).await;
    joined(&f, &n, 3001).await;
    for bad in [
        r#"{"type":604,"mem":-1}"#.to_owned(),
        r#"{"type":604,"uptime":"long"}"#.to_owned(),
        r#"{"type":604,"loss":250}"#.to_owned(),
        format!(r#"{{"type":604,"lastErr":"{}"}}"#, "e".repeat(5000)),
    ] {
        n.broadcast(bad).await.unwrap();
    }
    n.broadcast(status_text(3001, 50, 0, "9.9.9"))
        .await
        .unwrap();
    wait_until("good report", || async {
        f.get("/status/3001").await.json()["reports"] == 1
    })
    .await;
    let m = f.get("/metrics").await.text();
    assert!(
        m.contains("meshfleet_gateway_status_rejected_total 4"),
        "{m}"
    );
    assert!(
        m.contains("meshfleet_gateway_status_accepted_total 1"),
        "{m}"
    );
    // A flood: reports within a second of the last are dropped.
    for _ in 0..20 {
        n.broadcast(status_text(3001, 50, 0, "9.9.9"))
            .await
            .unwrap();
    }
    wait_until("rate limited", || async {
        f.get("/metrics").await.text().lines().any(|l| {
            l.starts_with("meshfleet_gateway_status_rate_limited_total ") && !l.ends_with(" 0")
        })
    })
    .await;
    assert!(
        f.get("/status/3001").await.json()["reports"]
            .as_u64()
            .unwrap()
            < 5
    );
    f.stop().await;
}
