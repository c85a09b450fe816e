//! The event stream with `read-auth` on: a browser's `EventSource` cannot send the bearer
//! header, so it trades the token for a single-use ticket (`POST /events/ticket`) and opens
//! `GET /events?ticket=…`. Real gateway, real mesh node over loopback TCP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens `GET path` and reads until `want` shows up (or 10 s pass); returns what was read.
async fn stream_until(f: &Fixture, path: &str, want: &str) -> String {
    let mut s = TcpStream::connect(f.http).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(want) && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => {}
        }
    }
    seen
}

async fn ticket(f: &Fixture) -> String {
    let r = f.post("/events/ticket", "application/json", b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["expiresIn"], 30);
    v["ticket"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_auth_event_stream_takes_a_single_use_ticket_never_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let f = Fixture::start_with(dir.path().to_owned(), keygen(), |c| c.read_auth = true).await;

    // Refused without anything, with a made-up ticket, and with the token in the URL.
    for path in [
        "/events".to_owned(),
        "/events?ticket=00112233".to_owned(),
        format!("/events?token={TOKEN}"),
        format!("/events?ticket={TOKEN}"),
    ] {
        let head = stream_until(&f, &path, "\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 401"), "{path}: {head}");
    }
    // A ticket needs the bearer token.
    let r = request(f.http, "POST", "/events/ticket", &[], &[]).await;
    assert_eq!(r.status, 401);

    // With a ticket: the stream opens and carries events (a node joining).
    let t = ticket(&f).await;
    let path = format!("/events?ticket={t}");
    let mut stream = TcpStream::connect(f.http).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("\r\n\r\n") && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await
        {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("text/event-stream"), "{seen}");
    // The ticket is spent: a replay is refused.
    let replay = stream_until(&f, &path, "\r\n\r\n").await;
    assert!(replay.starts_with("HTTP/1.1 401"), "{replay}");
    assert!(replay.contains("bad_ticket"), "{replay}");
    // The open stream carries events (a node joining).
    let (node_a, task) = node(1001, f.mesh_addr).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("event: node_up") && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await
        {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(seen.contains("event: node_up"), "{seen}");

    // A ticket opens the event stream only.
    let t = ticket(&f).await;
    let r = request(f.http, "GET", &format!("/status?ticket={t}"), &[], &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());

    node_a.shutdown().await;
    task.await.unwrap();
    f.stop().await;
}
