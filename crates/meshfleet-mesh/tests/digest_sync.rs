//! meshfleet's digest node sync (`NodeSyncPolicy::Meshfleet`): between meshfleet
//! neighbours an unchanged tree travels as a 64-bit digest instead of the whole tree;
//! stock peers (here: nodes with the library's policy) see only the library's frames, and
//! ignore the one hello meshfleet sends them.
#![allow(clippy::unwrap_used)]

mod common;

use common::Net;
use meshfleet_mesh::{
    Config, DropReason, Duration, Event, Instant, LinkId, LinkRole, Malformed, Node, NodeId,
    NodeSyncPolicy,
};

fn node(id: u32, policy: NodeSyncPolicy) -> Node {
    Node::new(Config {
        node_sync: policy,
        ..Config::new(NodeId(id))
    })
}

/// Ids as on ESPs (10 digits), so trees have their real size.
const BASE: u32 = 3_000_000_000;

/// A star of four around node 1, with a tail of three on node 4, and 13 leaves on the
/// tail's end: 20 nodes, all with `policy` except node `stock` (1-based, if any), which
/// runs the library's.
fn mesh(policy: NodeSyncPolicy, stock: Option<u32>) -> Net {
    let mut net = Net::new(Duration::from_millis(3));
    for id in 1..=20 {
        let p = if Some(id) == stock {
            NodeSyncPolicy::Library
        } else {
            policy
        };
        net.add(node(BASE + id, p));
    }
    let mut edges = vec![(1, 0), (2, 0), (3, 0), (4, 3), (5, 4), (6, 5)];
    edges.extend((7..20).map(|leaf| (leaf, 6)));
    for (station, ap) in edges {
        net.connect(station, ap);
        net.run_for(Duration::from_millis(50));
    }
    net
}

/// Bytes of node-sync frames (types 5, 6 and 95) on every wire from `since` on.
fn sync_bytes(net: &Net, since: Instant) -> usize {
    net.trace
        .iter()
        .filter(|s| s.at >= since && matches!(s.ty(), Some(5 | 6 | 95)))
        .map(|s| s.len)
        .sum()
}

fn everyone_knows_everyone(net: &Net) -> bool {
    net.nodes
        .iter()
        .all(|n| n.nodes().len() == net.nodes.len() - 1)
}

#[test]
fn meshfleet_neighbours_keep_the_mesh_on_digests() {
    let settled = Instant::ZERO + Duration::from_secs(30);
    let mut ours = mesh(NodeSyncPolicy::Meshfleet, None);
    let mut library = mesh(NodeSyncPolicy::Library, None);
    for net in [&mut ours, &mut library] {
        net.run_until(Instant::ZERO + Duration::from_secs(300));
        assert!(everyone_knows_everyone(net));
        for i in 0..net.nodes.len() {
            assert!(net.closed(i).is_empty(), "node {i}: {:?}", net.closed(i));
        }
    }
    // Five minutes of periodic syncs on 19 links: digests, a fraction of the bytes (the
    // fraction shrinks as trees grow: a digest sync is ~120 bytes whatever the mesh).
    let digests: u64 = ours.nodes.iter().map(|n| n.stats().digest_syncs_sent).sum();
    assert!(digests >= 19 * 2 * 4, "{digests} digest syncs");
    assert_eq!(
        ours.nodes
            .iter()
            .map(|n| n.stats().digest_mismatches)
            .sum::<u64>(),
        0
    );
    let (a, b) = (sync_bytes(&ours, settled), sync_bytes(&library, settled));
    assert!(a * 2 < b, "meshfleet {a} bytes, library {b}");
    assert_eq!(
        library
            .nodes
            .iter()
            .map(|n| n.stats().digest_syncs_sent)
            .sum::<u64>(),
        0
    );
    // A change still travels as whole trees, at once: node 7 and its 13 leaves leave,
    // everyone hears.
    let tail = ours.wires_of(6)[0];
    ours.cut(tail);
    ours.run_for(Duration::from_secs(1));
    for (i, n) in ours.nodes.iter().enumerate().take(6) {
        assert_eq!(n.nodes().len(), 5, "node {i}");
    }
}

#[test]
fn a_stock_neighbour_gets_whole_trees_and_the_mesh_converges() {
    // Node 4 (index 3) runs the library's policy: it ignores the hellos, sends none, and
    // its two links carry whole trees only; the rest of the mesh still uses digests.
    let mut net = mesh(NodeSyncPolicy::Meshfleet, Some(4));
    net.run_until(Instant::ZERO + Duration::from_secs(300));
    assert!(everyone_knows_everyone(&net));
    let stock = 3;
    let digests_to_stock = net
        .trace
        .iter()
        .filter(|s| (s.to == stock || s.from == stock) && s.ty() == Some(95))
        .filter(|s| s.json.as_ref().unwrap()["sync"] != "hello")
        .count();
    assert_eq!(digests_to_stock, 0);
    assert_eq!(net.nodes[stock].stats().digest_syncs_sent, 0);
    assert!(net.nodes[0].stats().digest_syncs_sent > 0);
    for i in 0..net.nodes.len() {
        assert!(net.closed(i).is_empty(), "node {i}: {:?}", net.closed(i));
    }
}

