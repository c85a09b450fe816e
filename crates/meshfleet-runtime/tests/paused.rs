//! The runtime under tokio's paused clock, over in-memory streams (`MeshHandle::attach`):
//! timing behaviour is checked to the millisecond without waiting for it.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{eventually, next_event, Peer};
use meshfleet_mesh::{Config, LinkRole, Node, NodeId};
use meshfleet_runtime::{LinkEnd, Runtime, RuntimeConfig, RuntimeEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

async fn lone(id: u32, queue_cap: usize) -> Peer {
    common::init_tracing();
    let cfg = RuntimeConfig::default().with_queue_cap(queue_cap);
    let (mesh, task) = Runtime::start(Node::new(Config::new(NodeId(id))), cfg)
        .await
        .unwrap();
    let events = mesh.subscribe();
    Peer {
        id: NodeId(id),
        mesh,
        task,
        events,
    }
}

/// Attaches one end of a duplex pipe as a station link to a fake peer, node 77, which
/// answers our first node sync; returns the fake peer's end.
async fn synced_fake_peer(p: &Peer, pipe_capacity: usize) -> DuplexStream {
    let (ours, mut theirs) = tokio::io::duplex(pipe_capacity);
    p.mesh
        .attach(ours, LinkRole::Station, "fake-77")
        .await
        .unwrap();
    let reply = format!(
        "{{\"nodeId\":77,\"type\":6,\"dest\":{},\"from\":77}}\0",
        p.id
    );
    theirs.write_all(reply.as_bytes()).await.unwrap();
    let mesh = p.mesh.clone();
    eventually("node 77 to sync", || {
        let mesh = mesh.clone();
        async move { (mesh.nodes().await.unwrap() == [NodeId(77)]).then_some(()) }
    })
    .await;
    theirs
}

fn disconnect_reason(e: &RuntimeEvent) -> LinkEnd {
    match e {
        RuntimeEvent::Disconnected { reason, .. } => *reason,
        other => panic!("not a disconnect: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_closed_by_the_node_sync_timeout() {
    let mut p = lone(1, 4096).await;
    let (ours, _theirs) = tokio::io::duplex(4096);
    let t0 = Instant::now();
    p.mesh
        .attach(ours, LinkRole::Station, "silent")
        .await
        .unwrap();
    let e = next_event(
        &mut p.events,
        "the silent link to close",
        Duration::from_secs(60),
        |e| matches!(e, RuntimeEvent::Disconnected { .. }),
    )
    .await;
    assert_eq!(disconnect_reason(&e), LinkEnd::NodeSyncTimeout);
    // PROTOCOL.md §4.9: a station whose AP never answers closes after NODE_TIMEOUT.
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_millis(10_010),
        "closed after {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_reading_is_closed_after_the_stall_timeout() {
    let mut p = lone(1, 4096).await;
    let _theirs = synced_fake_peer(&p, 1024).await;

    // The peer reads nothing: 1 KiB fills the pipe, 4 KiB the queue, the rest is dropped.
    for _ in 0..40 {
        assert_eq!(p.mesh.broadcast("z".repeat(500)).await.unwrap(), 1);
    }
    let full_at = Instant::now();
    let stats = p.mesh.stats().await.unwrap();
    assert!(stats.queue_dropped >= 20, "dropped {}", stats.queue_dropped);
    assert!(stats.queued_bytes <= 4096, "queued {}", stats.queued_bytes);

    let e = next_event(
        &mut p.events,
        "the stalled link to close",
        Duration::from_secs(120),
        |e| matches!(e, RuntimeEvent::Disconnected { .. }),
    )
    .await;
    assert_eq!(disconnect_reason(&e), LinkEnd::SendQueueStalled);
    let took = full_at.elapsed();
    assert!(
        took >= Duration::from_secs(30) && took < Duration::from_millis(30_010),
        "closed after {took:?}"
    );
    let stats = p.mesh.stats().await.unwrap();
    assert_eq!(stats.closed_stalled, 1);
    assert_eq!(stats.links, 0);
    assert!(p.mesh.nodes().await.unwrap().is_empty());
}

/// Reads NUL-terminated frames from the fake peer's end until `enough` says stop.
async fn read_frames(
    theirs: &mut DuplexStream,
    mut enough: impl FnMut(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let mut frames = Vec::new();
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !enough(&frames) {
        let n = tokio::time::timeout(Duration::from_secs(60), theirs.read(&mut buf))
            .await
            .expect("the runtime stopped writing")
            .unwrap();
        assert!(n > 0, "the runtime closed the link");
        pending.extend_from_slice(&buf[..n]);
        while let Some(nul) = pending.iter().position(|b| *b == 0) {
            let frame: Vec<u8> = pending.drain(..=nul).collect();
            frames.push(serde_json::from_slice(&frame[..nul]).unwrap());
        }
    }
    frames
}

#[tokio::test(start_paused = true)]
async fn high_priority_frames_overtake_queued_frames_but_not_the_one_being_written() {
    let p = lone(1, 256 * 1024).await;
    let mut theirs = synced_fake_peer(&p, 4096).await;

    // Each broadcast is larger than a write batch, so each is written on its own; the
    // first one fills the pipe and blocks the writer mid-frame.
    for i in 0..4 {
        p.mesh
            .broadcast(format!("{i}:{}", "y".repeat(20_000)))
            .await
            .unwrap();
    }
    // Now the peer asks for a node sync: the reply is high priority.
    theirs
        .write_all(b"{\"nodeId\":77,\"type\":5,\"dest\":1,\"from\":77}\0")
        .await
        .unwrap();
    let mesh = p.mesh.clone();
    eventually("the request to be handled", || {
        let mesh = mesh.clone();
        async move { (mesh.with_node(|n, _| n.stats().frames_in).await.unwrap() == 2).then_some(()) }
    })
    .await;

    let count_broadcasts = |f: &[serde_json::Value]| f.iter().filter(|v| v["type"] == 8).count();
    let frames = read_frames(&mut theirs, |f| count_broadcasts(f) == 4).await;
    // Time sync frames (also high priority) may come and go; look at the rest.
    let order: Vec<String> = frames
        .iter()
        .filter(|v| v["type"] == 8 || v["type"] == 6)
        .map(|v| match v["type"].as_i64() {
            Some(6) => "reply".to_owned(),
            _ => v["msg"].as_str().unwrap()[..1].to_owned(),
        })
        .collect();
    assert_eq!(order, ["0", "reply", "1", "2", "3"]);
}

#[tokio::test(start_paused = true)]
async fn with_node_runs_in_the_owner_and_its_output_is_sent() {
    let p = lone(1, 256 * 1024).await;
    let mut theirs = synced_fake_peer(&p, 64 * 1024).await;
    let links = p
        .mesh
        .with_node(|node, now| {
            node.send_single(now, NodeId(77), "made in with_node")
                .unwrap();
            node.link_count()
        })
        .await
        .unwrap();
    assert_eq!(links, 1);
    let frames = read_frames(&mut theirs, |f| f.iter().any(|v| v["type"] == 9)).await;
    let single = frames.iter().find(|v| v["type"] == 9).unwrap();
    assert_eq!(single["msg"], "made in with_node");
    assert_eq!(single["dest"], 77);
}
