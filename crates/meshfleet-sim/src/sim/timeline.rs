//! Timeline events (crash, reboot, partitions, link changes, ...).

use super::*;

impl Simulation {
    // ----- timeline ---------------------------------------------------------------------

    pub(super) fn timeline_event(&mut self, i: usize) {
        let e = self.timeline[i].clone();
        let idx = |n: u32| n as usize - 1;
        let topo = !matches!(
            e,
            SimEvent::SetLink { .. } | SimEvent::Action { .. } | SimEvent::SetChannel { .. }
        );
        match &e {
            SimEvent::Join { node, parent } => {
                self.join(idx(*node), parent.map(idx), true, parent.is_some());
            }
            SimEvent::Crash { node } => self.crash(idx(*node), CloseCause::NodeCrash),
            SimEvent::Reboot { node } => {
                let v = idx(*node);
                self.crash(v, CloseCause::NodeCrash);
                self.boot(v);
                let parent = self.layout.parent[v];
                self.join(v, parent, false, false);
            }
            SimEvent::Hang { node } => {
                let v = idx(*node);
                if self.slots[v].node.is_some() {
                    self.slots[v].hung = true;
                    self.slots[v].wake_gen += 1;
                    self.slots[v].wake_at = None;
                    self.conv.dirty = true;
                }
            }
            SimEvent::LinkDown { a, b, hold } => {
                let (a, b) = (idx(*a), idx(*b));
                if let Some(h) = hold {
                    self.blocked_until.insert(pair(a, b), self.now + *h);
                }
                if let Some(link) = self.link_between(self.slots[a].id, self.slots[b].id) {
                    let sta = self.link(link).map(|l| l.ends()[1]);
                    self.close_link(link, CloseCause::LinkDown, [Some(Duration::ZERO); 2]);
                    if let (Some(h), Some(sta)) = (hold, sta) {
                        let parent = self.layout.parent[sta];
                        self.schedule_rejoin(sta, *h, parent);
                    }
                }
            }
            SimEvent::Move { node, parent } => {
                let v = idx(*node);
                if let Some(up) = self.slots[v].uplink {
                    self.close_link(up, CloseCause::LinkDown, [Some(Duration::ZERO); 2]);
                }
                self.join(v, Some(idx(*parent)), false, true);
            }
            SimEvent::Partition { nodes } => {
                let side = self.slots.iter().map(|s| s.side).max().unwrap_or(0) + 1;
                for n in nodes {
                    self.slots[idx(*n)].side = side;
                }
                let cut: Vec<LinkId> = self
                    .channel
                    .links()
                    .filter(|l| {
                        let [a, b] = l.ends();
                        self.slots[a].side != self.slots[b].side
                    })
                    .map(|l| l.id())
                    .collect();
                for link in cut {
                    self.close_link(link, CloseCause::Partition, [Some(Duration::ZERO); 2]);
                }
            }
            SimEvent::Heal => {
                for s in &mut self.slots {
                    s.side = 0;
                }
                for v in 0..self.slots.len() {
                    let s = &self.slots[v];
                    if s.node.is_some() && s.uplink.is_none() && !self.roots[v] {
                        let parent = self.layout.parent[v];
                        self.join(v, parent, false, false);
                    }
                }
            }
            SimEvent::SetLink { between, change } => match between {
                None => {
                    change.apply(&mut self.link_defaults);
                    self.channel.change_all_links(change);
                    for c in self.pair_changes.values_mut() {
                        // A global change overrides earlier per-link values of the same field.
                        if change.loss.is_some() {
                            c.loss = None;
                        }
                        if change.goodput_bytes_per_s.is_some() {
                            c.goodput_bytes_per_s = None;
                        }
                        if change.latency.is_some() {
                            c.latency = None;
                        }
                    }
                }
                Some((a, b)) => {
                    let key = pair(idx(*a), idx(*b));
                    let entry = self.pair_changes.entry(key).or_default();
                    entry.loss = change.loss.or(entry.loss);
                    entry.goodput_bytes_per_s =
                        change.goodput_bytes_per_s.or(entry.goodput_bytes_per_s);
                    entry.latency = change.latency.or(entry.latency);
                    if let Some(link) =
                        self.link_between(self.slots[key.0].id, self.slots[key.1].id)
                    {
                        self.channel.change_link(link, change);
                    }
                }
            },
            SimEvent::SetChannel { channel } => self.switch_channel(channel.clone()),
            SimEvent::Action { node, action } => {
                let v = idx(*node);
                if !self.slots[v].hung {
                    let local = self.local(v);
                    if let Some(n) = self.slots[v].node.as_mut() {
                        action(n, local);
                        self.after_input(v);
                    }
                }
            }
        }
        if topo {
            let who = e.nodes();
            let cause = if who.is_empty() || who.len() > 4 {
                e.label().to_owned()
            } else {
                let names: Vec<String> = who.iter().map(u32::to_string).collect();
                format!("{} {}", e.label(), names.join(" "))
            };
            self.conv.pending.push((cause, self.now));
            self.conv.converged = false;
        }
    }
}
