// Firmware and campaigns: upload a signed .mfw, delete one; create, start, pause, resume
// and cancel campaigns; every node's progress live from the `campaign_node` events.
// Campaign JSON follows the campaign contract (snake_case fields).

import * as api from './api.js';
import { state, subscribe, loadCampaigns, loadFirmware } from './store.js';
import { h, clear, ago, badge, pct, kb, keepFocus } from './util.js';

const ACTIONS = {
  created: ['start', 'cancel'], running: ['pause', 'cancel'], paused: ['resume', 'cancel'],
};
const f = (c, snake) => c[snake] ?? c[snake.replace(/_([a-z])/g, (_, x) => x.toUpperCase())];

export function mount(main) {
  const msg = h('p', { role: 'status', 'aria-live': 'polite', id: 'fw-msg' });
  const file = h('input', { type: 'file', id: 'fw-file', accept: '.mfw,application/octet-stream' });
  const artefacts = h('div', { id: 'fw-list' });
  const campaigns = h('div', { id: 'campaign-list' });
  const create = h('section', { class: 'panel', 'aria-labelledby': 'nc-h' }, h('h2', { id: 'nc-h' }, 'New campaign'));
  main.append(h('h1', null, 'Firmware & campaigns'), msg,
    h('section', { class: 'panel', 'aria-labelledby': 'fw-h' }, h('h2', { id: 'fw-h' }, 'Artefacts'),
      h('form', { class: 'toolbar', onsubmit: (e) => { e.preventDefault(); upload(); } },
        h('label', { for: 'fw-file' }, 'Upload a signed .mfw'), file, h('button', { type: 'submit', class: 'primary' }, 'Upload')),
      artefacts),
    create,
    h('section', { class: 'panel', 'aria-labelledby': 'cl-h' }, h('h2', { id: 'cl-h' }, 'Campaigns'), campaigns));

  const say = (text, bad) => { msg.textContent = text; msg.className = bad ? 'error' : 'muted'; };

  async function upload() {
    const fl = file.files && file.files[0];
    if (!fl) { say('Choose a .mfw file first.', true); return; }
    try {
      const r = await api.send('POST', '/firmware', await fl.arrayBuffer(), 'application/octet-stream');
      say(`Stored ${r.role} ${r.version} for ${r.hardware} (${r.id.slice(0, 12)}…).`);
      file.value = '';
    } catch (e) { say(`Upload refused: ${e.message}`, true); return; }
    // The event stream tells every page, but may not be up yet (or be reconnecting): the
    // page that uploaded shows the list as the gateway has it now.
    await loadFirmware().catch(() => {});
  }

  async function remove(a) {
    if (!window.confirm(`Delete ${a.role} ${a.version} (${a.id.slice(0, 12)}…)?`)) return;
    try { await api.send('DELETE', `/firmware/${a.id}`); say('Deleted.'); } catch (e) { say(e.message, true); return; }
    await loadFirmware().catch(() => {});
  }

  function renderArtefacts() {
    clear(artefacts);
    if (!state.firmware.length) { artefacts.append(h('p', { class: 'empty' }, 'No artefacts stored.')); return; }
    artefacts.append(h('table', { class: 'simple' },
      h('thead', null, h('tr', null, ['Role', 'Hardware', 'Version', 'Size', 'Id', 'Uploaded', ''].map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', null, state.firmware.map((a) => h('tr', null, h('td', null, a.role), h('td', null, a.hardware), h('td', null, a.version),
        h('td', { class: 'num' }, kb(a.size)), h('td', null, h('code', null, `${a.id.slice(0, 12)}…`)), h('td', null, ago(a.uploadedAt)),
        h('td', null, h('button', { type: 'button', class: 'danger', 'data-key': `del-${a.id}`, onclick: () => remove(a) }, 'Delete')))))));
  }

  // The form is built once (so typing is not lost to live updates); its artefact list is
  // refreshed in place.
  const artSel = h('select', { id: 'nc-artefact', required: true });
  const kind = h('select', { id: 'nc-targets' }, ['all', 'role', 'hardware', 'nodes'].map((x) => h('option', { value: x }, x)));
  const targetVal = h('input', { id: 'nc-target-value', placeholder: 'sensor / esp32 / 42, 3141592653', 'aria-label': 'Target value' });
  const strategy = h('select', { id: 'nc-strategy' }, ['auto', 'stock', 'broadcast'].map((x) => h('option', { value: x }, x)));
  const name = h('input', { id: 'nc-name', placeholder: 'optional label' });
  const start = h('input', { type: 'checkbox', id: 'nc-start', checked: true });
  create.append(h('form', { class: 'form', id: 'campaign-form', onsubmit: (e) => { e.preventDefault(); createCampaign(); } },
    h('label', { for: 'nc-artefact' }, 'Artefact'), artSel,
    h('label', { for: 'nc-targets' }, 'Targets'), h('div', { class: 'toolbar' }, kind, targetVal),
    h('label', { for: 'nc-strategy' }, 'Strategy'), strategy,
    h('label', { for: 'nc-name' }, 'Name'), name,
    h('label', { for: 'nc-start' }, 'Start at once'), start,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'nc-submit' }, 'Create campaign'))));

  function renderForm() {
    const cur = artSel.value;
    clear(artSel);
    for (const a of state.firmware) artSel.append(h('option', { value: a.id }, `${a.role} ${a.version} (${a.hardware})`));
    if (cur) artSel.value = cur;
    targetVal.disabled = kind.value === 'all';
    create.hidden = state.campaignsAvailable === false;
  }
  kind.addEventListener('change', renderForm);

  async function createCampaign() {
    let targets = { all: true };
    const v = targetVal.value.trim();
    if (kind.value === 'role') targets = { role: v };
    if (kind.value === 'hardware') targets = { hardware: v };
    if (kind.value === 'nodes') targets = { nodes: v.split(/[\s,]+/).filter(Boolean).map(Number) };
    if (kind.value !== 'all' && !v) { say('Give the targets.', true); return; }
    if (!artSel.value) { say('Upload an artefact first.', true); return; }
    try {
      const c = await api.send('POST', '/campaigns', { artefact: artSel.value, targets, strategy: strategy.value, name: name.value || undefined, start: start.checked });
      state.campaigns.set(c.id, c);
      say(`Campaign ${c.id} created (${f(c, 'total_nodes')} nodes).`);
      location.hash = `#/campaign/${c.id}`;
    } catch (e) { say(`Cannot create the campaign: ${e.message}`, true); }
  }

  async function action(c, a) {
    try {
      const r = await api.send('POST', `/campaigns/${c.id}/${a}`);
      state.campaigns.set(r.id, r);
      say(`Campaign ${c.id}: ${a} done, now ${r.state}.`);
    } catch (e) { say(`Cannot ${a} ${c.id}: ${e.message}`, true); }
  }

  function renderCampaigns() {
    clear(campaigns);
    if (state.campaignsAvailable === false) { campaigns.append(h('p', { class: 'empty' }, 'This gateway has no campaign API yet (its /openapi.json lists no /campaigns).')); return; }
    const list = [...state.campaigns.values()].sort((a, b) => f(b, 'created_at_ms') - f(a, 'created_at_ms'));
    if (!list.length) { campaigns.append(h('p', { class: 'empty' }, 'No campaigns yet.')); return; }
    campaigns.append(h('table', { class: 'simple' },
      h('thead', null, h('tr', null, ['Campaign', 'Version', 'State', 'Nodes', 'Progress', ''].map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', null, list.map((c) => h('tr', { 'data-campaign': c.id },
        h('td', null, h('a', { href: `#/campaign/${c.id}`, 'data-key': `open-${c.id}` }, c.name || c.id)), h('td', null, c.version || '—'), h('td', null, badge(c.state)),
        h('td', null, `${f(c, 'updated_nodes') ?? 0} done, ${f(c, 'failed_nodes') ?? 0} failed of ${f(c, 'total_nodes') ?? 0}`),
        h('td', null, progress(c.progress)),
        h('td', null, (ACTIONS[c.state] || []).map((a) => h('button', { type: 'button', 'data-action': a, 'data-key': `${a}-${c.id}`, onclick: () => action(c, a) }, a))))))));
  }

  const render = () => { keepFocus(artefacts, renderArtefacts); renderForm(); keepFocus(campaigns, renderCampaigns); };
  const unsub = subscribe(render);
  render();
  loadCampaigns();
  return unsub;
}

