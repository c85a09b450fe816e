//! Topology generators: who can hear whom, who joins through whom, and in which order.
//!
//! painlessMesh forms a tree: every node is an access point, and its station connects to one
//! access point in range (PROTOCOL.md §4.2). A generator therefore produces, for every node,
//! the nodes it could associate with (radio neighbours, nearest first) and a join order in
//! which each joiner finds a neighbour already in the mesh. Fixed topologies also name the
//! parent; for `grid` and `geometric` the simulator picks the nearest neighbour in the mesh
//! with a free slot at join time, as a station picks the strongest AP. The mesh itself then
//! forms through the nodes' real node sync: no routing table is ever prebuilt.

use meshfleet_channel::{dist, CellGrid};
use meshfleet_mesh::Rng;
use meshfleet_wire::MAX_TREE_DEPTH;

/// ESP8266's `MAX_CONN`: stations one soft-AP accepts (ESP32: 10).
pub const ESP8266_MAX_CONN: u32 = 4;
/// ESP32's `MAX_CONN`.
pub const ESP32_MAX_CONN: u32 = 10;

/// The shape of the mesh. Nodes are numbered `1..=n`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Topology {
    /// `1 - 2 - … - n`, node `k` joins through `k - 1`; positions along x.
    Line {
        /// Node count.
        nodes: u32,
        /// Distance between neighbours in metres.
        spacing_m: f64,
    },
    /// Node 1 is the hub; every other node joins through it.
    Star {
        /// Node count.
        nodes: u32,
        /// The hub's station limit (`MAX_CONN`): at least `nodes - 1`.
        max_children: u32,
    },
    /// A `rows x cols` grid where each node hears its 4 neighbours. The centre node starts
    /// the mesh; the others join in breadth-first order through the nearest neighbour in
    /// the mesh with a free slot.
    Grid {
        /// Rows.
        rows: u32,
        /// Columns.
        cols: u32,
        /// Distance between neighbours in metres.
        spacing_m: f64,
        /// Stations per access point.
        max_children: u32,
    },
    /// Node 1 is the root; node `k` joins through a uniformly random earlier node that still
    /// has a free slot.
    RandomTree {
        /// Node count.
        nodes: u32,
        /// Stations per access point.
        max_children: u32,
    },
    /// Nodes placed one by one, uniformly in the area but each within radio range of an
    /// earlier one; each joins through the nearest node in range already in the mesh.
    Geometric {
        /// Node count.
        nodes: u32,
        /// Area width in metres.
        width_m: f64,
        /// Area height in metres.
        height_m: f64,
        /// Distance within which two nodes can associate, in metres.
        radio_range_m: f64,
        /// Stations per access point.
        max_children: u32,
    },
    /// Given `(parent, child)` edges: the child's station joins the parent's AP. Nodes
    /// without a parent start a mesh of their own (a forest is allowed).
    Explicit {
        /// Node count.
        nodes: u32,
        /// `(parent, child)` pairs of node numbers.
        edges: Vec<(u32, u32)>,
    },
}

impl Topology {
    /// Number of nodes.
    pub fn node_count(&self) -> u32 {
        match self {
            Self::Line { nodes, .. }
            | Self::Star { nodes, .. }
            | Self::RandomTree { nodes, .. }
            | Self::Geometric { nodes, .. }
            | Self::Explicit { nodes, .. } => *nodes,
            Self::Grid { rows, cols, .. } => rows.saturating_mul(*cols),
        }
    }

