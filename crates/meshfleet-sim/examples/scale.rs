//! Scale run: N nodes form a mesh, then simulate node sync, time sync and one app
//! broadcast per second. Run with `--release`:
//!
//! ```text
//! cargo run -p meshfleet-sim --release --example scale -- [NODES] [VIRTUAL_MINUTES] [JOIN_INTERVAL_MS] [CHANNEL] [MAX_WALL_S] [SYNC] [TREE_TEXT]
//! ```
//!
//! Defaults: 1000 nodes, 10 minutes, 20 ms between joins, independent links, no wall-time
//! limit, meshfleet's node sync (`SYNC` = `library`: the library's, a request on every
//! layout change whatever is unanswered; `NodeSyncPolicy`), trees' text shared between nodes
//! (`TREE_TEXT` = `copied`: each node copies it, `meshfleet_sim::TreeText`: more host
//! memory, less CPU, the same results). Prints wall time, virtual seconds per wall second, events processed and peak RSS
//! (VmHWM). With `MAX_WALL_S`, a run that has used that much wall time stops at the next
//! 10-virtual-second step and prints its summary so far, marked as stopped (a 10,000-node
//! run on a busy machine can take hours; a stopped run still says how far it got).

use std::time::Instant as Wall;

use meshfleet_mesh::Duration;
use meshfleet_sim::{
    peak_rss_kib, ChannelModel, Formation, Run, Scenario, Topology, Traffic, ESP32_MAX_CONN,
};

fn arg<T: std::str::FromStr>(i: usize, default: T) -> T {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let nodes: u32 = arg(1, 1000);
    let minutes: u64 = arg(2, 10);
    let join_ms: u64 = arg(3, 20);
    let channel = match std::env::args().nth(4).as_deref() {
        Some("airtime") => ChannelModel::Airtime,
        _ => ChannelModel::Independent,
    };
    let max_wall_s: f64 = arg(5, f64::INFINITY);
    let library_sync = std::env::args().nth(6).as_deref() == Some("library");
    let copied_text = std::env::args().nth(7).as_deref() == Some("copied");
    let formation = Duration::from_millis(join_ms * u64::from(nodes));
    let mut scenario = Scenario::new(Topology::RandomTree {
        nodes,
        max_children: ESP32_MAX_CONN,
    })
    .name(format!("scale_{nodes}"))
    .seed(1)
    .duration(formation + Duration::from_secs(60 * minutes))
    .formation(Formation {
        start: Duration::ZERO,
        interval: Duration::from_millis(join_ms),
        jitter: Duration::ZERO,
    })
    .channel(channel)
    .traffic(Traffic::broadcast(Some(1), 1.0, formation).payload(100))
    .sample_interval(Duration::from_secs(10));
    scenario.mesh.node_sync = Some(if library_sync {
        meshfleet_mesh::NodeSyncPolicy::Library
    } else {
        meshfleet_mesh::NodeSyncPolicy::Meshfleet
    });
    if copied_text {
        scenario.mesh.tree_text = meshfleet_sim::TreeText::Copied;
    }
    let started = Wall::now();
    // The broadcast is a workload: `Run` installs it (it runs on the simulation's timers).
    let mut run = Run::new(scenario).expect("a valid scenario");
    let sim = run.sim_mut();
    // Links closed so far (node-sync timeout / all), for the progress lines: where a big
    // mesh comes apart, this says why.
    let closes = std::rc::Rc::new(std::cell::Cell::new((0u64, 0u64)));
    let seen = closes.clone();
    sim.set_event_hook(move |_, _, e| {
        if let meshfleet_mesh::Event::LinkClosed { reason, .. } = e {
            let (t, all) = seen.get();
            let timeout = u64::from(*reason == meshfleet_mesh::CloseReason::NodeSyncTimeout);
            seen.set((t + timeout, all + 1));
        }
    });
    let mut formed_at = None;
    let step = Duration::from_secs(10);
    let mut stopped = false;
    while sim.now() < sim.end() {
        if started.elapsed().as_secs_f64() >= max_wall_s {
            stopped = true;
            break;
        }
        let next = (sim.now() + step).min(sim.end());
        sim.run_until(next);
        if formed_at.is_none()
            && sim.converged()
            && sim.components() == 1
            && sim.now() >= meshfleet_mesh::Instant::ZERO + formation
        {
            formed_at = Some((sim.now(), started.elapsed()));
        }
        let (timeouts, all) = closes.get();
        eprintln!(
            "t={:>6.0}s wall={:>6.1}s converged={} components={} queue={} closed={timeouts}/{all} (node-sync timeout/all) rss={} MiB",
            sim.now().as_micros() as f64 / 1e6,
            started.elapsed().as_secs_f64(),
            sim.converged(),
            sim.components(),
            sim.pending_events(),
            meshfleet_sim::rss_kib().unwrap_or(0) / 1024
        );
    }
    let stopped_at = sim.now().as_micros() as f64 / 1e6;
    let report = run.report();
    let wall = started.elapsed().as_secs_f64();
    println!("nodes                 {nodes}");
    println!(
        "node sync             {}",
        if library_sync {
            "the library's (a request per layout change)"
        } else {
            "meshfleet's (one request in flight; a syncing peer is alive)"
        }
    );
    if stopped {
        println!(
            "STOPPED               at {stopped_at:.0} virtual s: the wall-time limit ({max_wall_s} s) \
             was reached; the figures below are those of the run so far"
        );
    }
    println!(
        "virtual time          {:.0} s (formation {:.0} s + {minutes} min)",
        report.virtual_time_s,
        formation.as_secs_f64()
    );
    println!("wall time             {wall:.2} s");
    println!("virtual s / wall s    {:.1}", report.virtual_time_s / wall);
    println!("events processed      {}", report.events_processed);
    println!(
        "events / wall s       {:.0}",
        report.events_processed as f64 / wall
    );
    println!(
        "peak RSS (VmHWM)      {} MiB",
        peak_rss_kib().unwrap_or(0) / 1024
    );
    println!("frames on air         {}", report.frames_on_air);
    println!(
        "bytes on air          {:.1} MB",
        report.bytes_on_air as f64 / 1e6
    );
    println!(
        "formation converged   {:?} virtual s",
        report.convergence.formation_converged_s
    );
    if let Some((t, w)) = formed_at {
        let t = t.as_micros() as f64 / 1e6;
        let w = w.as_secs_f64();
        let rest = report.virtual_time_s - t;
        println!("  wall until converged {w:.2} s (checked every 10 virtual s: t = {t:.0} s)");
        println!(
            "  then                 {rest:.0} virtual s in {:.2} wall s ({:.1} virtual s / wall s)",
            wall - w,
            rest / (wall - w).max(1e-9)
        );
    }
    println!(
        "converged at end      {}",
        report.convergence.converged_at_end
    );
    println!(
        "broadcasts complete   {}/{}",
        report.app.broadcasts_complete, report.app.broadcasts
    );
    println!("delivery ratio        {:.4}", report.app.delivery_ratio);
    println!(
        "latency p50/p99/max   {:.1} / {:.1} / {:.1} ms",
        report.app.latency.p50_ms, report.app.latency.p99_ms, report.app.latency.max_ms
    );
    println!(
        "time spread (end)     {:?} us",
        report.time_sync.final_spread_us
    );
    println!("drops                 {:?}", report.drops);
    println!("link closes           {:?}", report.link_closes);
}
