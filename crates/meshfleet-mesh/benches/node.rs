//! The node's hot paths: handling a node sync of a big tree, routing lookup in a 1,000-node
//! mesh, and forwarding a SINGLE; each against a `serde_json::Value` baseline doing the
//! same job the obvious way.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use meshfleet_mesh::{Config, Instant, LinkId, LinkRole, Node, NodeId, NodeSyncPolicy, NodeTree};
use meshfleet_wire::{Message, NodeSync};
use serde_json::Value;

/// A tree of `n` nodes, up to 4 children each, ids from `base`.
fn tree(base: u32, n: u32) -> NodeTree {
    fn build(next: &mut u32, left: &mut u32, depth: u32) -> NodeTree {
        let mut t = NodeTree::leaf(NodeId(*next));
        *next += 1;
        *left -= 1;
        for _ in 0..4 {
            if *left == 0 || depth > 12 {
                break;
            }
            t.subs.push(build(next, left, depth + 1));
        }
        t
    }
    let (mut next, mut left) = (base, n);
    build(&mut next, &mut left, 0)
}

/// A NODE_SYNC_REPLY as the library writes it (keys in its order, compact).
fn reply_frame(t: &NodeTree, dest: u32) -> Vec<u8> {
    Message::NodeSyncReply(NodeSync {
        tree: t.clone(),
        dest: NodeId(dest),
        from: t.node_id,
        extra: Vec::new(),
    })
    .encode_frame()
}

/// A node (id 1) with 4 links whose trees hold `per_link` nodes each.
fn mesh(per_link: u32) -> (Node, Vec<NodeTree>) {
    let mut node = Node::new(Config::new(NodeId(1)));
    let mut trees = vec![];
    for l in 0..4u32 {
        let t = tree(10_000 * (l + 1), per_link);
        node.handle_link_up(Instant::ZERO, LinkId(u64::from(l)), LinkRole::AccessPoint);
        node.handle_bytes(Instant::ZERO, LinkId(u64::from(l)), &reply_frame(&t, 1));
        trees.push(t);
    }
    while node.poll_transmit().is_some() {}
    while node.poll_event().is_some() {}
    (node, trees)
}

fn contains(v: &Value, id: u64) -> bool {
    v.get("nodeId").and_then(Value::as_u64) == Some(id)
        || v.get("subs")
            .and_then(Value::as_array)
            .is_some_and(|s| s.iter().any(|c| contains(c, id)))
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("node_sync");
    for n in [100u32, 1000] {
        // Alternate two trees so every sync is a change (the expensive path: store, re-sync
        // the other links, recompute the node list).
        let a = tree(500_000, n);
        let mut b = a.clone();
        b.subs.push(NodeTree::leaf(NodeId(999_999)));
        let frames = [reply_frame(&a, 1), reply_frame(&b, 1)];
        let mut node = Node::new(Config::new(NodeId(1)));
        node.handle_link_up(Instant::ZERO, LinkId(9), LinkRole::AccessPoint);
        let mut i = 0;
        g.bench_function(BenchmarkId::new("meshfleet", n), |bch| {
            bch.iter(|| {
                node.handle_bytes(Instant::ZERO, LinkId(9), black_box(&frames[i % 2]));
                i += 1;
                while node.poll_transmit().is_some() {}
                while node.poll_event().is_some() {}
            })
        });
        g.bench_function(BenchmarkId::new("serde_json_value", n), |bch| {
            let mut j = 0;
            bch.iter(|| {
                let f = &frames[j % 2];
                j += 1;
                let v: Value = serde_json::from_slice(&f[..f.len() - 1]).unwrap();
                let mut ids = vec![];
                fn walk(v: &Value, out: &mut Vec<u64>) {
                    if let Some(id) = v.get("nodeId").and_then(Value::as_u64) {
                        out.push(id);
                    }
                    for s in v
                        .get("subs")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        walk(s, out);
                    }
                }
                walk(&v, &mut ids);
                ids.sort_unstable();
                black_box(ids.len())
            })
        });
    }
    g.finish();

    // The node as it sits in a real mesh: four synced links, and a changed tree arriving on
    // one of them. Handling it in full means parsing and storing the tree, recomputing the
    // node list, and then (the timer fires at once) sending our new tree on the three other
    // links. Ids are 10 digits, as on ESPs, so the frames have their real size.
    let mut g = c.benchmark_group("node_sync_4_links");
    for n in [100u32, 1000] {
        let a = tree(3_000_000_000, n);
        let mut b = a.clone();
        b.subs.push(NodeTree::leaf(NodeId(3_999_999_999)));
        let frames = [reply_frame(&a, 1), reply_frame(&b, 1)];
        // The other links' peers never answer here: with one request in flight the node
        // would hold every re-sync after the first, and the re-syncs are what is measured.
        let mut node = Node::new(Config {
            node_sync: NodeSyncPolicy::Library,
            ..Config::new(NodeId(1))
        });
        for l in 1..4u32 {
            let t = tree(3_100_000_000 + 100_000 * l, 20);
            node.handle_link_up(Instant::ZERO, LinkId(u64::from(l)), LinkRole::AccessPoint);
            node.handle_bytes(Instant::ZERO, LinkId(u64::from(l)), &reply_frame(&t, 1));
        }
        node.handle_link_up(Instant::ZERO, LinkId(0), LinkRole::AccessPoint);
        let now = Instant::ZERO + meshfleet_mesh::Duration::from_secs(1);
        node.handle_bytes(now, LinkId(0), &frames[1]);
        node.handle_timeout(now);
        while node.poll_transmit().is_some() {}
        while node.poll_event().is_some() {}
        // What one iteration does: the change goes out on the three other links.
        node.handle_bytes(now, LinkId(0), &frames[0]);
        node.handle_timeout(now);
        let out: Vec<_> = std::iter::from_fn(|| node.poll_transmit()).collect();
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|t| t.frame.len() > frames[0].len()));
        while node.poll_event().is_some() {}
        let mut i = 1;
        g.bench_function(BenchmarkId::new("meshfleet", n), |bch| {
            bch.iter(|| {
                node.handle_bytes(now, LinkId(0), black_box(&frames[i % 2]));
                i += 1;
                node.handle_timeout(now);
                let mut sent = 0;
                while let Some(t) = node.poll_transmit() {
                    sent += t.frame.len();
                }
                while node.poll_event().is_some() {}
                black_box(sent)
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("route_lookup_1000");
    let (node, trees) = mesh(250);
    let values: Vec<Value> = trees
        .iter()
        .map(|t| serde_json::to_value(t).unwrap())
        .collect();
    let far = NodeId(40_000 + 249); // the last node of the last link
    assert!(node.route(far).is_some());
    g.bench_function("meshfleet", |b| b.iter(|| node.route(black_box(far))));
    g.bench_function("serde_json_value", |b| {
        b.iter(|| {
            values
                .iter()
                .position(|v| contains(v, u64::from(black_box(far).0)))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("forward_single_1000");
    let (mut node, _) = mesh(250);
    let mut frame =
        br#"{"type":9,"dest":40249,"from":10003,"msg":"temperature=21.5;humidity=40"}"#.to_vec();
    frame.push(0);
    g.bench_function("meshfleet", |b| {
        b.iter(|| {
            node.handle_bytes(Instant::ZERO, LinkId(0), black_box(&frame));
            black_box(node.poll_transmit())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
