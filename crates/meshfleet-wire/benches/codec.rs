//! Decode + route + encode of real frame shapes, against a straightforward
//! `serde_json::Value` implementation of the same work (the baseline).
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use meshfleet_wire::{parse, NodeId, NodeTree, Routing};
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

/// Ours, as the node does it: parse the envelope; a relayed SINGLE is forwarded verbatim;
/// anything delivered locally (BROADCAST, node sync) is decoded into its typed message;
/// a BROADCAST is also forwarded verbatim. Returns bytes queued + a checksum of decoded work.
fn ours(frame: &[u8]) -> usize {
    let f = parse(frame).unwrap();
    let me = NodeId(42);
    let mut out = 0;
    if f.routing() == Routing::Single && f.dest() != me {
        let mut v = Vec::with_capacity(f.text().len() + 1);
        v.extend_from_slice(f.text().as_bytes());
        v.push(0);
        return black_box(v).len();
    }
    let m = f.message().unwrap();
    if f.routing() == Routing::Broadcast {
        let mut v = Vec::with_capacity(f.text().len() + 1);
        v.extend_from_slice(f.text().as_bytes());
        v.push(0);
        out += black_box(v).len();
    }
    black_box(m);
    out
}

/// Baseline, the obvious way: parse into a `Value`, read the routing fields, re-serialize
/// what is forwarded, keep the `Value` for local use.
fn baseline(frame: &[u8]) -> usize {
    let v: Value = serde_json::from_slice(frame).unwrap();
    let ty = v.get("type").and_then(Value::as_i64).unwrap_or(-1);
    let routing = v
        .get("routing")
        .and_then(Value::as_i64)
        .unwrap_or(match ty {
            8 => 2,
            9 | 3 => 1,
            _ => 0,
        });
    let dest = v.get("dest").and_then(Value::as_u64).unwrap_or(0);
    if routing == 1 && dest != 42 {
        let mut out = serde_json::to_vec(&v).unwrap();
        out.push(0);
        return black_box(out).len();
    }
    let mut n = 0;
    if routing == 2 {
        let mut out = serde_json::to_vec(&v).unwrap();
        out.push(0);
        n += black_box(out).len();
    }
    black_box(v);
    n
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_route_encode");
    for (name, frame) in [
        ("single_relay", single()),
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
