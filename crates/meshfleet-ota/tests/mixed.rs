//! Signed meshfleet OTA across nodes without meshfleet OTA (issue 8, item 1): a receiver
//! behind a node that only routes painlessMesh frames (a stock relay, or a meshfleet node
//! without an OTA store) is reached by SINGLE-routed OFFER, NAK, STATUS and JSON chunks.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Net, OtaEvents};
use meshfleet_firmware::{pack, Artefact, PackOptions, SigningKey, Version};
use meshfleet_mesh::{Config, Duration, Node, NodeId};
use meshfleet_ota::{BootManager, MemStore, MeshfleetConfig, MeshfleetOta, OtaEvent, SlotStore};

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn image(seed: u8) -> Vec<u8> {
    (0..9_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
        .collect()
}

fn artefact() -> Artefact {
    let k = key();
    let mut o = PackOptions::new("sensor", "ESP32", Version::parse("1.1.0").unwrap());
    o.signing_key = Some(&k);
    o.chunk_size = 512;
    pack(&image(2), o).unwrap()
}

fn config(store: &MemStore) -> MeshfleetConfig {
    let mut c = MeshfleetConfig::new("sensor", "ESP32");
    c.trusted_key = Some(key().verifying_key());
    c.running = store
        .clone()
        .load_boot()
        .unwrap()
        .and_then(|r| r.images[0].clone());
    c
}

fn receiver(id: u32, store: &MemStore) -> Node {
    let mut n = Node::new(Config::new(NodeId(id)));
    n.add_plugin(Box::new(
        MeshfleetOta::new(config(store), Box::new(store.clone())).unwrap(),
    ))
    .unwrap();
    n
}

fn ota(net: &Net, i: usize) -> &MeshfleetOta {
    net.nodes[i].plugin::<MeshfleetOta>().unwrap()
}

fn booted(store: &MemStore) -> Vec<u8> {
    let mut bm = BootManager::new(store.clone(), 3);
    let d = bm.on_boot().unwrap();
    let size = d.image.as_ref().unwrap().size as usize;
    store.clone().read_slot(d.slot, 0, size).unwrap()
}

#[test]
fn a_signed_receiver_behind_a_node_without_meshfleet_ota_is_updated() {
    // source(0) - plain relay(1) - R(2) - R'(3): the plain node routes painlessMesh frames
    // and has no OTA plugin at all (like a stock C++ relay, or `meshfleet node` without
    // --ota-dir). R' is a meshfleet neighbour of R: R relays hop by hop as usual.
    let art = artefact();
    let mut net = Net::new(Duration::from_millis(2));
    let mut src = Node::new(Config::new(NodeId(1)));
    src.add_plugin(Box::new(MeshfleetOta::source(
        MeshfleetConfig::new("sensor", "ESP32"),
        Box::new(MemStore::new()),
        art.clone(),
        None,
    )))
    .unwrap();
    net.add(src);
    net.add_id(5);
    let s2 = MemStore::with_image(&image(1), "1.0.0");
    let s3 = MemStore::with_image(&image(1), "1.0.0");
    net.add(receiver(2, &s2));
    net.add(receiver(3, &s3));
    net.connect(1, 0);
    net.connect(2, 1);
    net.connect(3, 2);
    assert!(net.run_until_cond(
        Duration::from_millis(100),
        Duration::from_secs(60),
        |n| ota(n, 2).is_complete() && ota(n, 3).is_complete()
    ));
    assert_eq!(booted(&s2), image(2));
    assert_eq!(booted(&s3), image(2));
    // The plain node forwarded the protocol SINGLE-routed (routing 1), chunks as JSON.
    let routed = |ty: i64| {
        net.trace
            .iter()
            .filter(|s| {
                s.from == 1
                    && s.ty() == Some(ty)
                    && s.json.as_ref().is_some_and(|j| j["routing"] == 1)
            })
            .count()
    };
    assert!(routed(701) >= 1, "the OFFER crossed the plain node");
    assert!(
        routed(703) >= art.chunk_count() as usize,
        "every chunk crossed it"
    );
    // R to R' went hop by hop (binary frames), not routed.
    assert!(net
        .trace
        .iter()
        .any(|s| s.from == 2 && s.to == 3 && s.tag == Some(703)));
    // The source accounts for R as done.
    assert!(net
        .ota_events(0)
        .iter()
        .any(|e| matches!(e, OtaEvent::PeerDone { peer, .. } if *peer == NodeId(2))));
}

#[test]
fn a_remote_peer_is_bounded_and_made_only_by_a_caps() {
    // A SINGLE-routed NAK from a node that never sent a CAPS creates nothing and pulls
    // nothing.
    let art = artefact();
    let mut net = Net::new(Duration::from_millis(2));
    let mut src = Node::new(Config::new(NodeId(1)));
    src.add_plugin(Box::new(MeshfleetOta::source(
        MeshfleetConfig::new("sensor", "ESP32"),
        Box::new(MemStore::new()),
        art.clone(),
        None,
    )))
    .unwrap();
    net.add(src);
    net.add_id(9);
    let w = net.connect(1, 0);
    net.run_for(Duration::from_secs(5));
    let nak = serde_json::json!({"from": 9, "routing": 1, "type": 704, "dest": 1,
        "campaign": meshfleet_ota::proto::campaign_id(art.manifest()), "missing": [[0, 100]]});
    let pkg = meshfleet_wire::Package::from_serialize(&nak).unwrap();
    net.inject(w, 0, format!("{}\0", pkg.text()).as_bytes());
    net.run_for(Duration::from_secs(3));
    assert_eq!(ota(&net, 0).stats().chunks_sent, 0);
    assert_eq!(ota(&net, 0).peers().len(), 1, "no remote peer was made");
}

#[test]
fn the_origin_accounts_for_every_node_of_the_mesh() {
    // source(0) - R1(1) - {pump(2), current(3), newer(4)}; R1 - plain(5) - far(6).
    use meshfleet_ota::{NodeOutcome, Refusal};
    let art = artefact();
    let mut net = Net::new(Duration::from_millis(2));
    let mut src = Node::new(Config::new(NodeId(1)));
    src.add_plugin(Box::new(MeshfleetOta::source(
        MeshfleetConfig::new("sensor", "ESP32"),
        Box::new(MemStore::new()),
        art.clone(),
        None,
    )))
    .unwrap();
    net.add(src);
    let s1 = MemStore::with_image(&image(1), "1.0.0");
    net.add(receiver(2, &s1));
    let pump = MemStore::with_image(&image(1), "1.0.0");
    let mut c = config(&pump);
    c.role = "pump".into();
    let mut n = Node::new(Config::new(NodeId(3)));
    n.add_plugin(Box::new(
        MeshfleetOta::new(c, Box::new(pump.clone())).unwrap(),
    ))
    .unwrap();
    net.add(n);
    let current = MemStore::with_image(&image(2), "1.1.0");
    net.add(receiver(4, &current));
    let newer = MemStore::with_image(&image(3), "2.0.0");
    net.add(receiver(5, &newer));
    net.add_id(6);
    let far = MemStore::with_image(&image(1), "1.0.0");
    net.add(receiver(7, &far));
    net.connect(1, 0);
    for i in [2, 3, 4, 5] {
        net.connect(i, 1);
    }
    net.connect(6, 5);
    assert!(net.run_until_cond(
        Duration::from_millis(100),
        Duration::from_secs(60),
        |n| ota(n, 0).outcomes().len() >= 5
    ));
    let o = ota(&net, 0).outcomes().clone();
    assert_eq!(o.get(&NodeId(2)), Some(&NodeOutcome::Updated), "{o:?}");
    assert_eq!(
        o.get(&NodeId(3)),
        Some(&NodeOutcome::Incompatible(Refusal::Role)),
        "{o:?}"
    );
    assert_eq!(
        o.get(&NodeId(4)),
        Some(&NodeOutcome::AlreadyCurrent),
        "{o:?}"
    );
    assert_eq!(
        o.get(&NodeId(5)),
        Some(&NodeOutcome::Refused(Refusal::Downgrade)),
        "{o:?}"
    );
    assert_eq!(o.get(&NodeId(7)), Some(&NodeOutcome::Updated), "{o:?}");
    // The plain node (6) has no meshfleet OTA: it reports nothing, and is absent.
    assert!(!o.contains_key(&NodeId(6)));
    assert!(net.ota_events(0).iter().any(|e| matches!(
        e,
        OtaEvent::NodeReport { node, outcome: NodeOutcome::Updated, .. } if *node == NodeId(7)
    )));
}
