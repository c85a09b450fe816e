//! On-demand queries to one node or all nodes: bookkeeping only (sans-IO).
//!
//! A query asks each target for fresh data: meshfleet nodes with a telemetry QUERY (711),
//! nodes that only speak the stock protocol with painlessMesh's own delay probe (TIME_DELAY).
//! A node whose data is younger than the cache TTL is answered from the cache without asking.
//! At most `max_in_flight` requests are outstanding across all queries (the mesh is slow and
//! shared); each gives up after the timeout, and a query that did not hear from every target
//! completes as **partial**, listing the missing nodes.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use meshfleet_mesh::{Duration, Instant};
use meshfleet_wire::NodeId;

/// A query's id (also the `r` of its 711 packages).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueryId(pub u32);

/// Whom to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryTarget {
    /// One node.
    Node(NodeId),
    /// Every node currently reachable (in the topology, or reporting).
    All,
}

/// How a node is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    /// A 711 query; the answer is a 710 keyframe with `r`.
    Telemetry,
    /// A TIME_DELAY probe; the answer is its measurement.
    Probe,
}

/// A finished query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryResult {
    /// The query.
    pub id: QueryId,
    /// Nodes that answered.
    pub answered: Vec<NodeId>,
    /// Nodes answered from the cache (data younger than the TTL).
    pub cached: Vec<NodeId>,
    /// Nodes that did not answer in time.
    pub missing: Vec<NodeId>,
    /// Whether some targets are missing.
    pub partial: bool,
    /// When it started.
    pub started: Instant,
    /// When it finished.
    pub finished: Instant,
}

/// Why a query was not started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueryError {
    /// `max_queries` are running already.
    TooMany,
    /// The node is not in the registry.
    UnknownNode(NodeId),
}

impl core::fmt::Display for QueryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooMany => f.write_str("too many queries running"),
            Self::UnknownNode(n) => write!(f, "node {n} is not known"),
        }
    }
}

struct Running {
    id: QueryId,
    started: Instant,
    waiting: VecDeque<(NodeId, Method)>,
    in_flight: BTreeMap<NodeId, (Method, Instant)>,
    answered: Vec<NodeId>,
    cached: Vec<NodeId>,
    missing: Vec<NodeId>,
}

/// A request the caller must send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) id: QueryId,
    pub(crate) to: NodeId,
    pub(crate) method: Method,
}

#[derive(Default)]
pub(crate) struct Queries {
    running: Vec<Running>,
    next_id: u32,
}

impl Queries {
    pub(crate) fn len(&self) -> usize {
        self.running.len()
    }

    pub(crate) fn start(
        &mut self,
        now: Instant,
        targets: Vec<(NodeId, Option<Method>)>,
    ) -> QueryId {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let id = QueryId(self.next_id);
        let mut r = Running {
            id,
            started: now,
            waiting: VecDeque::new(),
            in_flight: BTreeMap::new(),
            answered: Vec::new(),
            cached: Vec::new(),
            missing: Vec::new(),
        };
        for (n, m) in targets {
            match m {
                Some(m) => r.waiting.push_back((n, m)),
                None => r.cached.push(n),
            }
        }
        self.running.push(r);
        id
    }

    /// Moves waiting targets into flight while fewer than `max` are outstanding.
    pub(crate) fn dispatch(
        &mut self,
        now: Instant,
        max: usize,
        timeout: Duration,
        out: &mut impl FnMut(Request),
    ) {
        let mut in_flight: usize = self.running.iter().map(|r| r.in_flight.len()).sum();
        for r in &mut self.running {
            while in_flight < max {
                let Some((to, method)) = r.waiting.pop_front() else {
                    break;
                };
                if r.in_flight.contains_key(&to) {
                    continue;
                }
                r.in_flight.insert(to, (method, now + timeout));
                in_flight += 1;
                out(Request {
                    id: r.id,
                    to,
                    method,
                });
            }
        }
    }

    /// A node answered: a telemetry reply to `reply_to`, or (`None`) a probe measurement.
    pub(crate) fn answered(&mut self, from: NodeId, reply_to: Option<QueryId>) {
        for r in &mut self.running {
            let hit = match (r.in_flight.get(&from), reply_to) {
                (Some((Method::Telemetry, _)), Some(q)) => q == r.id,
                (Some((Method::Probe, _)), None) => true,
                _ => false,
            };
            if hit {
                r.in_flight.remove(&from);
                r.answered.push(from);
            }
        }
    }

    /// Times out requests and returns the queries that are complete.
    pub(crate) fn poll_done(&mut self, now: Instant, out: &mut impl FnMut(QueryResult)) {
        for r in &mut self.running {
            let late: Vec<NodeId> = r
                .in_flight
                .iter()
                .filter(|(_, (_, d))| now >= *d)
                .map(|(n, _)| *n)
                .collect();
            for n in late {
                r.in_flight.remove(&n);
                r.missing.push(n);
            }
        }
        let mut i = 0;
        while i < self.running.len() {
            let r = &self.running[i];
            if r.waiting.is_empty() && r.in_flight.is_empty() {
                let r = self.running.swap_remove(i);
                let mut res = QueryResult {
                    id: r.id,
                    partial: !r.missing.is_empty(),
                    answered: r.answered,
                    cached: r.cached,
                    missing: r.missing,
                    started: r.started,
                    finished: now,
                };
                res.answered.sort();
                res.cached.sort();
                res.missing.sort();
                out(res);
            } else {
                i += 1;
            }
        }
    }

    /// The earliest request deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.running
            .iter()
            .flat_map(|r| r.in_flight.values().map(|(_, d)| *d))
            .min()
    }

    /// Whether requests wait for a free slot.
    pub(crate) fn has_waiting(&self) -> bool {
        self.running.iter().any(|r| !r.waiting.is_empty())
    }
}
