//! The application-traffic workload: periodic broadcasts and singles between nodes, with
//! deliveries, duplicates and latency measured at the receivers.
//!
//! It owns the `[[traffic]]` tables of scenario files (one per flow), and
//! [`Scenario::traffic`] adds a flow from code. Its results keep the places consumers read:
//! [`SimReport::app`], [`SimReport::latencies_us`], the `app_sent` / `app_delivered` columns
//! of the time series and `app_received` per node; its plots are `delivered.svg` (sent and
//! delivered on separate axes) and `latency_cdf.svg` (log axis).
//!
//! Everything runs on hooks the simulation provides; the event loop knows nothing about
//! traffic:
//!
//! * each flow's sends are [`Simulation::set_timer`] events (one pending per flow), so a
//!   send runs at its exact time among the other events of that instant;
//! * deliveries come from the receivers' `Event::Received` ([`Simulation::set_event_hook`]):
//!   every message starts with a tag `mf|<id>|<sent µs>|`;
//! * the per-sample counts are written into each sample ([`Simulation::set_sample_hook`]);
//! * who may send (running nodes in a mesh, [`Simulation::mesh_members`]) and who should
//!   receive (the sender's connected component at the send,
//!   [`Simulation::component_of`]) come from the simulation's ground truth.

use std::any::Any;
use std::cell::RefCell;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use meshfleet_mesh::{Duration, Event, Instant, NodeId, Rng};
use serde::Deserialize;
use toml::Spanned;

use crate::metrics::{secs, AppReport, LatencySummary, SimReport};
use crate::output::{markers, with_markers};
use crate::scenario::{Scenario, MAX_PAYLOAD_BYTES};
use crate::sim::{Simulation, TimerHook};
use crate::svg::{panels, Chart, Series};
use crate::workload::{check, TableError, TableSource, Workload, WorkloadSpec};

/// The workload's key: the scenario file's `[[traffic]]` tables.
pub const KEY: &str = "traffic";

/// Whether an application flow broadcasts or sends to one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrafficKind {
    /// BROADCAST (8) to every node.
    Broadcast,
    /// SINGLE (9) to `to`, or a random other node each time if `None`.
    Single {
        /// Destination node number.
        to: Option<u32>,
    },
}

/// A periodic application flow. Messages carry an id and their send time in their text so
/// the workload measures delivery and latency from the receivers' `Event::Received`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Traffic {
    /// Broadcast or single.
    pub kind: TrafficKind,
    /// Sender node number, or a random node in the mesh each time if `None`.
    pub from: Option<u32>,
    /// Messages per second (> 0).
    pub rate_per_s: f64,
    /// Length of the message text in bytes (at least the tag's length, ~25 bytes).
    pub payload_bytes: usize,
    /// First message at this time.
    pub start: Duration,
    /// No messages at or after this time.
    pub stop: Option<Duration>,
}

impl Traffic {
    /// One broadcast per `1 / rate_per_s` seconds from `from`, starting at `start`.
    pub fn broadcast(from: Option<u32>, rate_per_s: f64, start: Duration) -> Self {
        Self {
            kind: TrafficKind::Broadcast,
            from,
            rate_per_s,
            payload_bytes: 64,
            start,
            stop: None,
        }
    }

    /// Singles from `from` to `to`.
    pub fn single(from: Option<u32>, to: Option<u32>, rate_per_s: f64, start: Duration) -> Self {
        Self {
            kind: TrafficKind::Single { to },
            ..Self::broadcast(from, rate_per_s, start)
        }
    }

    /// With this payload length.
    pub fn payload(mut self, bytes: usize) -> Self {
        self.payload_bytes = bytes;
        self
    }

    /// Stopping at `stop`.
    pub fn until(mut self, stop: Duration) -> Self {
        self.stop = Some(stop);
        self
    }

