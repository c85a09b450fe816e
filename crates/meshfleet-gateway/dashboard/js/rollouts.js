// Progressive rollouts (issue 14, `docs/rollouts.md`): create one, follow its waves, nodes
// and decision log live, and command it (approve, pause, resume, skip, abort, emergency
// rollback). Self-contained: its own event stream while mounted (the `rollout` and
// `rollout_decision` events), re-reading the rollout over REST when it changes.

import * as api from './api.js';
import { state } from './store.js';
import { h, clear, badge, time, keepFocus } from './util.js';

// Which commands apply in which state (the controller refuses the others with 409).
const COMMANDS = {
  running: ['pause', 'skip', 'abort', 'rollback'],
  awaiting_approval: ['approve', 'skip', 'abort', 'rollback'],
  paused: ['approve', 'resume', 'skip', 'abort', 'rollback'],
  completed: ['rollback'],
  aborted: [],
};
const LABEL = {
  approve: 'Approve next wave', pause: 'Pause', resume: 'Resume', skip: 'Skip to wave',
  abort: 'Abort', rollback: 'Emergency rollback',
};

/** Live updates while a view is mounted: calls `f` (debounced) on rollout events. */
function follow(f) {
  let timer = null;
  const es = new EventSource('/events');
  const kick = () => { if (!timer) timer = setTimeout(() => { timer = null; f(); }, 250); };
  es.addEventListener('rollout', kick);
  es.addEventListener('rollout_decision', kick);
  es.addEventListener('campaign_node', kick);
  return () => { clearTimeout(timer); es.close(); };
}

/** Waves given as cumulative percentages, `5, 20, 75, 100`. */
function parseWaves(text, pause) {
  const ps = text.split(/[\s,]+/).filter(Boolean).map(Number);
  if (!ps.length || ps.some((p) => !Number.isInteger(p) || p < 1 || p > 100)) return null;
  return ps.map((p, i) => ({ until: { percent: p }, then: pause && i < ps.length - 1 ? 'pause_for_approval' : 'continue' }));
}

