//! The operator's signed rollback command (ROLLBACK 707 / ROLLBACK_RESULT 708,
//! `docs/ota-protocol.md` 2.9) on the virtual-time harness: updated nodes go back to their
//! previous slot, across a relay, and stay there; forged, out-of-scope, expired, replayed
//! and mistaken commands are refused with a typed reason and change nothing.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Net, OtaEvents};
use meshfleet_firmware::{pack, Artefact, Intent, PackOptions, SigningKey, Version};
use meshfleet_mesh::{Config, Duration, Instant, Node, NodeId};
use meshfleet_ota::proto::{ROLLBACK_RESULT, STATUS};
use meshfleet_ota::store::image_info;
use meshfleet_ota::{
    boot, BootManager, MemStore, MeshfleetConfig, MeshfleetOta, OtaEvent, RollbackOutcome,
    RollbackRefusal, Slot, SlotStore,
};
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

fn sha_of(version: &str) -> meshfleet_firmware::Sha256Digest {
    artefact(version).manifest().sha256
}

/// The rollback command to `version`, for `nodes`, issued at `issued`, signed by `signer`.
fn command(version: &str, nodes: Vec<u32>, issued: u64, signer: &SigningKey) -> Intent {
    let mut c = Intent::rollback_to(
        ROLE,
        HW,
        Version::parse(version).unwrap(),
        sha_of(version),
        nodes,
        issued,
        3600,
    );
    c.sign(signer);
    c
}

/// Boots the store as a device does at start (a pending image boots and confirms).
fn config(store: &MemStore) -> MeshfleetConfig {
    let mut c = MeshfleetConfig::new(ROLE, HW);
    c.trusted_key = Some(key().verifying_key());
    let mut bm = BootManager::new(store.clone(), 3);
    let d = bm.on_boot().unwrap();
    if d.trial {
        bm.confirm().unwrap();
    }
    c.running = d.image;
    c
}

fn receiver(id: u32, store: &MemStore) -> Node {
    receiver_with(id, store, config(store))
}

fn receiver_with(id: u32, store: &MemStore, c: MeshfleetConfig) -> Node {
    let mut n = Node::new(Config::new(NodeId(id)));
    n.add_plugin(Box::new(
        MeshfleetOta::new(c, Box::new(store.clone())).unwrap(),
    ))
    .unwrap();
    n
}

/// The gateway: the source of `a`.
fn gateway(id: u32, a: &Artefact) -> Node {
    let mut n = Node::new(Config::new(NodeId(id)));
    let v = a.manifest().version.to_string();
    let mut c = MeshfleetConfig::new(ROLE, HW);
    c.running = Some(image_info(&image_of(&v), &v));
    n.add_plugin(Box::new(MeshfleetOta::source(
        c,
        Box::new(MemStore::new()),
        a.clone(),
        None,
    )))
    .unwrap();
    n
}