    /// The flow in words, for `meshfleet sim`.
    fn describe(&self) -> String {
        let from = self
            .from
            .map_or("a random node".to_owned(), |n| format!("node {n}"));
        let kind = match self.kind {
            TrafficKind::Broadcast => "broadcast".to_owned(),
            TrafficKind::Single { to } => format!(
                "single to {}",
                to.map_or("a random node".to_owned(), |n| format!("node {n}"))
            ),
        };
        format!(
            "application traffic: {} per second, {kind}, {} bytes, from {from}, starting at {:.0} s",
            self.rate_per_s,
            self.payload_bytes,
            secs(Instant::ZERO + self.start)
        )
    }
}

/// Checks a flow against the scenario's node count: (field, message).
pub(crate) fn check_traffic(t: &Traffic, n: u32) -> Result<(), (&'static str, String)> {
    if !(t.rate_per_s > 0.0 && t.rate_per_s.is_finite()) {
        return Err((
            "rate_per_s",
            format!("must be a positive rate (got {})", t.rate_per_s),
        ));
    }
    if t.payload_bytes > MAX_PAYLOAD_BYTES {
        return Err((
            "payload_bytes",
            format!(
                "painlessMesh drops strings longer than {MAX_PAYLOAD_BYTES} characters (got {})",
                t.payload_bytes
            ),
        ));
    }
    if let Some(stop) = t.stop {
        if stop <= t.start {
            return Err(("stop_s", "must be after start_s".into()));
        }
    }
    let check = |field, v: Option<u32>| match v {
        Some(v) if v == 0 || v > n => Err((
            field,
            format!("names node {v}, but nodes are numbered 1..={n}"),
        )),
        _ => Ok(()),
    };
    check("from", t.from)?;
    if let TrafficKind::Single { to } = t.kind {
        check("to", to)?;
        if to.is_some() && to == t.from {
            return Err(("to", "a node does not send singles to itself".into()));
        }
        if n < 2 {
            return Err(("kind", "singles need at least two nodes".into()));
        }
    }
    Ok(())
}

/// The traffic of a scenario: its flows, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrafficSpec {
    /// The flows.
    pub flows: Vec<Traffic>,
}

impl WorkloadSpec for TrafficSpec {
    fn key(&self) -> &'static str {
        KEY
    }

    fn validate(&self, scenario: &Scenario) -> Result<(), String> {
        let n = scenario.topology.node_count();
        for (i, t) in self.flows.iter().enumerate() {
            check_traffic(t, n).map_err(|(f, m)| format!("traffic[{i}].{f}: {m}"))?;
        }
        Ok(())
    }

    fn build(&self, scenario: &Scenario) -> Box<dyn Workload> {
        Box::new(TrafficWorkload::new(self.flows.clone(), scenario.seed))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn describe(&self) -> Vec<String> {
        self.flows.iter().map(Traffic::describe).collect()
    }
}

/// The flows of `scenario` (empty without traffic).
pub fn flows(scenario: &Scenario) -> &[Traffic] {
    scenario
        .workloads
        .iter()
        .find_map(|w| w.as_any().downcast_ref::<TrafficSpec>())
        .map_or(&[], |t| t.flows.as_slice())
}

impl Scenario {
    /// Adds an application flow (to the scenario's traffic workload, created on the first
    /// flow).
    pub fn traffic(mut self, t: Traffic) -> Self {
        let mut spec = TrafficSpec::default();
        match self.workloads.iter().position(|w| w.key() == KEY) {
            Some(i) => {
                spec.flows = flows(&self).to_vec();
                spec.flows.push(t);
                self.workloads[i] = Arc::new(spec);
            }
            None => {
                spec.flows.push(t);
                self.workloads.push(Arc::new(spec));
            }
        }
        self
    }
}

/// One `[[traffic]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTraffic {
    kind: Spanned<String>,
    from: Option<Spanned<i64>>,
    to: Option<Spanned<i64>>,
    rate_per_s: Spanned<f64>,
    payload_bytes: Option<Spanned<i64>>,
    start_s: Option<Spanned<f64>>,
    stop_s: Option<Spanned<f64>>,
}

