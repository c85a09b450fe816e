//! A meshfleet OTA receiver fed arbitrary frames (JSON packages 700-709 and binary chunk
//! frames) from a neighbour: no panic, state stays within its limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshfleet_mesh::{Config, Duration, Instant, LinkId, LinkRole, Node, NodeId};
use meshfleet_ota::{MemStore, MeshfleetConfig, MeshfleetOta};

fuzz_target!(|data: &[u8]| {
    let flash = MemStore::with_image(b"old firmware", "1.0.0");
    let Ok(plugin) = MeshfleetOta::new(MeshfleetConfig::new("sensor", "ESP32"), Box::new(flash))
    else {
        return;
    };
    let mut node = Node::new(Config::new(NodeId(21)));
    node.add_plugin(Box::new(plugin));
    let mut now = Instant::ZERO;
    node.handle_link_up(now, LinkId(1), LinkRole::AccessPoint);
    node.handle_bytes(
        now,
        LinkId(1),
        b"{\"nodeId\":8,\"type\":5,\"dest\":0,\"from\":8}\0",
    );
    // Prefix the input with a plausible package head half of the time, so the fuzzer gets
    // past the JSON envelope quickly.
    let (seed, rest) = data.split_first().map_or((0, data), |(s, r)| (*s, r));
    if seed & 1 == 1 {
        node.handle_bytes(now, LinkId(1), b"{\"from\":8,\"routing\":0,\"type\":70");
    }
    for chunk in rest.chunks(211) {
        now += Duration::from_millis(u64::from(seed) * 20);
        node.handle_bytes(now, LinkId(1), chunk);
        if node.poll_timeout().is_some_and(|t| t <= now) {
            node.handle_timeout(now);
        }
        while node.poll_transmit().is_some() {}
        while node.poll_event().is_some() {}
    }
});
