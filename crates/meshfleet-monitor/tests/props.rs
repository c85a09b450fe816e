//! Property tests: telemetry reports round-trip; no input makes a decoder or the monitor panic,
//! and the registry stays within its bounds whatever arrives.
#![allow(missing_docs, clippy::unwrap_used)]

use meshfleet_monitor::telemetry::{self, Body, Identity, Metric, Report, SLOTS};
use meshfleet_monitor::{status, Instant, Monitor, MonitorConfig, NodeId};
use proptest::prelude::*;

fn metric_value(m: Metric) -> impl Strategy<Value = i64> {
    let (lo, hi) = m.range();
    lo..=hi
}

fn report() -> impl Strategy<Value = Report> {
    let values = proptest::collection::vec(proptest::option::of(any::<u8>()), SLOTS);
    (
        any::<u16>(),
        any::<bool>(),
        values,
        proptest::collection::vec(0usize..SLOTS, 0..SLOTS),
        any::<u32>(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(("[a-z0-9.]{1,12}", "[a-z]{1,8}", "[A-Z0-9]{1,8}")),
        any::<u64>(),
    )
        .prop_flat_map(|(seq, key, present, slots, age, reply, id, seed)| {
            let vals: Vec<_> = Metric::ALL.iter().map(|m| metric_value(*m)).collect();
            (Just((seq, key, present, slots, age, reply, id, seed)), vals)
        })
        .prop_map(|((seq, key, present, slots, age, reply, id, _), vals)| {
            let body = if key {
                let mut v = [None; SLOTS];
                for (i, p) in present.iter().enumerate() {
                    if p.is_some() {
                        v[i] = Some(vals[i]);
                    }
                }
                Body::Keyframe(v)
            } else {
                let mut d: Vec<(Metric, i64)> = Vec::new();
                for s in slots {
                    let m = Metric::ALL[s];
                    if !d.iter().any(|(x, _)| *x == m) {
                        d.push((m, vals[s]));
                    }
                }
                Body::Delta(d)
            };
            let identity = if key {
                id.map(|(fw, role, hw)| Identity {
                    firmware: fw,
                    role,
                    hardware: hw,
                })
            } else {
                None
            };
            Report {
                seq,
                body,
                age_s: age,
                reply_to: reply,
                identity,
            }
        })
}

proptest! {
    #[test]
    fn telemetry_round_trips(r in report(), from in 1u32.., dest in 1u32..) {
        let text = r.to_json(NodeId(from), NodeId(dest));
        prop_assert!(text.len() <= telemetry::MAX_TELEMETRY_LEN);
        let d = telemetry::decode(&text).unwrap();
        prop_assert_eq!(d.faults, 0);
        prop_assert_eq!(d.report, r);
        // and it is a package the wire codec routes as SINGLE to `dest`
        let Ok(meshfleet_wire::Message::Package(p)) = meshfleet_wire::decode(text.as_bytes()) else {
            panic!("not a package")
        };
        prop_assert_eq!(p.ty(), telemetry::TELEMETRY_TYPE);
        prop_assert_eq!(p.dest(), NodeId(dest));
        prop_assert_eq!(p.routing(), meshfleet_wire::Routing::Single);
    }

    #[test]
    fn decoders_never_panic(text in "\\PC{0,300}") {
        let _ = status::decode(&text);
        let _ = telemetry::decode(&text);
        let _ = telemetry::decode_query(&text);
    }

    #[test]
    fn json_shaped_garbage_never_panics_and_stays_bounded(
        items in proptest::collection::vec(
            (0u32..50, prop_oneof![Just(604i64), Just(710i64)],
             proptest::collection::vec(("[a-zA-Z]{1,8}", prop_oneof![
                 any::<i64>().prop_map(|v| v.to_string()),
                 any::<f64>().prop_map(|v| if v.is_finite() { v.to_string() } else { "1".into() }),
                 "\"[a-z]{0,5}\"".prop_map(|s| s),
                 Just("null".to_string()), Just("[1,-2,null]".to_string()), Just("{\"a\":1}".to_string()),
             ]), 0..12)),
            1..60),
    ) {
        let cfg = MonitorConfig { max_nodes: 20, max_unconfirmed: 10, ..MonitorConfig::default() };
        let mut m = Monitor::new(cfg, NodeId(1));
        for (i, (from, ty, kv)) in items.iter().enumerate() {
            let mut s = format!("{{\"type\":{ty}");
            for (k, v) in kv {
                s.push_str(&format!(",\"{k}\":{v}"));
            }
            s.push('}');
            let now = Instant::from_micros(i as u64 * 700_000);
            let _ = m.handle_package(now, *ty, NodeId(*from), &s);
            let _ = m.handle_app_message(now, NodeId(*from), &s);
            m.handle_timeout(now);
            while m.poll_event().is_some() {}
            while m.poll_transmit().is_some() {}
            prop_assert!(m.len() <= 20);
        }
    }
}
