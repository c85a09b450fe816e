//! Interop with the real library: replay the painlessMesh transcripts with our plugins in the
//! place of one side and compare what we send with what the library sent (as JSON values).

#![allow(clippy::unwrap_used)]

mod common;

use common::{at, firmware_from, json, md5_word_swapped, transcript, ty, Line};
use meshfleet_mesh::{Config, Event, LinkId, LinkRole, Node, NodeId};
use meshfleet_ota::{
    md5_hex, OtaEvent, StockOffer, StockReceiver, StockReceiverConfig, StockSender,
    StockSenderConfig, StockStyle, UpdateFailure,
};
use serde_json::Value;

const LINK: LinkId = LinkId(1);

/// One node on one link of a transcript.
struct Replay {
    node: Node,
    out: Vec<Value>,
    events: Vec<OtaEvent>,
}

impl Replay {
    fn new(id: u32, role: LinkRole, now: meshfleet_mesh::Instant) -> Self {
        let mut node = Node::new(Config::new(NodeId(id)));
        node.handle_link_up(now, LINK, role);
        let mut r = Self {
            node,
            out: vec![],
            events: vec![],
        };
        r.drain();
        r
    }

    fn drain(&mut self) {
        while let Some(t) = self.node.poll_transmit() {
            assert_eq!(
                t.frame.last(),
                Some(&0),
                "only JSON frames towards a stock node"
            );
            self.out
                .push(serde_json::from_slice(&t.frame[..t.frame.len() - 1]).unwrap());
        }
        while let Some(e) = self.node.poll_event() {
            if let Event::Plugin { event, .. } = e {
                if let Some(o) = event.downcast_ref::<OtaEvent>() {
                    self.events.push(o.clone());
                }
            }
        }
    }

    /// Fires due timers, then feeds `text`.
    fn feed(&mut self, now: meshfleet_mesh::Instant, text: &str) {
        self.tick(now);
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        self.node.handle_bytes(now, LINK, &bytes);
        self.drain();
    }

    fn tick(&mut self, now: meshfleet_mesh::Instant) {
        while self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now);
            self.drain();
        }
    }

    fn ota_out(&self, types: &[i64]) -> Vec<Value> {
        self.out
            .iter()
            .filter(|v| types.contains(&ty(v)))
            .cloned()
            .collect()
    }
}

fn frames_on(lines: &[Line], link: &str, dir: &str, types: &[i64]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| match l {
            Line::Frame {
                link: fl,
                dir: fd,
                text,
                ..
            } if fl == link && fd == dir => Some(json(text)),
            _ => None,
        })
        .filter(|v| types.contains(&ty(v)))
        .collect()
}

/// Our StockSender in the sender's place on `link`: feed the receiver side's frames
/// (`peer_dir`), start the offer at the first line for which `is_start` holds.
fn replay_sender(
    name: &str,
    link: &str,
    peer_dir: &str,
    id: u32,
    offer: StockOffer,
    is_start: impl Fn(&Line) -> bool,
    rewrite_request: impl Fn(Value) -> Value,
) -> Replay {
    let lines = transcript(name);
    let t0 = match &lines[0] {
        Line::Frame { t, .. } | Line::Note { t, .. } => *t,
    };
    let mut r = Replay::new(id, LinkRole::AccessPoint, at(t0, t0));
    r.node
        .add_plugin(Box::new(StockSender::new(
            offer,
            StockSenderConfig::default(),
        )))
        .unwrap();
    for l in &lines {
        if is_start(l) {
            let (Line::Frame { t, .. } | Line::Note { t, .. }) = l;
            let now = at(*t, t0);
            r.tick(now);
            r.node
                .with_plugin::<StockSender, _>(now, |s, ctx| s.start(ctx))
                .unwrap();
            r.drain();
        }
        if let Line::Frame {
            t,
            link: fl,
            dir,
            text,
            ..
        } = l
        {
            if fl == link && dir == peer_dir {
                let v = json(text);
                let text = if ty(&v) == 11 {
                    rewrite_request(v).to_string()
                } else {
                    text.clone()
                };
                r.feed(at(*t, t0), &text);
            }
        }
    }
    r
}

#[test]
fn sender_reproduces_alteriom_transcript_04() {
    let lines = transcript("04_ota.jsonl");
    let image = firmware_from(&lines, "B->A", "s2c");
    assert_eq!(image.len(), 2500);
    assert_eq!(md5_hex(&image), "84835982f064a1c03e4b6542d5d7521d");
    let offer = StockOffer::new(image, "sensor", "ESP32", StockStyle::ALTERIOM).unwrap();
    let r = replay_sender(
        "04_ota.jsonl",
        "B->A",
        "c2s",
        101,
        offer,
        |l| matches!(l, Line::Note { text, .. } if text.contains("command: ota_offer")),
        |v| v,
    );
    let expected = frames_on(&lines, "B->A", "s2c", &[10, 12]);
    let ours = r.ota_out(&[10, 12]);
    assert_eq!(
        expected.len(),
        4,
        "1 announce + 3 data parts in the transcript"
    );
    assert_eq!(ours, expected);
    // Every part was served and the node counted as complete.
    let sender = r.node.plugin::<StockSender>().unwrap();
    assert_eq!(sender.completed().collect::<Vec<_>>(), vec![NodeId(103)]);
    assert!(r
        .events
        .iter()
        .any(|e| matches!(e, OtaEvent::NodeCompleted { node, .. } if *node == NodeId(103))));
}

