//! The readable report of `meshfleet sim`: what was simulated, and each figure in words.
//!
//! Two rules: say what the model is (an `independent` channel is wired-like, so its times
//! are not radio figures), and never print a figure that does not exist (no "0/0
//! deliveries (100.0%)" without traffic, no "below 1 ms from never").

use crate::air::TrafficClass;
use crate::metrics::SimReport;
use crate::scenario::Scenario;
use crate::topology::Topology;
use crate::ChannelModel;

fn secs(d: meshfleet_mesh::Duration) -> f64 {
    d.as_micros() as f64 / 1e6
}

fn topology(t: &Topology) -> String {
    match t {
        Topology::Line { nodes, spacing_m } => {
            format!("{nodes} nodes in a line, {spacing_m} m apart, each joining the previous one")
        }
        Topology::Star {
            nodes,
            max_children,
        } => format!(
            "{nodes} nodes in a star around node 1 (at most {max_children} stations per access point)"
        ),
        Topology::Grid {
            rows,
            cols,
            spacing_m,
            max_children,
        } => format!(
            "a {rows} x {cols} grid, {spacing_m} m apart, each node joining the nearest node in the mesh with a free slot (at most {max_children} stations per access point)"
        ),
        Topology::RandomTree {
            nodes,
            max_children,
        } => format!(
            "{nodes} nodes in a random tree (at most {max_children} children per node), no positions"
        ),
        Topology::Geometric {
            nodes,
            width_m,
            height_m,
            radio_range_m,
            max_children,
        } => format!(
            "{nodes} nodes placed at random over {width_m} m x {height_m} m, radio range {radio_range_m} m, each joining the nearest node in range already in the mesh (at most {max_children} stations per access point)"
        ),
        Topology::Explicit { nodes, edges } => {
            format!("{nodes} nodes joined along {} given edges", edges.len())
        }
    }
}

fn channel(c: &ChannelModel) -> String {
    match c {
        ChannelModel::Independent => "independent: every link direction has a transmitter of its own, so nothing shares airtime and nothing interferes. This is a wired-like network: a real WiFi mesh is slower, and its times are not radio figures (the `airtime` and `geometric` channels share the radio).".to_owned(),
        ChannelModel::Airtime => "airtime: one transmitter per node, shared by all its links (a node sending to k neighbours pays k transmissions); no interference between nodes.".to_owned(),
        ChannelModel::Geometric { interference_range_m } => format!(
            "geometric: one transmitter per node, and a transmission silences every node within {interference_range_m} m of the sender (carrier sense)."
        ),
        _ => c.label().to_owned(),
    }
}

/// What `scenario` simulates, one line per aspect.
pub fn describe_scenario(s: &Scenario) -> Vec<String> {
    let l = &s.link;
    let mut out = vec![
        format!(
            "scenario {}: {} virtual seconds, seed {}",
            s.name,
            secs(s.duration),
            s.seed
        ),
        format!("topology: {}", topology(&s.topology)),
        format!(
            "joins: from {:.1} s, one every {} ms{}",
            secs(s.formation.start),
            s.formation.interval.as_micros() / 1000,
            match s.formation.jitter.as_micros() / 1000 {
                0 => String::new(),
                j => format!(" (plus up to {j} ms of jitter)"),
            }
        ),
        format!(
            "links: TCP over WiFi, {:.0} kB/s goodput, {:.2} ms per frame plus {:.2} ms latency (calibrated on ESP8266), {}% segment loss as retransmissions",
            l.goodput_bytes_per_s / 1e3,
            l.frame_overhead.as_micros() as f64 / 1e3,
            l.latency.as_micros() as f64 / 1e3,
            l.loss * 100.0
        ),
        format!("channel: {}", channel(&s.channel)),
        if s.clock.drift_ppm > 0.0 {
            format!(
                "clocks: each node's clock drifts by up to ±{} ppm (two nodes part by up to {:.0} µs per second between syncs)",
                s.clock.drift_ppm,
                2.0 * s.clock.drift_ppm
            )
        } else {
            "clocks: no drift".to_owned()
        },
    ];
    if crate::traffic::flows(s).is_empty() {
        out.push("application traffic: none".to_owned());
    }
    for w in &s.workloads {
        out.extend(w.describe());
    }
    if !s.events.is_empty() {
        out.push(format!("timeline: {} event(s)", s.events.len()));
    }
    // Workloads that do not describe themselves are at least named.
    for w in s.workloads.iter().filter(|w| w.describe().is_empty()) {
        out.push(format!("workload: {}", w.key()));
    }
    out
}

