// A deterministic radial tree layout that stays put as the mesh changes.
//
// * Same input, same picture: children are ordered by node id, never by arrival.
// * Nodes that leave keep their place: every node the gateway has ever seen is laid out,
//   under the parent it last reported (the registry keeps it), drawn as offline. So a
//   departure moves nothing, and a node that comes back lands where it was.
// * A node that joins takes a slot among its siblings in id order; its subtree's angular
//   share grows by one leaf, which moves its neighbours by a fraction of a slot only.
// * Ring radii grow with the number of nodes at that depth, so 1,000+ nodes keep a minimum
//   spacing along each ring.

const MIN_RING_GAP = 70;
const SPACING = 9; // world units between neighbours on a ring (node radius is 3)

/**
 * @param {object|null} topo  GET /topology (`tree`: {nodeId, root, subs})
 * @param {Map<number, object>} nodes  the registry (nodeId -> NodeStatus, with `parent`)
 * @param {number|null} gatewayId
 * @returns {{pos: Map<number,{x:number,y:number,depth:number}>, parent: Map<number,number>, live: Set<number>, root: number|null}}
 */
export function layout(topo, nodes, gatewayId) {
  const parent = new Map();
  const live = new Set();
  let root = gatewayId;
  if (topo && topo.tree) {
    root = topo.tree.nodeId;
    const stack = [topo.tree];
    while (stack.length) {
      const t = stack.pop();
      live.add(t.nodeId);
      for (const c of t.subs || []) {
        if (!parent.has(c.nodeId) && c.nodeId !== root) {
          parent.set(c.nodeId, t.nodeId);
          stack.push(c);
        }
      }
    }
  }
  if (root === null || root === undefined) root = 0;
  // Nodes known to the registry but not in the live tree: under their last parent.
  for (const [id, n] of nodes) {
    if (id === root || parent.has(id)) continue;
    parent.set(id, n.parent && n.parent !== id ? n.parent : root);
  }
  // Parents that are unknown, or cycles through stale parents: attach to the root.
  const children = new Map();
  const all = new Set([root, ...parent.keys()]);
  for (const [id, p] of parent) {
    let q = p;
    let ok = all.has(q);
    const seen = new Set([id]);
    while (ok && q !== root) {
      if (seen.has(q)) { ok = false; break; }
      seen.add(q);
      q = parent.get(q);
      ok = q !== undefined && all.has(q);
    }
    if (!ok) parent.set(id, root);
  }
  for (const [id, p] of parent) {
    if (!children.has(p)) children.set(p, []);
    children.get(p).push(id);
  }
  for (const c of children.values()) c.sort((a, b) => a - b);

  // Leaf weights and depths (iterative: trees can be deep).
  const weight = new Map();
  const depth = new Map([[root, 0]]);
  const order = [root];
  for (let i = 0; i < order.length; i++) {
    for (const c of children.get(order[i]) || []) {
      depth.set(c, depth.get(order[i]) + 1);
      order.push(c);
    }
  }
  for (let i = order.length - 1; i >= 0; i--) {
    const id = order[i];
    const cs = children.get(id) || [];
    weight.set(id, cs.length ? cs.reduce((s, c) => s + weight.get(c), 0) : 1);
  }
  const perDepth = [];
  for (const d of depth.values()) perDepth[d] = (perDepth[d] || 0) + 1;
  const radius = [0];
  for (let d = 1; d < perDepth.length; d++) {
    radius[d] = Math.max(radius[d - 1] + MIN_RING_GAP, (perDepth[d] * SPACING) / (2 * Math.PI));
  }
  const pos = new Map();
  const sector = new Map([[root, [0, 2 * Math.PI]]]);
  for (const id of order) {
    const [a0, a1] = sector.get(id);
    const d = depth.get(id);
    const a = (a0 + a1) / 2;
    pos.set(id, { x: radius[d] * Math.cos(a), y: radius[d] * Math.sin(a), depth: d });
    const cs = children.get(id) || [];
    const w = weight.get(id);
    let at = a0;
    for (const c of cs) {
      const span = ((a1 - a0) * weight.get(c)) / w;
      sector.set(c, [at, at + span]);
      at += span;
    }
  }
  return { pos, parent, live, root, radius: radius[radius.length - 1] || 0 };
}

/** The chain from `id` up to the root (both included). */
export function pathToRoot(l, id) {
  const path = [];
  const seen = new Set();
  let q = id;
  while (q !== undefined && !seen.has(q)) {
    path.push(q);
    seen.add(q);
    if (q === l.root) break;
    q = l.parent.get(q);
  }
  return path;
}
