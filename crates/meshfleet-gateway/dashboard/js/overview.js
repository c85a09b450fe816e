// Overview: counts by health, firmware and role; active alerts; running campaigns.

import { state, subscribe } from './store.js';
import { h, clear, ago, HEALTH, badge, pct, keepFocus } from './util.js';

export function mount(main) {
  const root = h('div');
  main.append(h('h1', null, 'Overview'), root);
  const render = () => {
    clear(root);
    if (state.error) root.append(h('p', { class: 'error', role: 'alert' }, `Cannot load the fleet: ${state.error}`));
    const counts = { healthy: 0, warning: 0, critical: 0, offline: 0 };
    const fw = new Map(); const role = new Map();
    for (const n of state.nodes.values()) {
      counts[n.health] = (counts[n.health] || 0) + 1;
      const f = n.firmware || 'unknown'; fw.set(f, (fw.get(f) || 0) + 1);
      const r = n.role || 'unknown'; role.set(r, (role.get(r) || 0) + 1);
    }
    const total = state.nodes.size;
    root.append(h('div', { class: 'cards', id: 'health-cards' },
      h('a', { class: 'card', href: '#/nodes', 'data-key': 'all' }, h('span', { class: 'n' }, String(total)), 'nodes'),
      ...HEALTH.map((hl) => h('a', { class: `card ${hl}`, href: `#/nodes?health=${hl}`, 'data-health': hl, 'data-key': hl },
        h('span', { class: 'n' }, String(counts[hl])), hl))));
    const active = [...state.alerts.values()].filter((a) => !a.clearedAt).sort((a, b) => b.raisedAt - a.raisedAt);
    const running = [...state.campaigns.values()].filter((c) => c.state === 'running' || c.state === 'paused');
    root.append(h('div', { class: 'grid' },
      h('section', { class: 'panel', 'aria-labelledby': 'ov-fw' }, h('h2', { id: 'ov-fw' }, 'Firmware'), bars(fw, total)),
      h('section', { class: 'panel', 'aria-labelledby': 'ov-role' }, h('h2', { id: 'ov-role' }, 'Roles'), bars(role, total)),
      h('section', { class: 'panel', 'aria-labelledby': 'ov-alerts' },
        h('h2', { id: 'ov-alerts' }, `Active alerts (${active.length})`),
        active.length ? h('ul', { id: 'overview-alerts' }, active.slice(0, 8).map((a) => h('li', null,
          badge(a.severity), ' ', h('a', { href: a.nodeId ? `#/node/${a.nodeId}` : '#/alerts', 'data-key': `alert-${a.id}` }, a.nodeId ? `node ${a.nodeId}` : 'mesh'),
          ` ${a.kind.replaceAll('_', ' ')} `, h('span', { class: 'muted' }, ago(a.raisedAt)))))
          : h('p', { class: 'empty' }, 'No active alerts.'),
        active.length > 8 ? h('a', { href: '#/alerts' }, `All ${active.length} alerts`) : null),
      h('section', { class: 'panel', 'aria-labelledby': 'ov-camp' },
        h('h2', { id: 'ov-camp' }, 'Running campaigns'),
        state.campaignsAvailable === false ? h('p', { class: 'empty' }, 'This gateway has no campaign API yet.')
          : running.length ? h('ul', null, running.map((c) => h('li', null,
            h('a', { href: `#/campaign/${c.id}`, 'data-key': `c-${c.id}` }, c.name || c.id), ' ', badge(c.state), ' ',
            `${c.updatedNodes ?? c.updated_nodes ?? 0}/${c.totalNodes ?? c.total_nodes ?? 0} nodes, ${pct(c.progress)}`)))
            : h('p', { class: 'empty' }, 'No campaign is running.')),
    ));
    if (state.health) {
      root.append(h('p', { class: 'muted' },
        `Gateway node ${state.health.gatewayNodeId}, mesh ${state.health.meshRunning ? 'running' : 'stopped'}, ${state.health.online} online. Loaded ${ago(state.loadedAt)}.`));
    }
  };
  const unsub = subscribe(() => keepFocus(root, render));
  render();
  return unsub;
}

function bars(map, total) {
  if (!map.size) return h('p', { class: 'empty' }, 'No nodes yet.');
  const rows = [...map].sort((a, b) => b[1] - a[1]).slice(0, 10);
  return h('ul', { class: 'bars' }, rows.map(([k, v]) => {
    const fill = h('span'); fill.style.width = `${(100 * v) / Math.max(1, total)}%`;
    return h('li', null, h('span', null, k), h('span', { class: 'bar', 'aria-hidden': 'true' }, fill), h('span', { class: 'v' }, String(v)));
  }));
}
