//! Property tests: every message we can build survives encode -> decode unchanged, and no
//! input makes the decoder or framer panic.
#![allow(clippy::unwrap_used)]

use meshfleet_wire::{
    decode, FrameRef, Framer, Message, MsgText, NodeId, NodeSync, NodeTree, Text, TimeMsg,
    TimePacket,
};
use proptest::prelude::*;

fn tree(depth: u32) -> BoxedStrategy<NodeTree> {
    let leaf = (1u32.., any::<bool>(), any::<bool>()).prop_map(|(id, root, auth)| NodeTree {
        node_id: NodeId(id),
        root,
        has_time_authority: auth,
        subs: vec![],
    });
    if depth == 0 {
        return leaf.boxed();
    }
    (leaf, prop::collection::vec(tree(depth - 1), 0..4))
        .prop_map(|(mut t, subs)| {
            t.subs = subs;
            t
        })
        .boxed()
}

fn time_msg() -> impl Strategy<Value = TimeMsg> {
    (
        -1i64..3,
        any::<Option<u32>>(),
        any::<Option<u32>>(),
        any::<Option<u32>>(),
    )
        .prop_map(|(kind, t0, t1, t2)| TimeMsg { kind, t0, t1, t2 })
}

fn message() -> impl Strategy<Value = Message> {
    let ids = (any::<u32>(), any::<u32>());
    prop_oneof![
        (ids, ".{0,200}").prop_map(|((d, f), s)| Message::Single(Text {
            dest: NodeId(d),
            from: NodeId(f),
            msg: MsgText::Text(s),
            extra: vec![]
        })),
        (any::<u32>(), "\\PC{0,200}").prop_map(|(f, s)| Message::Broadcast(Text {
            dest: NodeId(0),
            from: NodeId(f),
            msg: MsgText::Text(s),
            extra: vec![]
        })),
        (ids, time_msg()).prop_map(|((d, f), msg)| Message::TimeSync(TimePacket {
            dest: NodeId(d),
            from: NodeId(f),
            msg,
            extra: vec![]
        })),
        (ids, time_msg()).prop_map(|((d, f), msg)| Message::TimeDelay(TimePacket {
            dest: NodeId(d),
            from: NodeId(f),
            msg,
            extra: vec![]
        })),
        (any::<u32>(), tree(4)).prop_map(|(d, t)| Message::NodeSyncRequest(NodeSync {
            dest: NodeId(d),
            from: t.node_id,
            tree: t,
            extra: vec![]
        })),
        (any::<u32>(), tree(4)).prop_map(|(d, mut t)| {
            // Replies do not carry hasTimeAuthority at the top (layout.hpp reply()).
            t.has_time_authority = false;
            Message::NodeSyncReply(NodeSync {
                dest: NodeId(d),
                from: t.node_id,
                tree: t,
                extra: vec![],
            })
        }),
    ]
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(m in message()) {
        let bytes = m.encode();
        prop_assert!(!bytes.contains(&0), "a frame never contains NUL");
        let back = decode(&bytes).unwrap();
        prop_assert_eq!(back, m);
    }

    #[test]
    fn framing_any_split_gives_the_same_frames(ms in prop::collection::vec(message(), 1..6), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let mut stream = vec![];
        for m in &ms {
            stream.extend(m.encode_frame());
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        points.sort_unstable();
        let mut framer = Framer::new(1 << 20);
        let mut got = vec![];
        let mut last = 0;
        for p in points.into_iter().chain([stream.len()]) {
            framer.push(&stream[last..p], |f| {
                if let Ok(FrameRef::Json(j)) = f {
                    got.push(decode(j).unwrap());
                }
            });
            last = p;
        }
        prop_assert_eq!(got, ms);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        let mut framer = Framer::new(512);
        framer.push(&data, |f| {
            if let Ok(FrameRef::Json(j)) = f {
                let _ = decode(j);
            }
        });
        prop_assert!(framer.buffered() <= 512);
        let _ = decode(&data);
    }

    #[test]
    fn json_shaped_garbage_never_panics(s in r#"\{("[a-zA-Z]{1,8}":(-?[0-9]{1,12}|"[^"\\]{0,8}"|\[[0-9,]{0,8}\]|\{\}|true|null),?){0,8}\}"#) {
        let _ = decode(s.as_bytes());
    }
}
