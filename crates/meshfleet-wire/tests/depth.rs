//! Nesting limits: node trees as deep as the library accepts, nothing deeper, and no input
//! that can exhaust the stack (every decode here runs on a thread with a small stack).

#[path = "common/deep.rs"]
mod deep;

use deep::{chain, nested_array, node_sync_frame};
use meshfleet_wire::{
    decode, DecodeError, Message, MsgText, NodeId, Package, MAX_JSON_NESTING, MAX_TREE_DEPTH,
};

/// Stack for the threads below. Decoding a max-depth tree takes no more stack than a
/// trivial frame (~8 KiB in a debug build); re-encoding it recurses, ~160 KiB in a debug
/// build, ~14 KiB in release (`cargo run -p meshfleet-wire --example stack_use`). Far less than tokio's 2 MiB, and a
/// parse that recursed with its input would abort the test process here.
const SMALL_STACK: usize = 256 * 1024;

fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

/// Deepest nesting of a JSON text (no strings with brackets in these tests).
fn nesting(text: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0);
    for b in text {
        match b {
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth -= 1,
            _ => {}
        }
    }
    max
}

fn is_too_deep(r: &Result<Message, DecodeError>) -> bool {
    matches!(r, Err(DecodeError::Json(e)) if e.contains("nested deeper than 255"))
}

#[test]
fn the_limits_are_the_librarys() {
    assert_eq!(MAX_JSON_NESTING, 255);
    assert_eq!(MAX_TREE_DEPTH, 127);
}

#[test]
fn a_tree_at_the_limit_parses_and_round_trips() {
    on_small_stack(|| {
        let tree = chain(MAX_TREE_DEPTH);
        assert_eq!(tree.depth(), MAX_TREE_DEPTH + 1);
        let frame = node_sync_frame(tree.clone());
        assert_eq!(nesting(&frame), MAX_JSON_NESTING);
        let msg = decode(&frame).unwrap_or_else(|e| panic!("{e}"));
        let Message::NodeSyncReply(n) = &msg else {
            panic!("not a node sync: {msg:?}")
        };
        assert_eq!(n.tree, tree);
        assert_eq!(n.tree.size(), MAX_TREE_DEPTH + 1);
        assert!(n.tree.contains(NodeId(MAX_TREE_DEPTH as u32 + 1)));
        assert_eq!(msg.encode(), frame, "byte-identical re-encoding");
    });
}