/// The part of the file this workload reads (serde skips every other key).
#[derive(Deserialize)]
struct File {
    traffic: Vec<RawTraffic>,
}

fn at(v: &Spanned<impl Sized>) -> Range<usize> {
    v.span()
}

/// Parses the `[[traffic]]` tables: one flow each, fields checked where they are written.
pub(crate) fn parse_table(src: &TableSource<'_>) -> Result<Arc<dyn WorkloadSpec>, TableError> {
    let file: File = src.deserialize()?;
    let n = src.nodes;
    let mut spec = TrafficSpec::default();
    for (i, t) in file.traffic.iter().enumerate() {
        // Relative to the table: the file parser puts `traffic.` in front.
        let f = |name: &str| format!("[{i}].{name}");
        let from = t
            .from
            .as_ref()
            .map(|v| check::node(&f("from"), v, n))
            .transpose()?;
        let to =
            t.to.as_ref()
                .map(|v| check::node(&f("to"), v, n))
                .transpose()?;
        let kind = match t.kind.get_ref().as_str() {
            "broadcast" => {
                if let Some(v) = &t.to {
                    return Err(TableError::at(at(v), f("to"), "not used by broadcasts"));
                }
                TrafficKind::Broadcast
            }
            "single" => TrafficKind::Single { to },
            other => {
                return Err(TableError::at(
                    at(&t.kind),
                    f("kind"),
                    format!("unknown traffic kind `{other}` (expected broadcast or single)"),
                ))
            }
        };
        let mut tr = Traffic {
            kind,
            from,
            rate_per_s: check::positive(&f("rate_per_s"), &t.rate_per_s)?,
            payload_bytes: 64,
            start: Duration::ZERO,
            stop: None,
        };
        if let Some(v) = &t.payload_bytes {
            tr.payload_bytes = check::count(&f("payload_bytes"), v, 0)? as usize;
        }
        if let Some(v) = &t.start_s {
            tr.start = check::secs(check::non_negative(&f("start_s"), v)?);
        }
        if let Some(v) = &t.stop_s {
            tr.stop = Some(check::secs(check::non_negative(&f("stop_s"), v)?));
        }
        check_traffic(&tr, n).map_err(|(field, m)| {
            let span = match field {
                "payload_bytes" => t.payload_bytes.as_ref().map(at),
                "stop_s" => t.stop_s.as_ref().map(at),
                "to" => t.to.as_ref().map(at),
                _ => None,
            };
            TableError::at(span.unwrap_or(at(&t.kind)), f(field), m)
        })?;
        spec.flows.push(tr);
    }
    Ok(Arc::new(spec))
}

/// The tag at the start of every application message: `mf|<id>|<sent µs>|`.
fn tag(id: usize, sent: Instant) -> String {
    format!("mf|{id}|{}|", sent.as_micros())
}

fn parse_tag(msg: &str) -> Option<(usize, Instant)> {
    let rest = msg.strip_prefix("mf|")?;
    let mut it = rest.splitn(3, '|');
    let id = it.next()?.parse().ok()?;
    let sent = it.next()?.parse().ok()?;
    it.next()?;
    Some((id, Instant::from_micros(sent)))
}

/// One message sent by a flow.
struct AppMsg {
    broadcast: bool,
    expected: u32,
    received: u32,
    duplicates: u32,
    /// Receivers so far, one bit per node.
    seen: Vec<u64>,
}

/// What the hooks share.
struct State {
    flows: Vec<Traffic>,
    /// Random senders and destinations.
    rng: Rng,
    /// The id of node 1 and the node count: receivers by index.
    first: u32,
    nodes: usize,
    hook: Option<TimerHook>,
    msgs: Vec<AppMsg>,
    sent: u64,
    not_sent: u64,
    latencies: Vec<u64>,
    received: Vec<u64>,
    window_sent: u64,
    window_delivered: u64,
}

