// The live topology on a canvas: pan (drag, arrow keys), zoom (wheel, pinch, +/-), search,
// colour by health or firmware, click for details, the path to the gateway highlighted.
// Only the canvas is redrawn, and only when something changed (a pan, a zoom, new data).

import { state, subscribe } from './store.js';
import { layout, pathToRoot } from './layout.js';
import { h, clear, ago, HEALTH, HEALTH_COLOUR, firmwareColour, badge } from './util.js';

const NODE_R = 3;
// Test and benchmark hooks (read by the headless-Chromium tests): what the last frame drew.
export const probe = { frames: 0, drawnIds: [], lastDrawMs: 0, screenPos: null };
window.meshfleet = Object.assign(window.meshfleet || {}, { topology: probe });

let colourBy = 'health';

export function mount(main) {
  const canvas = h('canvas', { id: 'topo', tabindex: '0', role: 'img',
    'aria-label': 'Mesh topology. Arrow keys pan, plus and minus zoom, 0 fits, Enter opens the selected node.' });
  const side = h('aside', { class: 'topo-side', 'aria-live': 'polite' });
  const search = h('input', { type: 'search', id: 'topo-search', placeholder: 'node id', 'aria-label': 'Find a node by id', inputmode: 'numeric' });
  const colour = h('select', { id: 'topo-colour', 'aria-label': 'Colour nodes by' },
    h('option', { value: 'health' }, 'Colour: health'), h('option', { value: 'firmware' }, 'Colour: firmware'));
  colour.value = colourBy;
  const legend = h('div', { class: 'legend', id: 'topo-legend' });
  const count = h('span', { class: 'muted', id: 'topo-count' });
  const zoomIn = h('button', { type: 'button', 'aria-label': 'Zoom in' }, '+');
  const zoomOut = h('button', { type: 'button', 'aria-label': 'Zoom out' }, '−');
  const fitBtn = h('button', { type: 'button' }, 'Fit');
  main.append(
    h('h1', null, 'Topology'),
    h('div', { class: 'toolbar' },
      h('form', { class: 'toolbar', onsubmit: (e) => { e.preventDefault(); find(search.value); } },
        search, h('button', { type: 'submit' }, 'Find')),
      colour, zoomIn, zoomOut, fitBtn, count),
    legend,
    h('div', { class: 'topo-wrap' }, canvas, side),
  );

  const ctx = canvas.getContext('2d');
  let lay = null;
  let layKey = '';
  let view = { x: 0, y: 0, k: 1 };
  // The view follows the mesh (fits it at every layout change) until the user pans, zooms or
  // centres a node; Fit (or 0) returns to following. A mesh that is still forming when the
  // page opens (meshfleet demo) would otherwise stay zoomed on its first few nodes.
  let following = true;
  let selected = null;
  let highlight = new Set();
  let dirty = true;
  let running = true;
  let width = 0; let heightPx = 0; let dpr = 1;
  // Positions animate from where nodes were to where the layout puts them.
  let from = new Map(); let animStart = 0; const ANIM_MS = 400;

  function resize() {
    const r = canvas.getBoundingClientRect();
    dpr = window.devicePixelRatio || 1;
    width = r.width; heightPx = r.height;
    canvas.width = Math.max(1, Math.round(r.width * dpr));
    canvas.height = Math.max(1, Math.round(r.height * dpr));
    dirty = true;
  }

  function fit() {
    if (!lay) return;
    // The bounding box of every node, with a margin, centred.
    let x0 = Infinity; let x1 = -Infinity; let y0 = Infinity; let y1 = -Infinity;
    for (const p of lay.pos.values()) { x0 = Math.min(x0, p.x); x1 = Math.max(x1, p.x); y0 = Math.min(y0, p.y); y1 = Math.max(y1, p.y); }
    const w = Math.max(60, x1 - x0) + 40; const hh = Math.max(60, y1 - y0) + 40;
    // At most the zoom a centred node gets: a handful of nodes is not drawn as giant discs.
    view.k = Math.min(width / w, heightPx / hh, 2.5);
    view.x = width / 2 - ((x0 + x1) / 2) * view.k; view.y = heightPx / 2 - ((y0 + y1) / 2) * view.k;
    following = true; dirty = true;
  }

  function colourOf(id) {
    const n = state.nodes.get(id);
    if (colourBy === 'firmware') return n ? firmwareColour(n.firmware) : firmwareColour(null);
    if (id === lay.root) return '#0b4f8a';
    if (!n) return lay.live.has(id) ? HEALTH_COLOUR.healthy : HEALTH_COLOUR.offline;
    return HEALTH_COLOUR[n.health] || HEALTH_COLOUR.offline;
  }

  function current(id, now) {
    const p = lay.pos.get(id);
    const f = from.get(id);
    if (!f) return p;
    const t = Math.min(1, (now - animStart) / ANIM_MS);
    if (t >= 1) return p;
    const e = t * (2 - t);
    return { x: f.x + (p.x - f.x) * e, y: f.y + (p.y - f.y) * e };
  }

  function relayout() {
    const nodesKey = `${state.topology ? state.topology.timestamp : 0}:${state.nodes.size}`;
    if (nodesKey === layKey && lay) return;
    const old = lay;
    const now = performance.now();
    if (old) {
      from = new Map();
      for (const id of old.pos.keys()) from.set(id, current(id, now));
    }
    lay = layout(state.topology, state.nodes, state.gatewayNodeId);
    layKey = nodesKey;
    if (old) {
      for (const id of lay.pos.keys()) {
        if (!from.has(id)) { const p = lay.parent.get(id); if (from.has(p)) from.set(id, from.get(p)); }
      }
      animStart = now;
    }
    if (selected !== null) highlight = new Set(pathToRoot(lay, selected));
    if (following) fit();
    dirty = true;
  }

  function draw(now) {
    const t0 = performance.now();
    const animating = now - animStart < ANIM_MS;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = '#fbfcfd';
    ctx.fillRect(0, 0, width, heightPx);
    if (!lay) return;
    ctx.setTransform(dpr * view.k, 0, 0, dpr * view.k, dpr * view.x, dpr * view.y);
    const pad = 20 / view.k;
    const minX = -view.x / view.k - pad; const maxX = (width - view.x) / view.k + pad;
    const minY = -view.y / view.k - pad; const maxY = (heightPx - view.y) / view.k + pad;
    const pts = new Map();
    for (const id of lay.pos.keys()) pts.set(id, animating ? current(id, now) : lay.pos.get(id));
    // Links: live ones solid, remembered ones (offline nodes) faint.
    ctx.lineWidth = 1 / view.k;
    for (const liveOnly of [false, true]) {
      ctx.beginPath();
      for (const [id, p] of lay.parent) {
        if (lay.live.has(id) !== liveOnly) continue;
        const a = pts.get(id); const b = pts.get(p);
        if (!a || !b) continue;
        if ((a.x < minX && b.x < minX) || (a.x > maxX && b.x > maxX) || (a.y < minY && b.y < minY) || (a.y > maxY && b.y > maxY)) continue;
        ctx.moveTo(a.x, a.y); ctx.lineTo(b.x, b.y);
      }
      ctx.strokeStyle = liveOnly ? '#9aa6b5' : '#dde2e8';
      ctx.stroke();
    }
    if (highlight.size > 1) {
      ctx.beginPath();
      for (const id of highlight) {
        const p = lay.parent.get(id);
        if (id === lay.root || p === undefined) continue;
        const a = pts.get(id); const b = pts.get(p);
        ctx.moveTo(a.x, a.y); ctx.lineTo(b.x, b.y);
      }
      ctx.strokeStyle = '#1a73e8';
      ctx.lineWidth = 4 / view.k;
      ctx.stroke();
    }
    // Nodes, one path per colour.
    const r = Math.max(NODE_R, 2.2 / view.k);
    const byColour = new Map();
    const drawn = [];
    for (const [id, p] of pts) {
      if (p.x < minX || p.x > maxX || p.y < minY || p.y > maxY) continue;
      const c = colourOf(id);
      if (!byColour.has(c)) byColour.set(c, []);
      byColour.get(c).push(p);
      drawn.push(id);
    }
    for (const [c, list] of byColour) {
      ctx.beginPath();
      for (const p of list) { ctx.moveTo(p.x + r, p.y); ctx.arc(p.x, p.y, r, 0, 2 * Math.PI); }
      ctx.fillStyle = c;
      ctx.fill();
    }
    const g = pts.get(lay.root);
    if (g) {
      ctx.beginPath(); ctx.arc(g.x, g.y, r * 2.5, 0, 2 * Math.PI);
      ctx.fillStyle = '#0b4f8a'; ctx.fill();
    }
    if (selected !== null && pts.get(selected)) {
      const p = pts.get(selected);
      ctx.beginPath(); ctx.arc(p.x, p.y, r * 2.6, 0, 2 * Math.PI);
      ctx.strokeStyle = '#1a73e8'; ctx.lineWidth = 2.5 / view.k; ctx.stroke();
    }
    // Labels once they fit.
    if (view.k > 1.6 && drawn.length < 400) {
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.font = '11px system-ui, sans-serif';
      ctx.fillStyle = '#1a1f26';
      for (const id of drawn) {
        const p = pts.get(id);
        ctx.fillText(String(id), p.x * view.k + view.x + r * view.k + 2, p.y * view.k + view.y + 4);
      }
    }
    probe.frames += 1;
    probe.drawnIds = drawn;
    probe.lastDrawMs = performance.now() - t0;
    if (animating) dirty = true;
  }

  function loop(now) {
    if (!running) return;
    if (dirty) { dirty = false; draw(now); }
    requestAnimationFrame(loop);
  }

  probe.screenPos = (id) => {
    const p = lay && lay.pos.get(id);
    return p ? { x: p.x * view.k + view.x, y: p.y * view.k + view.y } : null;
  };
  probe.canvas = () => canvas;
  probe.layoutSize = () => (lay ? lay.pos.size : 0);

  function nodeAt(sx, sy) {
    if (!lay) return null;
    const x = (sx - view.x) / view.k; const y = (sy - view.y) / view.k;
    let best = null; let bestD = (8 / view.k) ** 2;
    for (const [id, p] of lay.pos) {
      const d = (p.x - x) ** 2 + (p.y - y) ** 2;
      if (d < bestD) { bestD = d; best = id; }
    }
    return best;
  }

  function select(id, centre) {
    selected = id;
    highlight = id === null ? new Set() : new Set(pathToRoot(lay, id));
    if (centre && id !== null) {
      const p = lay.pos.get(id);
      view.k = Math.max(view.k, 2.5);
      following = false;
      // Centre it in the part of the canvas the side panel leaves free.
      const free = width > 760 ? width - 300 : width;
      view.x = free / 2 - p.x * view.k; view.y = heightPx / 2 - p.y * view.k;
    }
    renderSide();
    dirty = true;
  }

  function find(text) {
    const q = text.trim();
    if (!q || !lay) return;
    let hit = null;
    for (const id of lay.pos.keys()) {
      const s = String(id);
      if (s === q) { hit = id; break; }
      if (hit === null && s.startsWith(q)) hit = id;
    }
    if (hit === null) { side.replaceChildren(h('p', { class: 'error' }, `No node matches “${q}”.`)); return; }
    select(hit, true);
  }

  function renderSide() {
    clear(side);
    if (selected === null) {
      side.append(h('p', { class: 'muted' }, 'Click a node (or find it by id) for its details and its path to the gateway.'));
      return;
    }
    const n = state.nodes.get(selected);
    const path = pathToRoot(lay, selected);
    side.append(
      h('h2', null, selected === lay.root ? `Gateway ${selected}` : `Node ${selected}`),
      h('dl', { class: 'kv' },
        h('dt', null, 'Health'), h('dd', null, n ? badge(n.health) : (selected === lay.root ? 'gateway' : '—')),
        h('dt', null, 'Firmware'), h('dd', null, (n && n.firmware) || '—'),
        h('dt', null, 'Hops'), h('dd', null, String(path.length - 1)),
        h('dt', null, 'Last seen'), h('dd', null, n ? ago(n.lastSeen) : '—'),
        h('dt', null, 'Path'), h('dd', null, path.join(' → '))),
      selected !== lay.root ? h('p', null, h('a', { href: `#/node/${selected}` }, 'Open node detail')) : null,
    );
  }

  function renderLegend() {
    clear(legend);
    if (colourBy === 'health') {
      for (const hl of HEALTH) legend.append(h('span', null, swatch(HEALTH_COLOUR[hl]), hl));
      legend.append(h('span', null, swatch('#0b4f8a'), 'gateway'));
    } else {
      const fws = new Map();
      for (const n of state.nodes.values()) fws.set(n.firmware || 'unknown', (fws.get(n.firmware || 'unknown') || 0) + 1);
      for (const [fw, c] of [...fws].sort((a, b) => b[1] - a[1]).slice(0, 12)) {
        legend.append(h('span', null, swatch(firmwareColour(fw === 'unknown' ? null : fw)), `${fw} (${c})`));
      }
    }
  }

  function swatch(c) { const i = h('i'); i.style.background = c; return i; }

  // Pointer: drag pans, wheel and pinch zoom, a click without movement selects.
  const pointers = new Map();
  let moved = false; let pinch = 0;
  canvas.addEventListener('pointerdown', (e) => {
    canvas.setPointerCapture(e.pointerId);
    pointers.set(e.pointerId, { x: e.offsetX, y: e.offsetY });
    moved = false;
    if (pointers.size === 2) { const [a, b] = [...pointers.values()]; pinch = Math.hypot(a.x - b.x, a.y - b.y); }
  });
  canvas.addEventListener('pointermove', (e) => {
    const p = pointers.get(e.pointerId);
    if (!p) return;
    if (pointers.size === 2) {
      pointers.set(e.pointerId, { x: e.offsetX, y: e.offsetY });
      const [a, b] = [...pointers.values()];
      const d = Math.hypot(a.x - b.x, a.y - b.y);
      if (pinch > 0) zoomAt((a.x + b.x) / 2, (a.y + b.y) / 2, d / pinch);
      pinch = d; moved = true;
      return;
    }
    const dx = e.offsetX - p.x; const dy = e.offsetY - p.y;
    if (Math.abs(dx) + Math.abs(dy) > 2) { moved = true; following = false; }
    view.x += dx; view.y += dy;
    p.x = e.offsetX; p.y = e.offsetY;
    dirty = true;
  });
  const up = (e) => {
    if (pointers.has(e.pointerId) && !moved && pointers.size === 1) {
      const id = nodeAt(e.offsetX, e.offsetY);
      select(id, false);
    }
    pointers.delete(e.pointerId);
  };
  canvas.addEventListener('pointerup', up);
  canvas.addEventListener('pointercancel', (e) => pointers.delete(e.pointerId));
  canvas.addEventListener('wheel', (e) => {
    e.preventDefault();
    zoomAt(e.offsetX, e.offsetY, Math.exp(-e.deltaY * 0.0015));
  }, { passive: false });
  canvas.addEventListener('keydown', (e) => {
    const step = 60;
    const keys = {
      ArrowLeft: () => { view.x += step; following = false; }, ArrowRight: () => { view.x -= step; following = false; },
      ArrowUp: () => { view.y += step; following = false; }, ArrowDown: () => { view.y -= step; following = false; },
      '+': () => zoomAt(width / 2, heightPx / 2, 1.25), '=': () => zoomAt(width / 2, heightPx / 2, 1.25),
      '-': () => zoomAt(width / 2, heightPx / 2, 0.8), 0: fit,
      Enter: () => { if (selected !== null && selected !== lay.root) location.hash = `#/node/${selected}`; },
      Escape: () => select(null, false),
    };
    const f = keys[e.key];
    if (f) { e.preventDefault(); f(); dirty = true; }
  });
  function zoomAt(sx, sy, f) {
    const k = Math.min(40, Math.max(0.05, view.k * f));
    view.x = sx - ((sx - view.x) * k) / view.k;
    view.y = sy - ((sy - view.y) * k) / view.k;
    view.k = k; dirty = true; following = false;
  }
  zoomIn.addEventListener('click', () => zoomAt(width / 2, heightPx / 2, 1.25));
  zoomOut.addEventListener('click', () => zoomAt(width / 2, heightPx / 2, 0.8));
  fitBtn.addEventListener('click', fit);
  colour.addEventListener('change', () => { colourBy = colour.value; renderLegend(); dirty = true; });

  const ro = new ResizeObserver(() => { resize(); if (following) fit(); });
  ro.observe(canvas);
  resize();
  const update = () => {
    relayout();
    count.textContent = lay ? `${lay.pos.size} nodes (${lay.live.size} in the live tree)` : '';
    renderLegend();
    if (selected !== null) renderSide();
    dirty = true;
  };
  const unsub = subscribe(update);
  update();
  renderSide();
  requestAnimationFrame(loop);
  return () => { running = false; unsub(); ro.disconnect(); };
}