#[test]
fn a_tree_one_level_deeper_is_refused() {
    on_small_stack(|| {
        let frame = node_sync_frame(chain(MAX_TREE_DEPTH + 1));
        assert_eq!(nesting(&frame), MAX_JSON_NESTING + 2);
        assert!(is_too_deep(&decode(&frame)));
        // Even an empty `subs` on the deepest node is one nesting level too many (the
        // library omits empty `subs`; ArduinoJson counts `[]` as a level).
        let text = String::from_utf8(node_sync_frame(chain(MAX_TREE_DEPTH))).expect("utf8");
        let leaf = format!(r#"{{"nodeId":{}}}"#, MAX_TREE_DEPTH + 1);
        let with_empty = text.replacen(&leaf, &leaf.replace('}', r#","subs":[]}"#), 1);
        assert_eq!(nesting(with_empty.as_bytes()), MAX_JSON_NESTING + 1);
        assert!(is_too_deep(&decode(with_empty.as_bytes())));
    });
}

#[test]
fn a_hundred_level_chain_decodes() {
    on_small_stack(|| {
        let frame = node_sync_frame(chain(100));
        let Ok(Message::NodeSyncReply(n)) = decode(&frame) else {
            panic!("refused")
        };
        assert_eq!(n.tree.depth(), 101);
    });
}

#[test]
fn other_fields_nest_as_deep_as_the_library_allows_and_no_deeper() {
    on_small_stack(|| {
        // SINGLE `msg` that is not a string: handed over as JSON text (the library's
        // `nesting_200` probe is delivered).
        let at_limit = nested_array(MAX_JSON_NESTING - 1);
        let frame = format!(r#"{{"type":9,"dest":2,"from":1,"msg":{at_limit}}}"#);
        match decode(frame.as_bytes()) {
            Ok(Message::Single(t)) => assert_eq!(t.msg, MsgText::Json(raw(&at_limit))),
            other => panic!("{other:?}"),
        }
        let over = nested_array(MAX_JSON_NESTING);
        let frame = format!(r#"{{"type":9,"dest":2,"from":1,"msg":{over}}}"#);
        assert!(is_too_deep(&decode(frame.as_bytes())));
        // An unknown key is kept for forwarding, whole.
        let frame = format!(r#"{{"type":8,"dest":0,"from":1,"msg":"x","junk":{at_limit}}}"#);
        let m = decode(frame.as_bytes()).expect("decodes");
        assert_eq!(m.encode(), frame.as_bytes());
        let frame = format!(r#"{{"type":8,"dest":0,"from":1,"msg":"x","junk":{over}}}"#);
        assert!(is_too_deep(&decode(frame.as_bytes())));
    });
}

fn raw(json: &str) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(json.to_owned()).expect("json")
}

/// Junk nested far beyond the limit, in every place a frame is parsed, is refused before
/// any recursive parse. Junk within the limit is parsed (or refused) without recursing
/// with it.
#[test]
fn deep_junk_anywhere_is_refused_without_exhausting_the_stack() {
    on_small_stack(|| {
        let places: [fn(&str) -> String; 10] = [
            |j| format!(r#"{{"type":9,"dest":2,"from":1,"msg":{j}}}"#),
            |j| format!(r#"{{"type":9,"dest":2,"from":1,"msg":"x","other":{j}}}"#),
            |j| format!(r#"{{"type":{j},"dest":2,"from":1}}"#),
            |j| format!(r#"{{"type":9,"dest":{j},"from":1,"routing":{j}}}"#),
            |j| format!(r#"{{"type":4,"dest":2,"from":1,"msg":{{"type":1,"t0":{j}}}}}"#),
            |j| format!(r#"{{"type":4,"dest":2,"from":1,"msg":{{"type":1,"x":{j}}}}}"#),
            |j| format!(r#"{{"nodeId":{j},"type":5,"dest":2,"from":1,"subs":{j}}}"#),
            |j| {
                format!(
                    r#"{{"nodeId":1,"type":5,"dest":2,"from":1,"subs":[{{"nodeId":{j},"root":{j},"x":{j}}}]}}"#
                )
            },
            |j| format!(r#"{{"from":1,"routing":1,"type":10,"dest":2,"md5":{j}}}"#),
            |j| j.to_owned(),
        ];
        for junk in [
            nested_array(100_000),
            "{\"a\":".repeat(100_000),
            "[{\"a\":".repeat(50_000),
        ] {
            for place in places {
                let frame = place(&junk);
                assert!(is_too_deep(&decode(frame.as_bytes())), "{}", &frame[..80]);
                assert!(Package::from_text(frame).is_err());
            }
        }
        // Within the limit every place parses without trouble, whatever it decides.
        let near = nested_array(MAX_JSON_NESTING - 3);
        for place in places {
            let frame = place(&near);
            if let Ok(Message::Package(p)) = decode(frame.as_bytes()) {
                let _ = p.parse::<serde_json::Value>();
                let _ = p.parse::<meshfleet_wire::ota::Announce>();
            }
        }
        // A tree whose subs are a long flat list of max-depth junk is just long.
        let wide = format!(
            r#"{{"nodeId":1,"type":5,"dest":2,"from":1,"subs":[{}]}}"#,
            vec![nested_array(MAX_JSON_NESTING - 2); 1000].join(",")
        );
        let Ok(Message::NodeSyncRequest(n)) = decode(wide.as_bytes()) else {
            panic!("refused")
        };
        assert!(n.tree.subs.is_empty(), "non-object subs are skipped");
    });
}

/// The nesting of a node sync's tree is checked by the tree parser as it reads it, not by
/// a pass over the whole frame; the verdict must be exactly the whole frame's: refused
/// iff nested deeper than 255 anywhere, wherever the junk sits (in a node, among the
/// subs, in another key, in an earlier duplicate `subs`), and whatever the routing (a
/// node sync that travels on is checked before it could be forwarded). The flat tree the
/// node reads must agree with the decoded one.
#[test]
fn node_sync_nesting_is_decided_exactly_as_for_the_whole_frame() {
    on_small_stack(|| {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut refused, mut accepted) = (0, 0);
        for _ in 0..400 {
            let levels = 100 + next(28); // a chain tree 100..=127 levels below the sender
            let at = 1 + next(levels); // the node that gets junk
            let junk_depth = 250usize.saturating_sub(2 * at) + next(12);
            let junk = nested_array(junk_depth);
            let mut subs = String::new();
            for id in 1..=levels {
                subs.push_str(&format!(r#"[{{"nodeId":{}"#, id + 1));
                if id == at {
                    match next(3) {
                        0 => subs.push_str(&format!(r#","x":{junk}"#)),
                        1 => subs.push_str(&format!(r#","root":{junk}"#)),
                        _ => {}
                    }
                }
                subs.push_str(r#","subs":"#);
            }
            subs.push_str("[]");
            subs.truncate(subs.len() - r#","subs":[]"#.len());
            for id in (1..=levels).rev() {
                subs.push('}');
                if id == at && next(2) == 0 {
                    subs.push_str(&format!(",{junk}")); // a non-object element
                }
                subs.push(']');
            }
            let other = if next(4) == 0 {
                format!(r#","subs":{junk}"#) // an earlier duplicate, not read
            } else if next(3) == 0 {
                format!(r#","extra":{junk}"#)
            } else {
                String::new()
            };
            let routing = [
                "",
                r#","routing":0"#,
                r#","routing":1,"dest":77"#,
                r#","routing":2"#,
            ][next(4)];
            let frame = format!(
                r#"{{"nodeId":1{other},"subs":{subs},"type":{},"dest":9,"from":1{routing}}}"#,
                5 + next(2)
            );
            let too_deep = nesting(frame.as_bytes()) > MAX_JSON_NESTING;
            let decoded = decode(frame.as_bytes());
            assert_eq!(is_too_deep(&decoded), too_deep, "{frame}");
            let flat = meshfleet_wire::parse(frame.as_bytes())
                .and_then(|f| f.node_sync_tree().map(|(t, _)| t.to_tree()));
            match (&decoded, &flat) {
                (Ok(Message::NodeSyncReply(n) | Message::NodeSyncRequest(n)), Ok(t)) => {
                    assert_eq!(&n.tree, t);
                    accepted += 1;
                }
                (Err(a), Err(b)) => {
                    assert_eq!(a, b);
                    refused += 1;
                }
                other => panic!("decode and the flat tree disagree: {other:?}"),
            }
        }
        assert!(
            refused > 50 && accepted > 50,
            "{refused} refused, {accepted} accepted"
        );
    });
}