export function progress(p) {
  const bar = h('span'); bar.style.width = `${Math.round((p || 0) * 100)}%`;
  return h('span', { class: 'pcell' }, h('span', { class: 'progress', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': String(Math.round((p || 0) * 100)) }, bar), pct(p));
}

/** One campaign with every node's progress. */
export function mountCampaign(main, params, id) {
  const msg = h('p', { role: 'status', 'aria-live': 'polite' });
  const head = h('div'); const table = h('div', { id: 'campaign-nodes' });
  main.append(h('p', null, h('a', { href: '#/firmware' }, '← Firmware & campaigns')), h('h1', null, `Campaign ${id}`), msg, head, table);
  let full = null;
  async function load() {
    try {
      full = await api.get(`/campaigns/${id}`);
      const m = new Map();
      for (const n of full.nodes || []) m.set(n.node, n);
      state.campaignNodes.set(id, m);
      state.campaigns.set(id, { ...full, nodes: undefined });
    } catch (e) { msg.textContent = e.message; }
    render();
  }
  function render() {
    const c = state.campaigns.get(id) || full;
    clear(head); clear(table);
    if (!c) return;
    head.append(h('section', { class: 'panel' }, h('dl', { class: 'kv' },
      h('dt', null, 'State'), h('dd', null, badge(c.state)),
      h('dt', null, 'Version'), h('dd', null, c.version || '—'),
      h('dt', null, 'Strategy'), h('dd', null, c.strategy || '—'),
      h('dt', null, 'Progress'), h('dd', null, progress(c.progress)),
      h('dt', null, 'Nodes'), h('dd', null, `${f(c, 'updated_nodes') ?? 0} updated, ${f(c, 'failed_nodes') ?? 0} failed of ${f(c, 'total_nodes') ?? 0}`),
      h('dt', null, 'Estimated completion'), h('dd', null, f(c, 'estimated_completion_ms') ? new Date(f(c, 'estimated_completion_ms')).toLocaleString() : '—')),
    h('div', { class: 'actions' }, (ACTIONS[c.state] || []).map((a) => h('button', { type: 'button', 'data-action': a, 'data-key': `act-${a}`, onclick: async () => {
      try { const r = await api.send('POST', `/campaigns/${id}/${a}`); state.campaigns.set(id, r); } catch (e) { msg.textContent = e.message; }
    } }, a)))));
    const nodes = [...(state.campaignNodes.get(id) || new Map()).values()].sort((a, b) => a.node - b.node);
    table.append(h('table', { class: 'simple' },
      h('thead', null, h('tr', null, ['Node', 'State', 'Progress', 'From', 'Reason'].map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', null, nodes.slice(0, 1000).map((n) => h('tr', { 'data-node': n.node },
        h('td', null, h('a', { href: `#/node/${n.node}` }, String(n.node))), h('td', null, badge(n.state)), h('td', null, progress(n.progress)),
        h('td', null, n.from_version || '—'), h('td', null, n.reason || ''))))));
  }
  const unsub = subscribe(() => keepFocus(main, render));
  load();
  return unsub;
}
