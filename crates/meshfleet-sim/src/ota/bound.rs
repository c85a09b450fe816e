//! The lower bound of `docs/ota-protocol.md` ("Lower bound"): the mean-value terms
//! (store-and-forward pipeline, a shared radio's airtime, interference) and the stochastic
//! bound (last-passage time of retransmission stalls through the segments × hops grid, by
//! Monte Carlo with a fixed seed), computed from the tree the campaign ran on.

use meshfleet_channel::{dist, expected_frame_cost, ChannelModel, LinkParams};
use meshfleet_mesh::{NodeTree, Rng};
use serde::Serialize;

use super::secs;

/// The lower bound of `docs/ota-protocol.md` ("Lower bound") for one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LowerBound {
    /// Payload S (the compressed artefact payload), bytes.
    pub payload_bytes: u64,
    /// Largest payload per frame c (the artefact's chunk size), bytes.
    pub chunk_bytes: u32,
    /// Frames per link, ⌈S / c⌉.
    pub frames: u64,
    /// Depth D of the tree rooted at the source (hops to the farthest receiver).
    pub depth: u32,
    /// Most children of one node in that tree.
    pub max_children: u32,
    /// Expected time a full chunk frame holds its link (overhead, bytes, retransmissions
    /// and their timeouts), ms.
    pub frame_link_ms: f64,
    /// Expected time a full chunk frame holds its sender's radio (timeouts excluded), ms.
    pub frame_radio_ms: f64,
    /// (a) store-and-forward pipeline down the deepest path, seconds.
    pub pipeline_s: f64,
    /// (b) a node with k children sends the payload k times on its radio (airtime and
    /// geometric channels), seconds.
    pub airtime_s: Option<f64>,
    /// (c) the transmissions of nodes within half the interference range of a point are
    /// serialized (geometric channel), seconds.
    pub interference_s: Option<f64>,
    /// The bound: the largest of the above (the mean-value bound).
    pub bound_s: f64,
    /// Which term binds: `pipeline`, `airtime` or `interference`.
    pub binding: &'static str,
    /// Segments per link in the stochastic bounds for any protocol, ⌈S / MSS⌉: the fewest
    /// TCP segments S fits in.
    pub segments: u64,
    /// (d) the stochastic pipeline down the deepest path, for any protocol (frames of any
    /// size): the expected completion time of the tandem of D lossy links, stalls
    /// propagating down the path (last-passage percolation over segments × hops), by Monte
    /// Carlo. Bounds the expected makespan.
    pub stochastic_pipeline: MonteCarlo,
    /// (d) the same over the whole tree: the expected time until the *last* receiver is
    /// done, every root-to-node path at once (at least the deepest path's).
    pub stochastic_tree: MonteCarlo,
    /// Segments per link in the stochastic bounds for frames of at most c payload bytes
    /// (the class (a)-(c) bound), ⌈S / min(c, MSS)⌉.
    pub chunk_segments: u64,
    /// (d) down the deepest path for protocols whose frames carry at most c payload bytes:
    /// more segments (each can stall) and one frame overhead per segment.
    pub stochastic_pipeline_chunked: MonteCarlo,
    /// (d) over the whole tree for frames of at most c payload bytes.
    pub stochastic_tree_chunked: MonteCarlo,
    /// The combined bound on the expected makespan of protocols whose frames carry at most
    /// c payload bytes: the largest of `bound_s` and the stochastic estimates.
    pub combined_bound_s: f64,
    /// Which term binds the combined bound: one of `binding`'s, or the name of a
    /// stochastic field (`stochastic_tree_chunked`, …).
    pub combined_binding: &'static str,
}

/// A Monte Carlo estimate of an expectation (fixed seed, so the same inputs always give the
/// same numbers).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MonteCarlo {
    /// The sample mean, seconds.
    pub mean_s: f64,
    /// Its standard error (sample standard deviation / √samples), seconds: the 95%
    /// confidence interval is `mean_s ± 1.96·se_s`.
    pub se_s: f64,
    /// Standard deviation of the sampled quantity itself, seconds: how far one run
    /// scatters around the mean. A bound on an expectation can be beaten by one lucky run.
    pub sd_s: f64,
    /// The sampled quantity's 5% quantile, seconds. The bounded makespan is at least the
    /// sampled quantity in every run (`docs/ota-protocol.md` §7.6), so a run shorter than
    /// this happens with probability at most 5%: a bound for single runs.
    pub q05_s: f64,
    /// Samples drawn (fewer when the samples all agree, as without loss).
    pub samples: u32,
}

