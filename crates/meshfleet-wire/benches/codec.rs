//! Decode + route + encode of real frame shapes, against a straightforward
//! `serde_json::Value` implementation of the same work (the baseline).
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use meshfleet_wire::{decode, NodeId, NodeTree, Routing};
use serde_json::Value;

fn single() -> Vec<u8> {
    br#"{"type":9,"dest":3000000002,"from":1001,"msg":"temperature=21.5;humidity=40;battery=3.71;uptime=86400;rssi=-61"}"#.to_vec()
}

fn broadcast() -> Vec<u8> {
    br#"{"type":8,"dest":0,"from":1001,"msg":"temperature=21.5;humidity=40;battery=3.71;uptime=86400;rssi=-61"}"#.to_vec()
}

/// A tree of `n` nodes where every node has up to 4 children (ESP8266 MAX_CONN).
pub fn tree(n: u32) -> NodeTree {
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
    let (mut next, mut left) = (1_000_000, n);
    build(&mut next, &mut left, 0)
}

fn node_sync(n: u32) -> Vec<u8> {
    let t = tree(n);
    let mut v = serde_json::to_value(&t).unwrap();
    let o = v.as_object_mut().unwrap();
    o.insert("type".into(), 6.into());
    o.insert("dest".into(), 1.into());
    o.insert("from".into(), t.node_id.0.into());
    serde_json::to_vec(&v).unwrap()
}

/// Ours: typed decode, the routing decision, re-encode for forwarding.
fn ours(frame: &[u8]) -> usize {
    let m = decode(frame).unwrap();
    let forward = m.routing() == Routing::Broadcast || m.dest() != NodeId(42);
    if forward {
        m.encode_frame().len()
    } else {
        0
    }
}

/// Baseline: parse into a Value, read the same fields, re-serialize.
fn baseline(frame: &[u8]) -> usize {
    let v: Value = serde_json::from_slice(frame).unwrap();
    let ty = v.get("type").and_then(Value::as_i64).unwrap_or(-1);
    let routing = v
        .get("routing")
        .and_then(Value::as_i64)
        .unwrap_or(if ty == 8 { 2 } else { 1 });
    let dest = v.get("dest").and_then(Value::as_u64).unwrap_or(0);
    if routing == 2 || dest != 42 {
        let mut out = serde_json::to_vec(&v).unwrap();
        out.push(0);
        out.len()
    } else {
        0
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_route_encode");
    for (name, frame) in [
        ("single", single()),
        ("broadcast", broadcast()),
        ("node_sync_100", node_sync(100)),
        ("node_sync_1000", node_sync(1000)),
    ] {
        assert_eq!(ours(&frame), baseline(&frame), "both do the same work");
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_with_input(BenchmarkId::new("meshfleet", name), &frame, |b, f| {
            b.iter(|| ours(black_box(f)))
        });
        g.bench_with_input(
            BenchmarkId::new("serde_json_value", name),
            &frame,
            |b, f| b.iter(|| baseline(black_box(f))),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