    /// A short name for reports.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Line { .. } => "line",
            Self::Star { .. } => "star",
            Self::Grid { .. } => "grid",
            Self::RandomTree { .. } => "random_tree",
            Self::Geometric { .. } => "geometric",
            Self::Explicit { .. } => "explicit",
        }
    }

    /// Whether nodes have positions (needed by the geometric channel model).
    pub fn has_positions(&self) -> bool {
        matches!(
            self,
            Self::Line { .. } | Self::Grid { .. } | Self::Geometric { .. }
        )
    }

    /// Checks what can be checked before generation. Errors name the field.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        let nodes = self.node_count();
        match self {
            Self::Grid { rows, cols, .. } => {
                if *rows == 0 || *cols == 0 {
                    let f = if *rows == 0 { "rows" } else { "cols" };
                    return Err((
                        f,
                        format!("a grid needs at least one row and one column (got {rows}x{cols})"),
                    ));
                }
                // A breadth-first tree from the centre has a diameter of about rows + cols.
                if rows + cols > MAX_TREE_DEPTH as u32 + 1 {
                    return Err(("rows", format!(
                        "a {rows}x{cols} grid forms a tree about {} hops across; node-sync frames carry at most {MAX_TREE_DEPTH} levels",
                        rows + cols
                    )));
                }
            }
            _ if nodes == 0 => return Err(("nodes", "a mesh needs at least one node".into())),
            Self::Line { nodes, .. } if *nodes > MAX_TREE_DEPTH as u32 + 1 => {
                return Err(("nodes", format!(
                    "a line of {nodes} nodes is deeper than the {MAX_TREE_DEPTH} levels a node-sync frame may carry"
                )));
            }
            _ => {}
        }
        match self {
            Self::Line { spacing_m, .. } | Self::Grid { spacing_m, .. }
                if !(*spacing_m > 0.0 && spacing_m.is_finite()) =>
            {
                return Err((
                    "spacing_m",
                    format!("must be a positive distance (got {spacing_m})"),
                ));
            }
            Self::Star { max_children, .. }
            | Self::Grid { max_children, .. }
            | Self::RandomTree { max_children, .. }
            | Self::Geometric { max_children, .. }
                if *max_children == 0 =>
            {
                return Err((
                    "max_children",
                    "must be at least 1: no node could join".into(),
                ));
            }
            Self::Star {
                nodes,
                max_children,
            } if nodes - 1 > *max_children => {
                return Err(("max_children", format!(
                    "a star of {nodes} nodes needs a hub with {} stations, more than max_children = {max_children}",
                    nodes - 1
                )));
            }
            Self::Geometric {
                width_m,
                height_m,
                radio_range_m,
                ..
            } => {
                for (f, v) in [
                    ("width_m", width_m),
                    ("height_m", height_m),
                    ("radio_range_m", radio_range_m),
                ] {
                    if !(*v > 0.0 && v.is_finite()) {
                        return Err((f, format!("must be a positive distance (got {v})")));
                    }
                }
            }
            Self::Explicit { nodes, edges } => check_edges(*nodes, edges)?,
            _ => {}
        }
        Ok(())
    }

    /// Generates the layout. `rng` only matters for the random kinds.
    pub(crate) fn generate(&self, rng: &mut Rng) -> Result<Layout, (&'static str, String)> {
        self.check()?;
        let n = self.node_count() as usize;
        let layout = match self {
            Self::Line { spacing_m, .. } => {
                let positions = (0..n).map(|i| (i as f64 * spacing_m, 0.0)).collect();
                let parent = (0..n).map(|i| i.checked_sub(1)).collect();
                Layout::fixed(parent, Some(positions), Some(spacing_m * 1.01), None)
            }
            Self::Star { max_children, .. } => {
                let parent = (0..n).map(|i| (i > 0).then_some(0)).collect();
                Layout::fixed(parent, None, None, Some(*max_children))
            }
            Self::RandomTree { max_children, .. } => {
                let mut parent = vec![None; n];
                let mut kids = vec![0u32; n];
                let mut open = vec![0usize];
                for (i, p) in parent.iter_mut().enumerate().skip(1) {
                    let slot = rng.below(open.len() as u64) as usize;
                    let chosen = open[slot];
                    *p = Some(chosen);
                    kids[chosen] += 1;
                    if kids[chosen] >= *max_children {
                        open.swap_remove(slot);
                    }
                    open.push(i);
                }
                Layout::fixed(parent, None, None, Some(*max_children))
            }
            Self::Explicit { edges, .. } => {
                let mut parent = vec![None; n];
                for &(p, c) in edges {
                    parent[c as usize - 1] = Some(p as usize - 1);
                }
                Layout::fixed(parent, None, None, None)
            }
            Self::Grid {
                rows,
                cols,
                spacing_m,
                max_children,
            } => {
                let (rows, cols) = (*rows as usize, *cols as usize);
                let positions: Vec<_> = (0..n)
                    .map(|i| ((i % cols) as f64 * spacing_m, (i / cols) as f64 * spacing_m))
                    .collect();
                let centre = (rows / 2) * cols + cols / 2;
                Layout::dynamic(positions, spacing_m * 1.01, *max_children, centre)
            }
            Self::Geometric {
                width_m,
                height_m,
                radio_range_m,
                max_children,
                ..
            } => {
                let positions = place(n, *width_m, *height_m, *radio_range_m, rng);
                Layout::dynamic(positions, *radio_range_m, *max_children, 0)
            }
        };
        if !layout.dynamic {
            let d = layout.diameter();
            if d > MAX_TREE_DEPTH + 1 {
                return Err(("nodes", format!(
                    "the generated tree is {d} nodes across; node-sync frames carry at most {MAX_TREE_DEPTH} levels"
                )));
            }
        }
        Ok(layout)
    }
}

