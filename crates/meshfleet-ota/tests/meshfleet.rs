//! The meshfleet OTA protocol on small in-process meshes: chain, tree, loss, reboot, late
//! joiner, rejections, and bytes on the wire against stock OTA.

#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

mod common;

use common::{Net, OtaEvents};
use meshfleet_firmware::{pack, Artefact, Codec, PackOptions, SigningKey, Version};
use meshfleet_mesh::{Config, Duration, Node, NodeId};
use meshfleet_ota::store::image_info;
use meshfleet_ota::{
    BootManager, DecodeGap, MemStore, MeshfleetConfig, MeshfleetOta, OtaEvent, Slot, SlotStore,
    StockOffer, StockReceiver, StockReceiverConfig, StockSender, StockSenderConfig, StockStyle,
    VerifyFailure,
};

const ROLE: &str = "sensor";
const HW: &str = "ESP8266";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn image(len: usize, seed: u64) -> Vec<u8> {
    // Half compressible, half noise: a firmware-like mix.
    let mut x = seed | 1;
    (0..len)
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

fn artefact(img: &[u8], version: &str, chunk_size: u32) -> Artefact {
    artefact_with_window(img, version, chunk_size, meshfleet_firmware::DEFAULT_WINDOW)
}

fn artefact_with_window(img: &[u8], version: &str, chunk_size: u32, window: u32) -> Artefact {
    let k = key();
    let mut o = PackOptions::new(ROLE, HW, Version::parse(version).unwrap());
    o.signing_key = Some(&k);
    o.chunk_size = chunk_size;
    o.window = window;
    pack(img, o).unwrap()
}

fn config(store: &MemStore) -> MeshfleetConfig {
    let mut c = MeshfleetConfig::new(ROLE, HW);
    c.trusted_key = Some(key().verifying_key());
    c.running = store
        .clone()
        .load_boot()
        .unwrap()
        .and_then(|r| r.images[0].clone());
    c
}

fn receiver_node(id: u32, store: &MemStore) -> Node {
    receiver_node_with(id, store, config(store))
}

fn receiver_node_with(id: u32, store: &MemStore, config: MeshfleetConfig) -> Node {
    let mut n = Node::new(Config::new(NodeId(id)));
    let ota = MeshfleetOta::new(config, Box::new(store.clone())).unwrap();
    n.add_plugin(Box::new(ota)).unwrap();
    n
}

/// A receiver that can give its decoder at most `max_window` bytes of window (an ESP8266).
fn small_receiver_node(id: u32, store: &MemStore, max_window: u32) -> Node {
    let mut c = config(store);
    c.max_window = max_window;
    receiver_node_with(id, store, c)
}

fn source_node(id: u32, a: &Artefact) -> Node {
    let mut n = Node::new(Config::new(NodeId(id)));
    let store = MemStore::new();
    let ota = MeshfleetOta::source(config(&store), Box::new(store), a.clone(), None);
    n.add_plugin(Box::new(ota)).unwrap();
    n
}

fn ota(net: &Net, i: usize) -> &MeshfleetOta {
    net.nodes[i].plugin::<MeshfleetOta>().unwrap()
}

fn complete(net: &Net, i: usize) -> bool {
    ota(net, i).is_complete()
}

/// The image a device boots after the update (what the bootloader would run).
fn booted_image(store: &MemStore) -> Vec<u8> {
    let mut bm = BootManager::new(store.clone(), 3);
    let d = bm.on_boot().unwrap();
    let size = d.image.as_ref().unwrap().size as usize;
    store.clone().read_slot(d.slot, 0, size).unwrap()
}

struct Setup {
    net: Net,
    stores: Vec<MemStore>,
    new: Vec<u8>,
    art: Artefact,
}

/// Source at index 0; receivers 1.. connected as `parent[i-1]` says.
fn setup(parents: &[usize], new_len: usize) -> Setup {
    let old = image(new_len, 1);
    let new = image(new_len, 2);
    let art = artefact(&new, "1.1.0", 1024);
    let mut net = Net::new(Duration::from_millis(2));
    net.add(source_node(1, &art));
    let mut stores = vec![MemStore::new()];
    for (k, &p) in parents.iter().enumerate() {
        let s = MemStore::with_image(&old, "1.0.0");
        let i = net.add(receiver_node(k as u32 + 2, &s));
        stores.push(s);
        net.connect(i, p);
    }
    Setup {
        net,
        stores,
        new,
        art,
    }
}

fn all_complete(net: &Net) -> bool {
    (1..net.nodes.len()).all(|i| complete(net, i))
}

/// Transfer units of `art`: its payload chunks plus the hash pages of its chunk table.
fn units(art: &Artefact) -> usize {
    (art.chunk_count() + art.manifest().page_count()) as usize
}

/// Bytes of `art`'s units: the payload and the chunk table.
fn unit_bytes(art: &Artefact) -> u64 {
    art.payload().len() as u64 + 16 * u64::from(art.chunk_count())
}

/// Chunk frames (binary or JSON, hash pages included) from `from` to `to`.
fn chunk_frames(net: &Net, from: usize, to: usize) -> usize {
    net.trace
        .iter()
        .filter(|s| s.from == from && s.to == to && s.ty() == Some(703))
        .count()
}

#[test]
fn chain_pipelines_and_each_chunk_crosses_each_link_once() {
    let Setup {
        mut net,
        stores,
        new,
        art,
    } = setup(&[0, 1, 2], 40_000);
    assert!(net.run_until_cond(
        Duration::from_millis(100),
        Duration::from_secs(30),
        all_complete
    ));
    let n = units(&art);
    for i in 1..=3 {
        assert_eq!(chunk_frames(&net, i - 1, i), n, "link {} -> {i}", i - 1);
        assert_eq!(chunk_frames(&net, i, i - 1), 0);
        assert_eq!(booted_image(&stores[i]), new);
        assert!(net
            .ota_events(i)
            .iter()
            .any(|e| matches!(e, OtaEvent::Applied { .. })));
    }
    // Binary frames were used (every node advertised `bin`).
    assert!(net.trace.iter().any(|s| s.tag == Some(703)));
    // Subtree completion propagates to the source.
    net.run_for(Duration::from_secs(1));
    assert!(ota(&net, 0).subtree_done());
}

#[test]
fn tree_with_loss_repairs_by_nak() {
    // 0 -> {1, 2}; 1 -> {3, 4}; 2 -> {5}
    let mut s = setup(&[0, 0, 1, 1, 2], 30_000);
    let mut k = 0u32;
    s.net.drop_if = Some(Box::new(move |seen| {
        if seen.ty() == Some(703) {
            k += 1;
            k % 7 == 3 // ~14% of chunk frames lost
        } else {
            false
        }
    }));
    assert!(s.net.run_until_cond(
        Duration::from_millis(100),
        Duration::from_secs(60),
        all_complete
    ));
    assert!(s.net.dropped > 5);
    for i in 1..=5 {
        assert_eq!(booted_image(&s.stores[i]), s.new);
        assert!(ota(&s.net, i).stats().naks_sent >= 1);
    }
    // NAKs only ever go one hop upstream: never to a child.
    for seen in s.net.trace.iter().filter(|x| x.ty() == Some(704)) {
        let parent_of = [usize::MAX, 0, 0, 1, 1, 2];
        assert_eq!(seen.to, parent_of[seen.from]);
    }
    let naks = s.net.trace.iter().filter(|x| x.ty() == Some(704)).count();
    let lost = s.net.dropped;
    // Bounded by the links and the losses, not by nodes squared.
    assert!(naks <= 5 * 2 + 2 * lost, "{naks} NAKs for {lost} losses");
}

#[test]
fn a_rebooted_node_resumes_and_fetches_only_missing_chunks() {
    let mut s = setup(&[0, 1], 60_000);
    let n = units(&s.art) as u32;
    // Run until node 2 holds some but not all chunks.
    assert!(s
        .net
        .run_until_cond(Duration::from_millis(20), Duration::from_secs(20), |net| {
            ota(net, 2)
                .progress()
                .is_some_and(|(_, have, _)| have >= n / 2)
        }));
    let before = ota(&s.net, 2).progress().unwrap().1;
    assert!(before < n);
    // Power cut: everything in RAM is gone, the store stays.
    let store = s.stores[2].clone();
    s.net.replace(2, receiver_node(3, &store));
    let persisted = ota(&s.net, 2).progress().unwrap().1;
    assert!(persisted + 16 >= before, "at most save_every chunks lost");
    s.net.connect(2, 1);
    assert!(s.net.run_until_cond(
        Duration::from_millis(100),
        Duration::from_secs(30),
        all_complete
    ));
    let fetched_after = ota(&s.net, 2).stats().chunks_received;
    assert_eq!(fetched_after, u64::from(n - persisted));
    assert_eq!(booted_image(&store), s.new);
}

#[test]
fn a_late_joiner_gets_an_offer_and_the_chunks() {
    let mut s = setup(&[0, 1], 20_000);
    assert!(s.net.run_until_cond(
        Duration::from_millis(100),
        Duration::from_secs(20),
        all_complete
    ));
    let old = image(20_000, 1);
    let store = MemStore::with_image(&old, "1.0.0");
    let late = s.net.add(receiver_node(9, &store));
    s.net.connect(late, 2);
    assert!(s
        .net
        .run_until_cond(Duration::from_millis(100), Duration::from_secs(20), |net| {
            complete(net, late)
        }));
    // Served by its neighbour (node 2), which relays from its own store.
    assert_eq!(chunk_frames(&s.net, 2, late), units(&s.art));
    assert_eq!(booted_image(&store), s.new);
}

#[test]
fn json_chunks_for_a_neighbour_without_binary_frames() {
    let old = image(8_000, 1);
    let new = image(8_000, 2);
    let art = artefact(&new, "2.0.0", 1024);
    let mut net = Net::new(Duration::from_millis(2));
    net.add(source_node(1, &art));
    let store = MemStore::with_image(&old, "1.0.0");
    let mut n = Node::new(Config::new(NodeId(2)));
    let mut c = config(&store);
    c.binary = false;
    n.add_plugin(Box::new(
        MeshfleetOta::new(c, Box::new(store.clone())).unwrap(),
    ))
    .unwrap();
    let r = net.add(n);
    net.connect(r, 0);
    assert!(
        net.run_until_cond(Duration::from_millis(100), Duration::from_secs(20), |n| {
            complete(n, r)
        })
    );
    assert!(net.trace.iter().all(|s| s.tag.is_none()));
    assert_eq!(booted_image(&store), new);
}

// ------------------------------------------------------------------ rejections

/// A receiver offered `art` by a source; returns (net, receiver store).
fn offer_to_one(art: &Artefact, trusted: bool, running_version: &str) -> (Net, MemStore) {
    let old = image(4_000, 1);
    let mut net = Net::new(Duration::from_millis(2));
    net.add(source_node(1, art));
    let store = MemStore::with_image(&old, running_version);
    let mut c = config(&store);
    if !trusted {
        c.trusted_key = None;
    }
    let mut n = Node::new(Config::new(NodeId(2)));
    n.add_plugin(Box::new(
        MeshfleetOta::new(c, Box::new(store.clone())).unwrap(),
    ))
    .unwrap();
    let r = net.add(n);
    net.connect(r, 0);
    net.run_for(Duration::from_secs(10));
    (net, store)
}

fn rejected(net: &Net, needle: &str) -> bool {
    net.ota_events(1)
        .iter()
        .any(|e| matches!(e, OtaEvent::OfferRejected { reason, .. } if reason.contains(needle)))
}

fn still_old(store: &MemStore) {
    assert_eq!(booted_image(store), image(4_000, 1));
}

#[test]
fn rejects_a_forged_signature() {
    let mut art = artefact(&image(4_000, 2), "1.1.0", 256);
    let (mut m, p) = art.clone().into_parts();
    m.size += 0; // keep the manifest, forge the signature
    let mut sig = m.signature.unwrap();
    sig.0[0] ^= 1;
    m.signature = Some(sig);
    art = Artefact::from_parts(m, p).unwrap();
    let (net, store) = offer_to_one(&art, true, "1.0.0");
    assert!(rejected(&net, "signature"));
    // The source learnt it too (as the peer's refusal, not its own), and sent no chunk.
    assert!(net
        .ota_events(0)
        .iter()
        .any(|e| matches!(e, OtaEvent::PeerRefused { peer, .. } if *peer == NodeId(2))));
    assert!(!net
        .ota_events(0)
        .iter()
        .any(|e| matches!(e, OtaEvent::OfferRejected { .. })));
    assert_eq!(chunk_frames(&net, 0, 1), 0);
    still_old(&store);
}

#[test]
fn rejects_a_downgrade() {
    let art = artefact(&image(4_000, 2), "0.9.0", 256);
    let (mut net, store) = offer_to_one(&art, true, "1.0.0");
    // The sender sees from the CAPS that it would be a downgrade and does not offer it.
    let offers = |net: &Net| {
        net.trace
            .iter()
            .filter(|s| s.from == 0 && s.ty() == Some(701))
            .count()
    };
    assert_eq!(offers(&net), 0);
    // A sender that ignores the CAPS gets a refusal.
    net.inject(0, 1, &offer_frame(&art, 1, 2));
    net.run_for(Duration::from_secs(1));
    assert!(rejected(&net, "downgrade"));
    still_old(&store);
}

#[test]
fn refuses_an_image_it_rolled_back_unless_forced() {
    let art = artefact(&image(4_000, 2), "1.1.0", 256);
    let old = image(4_000, 1);
    let mut net = Net::new(Duration::from_millis(2));
    net.add(source_node(1, &art));
    let store = MemStore::with_image(&old, "1.0.0");
    // This node tried the image before and rolled it back.
    let mut flash = store.clone();
    let mut rec = flash.load_boot().unwrap().unwrap();
    rec.refused.push(art.manifest().sha256.to_string());
    flash.save_boot(&rec).unwrap();
    let mut n = Node::new(Config::new(NodeId(2)));
    n.add_plugin(Box::new(
        MeshfleetOta::new(config(&store), Box::new(store.clone())).unwrap(),
    ))
    .unwrap();
    let r = net.add(n);
    net.connect(r, 0);
    net.run_for(Duration::from_secs(10));
    assert!(rejected(&net, "rolled back"));
    still_old(&store);
}

#[test]
fn rejects_a_tampered_chunk_and_repairs_it() {
    let new = image(4_000, 2);
    let art = artefact(&new, "1.1.0", 256);
    let old = image(4_000, 1);
    let mut net = Net::new(Duration::from_millis(2));
    net.add(source_node(1, &art));
    let store = MemStore::with_image(&old, "1.0.0");
    let r = net.add(receiver_node(2, &store));
    net.connect(r, 0);
    // Let the offer and the hash page through, then inject a tampered last chunk as if
    // from the source, before the real one arrives.
    net.run_until_cond(Duration::from_millis(1), Duration::from_secs(2), |n| {
        ota(n, 1).progress().is_some_and(|(_, have, _)| have >= 1)
    });
    let last = art.chunk_count() - 1;
    let unit = meshfleet_ota::proto::Layout::of(art.manifest()).of_chunk(last);
    assert!(
        ota(&net, 1).progress().unwrap().1 < unit,
        "the real chunk came first"
    );
    let mut bad = art.chunk(last).unwrap().to_vec();
    bad[10] ^= 0x55;
    let id = ota(&net, 1).progress().unwrap().0;
    let frame = meshfleet_mesh::wire::binary_frame(&meshfleet_ota::proto::encode_binary_chunk(
        id, unit, &bad,
    ));
    net.inject(0, r, &frame);
    assert!(net.ota_events(1).iter().any(|e| matches!(
        e,
        OtaEvent::ChunkRejected {
            index,
            reason: "hash",
            ..
        } if *index == unit
    )));
    assert_eq!(ota(&net, 1).stats().chunks_rejected, 1);
    assert!(
        net.run_until_cond(Duration::from_millis(100), Duration::from_secs(20), |n| {
            complete(n, 1)
        })
    );
    assert_eq!(booted_image(&store), new);
}

#[test]
fn rejects_a_truncated_image_at_verification() {
    // An unsigned artefact (no trusted key) whose payload was cut short and re-hashed: every
    // chunk matches its manifest hash, but the stream ends before the declared size.
    let new = image(4_000, 2);
    let art = artefact(&new, "1.1.0", 256);
    let (mut m, mut p) = art.into_parts();
    p.truncate(p.len() - 100);
    m.compressed_size = p.len() as u64;
    m.set_chunk_table(
        p.chunks(256)
            .map(meshfleet_firmware::ChunkHash::of)
            .collect(),
    );
    m.payload_sha256 = meshfleet_firmware::Sha256Digest::of(&p);
    m.key_id = None;
    m.signature = None;
    let art = Artefact::from_parts(m, p).unwrap();
    let (net, store) = offer_to_one(&art, false, "1.0.0");
    assert!(net.ota_events(1).iter().any(|e| matches!(
        e,
        OtaEvent::VerifyFailed {
            reason: VerifyFailure::Undecodable
                | VerifyFailure::Image(meshfleet_firmware::VerifyError::Decode(_)),
            ..
        }
    )));
    assert!(!net
        .ota_events(1)
        .iter()
        .any(|e| matches!(e, OtaEvent::Applied { .. })));
    still_old(&store);
}

// ------------------------------------------------------------------ bytes on the wire

fn ota_bytes(net: &Net, types: &[i64]) -> usize {
    net.trace
        .iter()
        .filter(|s| s.ty().is_some_and(|t| types.contains(&t)))
        .map(|s| s.len)
        .sum()
}

#[test]
fn bytes_on_the_wire_per_firmware_byte_stock_vs_meshfleet() {
    let path = common::shared_dir().join("firmware/esp8266-micropython-v1.9.4-113.bin");
    let img = std::fs::read(&path).unwrap();

    // Stock: StockSender -> StockReceiver, one hop, Alteriom 1024-byte parts.
    let mut net = Net::new(Duration::from_millis(1));
    let s = net.add_id(1);
    let offer = StockOffer::new(img.clone(), ROLE, HW, StockStyle::ALTERIOM).unwrap();
    net.nodes[s]
        .add_plugin(Box::new(StockSender::new(
            offer,
            StockSenderConfig::default(),
        )))
        .unwrap();
    let mut rn = Node::new(Config::new(NodeId(2)));
    let mut rc = StockReceiverConfig::new(ROLE, HW);
    rc.keep_image = false;
    rn.add_plugin(Box::new(StockReceiver::new(rc))).unwrap();
    let r = net.add(rn);
    net.connect(r, s);
    net.run_for(Duration::from_secs(1));
    let now = net.now;
    net.nodes[s].with_plugin::<StockSender, _>(now, |x, ctx| x.start(ctx));
    net.drain(s);
    assert!(
        net.run_until_cond(Duration::from_secs(1), Duration::from_secs(60), |n| {
            n.nodes[1].plugin::<StockReceiver>().unwrap().updates() == 1
        })
    );
    let stock = ota_bytes(&net, &[10, 11, 12]) as f64 / img.len() as f64;

    // meshfleet: deflate artefact, binary chunks, one hop; the default 32 KiB window (ESP32
    // receivers) and the 8 KiB window an ESP8266 can hold.
    let (mf, payload) = meshfleet_bytes_per_byte(&img, 32768);
    let (mf8, payload8) = meshfleet_bytes_per_byte(&img, 8192);
    println!(
        "bytes on the wire per firmware byte ({} B image, one hop): stock {stock:.3}, \
         meshfleet {mf:.3} with a 32 KiB window (payload {payload:.3} of the image), \
         meshfleet {mf8:.3} with an 8 KiB window (payload {payload8:.3})",
        img.len(),
    );
    assert!(stock >= 1.37, "stock {stock}");
    assert!(mf <= 0.70, "meshfleet {mf}");
    // 8 KiB costs about 1.5 points of compression; measured 0.690 (docs/benchmarks.md).
    assert!(mf8 > mf && mf8 <= 0.70, "meshfleet, 8 KiB window: {mf8}");
}

/// One real transfer of `img` packed with `window` to a receiver that can hold just that
/// window, one hop: every OTA frame both ways (CAPS, OFFER, chunks, NAK, STATUS) per image
/// byte, and the payload's share of the image.
fn meshfleet_bytes_per_byte(img: &[u8], window: u32) -> (f64, f64) {
    let art = {
        let k = key();
        let mut o = PackOptions::new(ROLE, HW, Version::parse("1.9.4-113").unwrap());
        o.signing_key = Some(&k);
        o.codec = Codec::Deflate;
        o.window = window;
        pack(img, o).unwrap()
    };
    assert_eq!(art.manifest().window, window);
    let mut net = Net::new(Duration::from_millis(1));
    net.add(source_node(1, &art));
    let old = image(1000, 1);
    let store = MemStore::with_image(&old, "1.9.4-106");
    let r = net.add(small_receiver_node(2, &store, window));
    net.connect(r, 0);
    assert!(
        net.run_until_cond(Duration::from_secs(1), Duration::from_secs(60), |n| {
            complete(n, 1)
        })
    );
    assert_eq!(booted_image(&store), img);
    let _ = image_info(img, "x");
    let _ = Slot::A;
    let mf = ota_bytes(&net, &(700..=709).collect::<Vec<_>>()) as f64 / img.len() as f64;
    (mf, art.payload().len() as f64 / img.len() as f64)
}

#[test]
fn peers_report_progress_and_done_is_reported_once() {
    // 0 -> 1 -> 2: the source's neighbour reports done, then (later) its subtree done.
    let Setup { mut net, art, .. } = setup(&[0, 1], 20_000);
    assert!(net.run_until_cond(
        Duration::from_millis(100),
        Duration::from_secs(30),
        all_complete
    ));
    net.run_for(Duration::from_secs(1));
    let peers = ota(&net, 0).peers();
    assert_eq!(peers.len(), 1);
    let p = &peers[0];
    assert_eq!(p.peer, NodeId(2));
    assert!(p.offered && p.accepted && p.done && p.subtree_done && !p.stock && !p.rejected);
    assert_eq!(p.chunks_sent as usize, units(&art));
    assert_eq!(p.bytes_sent, unit_bytes(&art));
    let done = net
        .ota_events(0)
        .iter()
        .filter(|e| matches!(e, OtaEvent::PeerDone { .. }))
        .count();
    assert_eq!(done, 1, "PeerDone once, though STATUS came twice");
}

#[test]
fn a_node_on_trial_refuses_offers() {
    let mut s = setup(&[0], 10_000);
    let info = image_info(b"the image on trial", "1.0.5");
    s.net.nodes[1]
        .plugin_mut::<MeshfleetOta>()
        .unwrap()
        .set_running(Some(info), true);
    s.net.run_for(Duration::from_secs(5));
    assert!(!complete(&s.net, 1));
    assert!(s.net.ota_events(1).iter().any(|e| matches!(
        e,
        OtaEvent::OfferRejected { reason, .. } if reason.contains("not confirmed")
    )));
}

#[test]
fn a_running_node_becomes_the_source_without_losing_its_neighbours_caps() {
    // Index 0 runs the old image as a plain receiver; the mesh forms and CAPS are exchanged
    // before it is handed the artefact.
    let old = image(20_000, 1);
    let new = image(20_000, 2);
    let art = artefact(&new, "1.1.0", 1024);
    let mut net = Net::new(Duration::from_millis(2));
    let mut stores = Vec::new();
    for id in 1..=3u32 {
        let s = MemStore::with_image(&old, "1.0.0");
        net.add(receiver_node(id, &s));
        stores.push(s);
    }
    net.connect(1, 0);
    net.connect(2, 1);
    net.run_for(Duration::from_secs(5));
    assert!(!complete(&net, 1));
    let now = net.now;
    let started = net.nodes[0]
        .with_plugin::<MeshfleetOta, _>(now, |o, ctx| o.start_source(ctx, art.clone(), None))
        .unwrap();
    assert!(started);
    net.drain(0);
    assert!(net.run_until_cond(
        Duration::from_millis(100),
        Duration::from_secs(30),
        |n| complete(n, 1) && complete(n, 2)
    ));
    // Offered at once (no CAPS timeout, nobody taken for a stock node).
    assert!(net
        .ota_events(0)
        .iter()
        .all(|e| !matches!(e, OtaEvent::NeighbourIsStock { .. })));
    for i in 1..=2 {
        assert_eq!(booted_image(&stores[i]), new);
    }
}

#[test]
fn start_source_refuses_while_another_campaign_is_half_received() {
    let mut s = setup(&[0], 60_000);
    s.net
        .run_until_cond(Duration::from_millis(5), Duration::from_secs(30), |n| {
            ota(n, 1).progress().is_some_and(|(_, have, _)| have > 3)
        });
    assert!(!complete(&s.net, 1));
    let other = artefact(&image(10_000, 9), "2.0.0", 1024);
    let now = s.net.now;
    let started = s.net.nodes[1]
        .with_plugin::<MeshfleetOta, _>(now, |o, ctx| o.start_source(ctx, other, None))
        .unwrap();
    assert!(!started);
    // The transfer in progress goes on.
    assert!(s.net.run_until_cond(
        Duration::from_millis(100),
        Duration::from_secs(30),
        all_complete
    ));
}

#[test]
fn a_nak_racing_chunks_in_flight_does_not_get_them_sent_twice() {
    // A slow link: every frame takes 1.5 s, so the receiver's NAK timer (500 ms at first)
    // fires while the chunks it lists are on their way. TCP delivers them; sending them
    // again would only put duplicates on the air.
    let old = image(30_000, 1);
    let new = image(30_000, 2);
    let art = artefact(&new, "1.1.0", 1024);
    let mut net = Net::new(Duration::from_millis(1500));
    net.add(source_node(1, &art));
    let store = MemStore::with_image(&old, "1.0.0");
    net.add(receiver_node(2, &store));
    net.connect(1, 0);
    assert!(
        net.run_until_cond(Duration::from_millis(100), Duration::from_secs(120), |n| {
            complete(n, 1)
        })
    );
    assert!(ota(&net, 1).stats().naks_sent >= 2, "the NAKs did race");
    assert_eq!(ota(&net, 1).stats().duplicates, 0);
    assert_eq!(chunk_frames(&net, 0, 1), units(&art));
    assert_eq!(booted_image(&store), new);
}

#[test]
fn the_offer_is_lean_and_the_chunk_table_follows_in_pages() {
    // 0 -> 1 -> 2 -> 3 with 200 KB: the OFFER each hop sends stays under 1 KB whatever the
    // image size (the 16-byte-per-chunk table travels as hash pages with the chunks).
    let Setup { net, art, .. } = {
        let mut s = setup(&[0, 1, 2], 200_000);
        assert!(s.net.run_until_cond(
            Duration::from_millis(100),
            Duration::from_secs(60),
            all_complete
        ));
        s
    };
    let full = art.manifest().json_len();
    let offers: Vec<usize> = net
        .trace
        .iter()
        .filter(|s| s.ty() == Some(701))
        .map(|s| s.len)
        .collect();
    assert_eq!(offers.len(), 3, "one offer per hop");
    assert!(art.manifest().page_count() >= 2);
    for len in offers {
        assert!(len < 1024, "offer of {len} bytes (full manifest: {full})");
    }
    assert!(
        full > 2048,
        "the full manifest would not have been small: {full}"
    );
}

#[test]
fn a_chunk_ahead_of_its_hash_page_is_dropped_and_fetched_again() {
    let new = image(60_000, 2);
    let art = artefact(&new, "1.1.0", 256);
    let layout = meshfleet_ota::proto::Layout::of(art.manifest());
    let per_page = art.manifest().hashes_per_page();
    let target = per_page + 3; // a chunk of page 1
    let mut net = Net::new(Duration::from_millis(2));
    net.add(source_node(1, &art));
    let store = MemStore::with_image(&image(60_000, 1), "1.0.0");
    let r = net.add(receiver_node(2, &store));
    net.connect(r, 0);
    net.run_until_cond(Duration::from_millis(1), Duration::from_secs(2), |n| {
        ota(n, 1).progress().is_some_and(|(_, have, _)| have >= 1)
    });
    assert!(ota(&net, 1).progress().unwrap().1 < layout.page_of_chunk(target));
    let id = ota(&net, 1).progress().unwrap().0;
    let genuine = art.chunk(target).unwrap();
    let frame = meshfleet_mesh::wire::binary_frame(&meshfleet_ota::proto::encode_binary_chunk(
        id,
        layout.of_chunk(target),
        genuine,
    ));
    let before = ota(&net, 1).stats().chunks_received;
    net.inject(0, r, &frame);
    let stats = ota(&net, 1).stats().clone();
    assert_eq!(stats.unverifiable, 1, "not checkable yet");
    assert_eq!(stats.chunks_received, before, "and not stored");
    assert_eq!(stats.chunks_rejected, 0, "nor counted as bad data");
    assert!(
        net.run_until_cond(Duration::from_millis(100), Duration::from_secs(30), |n| {
            complete(n, 1)
        })
    );
    assert_eq!(booted_image(&store), new);
}

#[test]
fn a_neighbour_speaking_another_protocol_version_is_served_as_stock() {
    let art = artefact(&image(8_000, 2), "2.0.0", 1024);
    let mut net = Net::new(Duration::from_millis(2));
    net.add(source_node(1, &art));
    let other = net.add(Node::new(Config::new(NodeId(2))));
    net.connect(other, 0);
    net.run_for(Duration::from_millis(500));
    let caps = r#"{"from":2,"routing":0,"type":700,"dest":1,"v":1,"codecs":["none","deflate"],"window":32768,"mem":4194304,"bin":true,"role":"sensor","hardware":"ESP8266","fw":"1.0.0","sha256":""}"#;
    let mut frame = caps.as_bytes().to_vec();
    frame.push(0);
    net.inject(0, 0, &frame); // on wire 0, to the source
    net.run_for(Duration::from_secs(5));
    assert!(
        net.trace.iter().all(|s| s.ty() != Some(701)),
        "no OFFER to a version-1 node"
    );
    assert_eq!(ota(&net, 0).stock_neighbours(), vec![NodeId(2)]);
}

// ------------------------------------------------------------------ windows

/// An OFFER of `art` as a source that ignored the receiver's CAPS would send it.
fn offer_frame(art: &Artefact, from: u32, dest: u32) -> Vec<u8> {
    let offer = meshfleet_ota::proto::Offer {
        campaign: meshfleet_ota::proto::campaign_id(art.manifest()),
        intent: None,
        origin: from,
        scope: None,
        manifest: serde_json::from_slice(&art.manifest().lean().to_json()).unwrap(),
    };
    let pkg = meshfleet_mesh::TypedPackage::neighbour(NodeId(from), NodeId(dest), offer)
        .encode()
        .unwrap();
    format!("{}\0", pkg.text()).into_bytes()
}

#[test]
fn a_receiver_refuses_an_offer_whose_window_it_cannot_give() {
    let old = image(4_000, 1);
    let art = artefact(&image(4_000, 2), "1.1.0", 256);
    assert_eq!(art.manifest().window, 32768);
    let mut net = Net::new(Duration::from_millis(2));
    net.add(source_node(1, &art));
    let store = MemStore::with_image(&old, "1.0.0");
    let r = net.add(small_receiver_node(2, &store, 8192));
    let wire = net.connect(r, 0);
    net.run_for(Duration::from_secs(5));
    // Its CAPS say how much it can give.
    let caps = net
        .trace
        .iter()
        .find(|x| x.from == r && x.ty() == Some(700))
        .and_then(|x| x.json.clone())
        .unwrap();
    assert_eq!(caps["window"], 8192);
    // A sender that ignores CAPS offers anyway: the receiver refuses, saying why.
    net.inject(wire, r, &offer_frame(&art, 1, 2));
    net.run_for(Duration::from_secs(2));
    assert!(net.ota_events(1).iter().any(|e| matches!(
        e,
        OtaEvent::OfferRejected { reason, .. }
            if reason == "needs a 32768-byte decompression window, this node can give 8192"
    )));
    // The refusal goes back in a STATUS, and nothing was started.
    let reject = net
        .trace
        .iter()
        .filter(|x| x.from == r && x.ty() == Some(705))
        .find_map(|x| x.json.clone())
        .unwrap();
    assert!(reject["reject"]
        .as_str()
        .unwrap()
        .contains("32768-byte decompression window"));
    assert_eq!(ota(&net, 1).progress(), None);
    still_old(&store);
}

#[test]
fn the_sender_does_not_offer_to_a_neighbour_with_a_smaller_window() {
    // 0 (source, 32 KiB artefact) -> 1 (can give 32 KiB), 0 -> 2 (can give 8 KiB).
    let old = image(20_000, 1);
    let new = image(20_000, 2);
    let art = artefact(&new, "1.1.0", 1024);
    let mut net = Net::new(Duration::from_millis(2));
    net.add(source_node(1, &art));
    let big = MemStore::with_image(&old, "1.0.0");
    let small = MemStore::with_image(&old, "1.0.0");
    net.add(receiver_node(2, &big));
    net.add(small_receiver_node(3, &small, 8192));
    net.connect(1, 0);
    net.connect(2, 0);
    assert!(
        net.run_until_cond(Duration::from_millis(100), Duration::from_secs(30), |n| {
            complete(n, 1)
        })
    );
    net.run_for(Duration::from_secs(5));
    assert_eq!(booted_image(&big), new);
    // Node 3 was never offered the campaign, got no chunk, and was never mistaken for a
    // stock node: it is flagged for the driver to serve another way.
    assert!(!net
        .trace
        .iter()
        .any(|x| x.to == 2 && matches!(x.ty(), Some(701 | 703))));
    assert!(!net.ota_events(2).iter().any(|e| matches!(
        e,
        OtaEvent::OfferRejected { .. } | OtaEvent::OfferAccepted { .. }
    )));
    let cannot: Vec<_> = net
        .ota_events(0)
        .into_iter()
        .filter_map(|e| match e {
            OtaEvent::PeerCannotDecode { peer, reason, .. } => Some((peer, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        cannot,
        vec![(
            NodeId(3),
            DecodeGap::Window {
                needed: 32768,
                offered: 8192
            }
        )],
        "reported once"
    );
    let peers = ota(&net, 0).peers();
    let p3 = peers.iter().find(|p| p.peer == NodeId(3)).unwrap();
    assert!(p3.cannot_decode && !p3.offered && !p3.stock && !p3.done);
    let p2 = peers.iter().find(|p| p.peer == NodeId(2)).unwrap();
    assert!(!p2.cannot_decode && p2.offered && p2.done);
    still_old_image(&small, &old);

    // A neighbour that does not list the codec at all is skipped the same way.
    let mut net = Net::new(Duration::from_millis(2));
    net.add(source_node(1, &art));
    let store = MemStore::with_image(&old, "1.0.0");
    let mut c = config(&store);
    c.codecs = vec![Codec::None];
    net.add(receiver_node_with(2, &store, c));
    net.connect(1, 0);
    net.run_for(Duration::from_secs(5));
    assert!(net.ota_events(0).iter().any(|e| matches!(
        e,
        OtaEvent::PeerCannotDecode { reason, .. }
            if reason.to_string() == "it does not decode codec deflate (it lists none)"
                && *reason == DecodeGap::Codec { needed: "deflate".into(), listed: vec!["none".into()] }
    )));
    assert_eq!(chunk_frames(&net, 0, 1), 0);
}

fn still_old_image(store: &MemStore, old: &[u8]) {
    assert_eq!(booted_image(store), old);
}

#[test]
fn a_small_window_artefact_reaches_small_window_receivers_end_to_end() {
    // 0 (source, 8 KiB artefact) -> 1 (8 KiB) -> {2 (8 KiB), 3 (4 KiB)}: the relay picks
    // per neighbour too.
    let old = image(40_000, 1);
    let new = image(40_000, 2);
    let art = artefact_with_window(&new, "1.1.0", 1024, 8192);
    assert_eq!(art.manifest().window, 8192);
    let mut net = Net::new(Duration::from_millis(2));
    net.add(source_node(1, &art));
    let stores: Vec<MemStore> = (0..3)
        .map(|_| MemStore::with_image(&old, "1.0.0"))
        .collect();
    net.add(small_receiver_node(2, &stores[0], 8192));
    net.add(small_receiver_node(3, &stores[1], 8192));
    net.add(small_receiver_node(4, &stores[2], 4096));
    net.connect(1, 0);
    net.connect(2, 1);
    net.connect(3, 1);
    assert!(net.run_until_cond(
        Duration::from_millis(100),
        Duration::from_secs(30),
        |n| complete(n, 1) && complete(n, 2)
    ));
    net.run_for(Duration::from_secs(5));
    for i in [1, 2] {
        assert_eq!(booted_image(&stores[i - 1]), new, "node index {i}");
        assert!(net
            .ota_events(i)
            .iter()
            .any(|e| matches!(e, OtaEvent::Applied { .. })));
        assert_eq!(
            chunk_frames(&net, if i == 1 { 0 } else { 1 }, i),
            units(&art)
        );
    }
    // The 4 KiB node is skipped by its relay, which says so.
    assert!(!complete(&net, 3));
    assert_eq!(chunk_frames(&net, 1, 3), 0);
    assert!(net.ota_events(1).iter().any(|e| matches!(
        e,
        OtaEvent::PeerCannotDecode {
            peer: NodeId(4),
            reason: DecodeGap::Window {
                needed: 8192,
                offered: 4096
            },
            ..
        }
    )));
    still_old_image(&stores[2], &old);
}

#[test]
fn part_way_nodes_that_meet_again_follow_the_route_to_the_source() {
    // 0 (source) - 1 - 2. Both receivers lose their upstream part-way, meet each other
    // first (each offers the other what it holds), and only then the source again. Without
    // the origin rule each would keep the other as upstream, both waiting for chunks
    // neither has.
    let mut s = setup(&[0, 1], 80_000);
    let units = units(&s.art) as u32;
    assert!(s
        .net
        .run_until_cond(Duration::from_millis(5), Duration::from_secs(30), |net| {
            ota(net, 2)
                .progress()
                .is_some_and(|(_, have, _)| have >= units / 4)
        }));
    let (have1, have2) = (
        ota(&s.net, 1).progress().unwrap().1,
        ota(&s.net, 2).progress().unwrap().1,
    );
    assert!(have1 < units && have2 < units, "{have1} {have2} of {units}");
    for w in s.net.wires_of(1) {
        s.net.cut(w);
    }
    s.net.run_for(Duration::from_secs(1));
    s.net.connect(1, 2);
    s.net.run_for(Duration::from_secs(5));
    s.net.connect(1, 0);
    assert!(
        s.net.run_until_cond(
            Duration::from_millis(100),
            Duration::from_secs(60),
            all_complete
        ),
        "stuck at {:?} and {:?}",
        ota(&s.net, 1).progress(),
        ota(&s.net, 2).progress()
    );
    assert_eq!(booted_image(&s.stores[1]), s.new);
    assert_eq!(booted_image(&s.stores[2]), s.new);
}