/// The tree the campaign runs on, by node index (number − 1): depth from the source,
/// number of children and parent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeShape {
    /// Depth of each node (`None`: not in the tree).
    pub depth: Vec<Option<u32>>,
    /// Children of each node.
    pub children: Vec<u32>,
    /// Parent of each node, by index (`None`: the root, or not in the tree). Only the
    /// stochastic bound over the whole tree reads it; left empty, that bound falls back
    /// to the deepest path.
    pub parent: Vec<Option<u32>>,
}

impl TreeShape {
    /// From a node's view of the mesh (`Node::topology`), which is the tree rooted at it.
    pub fn from_tree(tree: &NodeTree, id_base: u32, nodes: u32) -> Self {
        let n = nodes as usize;
        let mut s = Self {
            depth: vec![None; n],
            children: vec![0; n],
            parent: vec![None; n],
        };
        let mut stack = vec![(tree, 0u32, None)];
        while let Some((t, d, up)) = stack.pop() {
            let Some(i) = t
                .node_id
                .0
                .checked_sub(id_base)
                .and_then(|k| (k as usize).checked_sub(1))
                .filter(|i| *i < n)
            else {
                continue;
            };
            s.depth[i] = Some(d);
            s.children[i] = t.subs.len() as u32;
            s.parent[i] = up;
            for sub in &t.subs {
                stack.push((sub, d + 1, Some(i as u32)));
            }
        }
        s
    }

    /// From the parent of every node by index and the root's index: `parents[root]` is
    /// ignored; other nodes with no parent, or whose parent chain does not reach the root
    /// (a cycle, an index out of range), are outside the tree.
    pub fn from_parents(parents: &[Option<u32>], root: u32) -> Self {
        let n = parents.len();
        let mut s = Self {
            depth: vec![None; n],
            children: vec![0; n],
            parent: vec![None; n],
        };
        for i in 0..n {
            // Walk up to the root; more than n steps is a cycle.
            let mut d = 0u32;
            let mut at = i;
            let reached = loop {
                if at == root as usize {
                    break true;
                }
                match parents[at] {
                    Some(up) if (up as usize) < n && (d as usize) < n => {
                        d += 1;
                        at = up as usize;
                    }
                    _ => break false,
                }
            };
            if reached {
                s.depth[i] = Some(d);
                s.parent[i] = if i == root as usize { None } else { parents[i] };
            }
        }
        for i in 0..n {
            if let (Some(_), Some(up)) = (s.depth[i], s.parent[i]) {
                s.children[up as usize] += 1;
            }
        }
        s
    }

    /// Depth of the tree (hops from the root to the farthest node in it).
    pub fn max_depth(&self) -> u32 {
        self.depth.iter().flatten().copied().max().unwrap_or(0)
    }

    /// Depths of the nodes below the root in depth-first preorder (children by index), or
    /// `None` if `parent` does not describe the tree: the shape the stochastic bound walks.
    fn preorder_depths(&self) -> Option<Vec<u32>> {
        let n = self.depth.len();
        if self.parent.len() != n {
            return None;
        }
        let mut kids: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut roots = Vec::new();
        for i in 0..n {
            match (self.depth[i], self.parent[i]) {
                (Some(0), None) => roots.push(i as u32),
                (Some(_), Some(up)) if (up as usize) < n => kids[up as usize].push(i as u32),
                _ => {}
            }
        }
        let [root] = roots[..] else {
            return None;
        };
        let mut out = Vec::with_capacity(n);
        let mut stack: Vec<(u32, u32)> =
            kids[root as usize].iter().rev().map(|&c| (c, 1)).collect();
        while let Some((v, d)) = stack.pop() {
            // A child's depth must be its parent's plus one; anything else is not a tree.
            if self.depth[v as usize] != Some(d) || out.len() >= n {
                return None;
            }
            out.push(d);
            stack.extend(kids[v as usize].iter().rev().map(|&c| (c, d + 1)));
        }
        Some(out)
    }
}