fn at(v: Option<f64>, what: &str) -> String {
    v.map_or_else(
        || format!("not {what} during the run"),
        |s| format!("{s:.1} s"),
    )
}

fn size(bytes: u64) -> String {
    if bytes >= 1_000_000 {
        format!("{:.1} MB", bytes as f64 / 1e6)
    } else {
        format!("{:.1} kB", bytes as f64 / 1e3)
    }
}

fn ms(us: u64) -> String {
    if us >= 10_000_000 {
        format!("{:.0} s", us as f64 / 1e6)
    } else if us >= 1000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{us} µs")
    }
}

/// The results of `r`, each figure with what it means. `drift_ppm` is the scenario's clock
/// drift bound (it explains the time-sync figure).
pub fn explain_report(r: &SimReport, drift_ppm: f64) -> Vec<String> {
    let c = &r.convergence;
    let mut out = vec![
        format!(
            "mesh formation: the last planned join happened at {}; every running node's node list named exactly the other nodes it was connected to (one mesh) at {}. At the end: {}.",
            at(c.formation_done_s, "finished"),
            at(c.formation_converged_s, "reached"),
            if c.converged_at_end {
                format!("converged, {} component(s)", c.components_at_end)
            } else {
                format!("NOT converged, {} component(s)", c.components_at_end)
            }
        ),
    ];
    for e in c.after_events.iter().filter(|e| e.cause != "formation") {
        out.push(format!(
            "  after {} at {:.1} s: node lists right again {}",
            e.cause,
            e.at_s,
            e.converged_after_s
                .map_or("never during the run".to_owned(), |d| if d < 1.0 {
                    format!("{:.0} ms later", d * 1e3)
                } else {
                    format!("{d:.1} s later")
                })
        ));
    }
    let t = &r.time_sync;
    let mut ts = format!(
        "time sync: the largest difference between the mesh clocks of two nodes of the largest component (sampled) was {} at the end, at most {} over the last minute; ",
        t.final_spread_us.map_or("not measured".to_owned(), ms),
        t.max_spread_last_minute_us.map_or("not measured".to_owned(), ms),
    );
    if t.max_spread_last_minute_us.is_some_and(|us| us > 1_000_000) {
        ts.push_str(
            "(a node that has not synced yet differs by its boot offset: seconds to minutes); ",
        );
    }
    ts.push_str(&match t.below_1ms_from_s {
        Some(s) => format!("it stayed below 1 ms from {s:.1} s on."),
        None => "it did not stay below 1 ms to the end.".to_owned(),
    });
    if drift_ppm > 0.0 {
        ts.push_str(&format!(
            " Clocks drift by up to ±{drift_ppm} ppm and a synced node re-syncs once a minute, so the spread grows by up to {:.0} µs/s between syncs; each hop adds the offset error of one exchange, whose request can wait behind a long frame.",
            2.0 * drift_ppm
        ));
    }
    out.push(ts);
    let mut air = format!(
        "air: {} frames, {} put on the air over all links",
        r.frames_on_air,
        size(r.bytes_on_air)
    );
    if !r.air_by_class.is_empty() {
        let total: u64 = r.air_by_class.iter().map(|c| c.total()).sum();
        let parts: Vec<String> = TrafficClass::ALL
            .iter()
            .filter(|k| r.air_by_class.iter().any(|c| c.of(**k) > 0))
            .map(|k| {
                let b: u64 = r.air_by_class.iter().map(|c| c.of(*k)).sum();
                format!(
                    "{} {} ({:.0}%)",
                    k.label(),
                    size(b),
                    100.0 * b as f64 / total.max(1) as f64
                )
            })
            .collect();
        air.push_str(&format!(": {}", parts.join(", ")));
    }
    out.push(air);
    let a = &r.app;
    if a.sent == 0 && a.not_sent == 0 {
        out.push("application messages: none sent".to_owned());
    } else {
        out.push(format!(
            "application messages: {} sent ({} could not be sent: sender down or no route); {} of the {} deliveries expected (a broadcast is expected at every node connected to its sender when sent) arrived ({:.1}%), {} duplicates; {} of {} broadcasts reached every expected node exactly once",
            a.sent,
            a.not_sent,
            a.delivered,
            a.expected_deliveries,
            100.0 * a.delivery_ratio,
            a.duplicates,
            a.broadcasts_complete,
            a.broadcasts
        ));
        if a.latency.count > 0 {
            out.push(format!(
                "  latency from send to delivery: median {:.1} ms, 90% within {:.1} ms, 99% within {:.1} ms, worst {:.1} ms",
                a.latency.p50_ms, a.latency.p90_ms, a.latency.p99_ms, a.latency.max_ms
            ));
        }
    }
    if let Some(o) = &r.ota {
        out.push(format!(
            "OTA ({}): {} of {} receivers hold the verified new image; {}",
            o.strategy,
            o.updated,
            o.receivers,
            match o.makespan_s {
                Some(m) => format!("the last one {m:.1} s after the start"),
                None => "not all were updated during the run".to_owned(),
            }
        ));
        out.push(format!(
            "  image {} KiB, deflated payload S = {} KiB; OTA frames on the air {:.1} MB = {:.2} x (N-1) x S (1.00 would be every receiver getting the payload once, headers free); the source sent {:.1} KB",
            o.image_bytes / 1024,
            o.payload_bytes / 1024,
            o.ota_bytes_on_air as f64 / 1e6,
            o.ota_bytes_on_air as f64
                / (f64::from(o.receivers.max(1)) * o.payload_bytes.max(1) as f64),
            o.source_ota_bytes as f64 / 1e3
        ));
        if let (Some(b), Some(m)) = (&o.lower_bound, o.makespan_s) {
            out.push(format!(
                "  against the lower bound for this tree and these links: {:.2}x the mean-value bound ({:.1} s, {} binds), {:.2}x the bound with stall propagation ({:.1} s, {} binds); the bounds hold for any protocol with frames of at most {} payload bytes on this channel model",
                m / b.bound_s.max(1e-9),
                b.bound_s,
                b.binding,
                m / b.combined_bound_s.max(1e-9),
                b.combined_bound_s,
                b.combined_binding,
                b.chunk_bytes
            ));
        }
        out.push(format!(
            "  storage at the end: {} on the new image, {} on the old one, {} neither",
            o.final_new, o.final_old, o.final_broken
        ));
    }
    if !r.drops.is_empty() {
        let drops: Vec<String> = r.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        out.push(format!(
            "frames dropped (simulator: queue full, link or node down; node: no route, undecodable): {}",
            drops.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Simulation, Traffic};
    use meshfleet_mesh::Duration;

    #[test]
    fn no_traffic_and_no_sync_are_said_in_words() {
        let s = Scenario::new(Topology::Line {
            nodes: 3,
            spacing_m: 30.0,
        })
        .duration(Duration::from_secs(5));
        let mut r = Simulation::new(s.clone()).run();
        let text = explain_report(&r, s.clock.drift_ppm).join("\n");
        assert!(text.contains("application messages: none sent"), "{text}");
        assert!(
            !text.contains("0/0") && !text.contains("from never"),
            "{text}"
        );
        assert!(text.contains("it stayed below 1 ms from"), "{text}");
        // A spread that never settled is said as such, not as "from never".
        r.time_sync.below_1ms_from_s = None;
        let text = explain_report(&r, s.clock.drift_ppm).join("\n");
        assert!(text.contains("did not stay below 1 ms"), "{text}");
        let d = describe_scenario(&s).join("\n");
        assert!(
            d.contains("wired-like") && d.contains("application traffic: none"),
            "{d}"
        );
    }

    #[test]
    fn traffic_is_explained_with_its_ratio() {
        let s = Scenario::new(Topology::Line {
            nodes: 3,
            spacing_m: 30.0,
        })
        .seed(7)
        .duration(Duration::from_secs(30))
        .traffic(Traffic::broadcast(Some(1), 1.0, Duration::from_secs(5)));
        let r = crate::Run::new(s.clone()).expect("valid").run();
        let text = explain_report(&r, s.clock.drift_ppm).join("\n");
        assert!(text.contains("deliveries expected"), "{text}");
        assert!(text.contains("latency from send to delivery"), "{text}");
        let d = describe_scenario(&s).join("\n");
        assert!(
            d.contains("1 per second, broadcast, 64 bytes, from node 1"),
            "{d}"
        );
    }
}
