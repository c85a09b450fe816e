//! A campaign's scope (`docs/ota-protocol.md` 2.3.2): the source offers a campaign to the
//! nodes it targets, wherever they are, and the campaign spreads no further, so a
//! progressive rollout reaches exactly the nodes of the waves it started.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::{Net, OtaEvents};
use meshfleet_firmware::{pack, Artefact, PackOptions, SigningKey, Version};
use meshfleet_mesh::{Config, Duration, Node, NodeId};
use meshfleet_ota::proto::{campaign_id, OFFER};
use meshfleet_ota::store::image_info;
use meshfleet_ota::{BootManager, MemStore, MeshfleetConfig, MeshfleetOta, OtaEvent, Refusal};
use meshfleet_wire::Package;

const ROLE: &str = "sensor";
const HW: &str = "ESP32";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn image_of(version: &str) -> Vec<u8> {
    let v = Version::parse(version).unwrap();
    let mut x = 100 + v.major() * 100 + v.minor() * 10 + v.patch();
    (0..6_000)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (i / 512) % 2 == 0 {
                (i % 61) as u8
            } else {
                x as u8
            }
        })
        .collect()
}

fn artefact(version: &str) -> Artefact {
    let k = key();
    let mut o = PackOptions::new(ROLE, HW, Version::parse(version).unwrap());
    o.signing_key = Some(&k);
    o.chunk_size = 256;
    pack(&image_of(version), o).unwrap()
}

fn receiver(id: u32, store: &MemStore) -> Node {
    let mut c = MeshfleetConfig::new(ROLE, HW);
    c.trusted_key = Some(key().verifying_key());
    c.running = BootManager::new(store.clone(), 3).on_boot().unwrap().image;
    let mut n = Node::new(Config::new(NodeId(id)));
    n.add_plugin(Box::new(
        MeshfleetOta::new(c, Box::new(store.clone())).unwrap(),
    ))
    .unwrap();
    n
}

fn ota(net: &Net, i: usize) -> &MeshfleetOta {
    net.nodes[i].plugin::<MeshfleetOta>().unwrap()
}

fn target(net: &mut Net, i: usize, node: u32) -> bool {
    let now = net.now;
    let ok = net.nodes[i]
        .with_plugin::<MeshfleetOta, _>(now, |o, ctx| o.target(ctx, NodeId(node)))
        .unwrap();
    net.drain(i);
    ok
}

#[test]
fn a_scoped_campaign_reaches_the_targeted_nodes_only_wherever_they_are() {
    // gateway(1) -- relay(2) -- leaves 3, 4; leaf 5 on the gateway. All on 1.0.0.
    let new = artefact("2.0.0");
    let mut gw = Node::new(Config::new(NodeId(1)));
    let mut c = MeshfleetConfig::new(ROLE, HW);
    c.running = Some(image_info(&image_of("2.0.0"), "2.0.0"));
    let mut src = MeshfleetOta::source(c, Box::new(MemStore::new()), new.clone(), None);
    assert!(src.set_scope(Some(BTreeSet::new())));
    gw.add_plugin(Box::new(src)).unwrap();
    let stores: Vec<MemStore> = (0..4)
        .map(|_| MemStore::with_image(&image_of("1.0.0"), "1.0.0"))
        .collect();
    let mut net = Net::new(Duration::from_millis(2));
    net.add(gw);
    for (k, id) in [2u32, 3, 4, 5].into_iter().enumerate() {
        net.add(receiver(id, &stores[k]));
    }
    net.connect(1, 0); // relay 2 on the gateway
    net.connect(2, 1); // 3 on the relay
    net.connect(3, 1); // 4 on the relay
    net.connect(4, 0); // 5 on the gateway
    net.run_for(Duration::from_secs(20));
    // An empty scope: nobody is offered anything.
    assert_eq!(
        net.trace.iter().filter(|f| f.ty() == Some(OFFER)).count(),
        0
    );

    // Wave 1: leaf 3, behind the relay, which is not in it.
    assert!(target(&mut net, 0, 3));
    assert!(
        net.run_until_cond(Duration::from_millis(100), Duration::from_secs(60), |n| {
            ota(n, 2).is_complete()
        })
    );
    net.run_for(Duration::from_secs(30));
    for i in [1, 3, 4] {
        assert!(
            ota(&net, i).progress().is_none(),
            "node index {i} was not targeted"
        );
    }
    // The relay only routed it: nobody offered it the campaign.
    assert!(!net
        .trace
        .iter()
        .any(|f| f.to == 1 && f.ty() == Some(OFFER) && f.from != 0 && f.from != 2));

    // Wave 2: the relay and leaf 5. Leaf 4 stays out, although the relay now holds the
    // campaign and is its neighbour.
    assert!(target(&mut net, 0, 2));
    assert!(target(&mut net, 0, 5));
    assert!(net.run_until_cond(
        Duration::from_millis(100),
        Duration::from_secs(60),
        |n| ota(n, 1).is_complete() && ota(n, 4).is_complete()
    ));
    net.run_for(Duration::from_secs(60));
    assert!(
        ota(&net, 3).progress().is_none(),
        "leaf 4 was never targeted"
    );
    assert!(!net.trace.iter().any(|f| f.to == 3 && f.ty() == Some(OFFER)));

    // Last wave: leaf 4.
    assert!(target(&mut net, 0, 4));
    assert!(
        net.run_until_cond(Duration::from_millis(100), Duration::from_secs(60), |n| {
            ota(n, 3).is_complete()
        })
    );
}