fn check_edges(nodes: u32, edges: &[(u32, u32)]) -> Result<(), (&'static str, String)> {
    let mut parent = vec![None; nodes as usize];
    for &(p, c) in edges {
        for v in [p, c] {
            if v == 0 || v > nodes {
                return Err((
                    "edges",
                    format!("edge [{p}, {c}] names node {v}, but nodes are numbered 1..={nodes}"),
                ));
            }
        }
        if p == c {
            return Err((
                "edges",
                format!("edge [{p}, {c}] connects a node to itself"),
            ));
        }
        let slot = &mut parent[c as usize - 1];
        if let Some(old) = *slot {
            return Err((
                "edges",
                format!(
                    "node {c} has two parents ({old} and {p}); a station joins one access point"
                ),
            ));
        }
        *slot = Some(p);
    }
    // With at most one parent each, a cycle is a walk up the parents that returns.
    for start in 1..=nodes {
        let mut v = start;
        for _ in 0..=nodes {
            match parent[v as usize - 1] {
                Some(p) if p == start => {
                    return Err((
                        "edges",
                        format!("the edges form a cycle through node {start}"),
                    ));
                }
                Some(p) => v = p,
                None => break,
            }
        }
    }
    Ok(())
}

/// Uniform placement with rejection: each node lands within radio range of an earlier one
/// (so every node can join), falling back to a point near a random earlier node.
fn place(n: usize, w: f64, h: f64, range: f64, rng: &mut Rng) -> Vec<(f64, f64)> {
    let mut grid = CellGrid::new(range);
    let mut pos: Vec<(f64, f64)> = Vec::with_capacity(n);
    for i in 0..n {
        let p = if i == 0 {
            (w / 2.0, h / 2.0)
        } else {
            let mut chosen = None;
            for _ in 0..64 {
                let c = (rng.unit() * w, rng.unit() * h);
                if grid.any_within(c, range, &pos) {
                    chosen = Some(c);
                    break;
                }
            }
            chosen.unwrap_or_else(|| {
                let anchor = pos[rng.below(i as u64) as usize];
                let a = rng.unit() * std::f64::consts::TAU;
                let r = rng.unit() * range * 0.9;
                (
                    (anchor.0 + r * a.cos()).clamp(0.0, w),
                    (anchor.1 + r * a.sin()).clamp(0.0, h),
                )
            })
        };
        grid.insert(p, i);
        pos.push(p);
    }
    pos
}