/// The running workload.
pub struct TrafficWorkload {
    state: Rc<RefCell<State>>,
    plots: Vec<(String, String)>,
}

impl TrafficWorkload {
    fn new(flows: Vec<Traffic>, seed: u64) -> Self {
        // The stream the simulator gave its traffic before traffic was a workload (its
        // master generator's fourth child), so runs stay what they were.
        let mut master = Rng::new(seed);
        for salt in 1..=3 {
            let _ = master.derive(salt);
        }
        let rng = master.derive(4);
        Self {
            state: Rc::new(RefCell::new(State {
                flows,
                rng,
                first: 0,
                nodes: 0,
                hook: None,
                msgs: Vec::new(),
                sent: 0,
                not_sent: 0,
                latencies: Vec::new(),
                received: Vec::new(),
                window_sent: 0,
                window_delivered: 0,
            })),
            plots: Vec::new(),
        }
    }
}

/// Flow `i` sends one message now.
fn send(state: &RefCell<State>, sim: &mut Simulation, i: usize) {
    let now = sim.now();
    let mut st = state.borrow_mut();
    let t = st.flows[i].clone();
    let interval = Duration::from_micros((1e6 / t.rate_per_s).round().max(1.0) as u64);
    let next = now + interval;
    if next < sim.end() && t.stop.map_or(true, |s| next < Instant::ZERO + s) {
        if let Some(hook) = st.hook {
            sim.set_timer(hook, next, i as u64);
        }
    }
    let from = match t.from {
        Some(n) => Some(sim.id_of(n)),
        None => pick(&mut st.rng, sim.mesh_members(), None),
    };
    let Some(from) = from.filter(|id| sim.is_running(*id)) else {
        st.not_sent += 1;
        return;
    };
    let id = st.msgs.len();
    let mut text = tag(id, now);
    while text.len() < t.payload_bytes {
        text.push('.');
    }
    let comp = sim.component_of(from);
    let (broadcast, expected, dest) = match t.kind {
        TrafficKind::Broadcast => (true, comp.map_or(0, |(_, size)| size - 1), None),
        TrafficKind::Single { to } => {
            let to = match to {
                Some(n) => Some(sim.id_of(n)),
                None => pick(&mut st.rng, sim.mesh_members(), Some(from)),
            };
            let Some(to) = to else {
                st.not_sent += 1;
                return;
            };
            let reachable = comp
                .is_some_and(|(c, _)| sim.component_of(to).is_some_and(|(other, _)| other == c));
            (false, u32::from(reachable), Some(to))
        }
    };
    // Recorded before the send: a delivery during it (none today) finds its message.
    let words = st.nodes.div_ceil(64);
    st.msgs.push(AppMsg {
        broadcast,
        expected,
        received: 0,
        duplicates: 0,
        seen: vec![0; words],
    });
    drop(st);
    let ok = sim
        .with_node(from, |node, local| match dest {
            None => {
                node.send_broadcast(local, &text);
                true
            }
            Some(dest) => node.send_single(local, dest, &text).is_ok(),
        })
        .unwrap_or(false);
    let mut st = state.borrow_mut();
    if ok {
        st.sent += 1;
        st.window_sent += 1;
    } else {
        st.msgs.pop();
        st.not_sent += 1;
    }
}

/// A random member of `members` other than `except`.
fn pick(rng: &mut Rng, mut members: Vec<NodeId>, except: Option<NodeId>) -> Option<NodeId> {
    members.retain(|m| Some(*m) != except);
    if members.is_empty() {
        return None;
    }
    Some(members[rng.below(members.len() as u64) as usize])
}