/// A device on `old` that took `new` and confirmed it (slot B active, A holds `old`).
fn updated_store(old: &str, new: &str) -> MemStore {
    let s = MemStore::with_image(&image_of(old), old);
    let img = image_of(new);
    let mut w = s.clone();
    w.write_slot(Slot::B, 0, &img).unwrap();
    boot::commit(&mut w, Slot::B, image_info(&img, new)).unwrap();
    let mut bm = BootManager::new(s.clone(), 3);
    bm.on_boot().unwrap();
    bm.confirm().unwrap();
    s
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

fn reports(net: &Net, i: usize) -> Vec<(NodeId, u64, RollbackOutcome, String)> {
    net.ota_events(i)
        .into_iter()
        .filter_map(|e| match e {
            OtaEvent::RollbackReport {
                node,
                issued,
                outcome,
                version,
            } => Some((node, issued, outcome, version)),
            _ => None,
        })
        .collect()
}

fn own_outcomes(net: &Net, i: usize) -> Vec<RollbackOutcome> {
    net.ota_events(i)
        .into_iter()
        .filter_map(|e| match e {
            OtaEvent::RollbackCommand { outcome, .. } => Some(outcome),
            _ => None,
        })
        .collect()
}

fn send(net: &mut Net, from: usize, to: u32, cmd: &Intent) -> bool {
    let now = net.now;
    let sent = net.nodes[from]
        .with_plugin::<MeshfleetOta, _>(now, |o, ctx| o.send_rollback(ctx, NodeId(to), cmd))
        .unwrap();
    net.drain(from);
    sent
}

/// A reboot: the node is rebuilt from its flash.
fn reboot(net: &mut Net, i: usize, id: u32, store: &MemStore) {
    net.replace(i, receiver(id, store));
}

#[test]
fn updated_nodes_go_back_to_their_previous_slot_across_a_relay_and_stay_there() {
    // gateway(1, source of 2.0.0) -> relay(2) -> leaf(3), both on 1.0.0.
    let new = artefact("2.0.0");
    let s2 = MemStore::with_image(&image_of("1.0.0"), "1.0.0");
    let s3 = MemStore::with_image(&image_of("1.0.0"), "1.0.0");
    let mut net = Net::new(Duration::from_millis(2));
    net.add(gateway(1, &new));
    net.add(receiver(2, &s2));
    net.add(receiver(3, &s3));
    net.connect(1, 0);
    net.connect(2, 1);
    assert!(net.run_until_cond(
        Duration::from_millis(100),
        Duration::from_secs(30),
        |n| ota(n, 1).is_complete() && ota(n, 2).is_complete()
    ));
    // Both reboot into 2.0.0 and confirm it.
    reboot(&mut net, 1, 2, &s2);
    reboot(&mut net, 2, 3, &s3);
    net.connect(1, 0);
    net.connect(2, 1);
    net.run_for(Duration::from_secs(10));
    assert_eq!(booted(&s2), image_of("2.0.0"));
    assert_eq!(booted(&s3), image_of("2.0.0"));

    // The operator orders both back to 1.0.0; the leaf is two hops away (SINGLE-routed
    // through the relay's mesh layer).
    let cmd = command("1.0.0", vec![2, 3], 5_000, &key());
    assert!(send(&mut net, 0, 2, &cmd));
    assert!(send(&mut net, 0, 3, &cmd));
    net.run_for(Duration::from_secs(2));
    let mut got = reports(&net, 0);
    got.sort_by_key(|r| r.0);
    assert_eq!(
        got,
        vec![
            (NodeId(2), 5_000, RollbackOutcome::Reverted, "1.0.0".into()),
            (NodeId(3), 5_000, RollbackOutcome::Reverted, "1.0.0".into()),
        ]
    );
    for s in [&s2, &s3] {
        let rec = s.clone().load_boot().unwrap().unwrap();
        assert_eq!((rec.active, rec.pending), (Slot::A, None));
        assert_eq!(rec.refused, vec![sha_of("2.0.0").to_string()]);
        assert_eq!(rec.intent_issued, 5_000);
        // The campaign of the image left is dropped: it must not spread from here.
        assert!(s.clone().load_state().unwrap().is_none());
    }
    assert!(ota(&net, 1).progress().is_none());
    let before = net.nodes[1]
        .plugin_mut::<MeshfleetOta>()
        .unwrap()
        .take_reverted();
    assert_eq!(before, Some(image_info(&image_of("1.0.0"), "1.0.0")));

    // The same command again (the sender repeats until it hears back): already there.
    assert!(send(&mut net, 0, 3, &cmd));
    net.run_for(Duration::from_secs(2));
    assert_eq!(
        reports(&net, 0).last().map(|r| (r.0, r.2)),
        Some((NodeId(3), RollbackOutcome::AlreadyThere))
    );

    // They restart on 1.0.0 and stay there: the gateway still offers 2.0.0, and they
    // refuse it as rolled back.
    reboot(&mut net, 1, 2, &s2);
    reboot(&mut net, 2, 3, &s3);
    net.connect(1, 0);
    net.connect(2, 1);
    net.run_for(Duration::from_secs(60));
    assert_eq!(booted(&s2), image_of("1.0.0"));
    assert_eq!(booted(&s3), image_of("1.0.0"));
    assert!(net.trace.iter().any(|f| f.from == 1
        && f.ty() == Some(STATUS)
        && f.json
            .as_ref()
            .is_some_and(|j| j["refusal"] == "rolled_back")));
}

/// A node (index 0, id 2) on 2.0.0 confirmed, previous slot 1.0.0, and an attacker or
/// operator console (index 1, id 9) next to it.
fn victim(unix_now: Option<u64>) -> (Net, MemStore, usize) {
    let store = updated_store("1.0.0", "2.0.0");
    let mut c = config(&store);
    c.unix_time = unix_now.map(|t| (Instant::ZERO, t));
    let mut net = Net::new(Duration::from_millis(2));
    net.add(receiver_with(2, &store, c));
    net.add_id(9);
    let w = net.connect(1, 0);
    net.run_for(Duration::from_secs(4));
    (net, store, w)
}

fn rollback_frame(from: u32, dest: u32, command: serde_json::Value) -> Vec<u8> {
    let v = serde_json::json!({"from": from, "routing": 1, "type": 707, "dest": dest,
                               "origin": from, "command": command});
    let pkg = Package::from_serialize(&v).unwrap();
    format!("{}\0", pkg.text()).into_bytes()
}

fn json(i: &Intent) -> serde_json::Value {
    serde_json::from_slice(&i.to_json()).unwrap()
}

fn answers(net: &Net) -> Vec<serde_json::Value> {
    net.trace
        .iter()
        .filter(|s| s.from == 0 && s.ty() == Some(ROLLBACK_RESULT))
        .filter_map(|s| s.json.clone())
        .collect()
}

#[test]
fn bad_commands_are_refused_typed_and_change_nothing() {
    let record = |s: &MemStore| s.clone().load_boot().unwrap().unwrap();
    let refused = RollbackOutcome::Refused;
    let cases: Vec<(&str, serde_json::Value, RollbackOutcome)> = vec![
        (
            "another key",
            json(&command(
                "1.0.0",
                vec![2],
                1000,
                &SigningKey::from_bytes(&[8; 32]),
            )),
            refused(RollbackRefusal::Signature),
        ),
        (
            "tampered scope",
            {
                let mut c = command("1.0.0", vec![77], 1000, &key());
                c.nodes = vec![2];
                json(&c)
            },
            refused(RollbackRefusal::Signature),
        ),
        (
            "another node",
            json(&command("1.0.0", vec![77], 1000, &key())),
            refused(RollbackRefusal::OutOfScope),
        ),
        (
            "an install intent",
            {
                let mut i = Intent::for_manifest(artefact("1.0.0").manifest(), vec![2], 1000, 3600);
                i.sign(&key());
                json(&i)
            },
            refused(RollbackRefusal::WrongAction),
        ),
        (
            "another role",
            {
                let mut c = Intent::rollback_to(
                    "relay",
                    HW,
                    Version::parse("1.0.0").unwrap(),
                    sha_of("1.0.0"),
                    vec![],
                    1000,
                    3600,
                );
                c.sign(&key());
                json(&c)
            },
            refused(RollbackRefusal::OtherRole),
        ),
        (
            "an image the previous slot does not hold",
            json(&command("0.9.0", vec![2], 1000, &key())),
            refused(RollbackRefusal::NotInPreviousSlot),
        ),
        (
            "not an intent",
            serde_json::json!({"format": 1, "boot": "A"}),
            refused(RollbackRefusal::Malformed),
        ),
    ];
    for (what, cmd, want) in cases {
        let (mut net, store, w) = victim(None);
        let rec = record(&store);
        net.inject(w, 0, &rollback_frame(9, 2, cmd));
        net.run_for(Duration::from_secs(1));
        assert_eq!(own_outcomes(&net, 0), vec![want], "{what}");
        assert_eq!(record(&store), rec, "{what}: boot record unchanged");
        assert_eq!(booted(&store), image_of("2.0.0"), "{what}");
        let a = answers(&net);
        if want == refused(RollbackRefusal::Signature) {
            assert!(a.is_empty(), "{what}: a forged command gets no answer");
        } else {
            let (o, r) = want.labels();
            assert_eq!(a.len(), 1, "{what}");
            assert_eq!(a[0]["outcome"], o, "{what}");
            assert_eq!(a[0]["refusal"], serde_json::json!(r), "{what}");
            assert_eq!(a[0]["dest"], 9, "{what}");
            assert_eq!(a[0]["version"], "2.0.0", "{what}: the version it runs");
        }
    }
    // Expired on a node that knows the time.
    let (mut net, store, w) = victim(Some(1000 + 7200));
    net.inject(
        w,
        0,
        &rollback_frame(9, 2, json(&command("1.0.0", vec![2], 1000, &key()))),
    );
    net.run_for(Duration::from_secs(1));
    assert_eq!(
        own_outcomes(&net, 0),
        vec![RollbackOutcome::Refused(RollbackRefusal::Expired)]
    );
    assert_eq!(booted(&store), image_of("2.0.0"));
    // A flooded (BROADCAST) command is not taken at all.
    let (mut net, store, w) = victim(None);
    let v = serde_json::json!({"from": 9, "routing": 2, "type": 707, "dest": 0,
        "command": json(&command("1.0.0", vec![2], 1000, &key()))});
    let frame = format!("{}\0", Package::from_serialize(&v).unwrap().text()).into_bytes();
    net.inject(w, 0, &frame);
    net.run_for(Duration::from_secs(1));
    assert!(own_outcomes(&net, 0).is_empty());
    assert_eq!(booted(&store), image_of("2.0.0"));
}

#[test]
fn a_used_command_cannot_be_replayed_after_the_next_update() {
    let (mut net, store, w) = victim(None);
    let cmd = json(&command("1.0.0", vec![2], 1000, &key()));
    net.inject(w, 0, &rollback_frame(9, 2, cmd.clone()));
    net.run_for(Duration::from_secs(1));
    assert_eq!(own_outcomes(&net, 0), vec![RollbackOutcome::Reverted]);
    assert_eq!(booted(&store), image_of("1.0.0"));
    // The driver learns that the node must restart to run it.
    assert!(net.nodes[0]
        .plugin_mut::<MeshfleetOta>()
        .unwrap()
        .take_reverted()
        .is_some());

    // Later the node takes 2.1.0 (B), confirmed; A still holds 1.0.0.
    let img = image_of("2.1.0");
    let mut flash = store.clone();
    flash.write_slot(Slot::B, 0, &img).unwrap();
    boot::commit(&mut flash, Slot::B, image_info(&img, "2.1.0")).unwrap();
    let mut bm = BootManager::new(store.clone(), 3);
    bm.on_boot().unwrap();
    bm.confirm().unwrap();
    net.replace(0, receiver(2, &store));
    let w = net.connect(1, 0);
    net.run_for(Duration::from_secs(4));
    // The old command names what the previous slot holds, but it was used.
    net.inject(w, 0, &rollback_frame(9, 2, cmd));
    net.run_for(Duration::from_secs(1));
    assert_eq!(
        own_outcomes(&net, 0).last(),
        Some(&RollbackOutcome::Refused(RollbackRefusal::Replayed))
    );
    assert_eq!(booted(&store), image_of("2.1.0"));
    // A new one works.
    net.inject(
        w,
        0,
        &rollback_frame(9, 2, json(&command("1.0.0", vec![2], 2000, &key()))),
    );
    net.run_for(Duration::from_secs(1));
    assert_eq!(
        own_outcomes(&net, 0).last(),
        Some(&RollbackOutcome::Reverted)
    );
    assert_eq!(booted(&store), image_of("1.0.0"));
}

#[test]
fn a_node_on_trial_abandons_the_trial_image() {
    // Committed 2.0.0, booted on trial, not confirmed yet.
    let store = MemStore::with_image(&image_of("1.0.0"), "1.0.0");
    let img = image_of("2.0.0");
    let mut w = store.clone();
    w.write_slot(Slot::B, 0, &img).unwrap();
    boot::commit(&mut w, Slot::B, image_info(&img, "2.0.0")).unwrap();
    let mut c = MeshfleetConfig::new(ROLE, HW);
    c.trusted_key = Some(key().verifying_key());
    let d = BootManager::new(store.clone(), 3).on_boot().unwrap();
    assert!(d.trial);
    c.running = d.image;
    c.on_trial = true;
    let mut net = Net::new(Duration::from_millis(2));
    net.add(receiver_with(2, &store, c));
    net.add_id(9);
    let wire = net.connect(1, 0);
    net.run_for(Duration::from_secs(4));
    net.inject(
        wire,
        0,
        &rollback_frame(9, 2, json(&command("1.0.0", vec![], 10, &key()))),
    );
    net.run_for(Duration::from_secs(1));
    assert_eq!(own_outcomes(&net, 0), vec![RollbackOutcome::Reverted]);
    let rec = store.clone().load_boot().unwrap().unwrap();
    assert_eq!((rec.active, rec.pending), (Slot::A, None));
    assert_eq!(booted(&store), image_of("1.0.0"));
}