/// A generated topology (indices are node numbers minus one).
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub(crate) positions: Option<Vec<(f64, f64)>>,
    /// Fixed parents (`None` for roots, and for every node of a dynamic layout).
    pub(crate) parent: Vec<Option<usize>>,
    /// Parents are chosen at join time among `neighbours`.
    pub(crate) dynamic: bool,
    /// Join order: every node's parent (or a neighbour, if dynamic) comes earlier.
    pub(crate) order: Vec<usize>,
    /// Nodes each node can associate with, nearest first.
    pub(crate) neighbours: Vec<Vec<usize>>,
    /// Station limit per access point when choosing a parent (`None`: unlimited).
    pub(crate) max_children: Option<u32>,
}

impl Layout {
    fn fixed(
        parent: Vec<Option<usize>>,
        positions: Option<Vec<(f64, f64)>>,
        _range: Option<f64>,
        max_children: Option<u32>,
    ) -> Self {
        let n = parent.len();
        let mut children = vec![Vec::new(); n];
        for (c, p) in parent.iter().enumerate() {
            if let Some(p) = p {
                children[*p].push(c);
            }
        }
        let neighbours = (0..n)
            .map(|i| {
                parent[i]
                    .into_iter()
                    .chain(children[i].iter().copied())
                    .collect()
            })
            .collect();
        // Breadth-first from each root, roots in number order: parents always come first.
        let mut order = Vec::with_capacity(n);
        for root in (0..n).filter(|&i| parent[i].is_none()) {
            let start = order.len();
            order.push(root);
            let mut k = start;
            while k < order.len() {
                let v = order[k];
                order.extend(children[v].iter().copied());
                k += 1;
            }
        }
        Self {
            positions,
            parent,
            dynamic: false,
            order,
            neighbours,
            max_children,
        }
    }

    fn dynamic(positions: Vec<(f64, f64)>, range: f64, max_children: u32, root: usize) -> Self {
        let n = positions.len();
        let mut grid = CellGrid::new(range);
        for (i, p) in positions.iter().enumerate() {
            grid.insert(*p, i);
        }
        let mut neighbours = Vec::with_capacity(n);
        let mut buf = Vec::new();
        for (i, p) in positions.iter().enumerate() {
            buf.clear();
            grid.within(*p, range, &positions, &mut buf);
            buf.retain(|&j| j != i);
            buf.sort_by(|&a, &b| {
                dist(positions[a], *p)
                    .total_cmp(&dist(positions[b], *p))
                    .then(a.cmp(&b))
            });
            neighbours.push(buf.clone());
        }
        // Join order: placement order for geometric (root 0 first) is already connected;
        // for a grid, breadth first from the centre. Both: BFS over the radio graph.
        let mut order = Vec::with_capacity(n);
        let mut seen = vec![false; n];
        let push_bfs = |from: usize, order: &mut Vec<usize>, seen: &mut Vec<bool>| {
            let start = order.len();
            order.push(from);
            seen[from] = true;
            let mut k = start;
            while k < order.len() {
                let v = order[k];
                let mut next: Vec<usize> = neighbours[v]
                    .iter()
                    .copied()
                    .filter(|&j| !seen[j])
                    .collect();
                next.sort_unstable();
                for j in next {
                    seen[j] = true;
                    order.push(j);
                }
                k += 1;
            }
        };
        push_bfs(root, &mut order, &mut seen);
        for i in 0..n {
            if !seen[i] {
                push_bfs(i, &mut order, &mut seen);
            }
        }
        Self {
            positions: Some(positions),
            parent: vec![None; n],
            dynamic: true,
            order,
            neighbours,
            max_children: Some(max_children),
        }
    }

    /// Nodes on the longest path of the fixed tree (forest: the largest of its trees).
    fn diameter(&self) -> usize {
        let n = self.parent.len();
        let mut children = vec![Vec::new(); n];
        for (c, p) in self.parent.iter().enumerate() {
            if let Some(p) = p {
                children[*p].push(c);
            }
        }
        // Heights bottom-up in reverse BFS order; diameter = max over nodes of the two
        // tallest child heights + 1.
        let mut height = vec![0usize; n];
        let mut best = if n > 0 { 1 } else { 0 };
        for &v in self.order.iter().rev() {
            let mut top = [0usize; 2];
            for &c in &children[v] {
                let h = height[c];
                if h > top[0] {
                    top = [h, top[0]];
                } else if h > top[1] {
                    top[1] = h;
                }
            }
            height[v] = top[0] + 1;
            best = best.max(top[0] + top[1] + 1);
        }
        best
    }
}