/// Node 5 with a synced link to a scripted peer, node 9, that said hello.
fn scripted() -> (Node, LinkId) {
    let mut n = node(5, NodeSyncPolicy::Meshfleet);
    let link = LinkId(1);
    n.handle_link_up(Instant::ZERO, link, LinkRole::Station);
    n.handle_bytes(
        Instant::ZERO,
        link,
        b"{\"nodeId\":9,\"type\":6,\"dest\":5,\"from\":9}\0",
    );
    n.handle_bytes(
        Instant::ZERO,
        link,
        b"{\"type\":95,\"routing\":0,\"dest\":5,\"from\":9,\"sync\":\"hello\"}\0",
    );
    while n.poll_transmit().is_some() {}
    while n.poll_event().is_some() {}
    (n, link)
}

fn sent(n: &mut Node) -> Vec<serde_json::Value> {
    std::iter::from_fn(|| n.poll_transmit())
        .map(|t| serde_json::from_slice(&t.frame[..t.frame.len() - 1]).unwrap())
        .collect()
}

#[test]
fn a_digest_that_does_not_match_asks_for_the_tree() {
    let (mut n, link) = scripted();
    let t = Instant::ZERO + Duration::from_secs(1);
    n.handle_bytes(
        t,
        link,
        b"{\"type\":95,\"routing\":0,\"dest\":5,\"from\":9,\"sync\":\"request\",\"digest\":\"0000000000000001\"}\0",
    );
    let out = sent(&mut n);
    // Answered (node 9 holds our current tree: a digest reply), then "resend".
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(
        (out[0]["type"].clone(), out[0]["sync"].clone()),
        (95.into(), "reply".into())
    );
    assert_eq!(out[1]["sync"], "resend");
    assert_eq!(n.stats().digest_mismatches, 1);
    // Node 9 asks for ours: the next node sync is the whole tree, at once.
    n.handle_bytes(
        t,
        link,
        b"{\"type\":95,\"routing\":0,\"dest\":5,\"from\":9,\"sync\":\"resend\"}\0",
    );
    n.handle_timeout(t);
    let out: Vec<_> = sent(&mut n)
        .into_iter()
        .filter(|v| v["type"] != 4)
        .collect();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["type"], 5);
    assert_eq!(out[0]["nodeId"], 5);
}

#[test]
fn a_matching_digest_is_an_unchanged_tree() {
    let (mut n, link) = scripted();
    let t = Instant::ZERO + Duration::from_secs(1);
    // Node 9's tree as we hold it is the lone node 9: its digest, as node 9 folds it.
    let d = meshfleet_wire::SyncDigest::new(NodeId(9), false).finish();
    let frame = format!(
        "{{\"type\":95,\"routing\":0,\"dest\":5,\"from\":9,\"sync\":\"request\",\"digest\":\"{d:016x}\"}}\0"
    );
    n.handle_bytes(t, link, frame.as_bytes());
    let out = sent(&mut n);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["sync"], "reply");
    assert_eq!(n.stats().digest_mismatches, 0);
    // And like an unchanged request, it postpones our own periodic sync by a minute.
    assert!(n.poll_timeout_reason().is_some());
    let mut next = t;
    while let Some(at) = n.poll_timeout() {
        n.handle_timeout(at);
        if !sent(&mut n)
            .iter()
            .all(|v| v["type"] != 5 && v["sync"] != "request")
        {
            next = at;
            break;
        }
    }
    assert_eq!(next, t + Duration::from_secs(60));
}

#[test]
fn bad_digest_syncs_are_dropped_and_the_library_policy_ignores_them() {
    let (mut n, link) = scripted();
    let t = Instant::ZERO + Duration::from_secs(1);
    for bad in [
        &b"{\"type\":95,\"routing\":0,\"dest\":5,\"from\":9,\"sync\":\"bogus\"}\0"[..],
        b"{\"type\":95,\"routing\":0,\"dest\":5,\"from\":9}\0",
        b"{\"type\":95,\"routing\":0,\"dest\":5,\"from\":9,\"sync\":7}\0",
    ] {
        n.handle_bytes(t, link, bad);
        let events: Vec<Event> = std::iter::from_fn(|| n.poll_event()).collect();
        assert!(
            events.iter().any(|e| matches!(
                e,
                Event::FrameDropped {
                    reason: DropReason::Malformed(Malformed::DigestSync),
                    ..
                }
            )),
            "{events:?}"
        );
        assert!(sent(&mut n).is_empty());
    }
    assert_eq!(n.link_count(), 1);
    // A request before the link's first node sync: dropped, not answered.
    let mut fresh = node(5, NodeSyncPolicy::Meshfleet);
    fresh.handle_link_up(Instant::ZERO, LinkId(2), LinkRole::AccessPoint);
    fresh.handle_bytes(
        t,
        LinkId(2),
        b"{\"type\":95,\"routing\":0,\"dest\":5,\"from\":9,\"sync\":\"request\",\"digest\":\"00\"}\0",
    );
    assert!(sent(&mut fresh).is_empty());
    // The library's policy treats type 95 as the library does: no answer, link kept.
    let mut stock = node(5, NodeSyncPolicy::Library);
    stock.handle_link_up(Instant::ZERO, LinkId(1), LinkRole::AccessPoint);
    stock.handle_bytes(
        Instant::ZERO,
        LinkId(1),
        b"{\"nodeId\":9,\"type\":6,\"dest\":5,\"from\":9}\0",
    );
    let _ = sent(&mut stock);
    for kind in ["hello", "request", "resend"] {
        let f = format!(
            "{{\"type\":95,\"routing\":0,\"dest\":5,\"from\":9,\"sync\":\"{kind}\",\"digest\":\"00\"}}\0"
        );
        stock.handle_bytes(t, LinkId(1), f.as_bytes());
        assert!(sent(&mut stock).is_empty(), "{kind}");
    }
    assert_eq!(stock.link_count(), 1);
}