#[test]
fn a_running_node_turned_into_a_scoped_source_offers_nothing_until_it_targets() {
    // A gateway's node: running, neighbours' CAPS exchanged, then handed the build with
    // `source_scope` set: its start offers to nobody (a scope set after the start would
    // come after the first offers).
    let new = artefact("2.0.0");
    let gw_store = MemStore::with_image(&image_of("1.0.0"), "1.0.0");
    let mut c = MeshfleetConfig::new(ROLE, HW);
    c.trusted_key = Some(key().verifying_key());
    c.source_scope = Some(BTreeSet::new());
    let mut gw = Node::new(Config::new(NodeId(1)));
    gw.add_plugin(Box::new(
        MeshfleetOta::new(c, Box::new(gw_store.clone())).unwrap(),
    ))
    .unwrap();
    let s2 = MemStore::with_image(&image_of("1.0.0"), "1.0.0");
    let s3 = MemStore::with_image(&image_of("1.0.0"), "1.0.0");
    let mut net = Net::new(Duration::from_millis(2));
    net.add(gw);
    net.add(receiver(2, &s2));
    net.add(receiver(3, &s3));
    net.connect(1, 0);
    net.connect(2, 0);
    net.run_for(Duration::from_secs(5));
    let now = net.now;
    assert!(net.nodes[0]
        .with_plugin::<MeshfleetOta, _>(now, |o, ctx| o.start_source(ctx, new.clone(), None))
        .unwrap());
    net.drain(0);
    net.run_for(Duration::from_secs(20));
    assert_eq!(
        net.trace.iter().filter(|f| f.ty() == Some(OFFER)).count(),
        0
    );
    assert!(target(&mut net, 0, 3));
    assert!(
        net.run_until_cond(Duration::from_millis(100), Duration::from_secs(60), |n| {
            ota(n, 2).is_complete()
        })
    );
    assert!(ota(&net, 1).progress().is_none());
}

#[test]
fn a_node_outside_an_offers_scope_refuses_it() {
    let new = artefact("2.0.0");
    let store = MemStore::with_image(&image_of("1.0.0"), "1.0.0");
    let mut net = Net::new(Duration::from_millis(2));
    net.add(receiver(2, &store));
    net.add_id(9);
    let w = net.connect(1, 0);
    net.run_for(Duration::from_secs(4));
    let offer = serde_json::json!({"from": 9, "routing": 0, "type": 701, "dest": 2,
        "campaign": campaign_id(new.manifest()), "origin": 9, "scope": [77],
        "manifest": serde_json::from_slice::<serde_json::Value>(&new.manifest().lean().to_json()).unwrap()});
    let frame = format!("{}\0", Package::from_serialize(&offer).unwrap().text()).into_bytes();
    net.inject(w, 0, &frame);
    net.run_for(Duration::from_secs(1));
    assert!(net.ota_events(0).iter().any(|e| matches!(
        e,
        OtaEvent::OfferRejected {
            kind: Refusal::OutOfScope,
            ..
        }
    )));
    assert!(ota(&net, 0).progress().is_none());
    // In scope: accepted.
    let mut offer = offer;
    offer["scope"] = serde_json::json!([2]);
    let frame = format!("{}\0", Package::from_serialize(&offer).unwrap().text()).into_bytes();
    net.inject(w, 0, &frame);
    net.run_for(Duration::from_secs(1));
    assert!(ota(&net, 0).progress().is_some());
}
