//! A node with two links fed arbitrary bytes on one of them (and timers run): it must not
//! panic, and its state must stay consistent (never lists itself, never exceeds limits).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshfleet_mesh::{Config, Duration, Instant, LinkId, LinkRole, Node, NodeId};

fuzz_target!(|data: &[u8]| {
    let mut node = Node::new(Config::new(NodeId(21)));
    let mut now = Instant::ZERO;
    node.handle_link_up(now, LinkId(1), LinkRole::AccessPoint);
    node.handle_link_up(now, LinkId(2), LinkRole::Station);
    node.handle_bytes(
        now,
        LinkId(2),
        b"{\"nodeId\":8,\"type\":6,\"dest\":21,\"from\":8}\0",
    );
    for chunk in data.chunks(97) {
        now += Duration::from_millis(u64::from(chunk[0]) * 50);
        node.handle_bytes(now, LinkId(1), chunk);
        if node.poll_timeout().is_some_and(|t| t <= now) {
            node.handle_timeout(now);
        }
        while node.poll_transmit().is_some() {}
        while node.poll_event().is_some() {}
        assert!(
            node.link_count() <= 2,
            "links only close, never appear from input"
        );
        assert!(
            !node.nodes().contains(&NodeId(21)),
            "a node never lists itself"
        );
    }
});