/// Seed of the stochastic bounds' Monte Carlo: fixed, so that a bound depends only on the
/// tree and the links, never on the run's seed or on how often it is computed.
const BOUND_SEED: u64 = 0x0053_5441_4c4c_5321;
/// The Monte Carlo stops once its standard error is below this fraction of the mean...
const MC_REL_SE: f64 = 0.0025;
/// ...and has drawn at least this many samples (an SE from fewer is itself unreliable)...
const MC_MIN_SAMPLES: u32 = 200;
/// ...or when it has drawn this many (rounded up to a whole batch),
const MC_MAX_SAMPLES: u32 = 20_000;
/// or this many grid cells (segments × links, ~2-3 ns each): a bound over a big tree must
/// not cost more than a few seconds. The reported standard error says where it stopped.
const MC_CELL_BUDGET: u64 = 2_000_000_000;
/// Samples between two checks of the stopping rule (a multiple of `LANES`).
const MC_BATCH: u32 = 48;
/// Samples computed side by side in one pass over the grid.
const LANES: usize = 4;

/// How long a TCP segment that gets through stalled its link in retransmission timeouts,
/// as a law to sample: [`meshfleet_channel::tx_cost`]'s loss process (each try lost with probability p;
/// the k-th consecutive loss of a segment costs RTO_k = min(min_rto·2^(k−1), max_rto)). A
/// reset (more than `max_retransmits` losses) is charged as its `max_retransmits` timeouts,
/// less than it costs (the connection is gone and the frame with it).
#[derive(Clone, Debug)]
struct StallLaw {
    /// `more_than[k]` = p^(k+1)·2^64: a uniform 64-bit draw below it means more than k
    /// losses, so P(X ≥ k) = p^k for k ≤ `max_retransmits` as in `tx_cost`.
    more_than: Vec<u64>,
    /// `stall[k]`: seconds of timeouts after k losses, RTO_1 + … + RTO_k.
    stall: Vec<f64>,
}

impl StallLaw {
    fn new(p: &LinkParams) -> Self {
        let mut law = Self {
            more_than: Vec::new(),
            stall: vec![0.0],
        };
        let loss = if p.loss.is_nan() {
            0.0
        } else {
            p.loss.clamp(0.0, 1.0)
        };
        let (mut pk, mut rto, mut total) = (1.0f64, secs(p.min_rto), 0.0);
        for _ in 0..p.max_retransmits {
            pk *= loss;
            // `as` saturates: p = 1 gives u64::MAX (a loss on every draw but one in 2^64).
            let threshold = (pk * 18_446_744_073_709_551_616.0) as u64;
            if threshold == 0 {
                break;
            }
            total += rto;
            rto = (rto * 2.0).min(secs(p.max_rto));
            law.more_than.push(threshold);
            law.stall.push(total);
        }
        law
    }

    /// No loss: every stall is 0.
    fn is_zero(&self) -> bool {
        self.more_than.is_empty()
    }

    /// Mean stall, seconds: Σ_k P(X ≥ k)·RTO_k.
    #[cfg(test)]
    fn mean(&self) -> f64 {
        self.atoms().iter().map(|(pr, s)| pr * s).sum()
    }

    /// The law as (probability, stall) pairs, for exact computations in tests.
    #[cfg(test)]
    fn atoms(&self) -> Vec<(f64, f64)> {
        let two64 = 18_446_744_073_709_551_616.0;
        let at_least = |k: usize| {
            if k == 0 {
                1.0
            } else {
                self.more_than[k - 1] as f64 / two64
            }
        };
        (0..self.stall.len())
            .map(|k| {
                let next = if k + 1 < self.stall.len() {
                    at_least(k + 1)
                } else {
                    0.0
                };
                (at_least(k) - next, self.stall[k])
            })
            .collect()
    }

    #[inline]
    fn sample(&self, rng: &mut Rng) -> f64 {
        let x = rng.next_u64();
        let mut k = 0;
        // Most segments get through at once: one comparison.
        while k < self.more_than.len() && x < self.more_than[k] {
            k += 1;
        }
        self.stall[k]
    }
}

