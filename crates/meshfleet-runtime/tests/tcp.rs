//! The runtime over real TCP on 127.0.0.1, in real time (with generous timeouts).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{buffered, next_event, start, start_on, wait_nodes, TIMEOUT};
use meshfleet_mesh::{Config, NodeId};
use meshfleet_runtime::{DropKind, LinkEnd, MessageKind, RuntimeEvent, SendError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runtimes_link_and_node_lists_converge() {
    let mut a = start(1001, true, &[]).await;
    let mut b = start(2002, false, &[a.addr()]).await;

    wait_nodes("A", &a.mesh, &[b.id]).await;
    wait_nodes("B", &b.mesh, &[a.id]).await;

    for (p, other) in [(&mut a, NodeId(2002)), (&mut b, NodeId(1001))] {
        next_event(
            &mut p.events,
            "new_connection",
            TIMEOUT,
            |e| matches!(e, RuntimeEvent::NewConnection { node_id, .. } if *node_id == other),
        )
        .await;
    }
    let topo = serde_json::to_value(a.mesh.topology().await.unwrap()).unwrap();
    assert_eq!(
        topo,
        serde_json::json!({"nodeId":1001,"subs":[{"nodeId":2002}]})
    );

    b.mesh.shutdown().await;
    b.task.await.unwrap();
    a.mesh.shutdown().await;
    a.task.await.unwrap();
}

/// A <- B <- C (B connects to A, C connects to B).
///
/// C starts once A and B have synced. Started together, C's sync with B can complete
/// while B's first request to A is in flight; B then re-syncs only its *synced* links,
/// so A would learn of C at its first own node sync, 10 s after accepting B. The C++
/// library has the same window (layout.hpp `syncLayout` skips links with node id 0).
async fn chain() -> (common::Peer, common::Peer, common::Peer) {
    let a = start(1, true, &[]).await;
    let b = start(2, true, &[a.addr()]).await;
    wait_nodes("A", &a.mesh, &[NodeId(2)]).await;
    let c = start(3, false, &[b.addr()]).await;
    wait_nodes("A", &a.mesh, &[NodeId(2), NodeId(3)]).await;
    wait_nodes("B", &b.mesh, &[NodeId(1), NodeId(3)]).await;
    wait_nodes("C", &c.mesh, &[NodeId(1), NodeId(2)]).await;
    (a, b, c)
}

fn received(events: &[RuntimeEvent]) -> Vec<(NodeId, String, MessageKind)> {
    events
        .iter()
        .filter_map(|e| match e {
            RuntimeEvent::Received { from, msg, kind } => Some((*from, msg.clone(), *kind)),
            _ => None,
        })
        .collect()
}

/// What `rx` receives until every one of `markers` has arrived, markers left out.
async fn received_until(
    rx: &mut tokio::sync::broadcast::Receiver<RuntimeEvent>,
    markers: &[&str],
) -> Vec<(NodeId, String, MessageKind)> {
    use tokio::sync::broadcast::error::RecvError;
    let mut left: Vec<&str> = markers.to_vec();
    let mut other = Vec::new();
    let wait = async {
        while !left.is_empty() {
            match rx.recv().await {
                Ok(RuntimeEvent::Received { from, msg, kind }) => {
                    match left.iter().position(|m| *m == msg) {
                        Some(i) => {
                            left.remove(i);
                        }
                        None => other.push((from, msg, kind)),
                    }
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("runtime stopped while draining"),
            }
        }
    };
    if tokio::time::timeout(TIMEOUT, wait).await.is_err() {
        panic!("markers {markers:?} did not all arrive within {TIMEOUT:?}");
    }
    other
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_in_a_chain_route_single_and_flood_broadcast_once() {
    let (mut a, mut b, mut c) = chain().await;
    buffered(&mut a.events);
    buffered(&mut b.events);
    buffered(&mut c.events);

    c.mesh
        .send_single(NodeId(1), "from C, via B")
        .await
        .unwrap();
    a.mesh
        .send_single(NodeId(3), "from A, via B")
        .await
        .unwrap();
    let is_single_to = |text: &'static str| move |e: &RuntimeEvent| matches!(e, RuntimeEvent::Received { msg, .. } if msg == text);
    next_event(
        &mut a.events,
        "A to get C's single",
        TIMEOUT,
        is_single_to("from C, via B"),
    )
    .await;
    next_event(
        &mut c.events,
        "C to get A's single",
        TIMEOUT,
        is_single_to("from A, via B"),
    )
    .await;

    assert_eq!(a.mesh.broadcast("to everyone").await.unwrap(), 1);
    let bcast =
        |e: &RuntimeEvent| matches!(e, RuntimeEvent::Received { msg, .. } if msg == "to everyone");
    next_event(&mut b.events, "B to get the broadcast", TIMEOUT, bcast).await;
    next_event(&mut c.events, "C to get the broadcast", TIMEOUT, bcast).await;

    // No duplicates or echoes: drain to idle instead of sleeping. Every node broadcasts a
    // marker; frames on a link arrive in order, so a duplicate or echo made before a marker
    // was sent arrives before it. Once a node has every other node's marker, nothing else
    // may have reached it.
    assert_eq!(received(&buffered(&mut a.events)), []);
    assert_eq!(received(&buffered(&mut c.events)), []);
    let b_got = received(&buffered(&mut b.events));
    assert_eq!(b_got, [], "B relayed the singles without delivering them");
    for (p, m) in [(&a, "drain A"), (&b, "drain B"), (&c, "drain C")] {
        p.mesh.broadcast(m).await.unwrap();
    }
    assert_eq!(
        received_until(&mut a.events, &["drain B", "drain C"]).await,
        []
    );
    assert_eq!(
        received_until(&mut c.events, &["drain A", "drain B"]).await,
        []
    );
    assert_eq!(
        received_until(&mut b.events, &["drain A", "drain C"]).await,
        [],
        "B relayed the singles without delivering them"
    );
    let stats = b.mesh.stats().await.unwrap();
    assert!(
        stats.node.forwarded >= 3,
        "B forwarded {}",
        stats.node.forwarded
    );
    assert_eq!(
        stats.node.app_received, 3,
        "B got only the broadcast and the two markers"
    );

    // SINGLE to an unknown node fails like the library's sendSingle returning false.
    assert_eq!(
        a.mesh.send_single(NodeId(4242), "nobody").await,
        Err(SendError::NoRoute(NodeId(4242)))
    );

    for p in [c, b, a] {
        p.mesh.shutdown().await;
        p.task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_are_dropped_and_the_link_survives() {
    let mut config = Config::new(NodeId(1));
    config.max_frame_len = 1024;
    let mut a = start_on(1, Some("127.0.0.1:0".into()), &[], config).await;
    let b = start(2, false, &[a.addr()]).await;
    wait_nodes("A", &a.mesh, &[NodeId(2)]).await;

    // A raw peer: identifies itself as node 77, then misbehaves, then talks sense.
    let mut raw = TcpStream::connect(a.addr()).await.unwrap();
    raw.write_all(b"{\"nodeId\":77,\"type\":5,\"dest\":0,\"from\":77}\0")
        .await
        .unwrap();
    wait_nodes("A", &a.mesh, &[NodeId(2), NodeId(77)]).await;
    raw.write_all(b"this is not json\0").await.unwrap();
    raw.write_all(&vec![b'x'; 100_000]).await.unwrap();
    raw.write_all(b"\0\0\0").await.unwrap();
    raw.write_all(b"{\"type\":9,\"dest\":1,\"from\":77,\"msg\":\"still here\"}\0")
        .await
        .unwrap();

    next_event(
        &mut a.events,
        "the garbage frame to be dropped",
        TIMEOUT,
        |e| {
            matches!(
                e,
                RuntimeEvent::FrameDropped {
                    reason: DropKind::Decode,
                    ..
                }
            )
        },
    )
    .await;
    next_event(
        &mut a.events,
        "the oversized frame to be dropped",
        TIMEOUT,
        |e| {
            matches!(
                e,
                RuntimeEvent::FrameDropped {
                    reason: DropKind::TooLong,
                    ..
                }
            )
        },
    )
    .await;
    next_event(&mut a.events, "the good frame after the bad ones", TIMEOUT, |e| {
        matches!(e, RuntimeEvent::Received { from, msg, .. } if *from == NodeId(77) && msg == "still here")
    })
    .await;

    // The other peer is unaffected, and the raw link is still up.
    b.mesh.send_single(NodeId(1), "hello from B").await.unwrap();
    next_event(
        &mut a.events,
        "B's message",
        TIMEOUT,
        |e| matches!(e, RuntimeEvent::Received { msg, .. } if msg == "hello from B"),
    )
    .await;
    assert_eq!(a.mesh.nodes().await.unwrap(), [NodeId(2), NodeId(77)]);
    let stats = a.mesh.stats().await.unwrap();
    assert_eq!(stats.node.dropped_too_long, 1);
    assert_eq!(stats.node.dropped_decode, 1);

    // A answered the raw peer's node sync (high priority) with its tree minus the peer.
    // Its digest-sync hello (type 95, which the library ignores) may come first.
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(TIMEOUT, raw.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let reply: serde_json::Value = buf[..n]
        .split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| serde_json::from_slice::<serde_json::Value>(f).unwrap())
        .find(|v| v["type"] != 95)
        .unwrap();
    assert_eq!(reply["type"], 6);
    assert_eq!(reply["subs"], serde_json::json!([{"nodeId":2}]));

    b.mesh.shutdown().await;
    a.mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_middle_node_is_noticed_at_both_ends() {
    let (mut a, b, mut c) = chain().await;

    // Like SIGKILL: the owner task dies without a goodbye; its sockets close with it.
    b.task.abort();
    let _ = b.task.await;

    for (name, p) in [("A", &mut a), ("C", &mut c)] {
        let e = next_event(&mut p.events, "dropped_connection of B", TIMEOUT, |e| {
            matches!(e, RuntimeEvent::DroppedConnection { node_id, .. } if *node_id == NodeId(2))
        })
        .await;
        let RuntimeEvent::DroppedConnection { reason, .. } = e else {
            unreachable!()
        };
        assert!(
            matches!(reason, LinkEnd::Eof | LinkEnd::IoError),
            "{name}: reason {reason:?}"
        );
        wait_nodes(name, &p.mesh, &[]).await;
    }
    a.mesh.shutdown().await;
    c.mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_reconnects_after_the_listener_restarts() {
    let a = start(10, true, &[]).await;
    let addr = a.addr();
    let mut b = start(20, false, std::slice::from_ref(&addr)).await;
    wait_nodes("B", &b.mesh, &[NodeId(10)]).await;

    a.mesh.shutdown().await;
    a.task.await.unwrap();
    next_event(
        &mut b.events,
        "B to see A leave",
        TIMEOUT,
        |e| matches!(e, RuntimeEvent::DroppedConnection { node_id, .. } if *node_id == NodeId(10)),
    )
    .await;
    wait_nodes("B", &b.mesh, &[]).await;
    // B keeps trying while nobody listens.
    next_event(&mut b.events, "a failed reconnect attempt", TIMEOUT, |e| {
        matches!(e, RuntimeEvent::ConnectFailed { .. })
    })
    .await;

    // Same port, new process (new node id, as after a reflash).
    let a2 = start_on(11, Some(addr), &[], Config::new(NodeId(11))).await;
    wait_nodes("B", &b.mesh, &[NodeId(11)]).await;
    wait_nodes("A2", &a2.mesh, &[NodeId(20)]).await;
    assert!(
        buffered(&mut b.events)
            .iter()
            .any(|e| matches!(e, RuntimeEvent::Connected { .. })),
        "B reconnected without a connected event"
    );

    b.mesh.shutdown().await;
    a2.mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_links_and_stops_the_task() {
    let mut a = start(5, true, &[]).await;
    let b = start(6, false, &[a.addr()]).await;
    wait_nodes("A", &a.mesh, &[NodeId(6)]).await;
    b.mesh.shutdown().await;
    tokio::time::timeout(TIMEOUT, b.task)
        .await
        .unwrap()
        .unwrap();
    assert!(b.mesh.is_stopped());
    assert!(b.mesh.nodes().await.is_err());
    // A graceful leave is seen at once (FIN), not after a node-sync timeout.
    next_event(
        &mut a.events,
        "A to see B leave",
        Duration::from_secs(5),
        |e| {
            matches!(
                e,
                RuntimeEvent::DroppedConnection {
                    reason: LinkEnd::Eof,
                    ..
                }
            )
        },
    )
    .await;
    drop(a.mesh);
    // The last handle gone, the runtime stops by itself.
    tokio::time::timeout(TIMEOUT, a.task)
        .await
        .unwrap()
        .unwrap();
}
