//! Convergence ground truth, the time series and the report.

use super::*;

impl Simulation {
    // ----- convergence and sampling -----------------------------------------------------

    pub(super) fn finish_event(&mut self) {
        if self.conv.dirty {
            self.refresh_components();
        }
        self.conv.observe(self.now);
    }

    /// Recomputes the ground-truth components (BFS over open links between running nodes)
    /// and every node's verdict.
    pub(super) fn refresh_components(&mut self) {
        if !self.conv.dirty {
            return;
        }
        self.conv.dirty = false;
        let n = self.slots.len();
        let running = |s: &Slot| s.node.is_some() && !s.hung;
        self.conv.comp.iter_mut().for_each(|c| *c = u32::MAX);
        self.conv.comp_hash.clear();
        self.conv.comp_size.clear();
        let mut stack = Vec::new();
        let mut alive = 0;
        for start in 0..n {
            if self.conv.comp[start] != u32::MAX || !running(&self.slots[start]) {
                continue;
            }
            let c = self.conv.comp_size.len() as u32;
            let (mut hash, mut size) = (0u64, 0u32);
            self.conv.comp[start] = c;
            stack.push(start);
            while let Some(v) = stack.pop() {
                size += 1;
                hash = hash.wrapping_add(crate::metrics::mix(u64::from(self.slots[v].id.0)));
                for &link in &self.slots[v].links {
                    let Some(l) = self.channel.link(link) else {
                        continue;
                    };
                    let [a, b] = l.ends();
                    let u = if a == v { b } else { a };
                    if self.conv.comp[u] == u32::MAX && running(&self.slots[u]) {
                        self.conv.comp[u] = c;
                        stack.push(u);
                    }
                }
            }
            alive += size as usize;
            self.conv.comp_hash.push(hash);
            self.conv.comp_size.push(size);
        }
        self.conv.num_alive = alive;
        self.conv.num_ok = 0;
        for v in 0..n {
            self.conv.ok[v] = false;
            let id = self.slots[v].id;
            self.conv.refresh(v, id);
        }
    }

    pub(super) fn sample(&mut self) {
        self.refresh_components();
        let air = self.channel.air();
        self.window.frames = air.frames - self.air_mark.frames;
        self.window.bytes = air.bytes - self.air_mark.bytes;
        self.air_mark = air;
        let w = std::mem::take(&mut self.window);
        let mut sample = Sample {
            t_s: secs(self.now),
            app_sent: 0,
            app_delivered: 0,
            frames_on_air: w.frames,
            bytes_on_air: w.bytes,
            drops: w.drops,
            nodes_alive: self.conv.num_alive as u32,
            nodes_converged: self.conv.num_ok as u32,
            components: self.conv.components() as u32,
            queued_bytes: (0..self.slots.len())
                .map(|v| self.channel.node_backlog(v).bytes)
                .sum(),
            time_spread_us: self.mesh_time_spread(),
        };
        for h in &mut self.sample_hooks {
            h(&mut sample);
        }
        self.series.push(sample);
    }

    // ----- report -----------------------------------------------------------------------

    /// The report so far (call after [`Simulation::run`] or any `run_*`).
    pub fn report(&self) -> SimReport {
        let mut mesh = MeshTotals::default();
        let per_node = self
            .slots
            .iter()
            .enumerate()
            .map(|(v, s)| {
                let mut t = s.past.clone();
                if let Some(n) = &s.node {
                    let st = n.stats();
                    t.closed_peer += st.closed_peer;
                    t.closed_timeout += st.closed_timeout;
                    t.closed_invalid += st.closed_invalid;
                    t.layout_changes += st.layout_changes;
                    t.time_adjustments += st.time_adjustments;
                    t.forwarded += st.forwarded;
                }
                mesh.closed_peer += t.closed_peer;
                mesh.closed_timeout += t.closed_timeout;
                mesh.closed_invalid += t.closed_invalid;
                mesh.layout_changes += t.layout_changes;
                mesh.time_adjustments += t.time_adjustments;
                mesh.forwarded += t.forwarded;
                NodeReport {
                    node: s.number,
                    id: s.id.0,
                    up: s.node.is_some() && !s.hung,
                    boots: s.boots,
                    frames_sent: self.channel.node_air(v).frames,
                    bytes_sent: self.channel.node_air(v).bytes,
                    queue_peak_bytes: self.channel.node_backlog(v).peak_bytes,
                    queue_peak_frames: self.channel.node_backlog(v).peak_frames,
                    app_received: 0,
                    known_nodes: if s.node.is_some() {
                        self.conv.list_len[s.number as usize - 1]
                    } else {
                        0
                    },
                }
            })
            .collect();
        let per_link = self
            .link_stats
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, l)| {
                let [down, up] = self.channel.link_air(LinkId(i as u64)).unwrap_or_default();
                LinkReport {
                    link: i as u64,
                    ap: l.ends[0] as u32 + 1,
                    station: l.ends[1] as u32 + 1,
                    opened_s: secs(l.opened),
                    closed_s: l.closed.map(secs),
                    frames_down: down.frames,
                    bytes_down: down.bytes,
                    frames_up: up.frames,
                    bytes_up: up.bytes,
                    retransmissions: down.retransmissions + up.retransmissions,
                }
            })
            .collect();
        let mut after_events = self.conv.entries.clone();
        for (cause, at) in &self.conv.pending {
            after_events.push(crate::metrics::ConvergenceEntry {
                cause: cause.clone(),
                at_s: secs(*at),
                converged_after_s: None,
            });
        }
        let end_s = secs(self.now);
        let last_minute: Vec<u64> = self
            .series
            .iter()
            .filter(|s| s.t_s >= end_s - 60.0)
            .filter_map(|s| s.time_spread_us)
            .collect();
        let mut below_from = None;
        for s in &self.series {
            match s.time_spread_us {
                Some(x) if x < 1000 => {
                    below_from.get_or_insert(s.t_s);
                }
                _ => below_from = None,
            }
        }
        SimReport {
            scenario: self.name.clone(),
            seed: self.seed,
            topology: self.topology_label.to_owned(),
            channel: self.channel.model().label().to_owned(),
            nodes: self.slots.len() as u32,
            virtual_time_s: end_s,
            events_processed: self.events_processed,
            frames_on_air: self.channel.air().frames,
            bytes_on_air: self.channel.air().bytes,
            // The traffic workload's (`crate::traffic`) when a scenario has traffic.
            app: AppReport::none(),
            drops: self.drops.clone(),
            link_closes: self.link_closes.clone(),
            convergence: ConvergenceReport {
                formation_done_s: self.conv.formation_done_at.map(secs),
                formation_converged_s: self.conv.formation_converged_at.map(secs),
                after_events,
                converged_at_end: self.conv.all_ok(),
                components_at_end: self.conv.components() as u32,
            },
            time_sync: TimeSyncReport {
                final_spread_us: self.mesh_time_spread(),
                max_spread_last_minute_us: last_minute.iter().copied().max(),
                below_1ms_from_s: below_from,
            },
            mesh,
            per_node,
            per_link,
            series: self.series.clone(),
            latencies_us: Vec::new(),
            air_by_class: Vec::new(),
            ota: None,
            rollout: None,
            workloads: BTreeMap::new(),
        }
    }
}