export function mount(main) {
  const msg = h('p', { role: 'status', 'aria-live': 'polite', id: 'ro-msg' });
  const list = h('div', { id: 'rollout-list' });
  const form = h('section', { class: 'panel', 'aria-labelledby': 'nr-h' }, h('h2', { id: 'nr-h' }, 'New rollout'));
  main.append(h('h1', null, 'Rollouts'), msg, form,
    h('section', { class: 'panel', 'aria-labelledby': 'rl-h' }, h('h2', { id: 'rl-h' }, 'Rollouts'), list));
  const say = (text, bad) => { msg.textContent = text; msg.className = bad ? 'error' : 'muted'; };

  const art = h('select', { id: 'nr-artefact', required: true });
  const prev = h('select', { id: 'nr-previous' });
  const nodes = h('input', { id: 'nr-nodes', placeholder: 'all nodes the artefact is for', autocomplete: 'off' });
  const waves = h('input', { id: 'nr-waves', value: '5, 20, 75, 100', autocomplete: 'off' });
  const pause = h('input', { type: 'checkbox', id: 'nr-pause' });
  const approval = h('input', { type: 'checkbox', id: 'nr-approval' });
  const intent = h('textarea', { id: 'nr-intent', rows: '3', placeholder: 'optional: the JSON of meshfleet firmware intent --rollback', spellcheck: 'false' });
  const name = h('input', { id: 'nr-name', placeholder: 'optional label', autocomplete: 'off' });
  form.append(h('form', { class: 'form', id: 'rollout-form', onsubmit: (e) => { e.preventDefault(); create(); } },
    h('label', { for: 'nr-artefact' }, 'New artefact'), art,
    h('label', { for: 'nr-previous' }, 'Previous artefact (stock nodes go back to it)'), prev,
    h('label', { for: 'nr-nodes' }, 'Nodes'), nodes,
    h('label', { for: 'nr-waves' }, 'Waves (cumulative %)'), waves,
    h('label', { for: 'nr-pause' }, 'Wait for approval after each wave'), pause,
    h('label', { for: 'nr-approval' }, 'Wait for approval before the canary'), approval,
    h('label', { for: 'nr-intent' }, 'Signed rollback intent'), intent,
    h('label', { for: 'nr-name' }, 'Name'), name,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'nr-submit' }, 'Create rollout'))));

  function renderForm() {
    for (const [sel, none] of [[art, null], [prev, '— none —']]) {
      const cur = sel.value;
      clear(sel);
      if (none) sel.append(h('option', { value: '' }, none));
      for (const a of state.firmware) sel.append(h('option', { value: a.id }, `${a.role} ${a.version} (${a.hardware})`));
      if (cur) sel.value = cur;
    }
  }

  async function create() {
    const w = parseWaves(waves.value, pause.checked);
    if (!w) { say('Waves: cumulative percentages from 1 to 100, like 5, 20, 75, 100.', true); return; }
    if (!art.value) { say('Upload an artefact first.', true); return; }
    const body = { artefact: art.value, config: { waves: w, start: approval.checked ? 'await_approval' : 'immediately' } };
    if (prev.value) body.previous_artefact = prev.value;
    if (name.value.trim()) body.name = name.value.trim();
    const ids = nodes.value.split(/[\s,]+/).filter(Boolean).map(Number);
    if (ids.length) body.nodes = ids;
    if (intent.value.trim()) {
      try { body.rollback_intent = JSON.parse(intent.value); } catch { say('The rollback intent is not JSON.', true); return; }
    }
    try {
      const r = await api.send('POST', '/rollouts', body);
      say(`Rollout ${r.id} created: ${r.state}.`);
      location.hash = `#/rollout/${r.id}`;
    } catch (e) { say(`Cannot create the rollout: ${e.message}`, true); }
  }

  async function load() {
    try {
      const r = await api.get('/rollouts');
      keepFocus(list, () => renderList(r.rollouts));
    } catch (e) { say(e.message, true); }
  }
  function renderList(rs) {
    clear(list);
    if (!rs.length) { list.append(h('p', { class: 'empty' }, 'No rollouts yet.')); return; }
    list.append(h('table', { class: 'simple' },
      h('thead', null, h('tr', null, ['Rollout', 'Version', 'State', 'Wave', 'Exposed', 'Rolled back', 'Created'].map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', null, rs.map((r) => h('tr', { 'data-rollout': r.id },
        h('td', null, h('a', { href: `#/rollout/${r.id}`, 'data-key': `open-${r.id}` }, `${r.id} ${r.name}`)),
        h('td', null, `${r.previous_version} → ${r.version}`), h('td', null, badge(r.state)),
        h('td', { class: 'num' }, String(r.current_wave)), h('td', { class: 'num' }, String(r.exposed)),
        h('td', { class: 'num' }, String(r.rolled_back)), h('td', null, time(r.created_at_ms)))))));
  }
  renderForm();
  load();
  const stop = follow(load);
  const timer = setInterval(renderForm, 2000);
  return () => { stop(); clearInterval(timer); };
}

