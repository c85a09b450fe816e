//! A deterministic discrete-event simulator for painlessMesh networks built from real
//! [`meshfleet_mesh::Node`]s.
//!
//! The simulator contains no protocol logic. Every node is the real sans-IO node, with
//! whatever plugins the scenario's factory attaches; the simulator only plays the part of
//! the driver (sockets, clock, WiFi association) and of the air in between:
//!
//! * **Virtual time** in integer microseconds ([`meshfleet_mesh::Instant`]), advanced by a
//!   binary-heap event queue. Ties run in scheduling order (sequence numbers), so a run is
//!   a pure function of the scenario and its seed.
//! * **Per-node clocks** with a random boot origin and a constant drift (default uniform in
//!   ±20 ppm): each node is called with *its* local time, and its timers are converted back
//!   to global time, so time sync has real offsets and real drift to correct.
//! * **Links** are TCP connections between a station and its access point, modelled by the
//!   `meshfleet-channel` crate ([`LinkParams`], [`ChannelModel`]): goodput, per-frame overhead,
//!   latency, send queues with control, normal and bulk lanes and a byte cap, and radio loss as
//!   TCP retransmissions (delay and goodput, then a reset). See `docs/simulator.md`.
//! * **Topology** ([`Topology`]) only says who can hear whom and when nodes join; the mesh
//!   forms through the nodes' own node sync.
//! * **Timeline** ([`SimEvent`]): crashes, reboots (the node is rebuilt from the factory,
//!   its [`PersistentStore`] kept), hangs, link drops, moves, partitions, link changes.
//! * **OTA campaigns** ([`ota`]): the real OTA engine on every node (stock painlessMesh OTA,
//!   its broadcast mode, or the meshfleet protocol), with per-node simulated flash kept
//!   across reboots, measured against the lower bound of the channel model
//!   (a workload: [`Scenario::ota`], the `[ota]` table of scenario files, [`SimReport::ota`]).
//! * **Workloads** ([`workload`]): what a scenario runs on top of the mesh, as plug-ins that
//!   own their scenario-file table, node plugins, hooks, ticks and `summary.json` entry.
//!   [`traffic`] is application traffic ([`Traffic`]: periodic broadcasts and singles,
//!   tagged with an id and the send time so deliveries, duplicates and latency are
//!   measured at the receivers); the OTA campaign is one; [`telemetry`] is the
//!   fleet-monitoring workload (the agent's telemetry on every node, the real monitor on
//!   the gateway, fault injection and a detection table). The [`Simulation`] itself runs
//!   no workload: [`workload::Run`] (and [`run_scenario`]) attach, install and drive them.
//!
//! # Run loop
//!
//! ```text
//! pop the earliest event (time, seq); now = its time
//! match event:
//!   node wakeup (current generation only) -> node.handle_timeout(local(now))
//!   frame arrival                          -> node.handle_shared_frame(local(now), link, frame)
//!   peer closed                            -> node.handle_link_down(local(now), link)
//!   association                            -> handle_link_up on the AP, then the station
//!   transmitter free / direction done      -> start the next queued frame
//!   timeline, sample                       -> as described
//!   workload timer                         -> the workload's hook (Simulation::set_timer)
//! after every input to a node:
//!   drain poll_transmit  -> per-link send queues
//!   drain poll_event     -> LinkClosed closes the link (peer told one latency later),
//!                           NodeListChanged feeds the metrics; every event goes to
//!                           the event hooks (workloads measure deliveries there)
//!   poll_timeout         -> one pending wakeup per node (older ones become stale)
//! ```
//!
//! Invariants: a node's local time never goes backwards and a wakeup never arrives before
//! the local time the node asked for; frames on one link direction arrive in order; no
//! `HashMap` is ever iterated, so nothing depends on hashing.
//!
//! # Example
//!
//! ```
//! use meshfleet_mesh::Duration;
//! use meshfleet_sim::{Run, Scenario, Topology, Traffic};
//!
//! let scenario = Scenario::new(Topology::Line { nodes: 3, spacing_m: 30.0 })
//!     .seed(7)
//!     .duration(Duration::from_secs(30))
//!     .traffic(Traffic::broadcast(Some(1), 1.0, Duration::from_secs(5)));
//! let report = Run::new(scenario).expect("a valid scenario").run();
//! assert!(report.convergence.converged_at_end);
//! assert_eq!(report.app.duplicates, 0);
//! ```

mod air;
mod cli;
mod clock;
mod file;
mod metrics;
pub mod ota;
pub mod ota_faults;
mod output;
mod queue;
pub mod rollout;
mod scenario;
mod sim;
mod store;
mod svg;
pub mod telemetry;
mod text;
mod topology;
pub mod traffic;
pub mod workload;

pub use air::{ClassBytes, TrafficClass};
pub use cli::{demo_scenario, run_scenario, run_scenario_file, RunError};
pub use file::{load_scenario, parse_scenario, Located, ScenarioError};
pub use meshfleet_channel::{ChannelModel, LinkChange, LinkParams};
pub use metrics::{
    AppReport, ConvergenceEntry, ConvergenceReport, LatencySummary, LinkReport, MeshTotals,
    NodeReport, Sample, SimReport, TimeSyncReport,
};
pub use output::{peak_rss_kib, rss_kib, write_outputs, RunInfo, WriteError};
pub use scenario::{
    plain_node, ClockParams, Formation, InvalidScenario, MeshParams, NodeAction, NodeFactory,
    NodeInit, RejoinParams, Scenario, SimEvent, TreeText, MAX_PAYLOAD_BYTES,
};
pub use sim::{FrameTrace, Simulation, TimerHook};
pub use store::PersistentStore;
pub use text::{describe_scenario, explain_report};
pub use topology::{Topology, ESP32_MAX_CONN, ESP8266_MAX_CONN};
pub use traffic::{Traffic, TrafficKind};
pub use workload::{Run, TableError, TableSource, Workload, WorkloadSpec, WorkloadTable};
