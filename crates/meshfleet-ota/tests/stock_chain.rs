//! StockSender and StockReceivers on a small in-process mesh.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Net, OtaEvents};
use meshfleet_mesh::{Config, Duration, Node, NodeId};
use meshfleet_ota::{
    md5_hex, OtaEvent, StockOffer, StockReceiver, StockReceiverConfig, StockSender,
    StockSenderConfig, StockStyle,
};

fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 7) as u8).collect()
}

fn receiver(id: u32, root: bool) -> Node {
    receiver_with(id, root, false)
}

fn receiver_with(id: u32, root: bool, fix_gap: bool) -> Node {
    let mut c = Config::new(NodeId(id));
    c.root = root;
    let mut n = Node::new(c);
    let mut rc = StockReceiverConfig::new("sensor", "ESP32");
    rc.gap_request_from_self = fix_gap;
    n.add_plugin(Box::new(StockReceiver::new(rc))).unwrap();
    n
}

/// S <- R1 <- R2 <- R3 (each station connects to the previous node's AP).
fn chain(style: StockStyle, img: &[u8], r1_root: bool) -> Net {
    let mut net = Net::new(Duration::from_millis(2));
    let s = net.add_id(1);
    let offer = StockOffer::new(img.to_vec(), "sensor", "ESP32", style).unwrap();
    net.nodes[s]
        .add_plugin(Box::new(StockSender::new(
            offer,
            StockSenderConfig::default(),
        )))
        .unwrap();
    for id in 2..=4 {
        let i = net.add(receiver(id, id == 2 && r1_root));
        net.connect(i, i - 1);
    }
    net.run_for(Duration::from_secs(2));
    let now = net.now;
    net.nodes[s]
        .with_plugin::<StockSender, _>(now, |s, ctx| s.start(ctx))
        .unwrap();
    net.drain(s);
    net
}

fn updated(net: &Net, i: usize) -> bool {
    net.nodes[i].plugin::<StockReceiver>().unwrap().updates() == 1
}

#[test]
fn unicast_updates_a_three_hop_chain() {
    let img = image(10_000);
    let mut net = chain(StockStyle::ALTERIOM, &img, false);
    assert!(
        net.run_until_cond(Duration::from_millis(100), Duration::from_secs(5), |n| {
            (1..=3).all(|i| updated(n, i))
        })
    );
    for i in 1..=3 {
        let rx = net.nodes[i].plugin::<StockReceiver>().unwrap();
        assert_eq!(rx.installed_image().unwrap(), &img[..]);
        assert_eq!(rx.current_md5(), md5_hex(&img));
    }
    let sender = net.nodes[0].plugin::<StockSender>().unwrap();
    assert_eq!(sender.completed().count(), 3);
    // 10 parts to each of 3 nodes, once each.
    assert_eq!(sender.stats().data_sent, 30);
    // The next announce is ignored: every node runs the announced MD5.
    net.run_for(Duration::from_secs(61));
    assert_eq!(
        net.nodes[0]
            .plugin::<StockSender>()
            .unwrap()
            .stats()
            .data_sent,
        30
    );
    assert!(sender_idle(&net) >= Duration::from_secs(60));
}

fn sender_idle(net: &Net) -> Duration {
    net.nodes[0]
        .plugin::<StockSender>()
        .unwrap()
        .idle_for(net.now)
        .unwrap()
}

#[test]
fn v141_style_updates_the_chain() {
    let img = image(3000);
    let mut net = chain(StockStyle::V141, &img, false);
    assert!(
        net.run_until_cond(Duration::from_millis(100), Duration::from_secs(5), |n| {
            (1..=3).all(|i| updated(n, i))
        })
    );
}