/// E[max over the nodes v of `base_s + d_v·per_hop_s + W_v(jobs)`], by Monte Carlo, where
/// `depths` lists the depth of every node below the root in depth-first preorder (so the
/// parent of a node at depth d is the last node before it at depth d − 1) and W is the
/// last-passage time through the grid of jobs × links on the node's path:
///
/// `W_v(j) = max(W_v(j − 1), W_parent(v)(j)) + R_(v, j)`, `W_root ≡ 0`, `W_v(0) = 0`,
///
/// with every R an independent draw of `law` (one per link and job). A chain `1, 2, …, D`
/// is one path of D links. Deterministic: the same arguments give the same estimate.
fn stall_lpp(
    depths: &[u32],
    jobs: usize,
    law: &StallLaw,
    base_s: f64,
    per_hop_s: f64,
    seed: u64,
) -> MonteCarlo {
    let Some(&deepest) = depths.iter().max() else {
        return MonteCarlo {
            mean_s: 0.0,
            se_s: 0.0,
            sd_s: 0.0,
            q05_s: 0.0,
            samples: 0,
        };
    };
    let fixed = |d: u32| base_s + f64::from(d) * per_hop_s;
    if jobs == 0 || law.is_zero() {
        // Every stall is 0: the value is not random.
        return MonteCarlo {
            mean_s: fixed(deepest),
            se_s: 0.0,
            sd_s: 0.0,
            q05_s: fixed(deepest),
            samples: 1,
        };
    }
    // One row of W per depth: in preorder a node's row is rewritten only after the
    // subtree below its previous owner is done, and its parent's row is the one above.
    // Each cell holds LANES independent samples side by side: the recursion is a chain of
    // dependent max-and-adds, and independent lanes let the CPU overlap them (~1.4x here).
    let mut rows = vec![[0.0f64; LANES]; (deepest as usize + 1) * jobs];
    let cells = (depths.len() * jobs) as u64;
    let max_samples =
        (MC_CELL_BUDGET / cells).clamp(u64::from(MC_MIN_SAMPLES), u64::from(MC_MAX_SAMPLES)) as u32;
    let mut rng = Rng::new(seed);
    // Welford's running mean and sum of squared deviations.
    let (mut n, mut mean, mut m2) = (0u32, 0.0f64, 0.0f64);
    let mut all = Vec::new();
    while n < max_samples {
        for _ in 0..MC_BATCH / LANES as u32 {
            let mut last = [f64::MIN; LANES];
            // Depth 0 is the root itself (W ≡ 0), never a row to compute.
            for &d in depths.iter().filter(|d| **d > 0) {
                let d = d as usize;
                let (above, here) = rows.split_at_mut(d * jobs);
                let above = &above[(d - 1) * jobs..];
                let here = &mut here[..jobs];
                let mut w = [0.0f64; LANES];
                for (h, a) in here.iter_mut().zip(above.iter()) {
                    for l in 0..LANES {
                        w[l] = w[l].max(a[l]) + law.sample(&mut rng);
                    }
                    *h = w;
                }
                let f = fixed(d as u32);
                for l in 0..LANES {
                    last[l] = last[l].max(f + w[l]);
                }
            }
            for x in last {
                all.push(x);
                n += 1;
                let delta = x - mean;
                mean += delta / f64::from(n);
                m2 += delta * (x - mean);
            }
        }
        let se = (m2 / f64::from(n - 1) / f64::from(n)).sqrt();
        if n >= MC_MIN_SAMPLES && se <= MC_REL_SE * mean {
            break;
        }
    }
    let sd = (m2 / f64::from(n.max(2) - 1)).sqrt();
    all.sort_by(f64::total_cmp);
    MonteCarlo {
        mean_s: mean,
        se_s: sd / f64::from(n).sqrt(),
        sd_s: sd,
        q05_s: all[all.len() / 20],
        samples: n,
    }
}