/** One rollout: its waves, nodes and decision log, with the controls. */
export function mountRollout(main, params, id) {
  const msg = h('p', { role: 'status', 'aria-live': 'polite', id: 'ro-msg' });
  const head = h('div', { id: 'rollout-head' });
  const waves = h('div', { id: 'rollout-waves' });
  const nodes = h('div', { id: 'rollout-nodes' });
  const log = h('ol', { id: 'rollout-log', class: 'log', reversed: true });
  main.append(h('p', null, h('a', { href: '#/rollouts' }, '← Rollouts')), h('h1', null, `Rollout ${id}`), msg, head,
    h('section', { class: 'panel', 'aria-labelledby': 'rw-h' }, h('h2', { id: 'rw-h' }, 'Waves'), waves),
    h('section', { class: 'panel', 'aria-labelledby': 'rn-h' }, h('h2', { id: 'rn-h' }, 'Nodes'), nodes),
    h('section', { class: 'panel', 'aria-labelledby': 'rd-h' }, h('h2', { id: 'rd-h' }, 'Decisions (newest first)'), log));
  const skipTo = h('input', { type: 'number', min: '1', id: 'ro-skip-to', 'aria-label': 'Wave to skip to', value: '1' });
  skipTo.style.width = '5em';
  let r = null;

  async function command(c) {
    if (c === 'rollback' && !window.confirm(`Roll every node of ${id} that took the update back to the previous image?`)) return;
    if (c === 'abort' && !window.confirm(`Abort ${id} and roll the current wave back?`)) return;
    try {
      const body = c === 'skip' ? { to: Number(skipTo.value) } : undefined;
      r = await api.send('POST', `/rollouts/${id}/${c}`, body);
      msg.textContent = `${LABEL[c]}: now ${r.state}.`; msg.className = 'muted';
      render();
    } catch (e) { msg.textContent = `${LABEL[c]} refused: ${e.message}`; msg.className = 'error'; }
  }

  async function load() {
    try { r = await api.get(`/rollouts/${id}`); } catch (e) { msg.textContent = e.message; msg.className = 'error'; }
    keepFocus(main, render);
  }

  function render() {
    clear(head); clear(waves); clear(nodes); clear(log);
    if (!r) return;
    const cmds = COMMANDS[r.state] || [];
    const why = r.state_detail ? JSON.stringify(r.state_detail.reason ?? r.state_detail) : '';
    head.append(h('section', { class: 'panel' }, h('dl', { class: 'kv' },
      h('dt', null, 'State'), h('dd', { id: 'ro-state' }, badge(r.state), why ? h('span', { class: 'muted' }, ` ${why}`) : ''),
      h('dt', null, 'Version'), h('dd', null, `${r.previous_version} → ${r.version}`),
      h('dt', null, 'Current wave'), h('dd', { id: 'ro-wave' }, String(r.current_wave)),
      h('dt', null, 'Exposed'), h('dd', null, String(r.exposed)),
      h('dt', null, 'In flight'), h('dd', null, String(r.in_flight)),
      h('dt', null, 'Rolled back'), h('dd', null, `${r.rolled_back} of ${r.rollback_ordered} ordered${r.restored_s != null ? `, all back after ${r.restored_s.toFixed(1)} s` : ''}`),
      h('dt', null, 'Automatic rollback'), h('dd', null, r.auto_rollback ? `signed intent until ${new Date(r.rollback_intent_expires * 1000).toLocaleString()}` : 'no intent: meshfleet nodes cannot be rolled back by the gateway'),
      h('dt', null, 'Campaigns'), h('dd', null, r.campaigns.length ? r.campaigns.map((c) => h('a', { href: `#/campaign/${c}` }, `${c} `)) : '—')),
    h('div', { class: 'actions' }, cmds.map((c) => c === 'skip'
      ? h('span', { class: 'toolbar' }, h('button', { type: 'button', 'data-command': c, 'data-key': `cmd-${c}`, onclick: () => command(c) }, LABEL[c]), skipTo)
      : h('button', { type: 'button', class: c === 'rollback' || c === 'abort' ? 'danger' : (c === 'approve' ? 'primary' : ''), 'data-command': c, 'data-key': `cmd-${c}`, onclick: () => command(c) }, LABEL[c])))));
    const counts = ['planned', 'members', 'offered', 'exposed', 'healthy', 'failed'];
    waves.append(h('table', { class: 'simple' },
      h('thead', null, h('tr', null, ['Wave', 'State', ...counts].map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', null, r.waves.map((w) => h('tr', { 'data-wave': w.wave },
        h('td', null, w.wave === 0 ? '0 (canary)' : String(w.wave)), h('td', null, badge(w.state)),
        ...counts.map((k) => h('td', { class: 'num' }, String(w.counts[k] ?? '—'))))))));
    nodes.append(h('table', { class: 'simple' },
      h('thead', null, h('tr', null, ['Node', 'Wave', 'State', 'Firmware', 'Online', 'Offers', 'Rollback'].map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', null, r.nodes.slice(0, 1000).map((n) => h('tr', { 'data-node': n.node },
        h('td', null, h('a', { href: `#/node/${n.node}` }, String(n.node))), h('td', { class: 'num' }, String(n.wave)),
        h('td', null, badge(n.state), n.detail && n.detail.reason ? h('span', { class: 'muted' }, ` ${JSON.stringify(n.detail.reason)}`) : ''),
        h('td', null, n.firmware || '—'), h('td', null, n.online ? 'yes' : 'no'), h('td', { class: 'num' }, String(n.offers)),
        h('td', null, n.rollback ? (n.rollback.restored_at != null ? 'restored' : `ordered ×${n.rollback.orders}`) : ''))))));
    for (const d of [...r.decisions].reverse().slice(0, 200)) {
      log.append(h('li', { 'data-kind': d.kind }, h('time', null, time(d.at_ms)), ' ', h('strong', null, d.kind.replace(/_/g, ' ')),
        d.detail ? h('code', null, ` ${JSON.stringify(d.detail)}`) : ''));
    }
  }
  load();
  return follow(load);
}