#[test]
fn sender_reproduces_painlessmeshboost_transcript_06() {
    let lines = transcript("06_pmboost_v1.4_ota.jsonl");
    let image = firmware_from(&lines, "N->PB", "s2c");
    assert_eq!(image.len(), 3000);
    let md5 = md5_hex(&image);
    assert_eq!(md5, "3b5b82c27a26303d9ead0096e21e8564");
    // Q12: painlessMeshBoost announced the byte-swapped form of the MD5. We announce the
    // standard one, so the receiver's requests carry ours, and our Data echoes it: compare
    // with the transcript's frames after mapping the swapped MD5 to the standard one.
    let swapped = md5_word_swapped(&md5);
    assert_eq!(swapped, "c2825b3b3d30267a9600ad9e64851ee2");
    let offer = StockOffer::new(image, "sensor", "ESP32", StockStyle::V141).unwrap();
    let fix_md5 = |mut v: Value| {
        if v["md5"] == swapped.as_str() {
            v["md5"] = Value::from(md5.as_str());
        }
        v
    };
    let r = replay_sender(
        "06_pmboost_v1.4_ota.jsonl",
        "N->PB",
        "c2s",
        5001,
        offer,
        |l| matches!(l, Line::Note { text, .. } if text.contains("copied firmware")),
        fix_md5,
    );
    let expected: Vec<Value> = frames_on(&lines, "N->PB", "s2c", &[10, 12])
        .into_iter()
        .map(fix_md5)
        .collect();
    let ours = r.ota_out(&[10, 12]);
    assert_eq!(
        expected.len(),
        5,
        "1 announce + 4 data parts in the transcript"
    );
    assert_eq!(ours, expected);
    // And the only difference from the raw transcript is Q12's MD5.
    let raw_announce = &frames_on(&lines, "N->PB", "s2c", &[10])[0];
    assert_eq!(raw_announce["md5"], Value::from(swapped.as_str()));
    assert_eq!(ours[0]["md5"], Value::from(md5.as_str()));
}

/// Our StockReceiver in the receiver's place: feed the sender side's frames.
fn replay_receiver(name: &str, link: &str, peer_dir: &str, id: u32) -> Replay {
    let lines = transcript(name);
    let t0 = match &lines[0] {
        Line::Frame { t, .. } | Line::Note { t, .. } => *t,
    };
    let mut r = Replay::new(id, LinkRole::Station, at(t0, t0));
    r.node
        .add_plugin(Box::new(StockReceiver::new(StockReceiverConfig::new(
            "sensor", "ESP32",
        ))))
        .unwrap();
    for l in &lines {
        if let Line::Frame {
            t,
            link: fl,
            dir,
            text,
            ..
        } = l
        {
            if fl == link && dir == peer_dir {
                r.feed(at(*t, t0), text);
            }
        }
    }
    r
}

#[test]
fn receiver_requests_what_the_library_requested_04() {
    let lines = transcript("04_ota.jsonl");
    let r = replay_receiver("04_ota.jsonl", "C->B", "s2c", 103);
    let expected = frames_on(&lines, "C->B", "c2s", &[11]);
    assert_eq!(expected.len(), 3);
    assert_eq!(r.ota_out(&[11]), expected);
    let rx = r.node.plugin::<StockReceiver>().unwrap();
    assert_eq!(rx.current_md5(), "84835982f064a1c03e4b6542d5d7521d");
    assert_eq!(
        rx.installed_image().unwrap(),
        &firmware_from(&lines, "C->B", "s2c")[..]
    );
    assert!(r
        .events
        .iter()
        .any(|e| matches!(e, OtaEvent::Updated { size: 2500, .. })));
}

#[test]
fn receiver_requests_what_the_library_requested_06_and_rejects_the_swapped_md5() {
    let lines = transcript("06_pmboost_v1.4_ota.jsonl");
    let r = replay_receiver("06_pmboost_v1.4_ota.jsonl", "N->PB", "s2c", 5002);
    let expected = frames_on(&lines, "N->PB", "c2s", &[11]);
    assert_eq!(expected.len(), 4);
    assert_eq!(r.ota_out(&[11]), expected);
    // Q12: the data is right but the announced MD5 is byte-swapped, so the check fails,
    // as it would on an ESP (the transcript's driver reports md5_ok false too).
    assert!(r.events.iter().any(|e| matches!(
        e,
        OtaEvent::UpdateFailed {
            reason: UpdateFailure::Md5Mismatch { .. },
            ..
        }
    )));
    assert_eq!(r.node.plugin::<StockReceiver>().unwrap().updates(), 0);
}