/// A node received an application message.
fn received(st: &mut State, now: Instant, node: NodeId, msg: &str) {
    let Some((id, sent)) = parse_tag(msg) else {
        return;
    };
    let v = node.0.wrapping_sub(st.first) as usize;
    if v >= st.nodes {
        return;
    }
    let Some(m) = st.msgs.get_mut(id) else {
        return;
    };
    let (w, b) = (v / 64, 1u64 << (v % 64));
    if m.seen[w] & b != 0 {
        m.duplicates += 1;
        return;
    }
    m.seen[w] |= b;
    m.received += 1;
    st.received[v] += 1;
    st.window_delivered += 1;
    st.latencies.push(now.saturating_since(sent).as_micros());
}

impl Workload for TrafficWorkload {
    fn key(&self) -> &'static str {
        KEY
    }

    fn install(&mut self, sim: &mut Simulation) {
        let weak = Rc::downgrade(&self.state);
        let hook = sim.add_timer_hook(move |sim: &mut Simulation, token: u64| {
            if let Some(state) = weak.upgrade() {
                send(&state, sim, token as usize);
            }
        });
        let mut st = self.state.borrow_mut();
        st.hook = Some(hook);
        st.first = sim.id_of(1).0;
        st.nodes = sim.node_count() as usize;
        st.received = vec![0; st.nodes];
        for (i, t) in st.flows.iter().enumerate() {
            sim.set_timer(hook, Instant::ZERO + t.start, i as u64);
        }
        drop(st);
        let state = self.state.clone();
        sim.set_event_hook(move |now: Instant, id: NodeId, e: &Event| {
            if let Event::Received { msg, .. } = e {
                received(&mut state.borrow_mut(), now, id, msg);
            }
        });
        let state = self.state.clone();
        sim.set_sample_hook(move |sample| {
            let mut st = state.borrow_mut();
            sample.app_sent = std::mem::take(&mut st.window_sent);
            sample.app_delivered = std::mem::take(&mut st.window_delivered);
        });
    }

    fn report(&mut self, _sim: &Simulation) -> serde_json::Value {
        serde_json::to_value(app_report(&self.state.borrow()).0).unwrap_or(serde_json::Value::Null)
    }

    fn finish(&mut self, _sim: &Simulation, report: &mut SimReport) {
        let st = self.state.borrow();
        let (app, lat) = app_report(&st);
        report.app = app;
        report.latencies_us = lat;
        for (n, count) in report.per_node.iter_mut().zip(&st.received) {
            n.app_received = *count;
        }
        drop(st);
        self.plots = plots(report);
    }

    fn plots(&self) -> Vec<(String, String)> {
        self.plots.clone()
    }
}

/// The report and the sorted latencies.
fn app_report(st: &State) -> (AppReport, Vec<u64>) {
    let mut lat = st.latencies.clone();
    lat.sort_unstable();
    let mut app = AppReport {
        sent: st.sent,
        not_sent: st.not_sent,
        latency: LatencySummary::from_sorted(&lat),
        ..AppReport::none()
    };
    for m in &st.msgs {
        app.expected_deliveries += u64::from(m.expected);
        app.delivered += u64::from(m.received);
        app.duplicates += u64::from(m.duplicates);
        if m.broadcast {
            app.broadcasts += 1;
            if m.received >= m.expected && m.duplicates == 0 {
                app.broadcasts_complete += 1;
            }
        }
    }
    if app.expected_deliveries > 0 {
        app.delivery_ratio = app.delivered as f64 / app.expected_deliveries as f64;
    }
    (app, lat)
}

