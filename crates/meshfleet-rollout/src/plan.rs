//! The wave plan: which nodes, in which order, how many per wave.
//!
//! Order: nodes are grouped by branch (the root's child they hang under); inside a branch
//! they are shuffled with the rollout's seed and then sorted by subtree size, so leaves come
//! first and the relays with the most nodes behind them come last. The branches are then
//! merged by always taking the branch head with the smallest subtree, ties going to the
//! branch picked least recently (branches themselves in a seeded order). The first nodes are
//! therefore leaves spread round-robin over the branches: a canary of k nodes touches
//! min(k, branches) branches, and no relay is updated while a leaf is still waiting.

use alloc::collections::{BTreeMap, BinaryHeap};
use alloc::vec::Vec;
use core::cmp::Reverse;

use crate::config::{percent_ceil, Target, WaveSpec};
use crate::fleet::{NodeId, NodeInfo};
use crate::rng::Rng;

/// The rollout order of `nodes` (see the module docs).
pub(crate) fn order(nodes: &[&NodeInfo], rng: &mut Rng) -> Vec<NodeId> {
    let mut branches: BTreeMap<NodeId, Vec<(u32, NodeId)>> = BTreeMap::new();
    for n in nodes {
        branches
            .entry(n.branch)
            .or_default()
            .push((n.subtree_size, n.id));
    }
    let mut lists: Vec<Vec<(u32, NodeId)>> = branches.into_values().collect();
    rng.shuffle(&mut lists);
    for list in &mut lists {
        rng.shuffle(list);
        // Stable: equal sizes keep their shuffled order. Reversed so `pop` yields the
        // smallest subtree first.
        list.sort_by_key(|&(size, _)| Reverse(size));
    }
    // Heap key: (smallest head subtree, least recently picked, branch position).
    let mut heap = BinaryHeap::new();
    for (pos, list) in lists.iter().enumerate() {
        if let Some(&(size, _)) = list.last() {
            heap.push(Reverse((size, 0u64, pos)));
        }
    }
    let mut out = Vec::with_capacity(nodes.len());
    let mut tick = 0u64;
    while let Some(Reverse((_, _, pos))) = heap.pop() {
        let Some((_, id)) = lists[pos].pop() else {
            continue;
        };
        out.push(id);
        tick += 1;
        if let Some(&(size, _)) = lists[pos].last() {
            heap.push(Reverse((size, tick, pos)));
        }
    }
    out
}

/// Cumulative wave bounds for `n` nodes: wave `i` covers `order[bounds[i-1]..bounds[i]]`.
pub(crate) fn bounds(waves: &[WaveSpec], n: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(waves.len());
    let mut prev = 0u32;
    for w in waves {
        let want = match w.until {
            Target::Percent(p) => percent_ceil(p, n),
            Target::Count(c) => c,
        };
        let cum = want.max(prev.saturating_add(w.min_size)).max(prev).min(n);
        out.push(cum);
        prev = cum;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::RolloutConfig;
    use crate::fleet::ImageVersion;

    fn node(id: u32, branch: u32, subtree: u32) -> NodeInfo {
        NodeInfo {
            branch: NodeId(branch),
            subtree_size: subtree,
            ..NodeInfo::leaf(NodeId(id))
        }
    }

    #[test]
    fn default_waves_on_100_and_on_20_nodes() {
        let c = RolloutConfig::new(
            ImageVersion::new("2").unwrap(),
            ImageVersion::new("1").unwrap(),
        );
        assert_eq!(bounds(&c.waves, 100), [5, 20, 75, 100]);
        // 5 % of 20 is 1, but the canary has at least 2.
        assert_eq!(bounds(&c.waves, 20), [2, 4, 15, 20]);
        assert_eq!(bounds(&c.waves, 1), [1, 1, 1, 1]);
        assert_eq!(bounds(&c.waves, 0), [0, 0, 0, 0]);
    }

    #[test]
    fn leaves_first_spread_over_branches_relays_last() {
        // Three branches, each a relay (subtree 4) with three leaves; branch 40 is a lone leaf.
        let mut nodes = Vec::new();
        for b in [10u32, 20, 30] {
            nodes.push(node(b, b, 4));
            for k in 1..=3 {
                nodes.push(node(b + k, b, 1));
            }
        }
        nodes.push(node(40, 40, 1));
        let refs: Vec<&NodeInfo> = nodes.iter().collect();
        let o = order(&refs, &mut Rng::new(1));
        assert_eq!(o.len(), nodes.len());
        // The first four picks cover all four branches.
        let branch = |id: NodeId| id.0 / 10 * 10;
        let mut first: Vec<u32> = o[..4].iter().map(|&id| branch(id)).collect();
        first.sort_unstable();
        assert_eq!(first, [10, 20, 30, 40]);
        // Relays come after every leaf.
        let relays = [NodeId(10), NodeId(20), NodeId(30)];
        assert!(o[..10].iter().all(|id| !relays.contains(id)));
        assert!(o[10..].iter().all(|id| relays.contains(id)));
        // Seeded: same seed same order, another seed (very likely) another.
        assert_eq!(o, order(&refs, &mut Rng::new(1)));
        assert!((2..20).any(|s| order(&refs, &mut Rng::new(s)) != o));
    }
}
