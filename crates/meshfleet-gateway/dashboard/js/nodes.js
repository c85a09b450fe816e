// The node table: sortable, filterable, virtualised (only the rows in view exist in the
// DOM, so 10,000 nodes cost what 30 do), stale rows highlighted.

import { state, subscribe } from './store.js';
import { h, clear, ago, duration, kb, badge, isStale, HEALTH, keepFocus } from './util.js';

const ROW = 34;
const COLS = [
  { key: 'nodeId', label: 'Node', get: (n) => n.nodeId },
  { key: 'health', label: 'Health', get: (n) => HEALTH.indexOf(n.health) },
  { key: 'online', label: 'Online', get: (n) => (n.online ? 1 : 0), wide: true },
  { key: 'firmware', label: 'Firmware', get: (n) => n.firmware || '' },
  { key: 'role', label: 'Role', get: (n) => n.role || '', wide: true },
  { key: 'freeMemory', label: 'Free memory', get: (n) => n.freeMemory ?? -1, wide: true },
  { key: 'uptime', label: 'Uptime', get: (n) => n.uptime ?? -1, wide: true },
  { key: 'lastSeen', label: 'Last seen', get: (n) => n.lastSeen },
];

let sort = { key: 'nodeId', dir: 1 };

export function mount(main, params) {
  const filter = h('input', { type: 'search', id: 'nodes-filter', placeholder: 'id, firmware, role…', 'aria-label': 'Filter nodes' });
  const health = h('select', { id: 'nodes-health', 'aria-label': 'Health' },
    h('option', { value: '' }, 'any health'), HEALTH.map((x) => h('option', { value: x }, x)));
  const staleOnly = h('input', { type: 'checkbox', id: 'nodes-stale' });
  health.value = params.get('health') || '';
  filter.value = params.get('q') || '';
  const summary = h('span', { class: 'muted', id: 'nodes-summary', 'aria-live': 'polite' });
  const head = h('div', { class: 'vt-head', role: 'row' }, COLS.map((c) => {
    const b = h('button', { type: 'button', 'data-key': c.key, class: c.wide ? 'wide' : null, role: 'columnheader' }, c.label);
    b.addEventListener('click', () => {
      sort = sort.key === c.key ? { key: c.key, dir: -sort.dir } : { key: c.key, dir: 1 };
      compute(); paint(true);
    });
    return b;
  }));
  const space = h('div', { class: 'vt-space', role: 'rowgroup' });
  const scroller = h('div', { class: 'vt-scroll', tabindex: '0', 'aria-label': 'Nodes' }, space);
  main.append(
    h('h1', null, 'Nodes'),
    h('div', { class: 'toolbar' }, filter, health,
      h('label', { for: 'nodes-stale' }, staleOnly, ' stale only'), summary),
    h('div', { class: 'vt', role: 'table', 'aria-label': 'Nodes', id: 'nodes-table' }, head, scroller),
  );

  let rows = [];
  let shown = new Map(); // index -> element
  function compute() {
    const q = filter.value.trim().toLowerCase();
    const hl = health.value;
    const now = Date.now();
    const col = COLS.find((c) => c.key === sort.key) || COLS[0];
    rows = [...state.nodes.values()].filter((n) => (!hl || n.health === hl)
      && (!staleOnly.checked || isStale(n, now))
      && (!q || String(n.nodeId).includes(q) || (n.firmware || '').toLowerCase().includes(q) || (n.role || '').toLowerCase().includes(q)));
    rows.sort((a, b) => {
      const x = col.get(a); const y = col.get(b);
      return (x < y ? -1 : x > y ? 1 : a.nodeId - b.nodeId) * sort.dir;
    });
    space.style.height = `${rows.length * ROW}px`;
    summary.textContent = `${rows.length} of ${state.nodes.size} nodes`;
    for (const b of head.children) {
      b.setAttribute('aria-sort', b.dataset.key === sort.key ? (sort.dir > 0 ? 'ascending' : 'descending') : 'none');
    }
  }
  function row(n, i, now) {
    const stale = isStale(n, now);
    const r = h('div', { class: `vt-row${stale ? ' stale' : ''}${n.online ? '' : ' offline'}`, role: 'row', tabindex: '-1', 'data-node': n.nodeId, 'data-key': `row-${n.nodeId}` },
      h('span', null, String(n.nodeId)),
      h('span', null, badge(n.health)),
      h('span', { class: 'wide' }, n.online ? 'yes' : 'no'),
      h('span', { class: 'fw' }, n.firmware || '—'),
      h('span', { class: 'wide' }, n.role || '—'),
      h('span', { class: 'wide' }, kb(n.freeMemory)),
      h('span', { class: 'wide' }, duration(n.uptime)),
      h('span', null, ago(n.lastSeen, now), stale ? [' ', badge('stale')] : null));
    r.style.top = `${i * ROW}px`;
    r.addEventListener('click', () => { location.hash = `#/node/${n.nodeId}`; });
    r.addEventListener('keydown', (e) => { if (e.key === 'Enter') location.hash = `#/node/${n.nodeId}`; });
    return r;
  }
  function paint(all) { keepFocus(space, () => paintRows(all)); }
  function paintRows(all) {
    const top = scroller.scrollTop;
    const first = Math.max(0, Math.floor(top / ROW) - 10);
    const last = Math.min(rows.length, Math.ceil((top + scroller.clientHeight) / ROW) + 10);
    const now = Date.now();
    if (all) { clear(space); shown = new Map(); }
    for (const [i, e] of shown) if (i < first || i >= last) { e.remove(); shown.delete(i); }
    for (let i = first; i < last; i++) {
      if (!shown.has(i)) { const e = row(rows[i], i, now); space.append(e); shown.set(i, e); }
    }
  }
  scroller.addEventListener('scroll', () => paint(false), { passive: true });
  scroller.addEventListener('keydown', (e) => {
    // Arrow keys move between rows; the focused row follows the scroll position.
    if (e.key !== 'ArrowDown' && e.key !== 'ArrowUp') return;
    e.preventDefault();
    const cur = document.activeElement && document.activeElement.dataset ? Number(document.activeElement.style.top.replace('px', '')) / ROW : -1;
    const next = Math.max(0, Math.min(rows.length - 1, (Number.isFinite(cur) ? cur : -1) + (e.key === 'ArrowDown' ? 1 : -1)));
    scroller.scrollTop = Math.max(0, next * ROW - scroller.clientHeight / 2);
    paint(false);
    const el = shown.get(next); if (el) el.focus();
  });
  for (const el of [filter, health, staleOnly]) el.addEventListener('input', () => { compute(); scroller.scrollTop = 0; paint(true); });
  const unsub = subscribe(() => { compute(); paint(true); });
  compute(); paint(true);
  // Stale highlighting depends on the clock too.
  const tick = setInterval(() => paint(true), 15000);
  return () => { unsub(); clearInterval(tick); };
}