/// The lower bound on the makespan of delivering a payload of `payload` bytes, in frames
/// of at most `chunk` payload bytes, from the root of `tree` to every node in it, under
/// link parameters `p` and `channel` (`docs/ota-protocol.md`, "Lower bound"). Headers are
/// not counted, so every real protocol pays more. With loss it bounds the expected
/// makespan.
pub fn lower_bound(
    tree: &TreeShape,
    payload: u64,
    chunk: u32,
    p: &LinkParams,
    channel: &ChannelModel,
    positions: Option<&[(f64, f64)]>,
) -> LowerBound {
    let c = u64::from(chunk.max(1));
    let frames = payload.div_ceil(c).max(1);
    let last = payload - (frames - 1) * c;
    let (full_link, full_radio) = expected_frame_cost(c, p);
    let (last_link, last_radio) = expected_frame_cost(last, p);
    // All S bytes cross the first link of the deepest path, one frame after the other.
    let all_link = (frames - 1) as f64 * full_link + last_link;
    let all_radio = (frames - 1) as f64 * full_radio + last_radio;
    // The smallest frame: what must still cross each later hop after the last one.
    let (min_link, _) = expected_frame_cost(last.min(c), p);
    let lat = secs(p.latency);
    let depth = tree.max_depth();
    let d = f64::from(depth);
    let pipeline = if depth == 0 {
        0.0
    } else {
        all_link + (d - 1.0) * min_link + d * lat
    };
    let mut bound = pipeline;
    let mut binding = "pipeline";
    let shared_radio = !matches!(channel, ChannelModel::Independent);
    let airtime = shared_radio.then(|| {
        tree.depth
            .iter()
            .zip(&tree.children)
            .filter_map(|(dv, k)| dv.map(|dv| (dv, *k)))
            .filter(|(_, k)| *k > 0)
            .map(|(dv, k)| {
                // The first frame reaches v after dv hops; then v's radio sends the whole
                // payload once per child; the last copy arrives one latency later.
                f64::from(dv) * (min_link + lat) + f64::from(k) * all_radio + lat
            })
            .fold(0.0, f64::max)
    });
    if let Some(a) = airtime {
        if a > bound {
            bound = a;
            binding = "airtime";
        }
    }
    let interference = match (channel, positions) {
        (
            ChannelModel::Geometric {
                interference_range_m,
            },
            Some(pos),
        ) => {
            let r = interference_range_m / 2.0;
            let mut best = 0u64;
            for v in pos {
                // Nodes within r/2 of a point are pairwise within r: no two of them may
                // transmit at once, so their copies of the payload are serialized.
                let k: u64 = pos
                    .iter()
                    .zip(&tree.children)
                    .zip(&tree.depth)
                    .filter(|((u, _), dv)| dv.is_some() && dist(**u, *v) <= r)
                    .map(|((_, k), _)| u64::from(*k))
                    .sum();
                best = best.max(k);
            }
            Some(best as f64 * all_radio + lat)
        }
        _ => None,
    };
    if let Some(i) = interference {
        if i > bound {
            bound = i;
            binding = "interference";
        }
    }
    // (d) the stochastic pipeline (`docs/ota-protocol.md` §7.6): S in segments of at most
    // M bytes, cut-through per segment, one latency per hop, and per segment and hop the
    // timeouts of the simulator's loss process; the random part is the last-passage time of
    // those stalls through the segments × hops grid. Any protocol: M = MSS and one frame
    // overhead per hop. Frames of at most c payload bytes (c ≤ MSS): M = c, and each
    // segment that brings a node c more bytes is in a frame of its own (one overhead each).
    let law = StallLaw::new(p);
    let mss = p.mss.max(1) as u64;
    let g = p.goodput_bytes_per_s;
    let o = secs(p.frame_overhead);
    let segments = payload.div_ceil(mss);
    let chunk_segments = payload.div_ceil(c.min(mss));
    let per_frame = if c <= mss { o } else { 0.0 };
    let (base_any, base_chunked) = if payload == 0 {
        (0.0, 0.0)
    } else {
        let s = payload as f64 / g;
        (s, s + chunk_segments.saturating_sub(1) as f64 * per_frame)
    };
    let per_hop = if payload == 0 { 0.0 } else { o + lat };
    let chain: Vec<u32> = (1..=depth).collect();
    // Every receiver at once: the makespan is the largest completion time, and the links
    // near the source are shared by many paths. Without parents: the deepest path.
    let all = tree.preorder_depths();
    let estimate = |nodes: &[u32], jobs: u64, base: f64| {
        stall_lpp(nodes, jobs as usize, &law, base, per_hop, BOUND_SEED)
    };
    let stochastic_pipeline = estimate(&chain, segments, base_any);
    let stochastic_pipeline_chunked = estimate(&chain, chunk_segments, base_chunked);
    // The same seed: for a chain, the tree estimate is the path's, bit for bit.
    let (stochastic_tree, stochastic_tree_chunked) = match &all {
        Some(nodes) => (
            estimate(nodes, segments, base_any),
            estimate(nodes, chunk_segments, base_chunked),
        ),
        None => (stochastic_pipeline, stochastic_pipeline_chunked),
    };
    let mut combined = bound;
    let mut combined_binding = binding;
    for (v, name) in [
        (stochastic_pipeline.mean_s, "stochastic_pipeline"),
        (stochastic_tree.mean_s, "stochastic_tree"),
        (
            stochastic_pipeline_chunked.mean_s,
            "stochastic_pipeline_chunked",
        ),
        (stochastic_tree_chunked.mean_s, "stochastic_tree_chunked"),
    ] {
        if v > combined {
            combined = v;
            combined_binding = name;
        }
    }
    LowerBound {
        payload_bytes: payload,
        chunk_bytes: chunk,
        frames,
        depth,
        max_children: tree.children.iter().copied().max().unwrap_or(0),
        frame_link_ms: full_link * 1e3,
        frame_radio_ms: full_radio * 1e3,
        pipeline_s: pipeline,
        airtime_s: airtime,
        interference_s: interference,
        bound_s: bound,
        binding,
        segments,
        stochastic_pipeline,
        stochastic_tree,
        chunk_segments,
        stochastic_pipeline_chunked,
        stochastic_tree_chunked,
        combined_bound_s: combined,
        combined_binding,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lossless_bound_is_the_pipeline_of_full_frames() {
        // A chain of 3 hops.
        let tree = TreeShape::from_parents(&[None, Some(0), Some(1), Some(2)], 0);
        assert_eq!(tree.depth, vec![Some(0), Some(1), Some(2), Some(3)]);
        assert_eq!(tree.children, vec![1, 1, 1, 0]);
        let p = LinkParams::default();
        let b = lower_bound(&tree, 10 * 1024, 1024, &p, &ChannelModel::Independent, None);
        let frame = 1.665e-3 + 1024.0 / 131_000.0;
        let expect = 10.0 * frame + 2.0 * frame + 3.0 * 320e-6;
        assert!((b.pipeline_s - expect).abs() < 1e-9, "{b:?}");
        assert_eq!(b.binding, "pipeline");
        // On a shared radio a node with 3 children sends the payload 3 times.
        let star = TreeShape::from_parents(&[None, Some(0), Some(0), Some(0)], 0);
        let b = lower_bound(&star, 10 * 1024, 1024, &p, &ChannelModel::Airtime, None);
        assert_eq!(b.binding, "airtime");
        assert!((b.bound_s - (30.0 * frame + 320e-6)).abs() < 1e-9);
    }

    fn lossy(loss: f64) -> LinkParams {
        LinkParams {
            loss,
            ..LinkParams::default()
        }
    }

    #[test]
    fn tree_shape_from_parents_drops_what_does_not_reach_the_root() {
        // 0 ← 1 ← 2, 3 outside, 4 ↔ 5 a cycle, 6 points out of range.
        let t = TreeShape::from_parents(
            &[None, Some(0), Some(1), None, Some(5), Some(4), Some(99)],
            0,
        );
        assert_eq!(
            t.depth,
            vec![Some(0), Some(1), Some(2), None, None, None, None]
        );
        assert_eq!(t.children, vec![1, 1, 0, 0, 0, 0, 0]);
        assert_eq!(t.preorder_depths(), Some(vec![1, 2]));
        // Preorder: a subtree is finished before the next sibling starts.
        let t = TreeShape::from_parents(&[None, Some(0), Some(0), Some(1), Some(2), Some(3)], 0);
        assert_eq!(t.preorder_depths(), Some(vec![1, 2, 3, 1, 2]));
        // Without parents there is no preorder (the bound falls back to the deepest path).
        let bare = TreeShape {
            depth: vec![Some(0), Some(1)],
            children: vec![1, 0],
            parent: Vec::new(),
        };
        assert_eq!(bare.preorder_depths(), None);
    }

    #[test]
    fn stall_law_matches_the_simulators_loss_process() {
        let p = lossy(0.05);
        let law = StallLaw::new(&p);
        let atoms = law.atoms();
        assert_eq!(atoms.len(), 13);
        assert!((atoms.iter().map(|a| a.0).sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((atoms[0].0 - 0.95).abs() < 1e-12 && atoms[0].1 == 0.0);
        assert!((atoms[1].0 - 0.05 * 0.95).abs() < 1e-12 && (atoms[1].1 - 0.2).abs() < 1e-12);
        assert!((atoms[2].1 - 0.6).abs() < 1e-12 && (atoms[3].1 - 1.4).abs() < 1e-12);
        // The mean stall is the one `expected_frame_cost` charges a segment.
        let (link, radio) = expected_frame_cost(1000, &p);
        assert!((law.mean() - (link - radio)).abs() < 1e-9, "{}", law.mean());
        // And sampling reproduces it (10^6 draws: SE ~5e-5 s).
        let mut rng = Rng::new(5);
        let n = 1_000_000;
        let avg = (0..n).map(|_| law.sample(&mut rng)).sum::<f64>() / f64::from(n);
        assert!((avg - law.mean()).abs() < 3e-4, "{avg} vs {}", law.mean());
        assert!(StallLaw::new(&lossy(0.0)).is_zero());
        // p = 1: every segment is charged the 12 timeouts of a reset.
        let all = StallLaw::new(&lossy(1.0));
        assert_eq!(all.sample(&mut rng), all.stall[12]);
    }

    #[test]
    fn lossless_stochastic_bound_is_the_cut_through_pipeline() {
        // p = 0: no stalls, so the bound is its deterministic part: S/G once (cut-through
        // per segment: the bytes cross the D hops overlapped) plus one frame overhead and
        // one latency per hop.
        let p = LinkParams::default();
        let tree = TreeShape::from_parents(&[None, Some(0), Some(1), Some(2), Some(0)], 0);
        let s = 694_668u64;
        let b = lower_bound(&tree, s, 1024, &p, &ChannelModel::Independent, None);
        let expect = s as f64 / 131_000.0 + 3.0 * (1.665e-3 + 320e-6);
        assert_eq!(b.segments, 476);
        for mc in [b.stochastic_pipeline, b.stochastic_tree] {
            assert!((mc.mean_s - expect).abs() < 1e-9, "{mc:?} vs {expect}");
            assert_eq!(mc.se_s, 0.0);
        }
        // Below the mean-value pipeline, which charges the overhead of all m frames.
        assert!(b.stochastic_pipeline.mean_s < b.pipeline_s);
        // Frames of at most c = 1 KiB: m = 679 segments, one frame overhead each; that is
        // (a) without its store-and-forward term, (D − 1) times the last chunk's bytes.
        assert_eq!(b.chunk_segments, 679);
        let last = (s - 678 * 1024) as f64;
        let chunked = b.pipeline_s - 2.0 * last / 131_000.0;
        for mc in [b.stochastic_pipeline_chunked, b.stochastic_tree_chunked] {
            assert!((mc.mean_s - chunked).abs() < 1e-9, "{mc:?} vs {chunked}");
        }
        assert_eq!(b.combined_bound_s, b.bound_s);
        assert_eq!(b.combined_binding, "pipeline");
    }

    #[test]
    fn tiny_grid_matches_exact_enumeration() {
        // 2 segments (MSS 1000, S = 2000) × 2 hops at p = 0.5 with at most 3 retransmissions
        // (stalls 0, 0.2, 0.6, 1.4 s with probability 1/2, 1/4, 1/8, 1/8):
        // LPP = R11 + max(R12, R21) + R22, so E = 2·E[R] + E[max(R, R')].
        let p = LinkParams {
            loss: 0.5,
            mss: 1000,
            max_retransmits: 3,
            ..LinkParams::default()
        };
        let law = StallLaw::new(&p);
        let atoms = law.atoms();
        assert_eq!(atoms.len(), 4);
        // The exact law of the 2 × 2 LPP, by enumerating the 4^4 stall combinations.
        let mut dist: Vec<(f64, f64)> = Vec::new();
        for a in &atoms {
            for b in &atoms {
                for c in &atoms {
                    for d in &atoms {
                        dist.push((a.0 * b.0 * c.0 * d.0, a.1 + b.1.max(c.1) + d.1));
                    }
                }
            }
        }
        let exact_lpp: f64 = dist.iter().map(|(pr, v)| pr * v).sum();
        let var: f64 = dist
            .iter()
            .map(|(pr, v)| pr * (v - exact_lpp).powi(2))
            .sum();
        // The same mean by the shortcut E = 2·E[R] + E[max(R, R')].
        let mut e_max = 0.0;
        for a in &atoms {
            for b in &atoms {
                e_max += a.0 * b.0 * a.1.max(b.1);
            }
        }
        assert!((exact_lpp - (2.0 * law.mean() + e_max)).abs() < 1e-12);
        dist.sort_by(|x, y| x.1.total_cmp(&y.1));
        let mut cum = 0.0;
        let q05 = dist
            .iter()
            .find(|(pr, _)| {
                cum += pr;
                cum > 0.05
            })
            .map_or(0.0, |d| d.1);
        let mc = stall_lpp(&[1, 2], 2, &law, 0.0, 0.0, 1);
        assert!(
            (mc.mean_s - exact_lpp).abs() < 4.0 * mc.se_s,
            "{mc:?} vs exact {exact_lpp}"
        );
        assert!(
            (mc.sd_s - var.sqrt()).abs() < 0.02 * var.sqrt(),
            "{mc:?} vs sd {}",
            var.sqrt()
        );
        // 0 s has probability 1/16 > 5%: the quantile is exactly 0.
        assert_eq!((q05, mc.q05_s), (0.0, 0.0));
        // So small a grid is noisy (σ ≈ mean): it takes the most samples, and still < 1%.
        assert!(mc.samples >= MC_MAX_SAMPLES, "{mc:?}");
        assert!(mc.se_s <= 0.01 * mc.mean_s, "{mc:?}");
        // Through lower_bound: the same grid plus S/G + 2·(o + L).
        let chain = TreeShape::from_parents(&[None, Some(0), Some(1)], 0);
        let b = lower_bound(&chain, 2000, 1024, &p, &ChannelModel::Independent, None);
        let exact = exact_lpp + 2000.0 / 131_000.0 + 2.0 * (1.665e-3 + 320e-6);
        let est = b.stochastic_pipeline;
        assert!(
            (est.mean_s - exact).abs() < 4.0 * est.se_s,
            "{est:?} vs {exact}"
        );
        // One hop: a sum, no max; E = m·E[R] and Var = m·Var[R] exactly (closed form).
        let one = stall_lpp(&[1], 40, &law, 0.0, 0.0, 2);
        assert!(
            (one.mean_s - 40.0 * law.mean()).abs() < 4.0 * one.se_s,
            "{one:?} vs {}",
            40.0 * law.mean()
        );
        let var_r: f64 = atoms
            .iter()
            .map(|(pr, v)| pr * (v - law.mean()).powi(2))
            .sum();
        let sd = (40.0 * var_r).sqrt();
        assert!((one.sd_s - sd).abs() < 0.03 * sd, "{one:?} vs sd {sd}");
        assert!(one.q05_s < one.mean_s - sd);
    }

    #[test]
    fn stochastic_bound_grows_with_loss_and_depth_and_is_deterministic() {
        let chain = |d: u32| {
            let parents: Vec<Option<u32>> = (0..=d).map(|i| i.checked_sub(1)).collect();
            TreeShape::from_parents(&parents, 0)
        };
        let s = 694_668;
        let at = |loss: f64, d: u32| {
            lower_bound(
                &chain(d),
                s,
                1024,
                &lossy(loss),
                &ChannelModel::Independent,
                None,
            )
        };
        let mut last = 0.0;
        for loss in [0.0, 0.01, 0.05, 0.2] {
            let b = at(loss, 8);
            let v = b.stochastic_pipeline.mean_s;
            assert!(v > last, "{loss}: {v} <= {last}");
            last = v;
            // The standard error is reported and small.
            assert!(b.stochastic_pipeline.se_s <= 0.01 * v, "{b:?}");
        }
        let shallow = at(0.05, 3).stochastic_pipeline.mean_s;
        let deep = at(0.05, 14).stochastic_pipeline.mean_s;
        assert!(deep > shallow + 1.0, "{shallow} {deep}");
        // With loss, stall propagation makes it exceed the mean-value pipeline (a), which
        // charges every frame its expected time but lets stalls overlap; even for frames of
        // any size, which need fewer segments.
        let b = at(0.05, 14);
        assert!(b.stochastic_pipeline.mean_s > b.pipeline_s, "{b:?}");
        // Frames of at most 1 KiB: more segments to stall, so more still.
        assert!(
            b.stochastic_pipeline_chunked.mean_s > b.stochastic_pipeline.mean_s + 1.0,
            "{b:?}"
        );
        assert_eq!(b.combined_binding, "stochastic_pipeline_chunked");
        // Deterministic: the same inputs give bit-identical estimates.
        assert_eq!(at(0.05, 14), b);
    }

    #[test]
    fn whole_tree_bound_is_at_least_the_deepest_path() {
        // A root with 4 chains of 6 hops: E[max of 4 correlated paths] > E[one path].
        let mut parents = vec![None];
        for _ in 0..4 {
            let mut up = 0u32;
            for _ in 0..6 {
                parents.push(Some(up));
                up = parents.len() as u32 - 1;
            }
        }
        let tree = TreeShape::from_parents(&parents, 0);
        assert_eq!(tree.max_depth(), 6);
        let b = lower_bound(
            &tree,
            200_000,
            1024,
            &lossy(0.05),
            &ChannelModel::Independent,
            None,
        );
        let (path, all) = (b.stochastic_pipeline, b.stochastic_tree);
        assert!(
            all.mean_s > path.mean_s + 3.0 * (all.se_s + path.se_s),
            "{path:?} {all:?}"
        );
        assert_eq!(b.combined_binding, "stochastic_tree_chunked");
        assert_eq!(b.combined_bound_s, b.stochastic_tree_chunked.mean_s);
    }
}