/// S <- R1 (root) <- R2 <- R3, broadcast mode, the broadcast of part 2 towards R3 lost.
fn broadcast_with_gap(fix_gap: bool) -> (Net, Vec<u8>) {
    let img = image(8 * 1024);
    let style = StockStyle::Alteriom {
        part_size: 1024,
        broadcasted: true,
    };
    let mut net = Net::new(Duration::from_millis(2));
    net.drop_if = Some(Box::new(|seen| {
        seen.to == 3
            && seen.ty() == Some(12)
            && seen.json.as_ref().unwrap()["partNo"] == 2
            && seen.json.as_ref().unwrap()["routing"] == 2
    }));
    let s = net.add_id(1);
    let offer = StockOffer::new(img.clone(), "sensor", "ESP32", style).unwrap();
    net.nodes[s]
        .add_plugin(Box::new(StockSender::new(
            offer,
            StockSenderConfig::default(),
        )))
        .unwrap();
    for id in 2..=4 {
        let i = net.add(receiver_with(id, id == 2, fix_gap));
        net.connect(i, i - 1);
    }
    net.run_for(Duration::from_secs(2));
    let now = net.now;
    net.nodes[s]
        .with_plugin::<StockSender, _>(now, |s, ctx| s.start(ctx))
        .unwrap();
    net.drain(s);
    (net, img)
}

fn request_froms(net: &Net) -> std::collections::BTreeSet<u64> {
    net.trace
        .iter()
        .filter(|s| s.ty() == Some(11))
        .map(|s| s.json.as_ref().unwrap()["from"].as_u64().unwrap())
        .collect()
}

#[test]
fn broadcast_mode_gap_reproduces_the_library_bug() {
    let (mut net, _) = broadcast_with_gap(false);
    net.run_for(Duration::from_secs(400));
    assert_eq!(net.dropped, 1);
    // R1 and R2 got everything from the root-led broadcast.
    assert!(updated(&net, 1) && updated(&net, 2));
    // R3 noticed the gap and fell back to unicast...
    assert!(net.ota_events(3).iter().any(|e| matches!(
        e,
        OtaEvent::BroadcastGap {
            expected: 2,
            got: 3
        }
    )));
    // ...but, like the library, asked in the root's name (from = 2): the answers went to
    // the root, R3 gave up and stays on the old firmware.
    assert_eq!(request_froms(&net), [2].into_iter().collect());
    assert!(net
        .ota_events(3)
        .iter()
        .any(|e| matches!(e, OtaEvent::GaveUp { part: 2, .. })));
    assert!(!updated(&net, 3));
}

#[test]
fn broadcast_mode_gap_falls_back_to_unicast_when_fixed() {
    let (mut net, img) = broadcast_with_gap(true);
    assert!(
        net.run_until_cond(Duration::from_millis(100), Duration::from_secs(5), |n| {
            (1..=3).all(|i| updated(n, i))
        })
    );
    // Only the root (R1, id 2) and the node that saw a gap (R3, id 4) requested anything.
    assert_eq!(request_froms(&net), [2, 4].into_iter().collect());
    assert!(net
        .ota_events(2)
        .iter()
        .all(|e| !matches!(e, OtaEvent::BroadcastGap { .. })));
    for i in 1..=3 {
        assert_eq!(
            net.nodes[i]
                .plugin::<StockReceiver>()
                .unwrap()
                .installed_image()
                .unwrap(),
            &img[..]
        );
    }
}

#[test]
fn a_lost_request_is_retried_after_30_s() {
    let img = image(3000);
    let mut net = Net::new(Duration::from_millis(2));
    let mut dropped_once = false;
    net.drop_if = Some(Box::new(move |seen| {
        let first_part1 =
            seen.ty() == Some(11) && seen.json.as_ref().unwrap()["partNo"] == 1 && !dropped_once;
        dropped_once |= first_part1;
        first_part1
    }));
    let s = net.add_id(1);
    let offer = StockOffer::new(img, "sensor", "ESP32", StockStyle::ALTERIOM).unwrap();
    net.nodes[s]
        .add_plugin(Box::new(StockSender::new(
            offer,
            StockSenderConfig::default(),
        )))
        .unwrap();
    let r = net.add(receiver(2, false));
    net.connect(r, s);
    net.run_for(Duration::from_secs(2));
    let now = net.now;
    net.nodes[s]
        .with_plugin::<StockSender, _>(now, |s, ctx| s.start(ctx))
        .unwrap();
    net.drain(s);
    net.run_for(Duration::from_secs(29));
    assert!(!updated(&net, r));
    net.run_for(Duration::from_secs(2));
    assert!(updated(&net, r));
}