#[test]
fn a_time_authority_tells_its_flag_in_a_whole_request_before_it_sends_digests() {
    // Node 5 has the clock; node 9 speaks digest sync. The library writes
    // `hasTimeAuthority` in requests only: after our whole reply node 9 holds "no
    // authority", so our next request is a whole one; then digests.
    let mut n = Node::new(Config {
        has_time_authority: true,
        ..Config::new(NodeId(5))
    });
    let link = LinkId(1);
    n.handle_link_up(Instant::ZERO, link, LinkRole::AccessPoint);
    n.handle_bytes(
        Instant::ZERO,
        link,
        b"{\"type\":95,\"routing\":0,\"dest\":5,\"from\":9,\"sync\":\"hello\"}\0",
    );
    // Node 9's first request: answered with our whole tree (a reply, no authority flag).
    n.handle_bytes(
        Instant::ZERO,
        link,
        b"{\"nodeId\":9,\"type\":5,\"dest\":5,\"from\":9}\0",
    );
    let out: Vec<_> = sent(&mut n)
        .into_iter()
        .filter(|v| v["type"] == 6)
        .collect();
    assert_eq!(out.len(), 1);
    assert!(out[0].get("hasTimeAuthority").is_none());
    // Our requests from then on, each answered by a digest reply from node 9.
    let nine = meshfleet_wire::SyncDigest::new(NodeId(9), false).finish();
    let reply = format!(
        "{{\"type\":95,\"routing\":0,\"dest\":5,\"from\":9,\"sync\":\"reply\",\"digest\":\"{nine:016x}\"}}\0"
    );
    let mut requests = vec![];
    while requests.len() < 3 {
        let at = n.poll_timeout().unwrap();
        n.handle_timeout(at);
        for v in sent(&mut n) {
            if v["type"] == 5 || v["sync"] == "request" {
                requests.push(v);
                n.handle_bytes(at, link, reply.as_bytes());
            }
        }
    }
    assert_eq!(requests[0]["type"], 5, "{requests:?}");
    assert_eq!(requests[0]["hasTimeAuthority"], true);
    assert_eq!(requests[1]["sync"], "request", "{requests:?}");
    assert_eq!(requests[2]["sync"], "request", "{requests:?}");
    assert_eq!(n.stats().digest_mismatches, 0);
}

#[test]
fn every_node_sync_leaves_in_the_order_it_was_made() {
    // Under meshfleet's policy requests are control frames like replies: a reply must not
    // overtake an earlier request in the driver's queue, or the peer would end up holding
    // the older tree while we believe (and our digests say) it holds the newer.
    let (mut n, link) = scripted();
    let t = Instant::ZERO + Duration::from_secs(1);
    n.handle_bytes(
        t,
        link,
        b"{\"type\":95,\"routing\":0,\"dest\":5,\"from\":9,\"sync\":\"request\",\"digest\":\"0000000000000001\"}\0",
    );
    n.handle_bytes(
        t,
        link,
        b"{\"type\":95,\"routing\":0,\"dest\":5,\"from\":9,\"sync\":\"resend\"}\0",
    );
    n.handle_timeout(t);
    n.handle_bytes(
        t,
        link,
        b"{\"nodeId\":9,\"type\":5,\"dest\":5,\"from\":9}\0",
    );
    let out: Vec<_> = std::iter::from_fn(|| n.poll_transmit()).collect();
    let kinds: Vec<String> = out
        .iter()
        .map(|t| {
            let v: serde_json::Value =
                serde_json::from_slice(&t.frame[..t.frame.len() - 1]).unwrap();
            format!("{}{}", v["type"], v["sync"].as_str().unwrap_or(""))
        })
        .collect();
    // A digest reply and "resend"; our whole request (node 9 asked for it); node 9's
    // whole request, answered by a digest (it now holds our tree).
    let syncs: Vec<&str> = kinds
        .iter()
        .map(String::as_str)
        .filter(|k| *k != "4")
        .collect();
    assert_eq!(syncs, ["95reply", "95resend", "5", "95reply"]);
    for (t, k) in out.iter().zip(&kinds) {
        if k.as_str() != "4" {
            assert_eq!(t.priority, meshfleet_mesh::Priority::Control, "{k}");
        }
    }
}
