//! Nodes: boot, crash, joining an access point, links up and down.

use super::*;

impl Simulation {
    // ----- nodes: boot, crash, join -----------------------------------------------------

    pub(super) fn boot(&mut self, v: usize) {
        let s = &mut self.slots[v];
        let boot = s.boots;
        s.boots += 1;
        let mut rng = Rng::new(child_seed(self.seed, NODE_SALT, v as u64, u64::from(boot)));
        let mut config = (self.config_template)(s.id);
        config.seed = rng.next_u64();
        config.initial_time_offset = rng.next_u64() as u32;
        // micros() of a freshly booted chip, shifted by a random origin so that two nodes
        // booting together still disagree.
        let boot_local = rng.below(1 << 32);
        s.clock = LocalClock::new(self.now, boot_local, s.drift_ppb);
        let init = NodeInit {
            number: s.number,
            id: s.id,
            config,
            rng: &mut rng,
            store: s.store.clone(),
            boot_count: boot,
        };
        let node = (self.factory)(init);
        let s = &mut self.slots[v];
        s.node = Some(node);
        s.hung = false;
        s.in_mesh = self.roots[v];
        let id = s.id;
        self.conv.set_list(v, id, &[]);
        self.conv.dirty = true;
        self.after_input(v);
    }

    pub(super) fn crash(&mut self, v: usize, cause: CloseCause) {
        if self.slots[v].node.is_none() {
            return;
        }
        for link in self.slots[v].links.clone() {
            let Some(l) = self.link(link) else { continue };
            let lat = l.params().latency;
            let notify = l.ends().map(|e| (e != v).then_some(lat));
            self.close_link(link, cause, notify);
        }
        let s = &mut self.slots[v];
        if let Some(node) = s.node.take() {
            let st = node.stats();
            s.past.closed_peer += st.closed_peer;
            s.past.closed_timeout += st.closed_timeout;
            s.past.closed_invalid += st.closed_invalid;
            s.past.layout_changes += st.layout_changes;
            s.past.time_adjustments += st.time_adjustments;
            s.past.forwarded += st.forwarded;
        }
        s.hung = false;
        s.in_mesh = false;
        s.wake_gen += 1;
        s.wake_at = None;
        self.conv.dirty = true;
    }

    pub(super) fn blocked(&self, a: usize, b: usize) -> bool {
        self.slots[a].side != self.slots[b].side
            || self
                .blocked_until
                .get(&pair(a, b))
                .is_some_and(|t| *t > self.now)
    }

    /// A station association attempt. `forced`: the timeline named the parent.
    pub(super) fn join(&mut self, v: usize, parent: Option<usize>, boot: bool, forced: bool) {
        if self.slots[v].node.is_none() {
            if !boot {
                return;
            }
            self.boot(v);
        }
        let s = &self.slots[v];
        if s.hung || s.uplink.is_some() {
            return;
        }
        if self.roots[v] && parent.is_none() {
            self.slots[v].in_mesh = true;
            return;
        }
        let usable = |sim: &Self, p: usize, check_capacity: bool| {
            let ps = &sim.slots[p];
            let Some(me) = &sim.slots[v].node else {
                return false;
            };
            ps.node.is_some()
                && (ps.in_mesh || forced)
                && !sim.blocked(v, p)
                && (forced || me.route(ps.id).is_none())
                && (!check_capacity || sim.layout.max_children.map_or(true, |m| ps.children < m))
        };
        let choice = match parent {
            Some(p) if usable(self, p, !forced) => Some(p),
            _ => self.layout.neighbours[v]
                .iter()
                .copied()
                .find(|&p| usable(self, p, true)),
        };
        match choice {
            Some(p) => self.connect(v, p),
            None => {
                // Nothing in range yet: scan again later, keeping the preference.
                self.schedule_rejoin(v, self.rejoin_rescan, parent);
            }
        }
    }

    /// Schedules the station's next automatic association attempt, replacing any pending one.
    pub(super) fn schedule_rejoin(&mut self, v: usize, after: Duration, parent: Option<usize>) {
        let s = &mut self.slots[v];
        s.retry_gen += 1;
        let retry = Some(s.retry_gen);
        self.queue.push(
            self.now + after,
            Ev::Join {
                node: v,
                parent,
                boot: false,
                retry,
            },
        );
    }

    pub(super) fn connect(&mut self, sta: usize, ap: usize) {
        let mut params = self.link_defaults.clone();
        if let Some(c) = self.pair_changes.get(&pair(sta, ap)) {
            c.apply(&mut params);
        }
        let rng = Rng::new(child_seed(
            self.seed,
            LINK_SALT,
            self.channel.next_link_id().0,
            0,
        ));
        let id = self.channel.open_link(ap, sta, params, rng);
        self.link_stats.push(LinkStat {
            ends: [ap, sta],
            opened: self.now,
            closed: None,
        });
        self.slots[sta].links.push(id);
        self.slots[sta].uplink = Some(id);
        self.slots[sta].in_mesh = true;
        self.slots[ap].links.push(id);
        self.slots[ap].children += 1;
        self.conv.dirty = true;
        // The access point accepts first: the station's request must find the link known.
        if !self.slots[ap].hung {
            let local = self.local(ap);
            if let Some(n) = self.slots[ap].node.as_mut() {
                n.handle_link_up(local, id, LinkRole::AccessPoint);
                self.after_input(ap);
            }
        }
        let local = self.local(sta);
        if let Some(n) = self.slots[sta].node.as_mut() {
            n.handle_link_up(local, id, LinkRole::Station);
            self.after_input(sta);
        }
    }

    /// Removes a link from the network. Frames queued or in flight are lost (`cause`);
    /// `notify[i]` = when end `i` hears of it (`None`: it closed it itself, or is gone).
    pub(super) fn close_link(
        &mut self,
        id: LinkId,
        cause: CloseCause,
        notify: [Option<Duration>; 2],
    ) {
        let Some(l) = self.channel.close_link(id) else {
            return;
        };
        self.lose(Loss::Closed(cause), l.lost_frames);
        self.link_stats[id.0 as usize].closed = Some(self.now);
        let [ap, sta] = l.ends;
        for v in [ap, sta] {
            self.slots[v].links.retain(|x| *x != id);
        }
        self.slots[ap].children -= 1;
        if self.slots[sta].uplink == Some(id) {
            self.slots[sta].uplink = None;
            self.slots[sta].in_mesh = self.roots[sta];
            self.schedule_rejoin(sta, self.rejoin_scan, self.layout.parent[sta]);
        }
        for (i, when) in notify.iter().enumerate() {
            if let Some(d) = when {
                self.queue.push(
                    self.now + *d,
                    Ev::PeerDown {
                        node: l.ends[i],
                        link: id,
                    },
                );
            }
        }
        self.conv.dirty = true;
    }
}