/// Parses an edges file: one `parent child` pair per line, `#` starts a comment.
/// Errors give the 1-based line.
pub(crate) fn parse_edges(text: &str) -> Result<Vec<(u32, u32)>, (usize, String)> {
    let mut edges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let parts: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .collect();
        let parsed: Vec<Option<u32>> = parts.iter().map(|s| s.parse().ok()).collect();
        match parsed.as_slice() {
            [Some(p), Some(c)] => edges.push((*p, *c)),
            _ => {
                return Err((
                    i + 1,
                    format!("expected `parent child` (two node numbers), got `{line}`"),
                ))
            }
        }
    }
    Ok(edges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tree_respects_max_children_and_is_a_tree() {
        let t = Topology::RandomTree {
            nodes: 500,
            max_children: 3,
        };
        let l = t.generate(&mut Rng::new(4)).expect("valid");
        let mut kids = vec![0; 500];
        for p in l.parent.iter().flatten() {
            kids[*p] += 1;
        }
        assert!(kids.iter().all(|&k| k <= 3));
        assert_eq!(l.parent.iter().filter(|p| p.is_none()).count(), 1);
        assert_eq!(l.order.len(), 500);
        let mut pos = vec![usize::MAX; 500];
        for (k, &v) in l.order.iter().enumerate() {
            pos[v] = k;
        }
        for (c, p) in l.parent.iter().enumerate() {
            if let Some(p) = p {
                assert!(pos[*p] < pos[c]);
            }
        }
    }

    #[test]
    fn geometric_nodes_all_have_a_neighbour_and_bfs_order_is_joinable() {
        let t = Topology::Geometric {
            nodes: 300,
            width_m: 500.0,
            height_m: 500.0,
            radio_range_m: 50.0,
            max_children: 4,
        };
        let l = t.generate(&mut Rng::new(9)).expect("valid");
        let mut joined = vec![false; 300];
        joined[l.order[0]] = true;
        for &v in &l.order[1..] {
            assert!(
                l.neighbours[v].iter().any(|&j| joined[j]),
                "node {v} cannot join"
            );
            joined[v] = true;
        }
    }

    #[test]
    fn explicit_edges_are_checked() {
        let e = |edges: Vec<(u32, u32)>| Topology::Explicit { nodes: 3, edges }.check();
        assert!(e(vec![(1, 2), (2, 3)]).is_ok());
        assert!(e(vec![(1, 4)])
            .expect_err("invalid")
            .1
            .contains("names node 4"));
        assert!(e(vec![(1, 2), (3, 2)])
            .expect_err("invalid")
            .1
            .contains("two parents"));
        assert!(e(vec![(1, 2), (2, 3), (3, 1)])
            .expect_err("invalid")
            .1
            .contains("cycle"));
        assert!(e(vec![(2, 2)]).expect_err("invalid").1.contains("itself"));
    }

    #[test]
    fn line_diameter_limit() {
        // A node-sync frame carries 127 levels below its sender (the library's limit): a
        // line of 128 nodes syncs end to end, one of 129 cannot.
        assert!(Topology::Line {
            nodes: 128,
            spacing_m: 10.0
        }
        .check()
        .is_ok());
        assert!(Topology::Line {
            nodes: 129,
            spacing_m: 10.0
        }
        .check()
        .is_err());
    }

    #[test]
    fn edges_file_errors_name_the_line() {
        assert_eq!(
            parse_edges("# c\n1 2\n2,3\n").expect("ok"),
            vec![(1, 2), (2, 3)]
        );
        assert_eq!(parse_edges("1 2\n\nx 3\n").expect_err("invalid").0, 3);
    }
}