/// `delivered.svg` (sent and delivered on separate axes) and `latency_cdf.svg` (log axis),
/// each only when it has data.
fn plots(r: &SimReport) -> Vec<(String, String)> {
    let interval = match r.series.as_slice() {
        [a, b, ..] => b.t_s - a.t_s,
        [a] => a.t_s,
        [] => 1.0,
    }
    .max(1e-9);
    let per_s = |f: fn(&crate::Sample) -> u64| -> Vec<(f64, f64)> {
        r.series
            .iter()
            .map(|x| (x.t_s, f(x) as f64 / interval))
            .collect()
    };
    let marks = markers(r);
    let t_end = r.virtual_time_s;
    let mut out = Vec::new();
    if r.app.sent > 0 {
        // Sent and delivered differ by the fan-out (a broadcast is one message sent and N-1
        // deliveries): each on its own axis.
        let sent = with_markers(
            Chart::new(
                format!("{}: application messages sent", r.scenario),
                "virtual time (s)",
                "messages sent per second",
            )
            .series(Series::new("sent", per_s(|x| x.app_sent)))
            .x_range(0.0, t_end),
            &marks,
        );
        let delivered = with_markers(
            Chart::new(
                format!(
                    "deliveries ({} of {} expected, {} duplicates)",
                    r.app.delivered, r.app.expected_deliveries, r.app.duplicates
                ),
                "virtual time (s)",
                "deliveries per second",
            )
            .series(Series::new("delivered", per_s(|x| x.app_delivered)))
            .x_range(0.0, t_end),
            &marks,
        );
        out.push((
            "delivered.svg".to_owned(),
            panels(&[sent.render(), delivered.render()]),
        ));
    }
    let lat = &r.latencies_us;
    if !lat.is_empty() {
        let step = (lat.len() / 500).max(1);
        let mut cdf: Vec<(f64, f64)> = lat
            .iter()
            .enumerate()
            .filter(|(i, _)| i % step == 0)
            .map(|(i, v)| ((*v).max(1) as f64 / 1e3, (i + 1) as f64 / lat.len() as f64))
            .collect();
        if let Some(last) = lat.last() {
            cdf.push(((*last).max(1) as f64 / 1e3, 1.0));
        }
        let chart = Chart::new(
            format!(
                "{}: delivery latency CDF ({} deliveries)",
                r.scenario,
                lat.len()
            ),
            "latency (ms, log scale)",
            "fraction of deliveries",
        )
        .series(Series::new("latency", cdf))
        .y_max(1.0)
        .log_x();
        out.push(("latency_cdf.svg".to_owned(), chart.render()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_foreign_text_is_not_a_tag() {
        let t = Instant::from_micros(1_234_567);
        let text = tag(42, t) + "....";
        assert_eq!(parse_tag(&text), Some((42, t)));
        assert_eq!(parse_tag("{\"type\":\"telemetry\"}"), None);
        assert_eq!(parse_tag("mf|x|1|"), None);
    }

    #[test]
    fn a_send_at_a_sample_time_counts_in_that_sample() {
        use crate::topology::Topology;
        // The first send and the first sample are both at 1 s: the send was scheduled
        // first (the workload installs its timers before the first sample is scheduled),
        // so the sample ending at 1 s counts it, as when traffic was part of the loop.
        let s = Scenario::new(Topology::Line {
            nodes: 2,
            spacing_m: 30.0,
        })
        .duration(Duration::from_secs(3))
        .traffic(Traffic::broadcast(Some(1), 1.0, Duration::from_secs(1)));
        let r = crate::Run::new(s).expect("valid").run();
        let sent: Vec<u64> = r.series.iter().map(|x| x.app_sent).collect();
        // (No send at the end, 3 s: a flow sends before the end only.) With the sample
        // first it would read [0, 1, 1].
        assert_eq!(sent, [1, 1, 0]);
        assert_eq!(r.app.sent, 2);
        assert_eq!(r.per_node[1].app_received, r.app.delivered);
    }

    #[test]
    fn flows_added_in_code_share_one_workload() {
        use crate::topology::Topology;
        let s = Scenario::new(Topology::Line {
            nodes: 3,
            spacing_m: 30.0,
        })
        .traffic(Traffic::broadcast(Some(1), 1.0, Duration::ZERO))
        .traffic(Traffic::single(Some(2), Some(3), 2.0, Duration::ZERO));
        assert_eq!(s.workloads.len(), 1);
        assert_eq!(flows(&s).len(), 2);
        assert_eq!(flows(&s)[1].kind, TrafficKind::Single { to: Some(3) });
    }
}
