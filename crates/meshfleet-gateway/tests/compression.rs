//! gzip on the API and the dashboard's assets, by `Accept-Encoding`, and never on the event
//! stream (a compressor buffering it would hold events back). Real gateway, real mesh node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

const GZIP: (&str, &str) = ("Accept-Encoding", "gzip, deflate, br");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_assets_are_gzipped_when_accepted_and_the_event_stream_never() {
    let dir = tempfile::tempdir().unwrap();
    let f = Fixture::start(dir.path().to_owned(), keygen()).await;

    // An asset: gzip when asked, the same bytes after decoding; identity otherwise.
    let plain = request(f.http, "GET", "/assets/js/topology.js", &[], &[]).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("content-encoding"), None);
    let gz = request(f.http, "GET", "/assets/js/topology.js", &[GZIP], &[]).await;
    assert_eq!(gz.status, 200);
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert!(gz
        .header("vary")
        .is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding")));
    assert_eq!(gunzip(&gz.body), plain.body);
    assert!(
        gz.body.len() * 2 < plain.body.len(),
        "{} of {} bytes",
        gz.body.len(),
        plain.body.len()
    );
    // Revalidation still works on the compressed representation (weak ETag).
    let etag = gz.header("etag").unwrap().to_owned();
    assert!(etag.starts_with("W/\""), "{etag}");
    let again = request(
        f.http,
        "GET",
        "/assets/js/topology.js",
        &[GZIP, ("If-None-Match", &etag)],
        &[],
    )
    .await;
    assert_eq!(again.status, 304);

    // The API: JSON and problem documents.
    let (a, a_task) = node(1001, f.mesh_addr).await;
    wait_until("node 1001", || async {
        f.get("/status/1001").await.status == 200
    })
    .await;
    let status = request(f.http, "GET", "/status", &[GZIP], &[]).await;
    assert_eq!(status.header("content-encoding"), Some("gzip"));
    let json: serde_json::Value = serde_json::from_slice(&gunzip(&status.body)).unwrap();
    assert_eq!(json["totalNodes"], 1);
    let problem = request(f.http, "GET", "/status/abc", &[GZIP], &[]).await;
    assert_eq!(problem.status, 400);
    let doc: serde_json::Value =
        serde_json::from_slice(&if problem.header("content-encoding").is_some() {
            gunzip(&problem.body)
        } else {
            problem.body.clone()
        })
        .unwrap();
    assert!(doc["code"].is_string(), "{doc}");

    // The event stream, asked with gzip: not compressed, and an event arrives at once.
    let mut sse = TcpStream::connect(f.http).await.unwrap();
    sse.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, br\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), sse.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let head = seen.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.contains("text/event-stream"), "{head}");
    assert!(!head.contains("content-encoding"), "{head}");
    let sent = Instant::now();
    let (b, b_task) = node(1002, f.mesh_addr).await;
    while !seen.contains("\"nodeId\":1002") {
        let n = tokio::time::timeout(Duration::from_secs(2), sse.read(&mut buf))
            .await
            .expect("the event is held back")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let ms = sent.elapsed().as_millis();
    eprintln!("node joined to event read: {ms} ms");
    assert!(ms < 2000, "{ms} ms");

    a.shutdown().await;
    b.shutdown().await;
    a_task.await.unwrap();
    b_task.await.unwrap();
    f.stop().await;
}
