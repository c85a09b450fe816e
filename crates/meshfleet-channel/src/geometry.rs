//! Geometry of the geometric channel: who is within whose interference range.

use crate::ChannelModel;

/// Buckets of `cell`-sized squares for neighbour queries in O(local density). Lookups only:
/// nothing iterates the map, so results never depend on hashing.
pub struct CellGrid {
    cell: f64,
    map: std::collections::HashMap<(i64, i64), Vec<usize>>,
}

impl CellGrid {
    /// An empty grid of `cell`-metre squares (a query radius should not exceed it).
    pub fn new(cell: f64) -> Self {
        Self {
            cell: cell.max(1e-9),
            map: std::collections::HashMap::new(),
        }
    }

    fn key(&self, p: (f64, f64)) -> (i64, i64) {
        (
            (p.0 / self.cell).floor() as i64,
            (p.1 / self.cell).floor() as i64,
        )
    }

    /// Adds point number `i` at `p`.
    pub fn insert(&mut self, p: (f64, f64), i: usize) {
        self.map.entry(self.key(p)).or_default().push(i);
    }

    /// Indices within `r` (≤ cell) of `p`, in insertion order per cell, cells scanned in a
    /// fixed order: deterministic (the HashMap is only looked up, never iterated).
    pub fn within(&self, p: (f64, f64), r: f64, pos: &[(f64, f64)], out: &mut Vec<usize>) {
        let (cx, cy) = self.key(p);
        let reach = (r / self.cell).ceil() as i64;
        for dx in -reach..=reach {
            for dy in -reach..=reach {
                if let Some(v) = self.map.get(&(cx + dx, cy + dy)) {
                    out.extend(v.iter().copied().filter(|&j| dist(pos[j], p) <= r));
                }
            }
        }
    }

    /// Whether any point lies within `r` of `p`.
    pub fn any_within(&self, p: (f64, f64), r: f64, pos: &[(f64, f64)]) -> bool {
        let mut v = Vec::new();
        self.within(p, r, pos, &mut v);
        !v.is_empty()
    }
}

/// Euclidean distance in metres.
pub fn dist(a: (f64, f64), b: (f64, f64)) -> f64 {
    ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
}

/// For each node, the nodes within the interference range under `channel` (empty unless
/// it is geometric and there are positions), sorted.
pub fn interferers(
    channel: &ChannelModel,
    positions: Option<&[(f64, f64)]>,
    n: usize,
) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); n];
    if let (
        ChannelModel::Geometric {
            interference_range_m,
        },
        Some(pos),
    ) = (channel, positions)
    {
        let mut grid = CellGrid::new(*interference_range_m);
        for (i, p) in pos.iter().enumerate() {
            grid.insert(*p, i);
        }
        for (i, p) in pos.iter().enumerate().take(n) {
            let mut v = Vec::new();
            grid.within(*p, *interference_range_m, pos, &mut v);
            v.retain(|&j| j != i);
            v.sort_unstable();
            out[i] = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interferers_are_the_others_within_range_sorted() {
        // 0 --30 m-- 1 --30 m-- 2, and 3 far away.
        let pos = [(0.0, 0.0), (30.0, 0.0), (60.0, 0.0), (500.0, 500.0)];
        let geo = ChannelModel::Geometric {
            interference_range_m: 40.0,
        };
        let sets = interferers(&geo, Some(&pos), 4);
        assert_eq!(sets, vec![vec![1], vec![0, 2], vec![1], vec![]]);
        let wide = ChannelModel::Geometric {
            interference_range_m: 60.0,
        };
        assert_eq!(interferers(&wide, Some(&pos), 4)[0], vec![1, 2]);
        // Other models, or no positions: nobody silences anybody.
        assert_eq!(
            interferers(&ChannelModel::Airtime, Some(&pos), 4)[1],
            Vec::<usize>::new()
        );
        assert_eq!(interferers(&geo, None, 4), vec![Vec::<usize>::new(); 4]);
    }
}