#[test]
fn gives_up_after_ten_requests_and_resumes_on_the_next_announce() {
    let img = image(3000);
    let mut net = Net::new(Duration::from_millis(2));
    // The sender answers nothing for part 1 during the first 400 s.
    net.drop_if = Some(Box::new(|seen| {
        seen.ty() == Some(12)
            && seen.json.as_ref().unwrap()["partNo"] == 1
            && seen.at.as_micros() < 400_000_000
    }));
    let s = net.add_id(1);
    let offer = StockOffer::new(img, "sensor", "ESP32", StockStyle::ALTERIOM).unwrap();
    net.nodes[s]
        .add_plugin(Box::new(StockSender::new(
            offer,
            StockSenderConfig::default(),
        )))
        .unwrap();
    let r = net.add(receiver(2, false));
    net.connect(r, s);
    net.run_for(Duration::from_secs(2));
    let now = net.now;
    net.nodes[s]
        .with_plugin::<StockSender, _>(now, |s, ctx| s.start(ctx))
        .unwrap();
    net.drain(s);
    net.run_for(Duration::from_secs(300));
    let part1_requests = net
        .trace
        .iter()
        .filter(|s| s.ty() == Some(11) && s.json.as_ref().unwrap()["partNo"] == 1)
        .count();
    assert_eq!(part1_requests, 10);
    assert!(net
        .ota_events(r)
        .iter()
        .any(|e| matches!(e, OtaEvent::GaveUp { part: 1, .. })));
    // The periodic announce at 362 s restarts it from part 1 (the library keeps partNo),
    // but the sender is still mute; after 400 s the next announce (422 s) succeeds.
    net.run_for(Duration::from_secs(200));
    assert!(updated(&net, r));
    let part0_requests = net
        .trace
        .iter()
        .filter(|s| s.ty() == Some(11) && s.json.as_ref().unwrap()["partNo"] == 0)
        .count();
    assert_eq!(part0_requests, 1, "resumed at the part it stopped at");
}

#[test]
fn a_node_joining_mid_campaign_is_announced_to_at_once() {
    let img = image(3000);
    let mut net = Net::new(Duration::from_millis(2));
    let s = net.add_id(1);
    let offer = StockOffer::new(img, "sensor", "ESP32", StockStyle::ALTERIOM).unwrap();
    net.nodes[s]
        .add_plugin(Box::new(StockSender::new(
            offer,
            StockSenderConfig::default(),
        )))
        .unwrap();
    let now = net.now;
    net.nodes[s]
        .with_plugin::<StockSender, _>(now, |s, ctx| s.start(ctx))
        .unwrap();
    net.drain(s);
    net.run_for(Duration::from_secs(5));
    // Two nodes join within a second: one join announce each second at most.
    let a = net.add(receiver(2, false));
    net.connect(a, s);
    let b = net.add(receiver(3, false));
    net.connect(b, s);
    net.run_for(Duration::from_secs(3));
    assert!(updated(&net, a) && updated(&net, b));
    let announces: Vec<_> = net
        .ota_events(s)
        .into_iter()
        .filter(|e| matches!(e, OtaEvent::AnnounceSent { .. }))
        .collect();
    // The start, one join announce at once, and the second join held back by the 1 s limit.
    assert_eq!(announces.len(), 3, "{announces:?}");
}
