//! Status package (604) interoperability: the spec's captured frame decodes, and packages
//! produced by Rust nodes are accepted by an independent decoder written from the spec
//! (PROTOCOL.md, "EnhancedStatusPackage as the library's code produces it").
#![allow(missing_docs, clippy::unwrap_used)]

use meshfleet_monitor::status::{self, AlertFlags, StatusReport};
use meshfleet_monitor::NodeId;
use meshfleet_wire::{decode, Message};
use proptest::prelude::*;
use serde_json::Value;

const CAPTURED: &str = r#"{"from":1001,"routing":2,"type":604,"status":1,"uptime":1,"mem":128,"wifi":80,"fw":"1.0.0-phase1","fwMD5":"abc123def456","nodes":2,"conns":2,"msgRx":0,"msgTx":1,"msgDrop":1,"latency":50,"loss":1,"throughput":512,"alerts":0,"lastErr":""}"#;

/// The spec's table, as a receiver written from it would check it: the 19 keys in order,
/// `from, routing, type` first, no `dest`, every number a JSON integer in its C++ type's
/// range, the strings strings. Returns the reason for refusal.
fn spec_accepts(text: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let o = v.as_object().ok_or("not an object")?;
    let keys: Vec<&str> = o.keys().map(String::as_str).collect();
    const ORDER: [&str; 19] = [
        "from",
        "routing",
        "type",
        "status",
        "uptime",
        "mem",
        "wifi",
        "fw",
        "fwMD5",
        "nodes",
        "conns",
        "msgRx",
        "msgTx",
        "msgDrop",
        "latency",
        "loss",
        "throughput",
        "alerts",
        "lastErr",
    ];
    if keys != ORDER {
        return Err(format!("keys {keys:?}"));
    }
    let uint = |k: &str, max: u64| -> Result<u64, String> {
        let n = o[k]
            .as_u64()
            .ok_or(format!("{k} is not an unsigned integer"))?;
        if n > max {
            return Err(format!("{k}={n} above {max}"));
        }
        Ok(n)
    };
    uint("from", u32::MAX as u64)?;
    if uint("routing", 2)? != 2 {
        return Err("routing is not 2 (BROADCAST)".into());
    }
    if uint("type", 1000)? != 604 {
        return Err("type is not 604".into());
    }
    for (k, max) in [
        ("status", 255),
        ("uptime", u32::MAX as u64),
        ("mem", 65535),
        ("wifi", 100),
        ("nodes", 65535),
        ("conns", 255),
        ("msgRx", u32::MAX as u64),
        ("msgTx", u32::MAX as u64),
        ("msgDrop", u32::MAX as u64),
        ("latency", 65535),
        ("loss", 100),
        ("throughput", 65535),
        ("alerts", 255),
    ] {
        uint(k, max)?;
    }
    for k in ["fw", "fwMD5", "lastErr"] {
        o[k].as_str().ok_or(format!("{k} is not a string"))?;
    }
    Ok(())
}

#[test]
fn the_spec_captured_frame_decodes() {
    // The constant must be the frame PROTOCOL.md shows; check it against the file when the
    // shared folder is there.
    match std::fs::read_to_string("../../../shared/painlessmesh/PROTOCOL.md") {
        Ok(spec) => assert!(
            spec.contains(CAPTURED),
            "PROTOCOL.md no longer shows this 604 frame"
        ),
        Err(_) => {
            eprintln!("../shared/painlessmesh/PROTOCOL.md missing: checking the embedded copy only")
        }
    }
    spec_accepts(CAPTURED).unwrap();
    let d = status::decode(CAPTURED).unwrap();
    assert!(d.faults.is_empty());
    assert_eq!(d.report.free_heap_kb, Some(128));
    assert_eq!(d.report.firmware.as_deref(), Some("1.0.0-phase1"));
    // Both ways onto the wire: inside a BROADCAST's msg, and as a top-level package.
    let wrapped = format!(
        "{{\"type\":8,\"dest\":0,\"from\":1001,\"msg\":{}}}",
        serde_json::to_string(CAPTURED).unwrap()
    );
    let Message::Broadcast(t) = decode(wrapped.as_bytes()).unwrap() else {
        panic!("not a broadcast")
    };
    assert_eq!(status::decode(&t.msg.as_text()).unwrap(), d);
    let Message::Package(p) = decode(CAPTURED.as_bytes()).unwrap() else {
        panic!("not a package")
    };
    assert_eq!(p.ty(), 604);
    assert_eq!(status::decode(p.text()).unwrap(), d);
}

fn report() -> impl Strategy<Value = StatusReport> {
    (
        (
            any::<u8>(),
            any::<u32>(),
            any::<u16>(),
            0u8..=100,
            "[ -~é\"\\\\\n]{0,20}",
        ),
        (
            any::<u16>(),
            any::<u8>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        ),
        (
            any::<u16>(),
            0u8..=100,
            any::<u16>(),
            any::<u8>(),
            "[ -~]{0,40}",
        ),
    )
        .prop_map(
            |((s, up, mem, wifi, fw), (nodes, conns, rx, tx, drop), (lat, loss, tp, al, err))| {
                StatusReport {
                    device_status: Some(s),
                    uptime_s: Some(up),
                    free_heap_kb: Some(mem),
                    wifi_quality: Some(wifi),
                    firmware: Some(fw),
                    firmware_md5: Some("d41d8cd98f00b204e9800998ecf8427e".into()),
                    nodes: Some(nodes),
                    conns: Some(conns),
                    msg_rx: Some(rx),
                    msg_tx: Some(tx),
                    msg_drop: Some(drop),
                    latency_ms: Some(lat),
                    loss_pct: Some(loss),
                    throughput: Some(tp),
                    alerts: Some(AlertFlags(al)),
                    last_error: Some(err),
                }
            },
        )
}

proptest! {
    #[test]
    fn rust_packages_are_accepted_by_a_spec_decoder(r in report(), from in 1u32..) {
        let from = NodeId(from);
        // The broadcast form, as it travels: frame bytes -> wire decode -> msg text.
        let frame = r.to_broadcast(from).encode();
        let Message::Broadcast(t) = decode(&frame).unwrap() else { panic!("not a broadcast") };
        prop_assert_eq!(t.from, from);
        let text = t.msg.as_text();
        prop_assert_eq!(spec_accepts(&text), Ok(()));
        // and our own decoder reads back exactly what was sent
        let d = status::decode(&text).unwrap();
        prop_assert!(d.faults.is_empty());
        prop_assert_eq!(&d.report, &r);
        // The package form.
        let Message::Package(p) = decode(&r.to_package(from).encode()).unwrap() else {
            panic!("not a package")
        };
        prop_assert_eq!(p.from(), from);
        prop_assert_eq!(spec_accepts(p.text()), Ok(()));
    }
}
