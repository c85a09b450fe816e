// Entry point: hash routing between the views, the live connection, the alert count.

import { state, subscribe, refresh, connect } from './store.js';
import * as overview from './overview.js';
import * as topology from './topology.js';
import * as nodes from './nodes.js';
import * as node from './node.js';
import * as alerts from './alerts.js';
import * as firmware from './firmware.js';
import * as rollouts from './rollouts.js';

const ROUTES = {
  overview: { nav: 'overview', title: 'Overview', mount: overview.mount },
  topology: { nav: 'topology', title: 'Topology', mount: topology.mount },
  nodes: { nav: 'nodes', title: 'Nodes', mount: nodes.mount },
  node: { nav: 'nodes', title: 'Node', mount: node.mount },
  alerts: { nav: 'alerts', title: 'Alerts', mount: alerts.mount },
  firmware: { nav: 'firmware', title: 'Firmware & campaigns', mount: firmware.mount },
  campaign: { nav: 'firmware', title: 'Campaign', mount: firmware.mountCampaign },
  rollouts: { nav: 'rollouts', title: 'Rollouts', mount: rollouts.mount },
  rollout: { nav: 'rollouts', title: 'Rollout', mount: rollouts.mountRollout },
};

let unmount = null;

function route() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, query] = raw.split('?');
  const [name, arg] = path.split('/');
  const r = ROUTES[name] || ROUTES.overview;
  if (unmount) { try { unmount(); } catch (e) { console.error(e); } unmount = null; }
  const main = document.getElementById('main');
  main.replaceChildren();
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.view === r.nav) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  document.title = `${r.title}${arg ? ` ${arg}` : ''} · meshfleet`;
  main.dataset.view = ROUTES[name] ? name : 'overview';
  unmount = r.mount(main, new URLSearchParams(query || ''), arg) || null;
  main.focus({ preventScroll: true });
}

subscribe(() => {
  const n = [...state.alerts.values()].filter((a) => !a.clearedAt).length;
  const c = document.getElementById('alert-count');
  c.hidden = n === 0;
  c.textContent = String(n);
  c.setAttribute('aria-label', `${n} active`);
});

window.addEventListener('hashchange', route);
route();
connect();
refresh();
