// Alerts: filter by state, severity, kind, node; acknowledge (with a note). Alerts clear
// themselves: the gateway's monitor clears each one, with hysteresis, once its condition
// is gone; the gateway has no endpoint to clear one by hand.

import * as api from './api.js';
import { state, subscribe } from './store.js';
import { h, clear, ago, time, badge, keepFocus } from './util.js';

export function mount(main) {
  const which = h('select', { id: 'alerts-state', 'aria-label': 'State' },
    h('option', { value: 'active' }, 'active'), h('option', { value: 'unacked' }, 'active, not acknowledged'), h('option', { value: 'all' }, 'all (incl. cleared)'));
  const sev = h('select', { id: 'alerts-severity', 'aria-label': 'Severity' },
    h('option', { value: '' }, 'any severity'), ['critical', 'warning', 'info'].map((x) => h('option', { value: x }, x)));
  const text = h('input', { type: 'search', id: 'alerts-filter', placeholder: 'node or kind', 'aria-label': 'Filter alerts' });
  const msg = h('p', { role: 'status', 'aria-live': 'polite', class: 'muted' });
  const list = h('div', { id: 'alerts-list' });
  main.append(h('h1', null, 'Alerts'), h('div', { class: 'toolbar' }, which, sev, text), msg, list);
  let all = null; // the full history when "all" is chosen

  async function loadAll() {
    try { all = (await api.get('/alerts?state=all&limit=1000')).alerts; } catch (e) { msg.textContent = e.message; }
    render();
  }

  function render() { keepFocus(list, renderList); }
  function renderList() {
    let items = which.value === 'all' && all ? all.map((a) => state.alerts.get(a.id) || a) : [...state.alerts.values()].filter((a) => !a.clearedAt);
    if (which.value === 'unacked') items = items.filter((a) => !a.ackedAt);
    if (sev.value) items = items.filter((a) => a.severity === sev.value);
    const q = text.value.trim().toLowerCase();
    if (q) items = items.filter((a) => String(a.nodeId).includes(q) || a.kind.includes(q.replaceAll(' ', '_')) || a.message.toLowerCase().includes(q));
    items.sort((a, b) => b.raisedAt - a.raisedAt);
    clear(list);
    if (!items.length) { list.append(h('p', { class: 'empty' }, 'No alerts match.')); return; }
    list.append(h('table', { class: 'simple' },
      h('thead', null, h('tr', null, ['Severity', 'Node', 'Kind', 'Message', 'Raised', 'State', ''].map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', null, items.slice(0, 500).map((a) => h('tr', { 'data-alert': a.id, 'data-kind': a.kind, 'data-node': a.nodeId },
        h('td', null, badge(a.severity)),
        h('td', null, a.nodeId ? h('a', { href: `#/node/${a.nodeId}`, 'data-key': `node-${a.id}` }, String(a.nodeId)) : 'mesh'),
        h('td', null, a.kind.replaceAll('_', ' ')),
        h('td', null, a.message),
        h('td', { title: time(a.raisedAt) }, ago(a.raisedAt)),
        h('td', null, a.clearedAt ? `cleared ${ago(a.clearedAt)}` : a.ackedAt ? `acknowledged by ${a.ackedBy || '?'}${a.ackNote ? `: ${a.ackNote}` : ''}` : 'active'),
        h('td', null, !a.ackedAt ? h('button', { type: 'button', 'data-key': `ack-${a.id}`, onclick: () => ack(a) }, 'Acknowledge') : null))))));
    if (items.length > 500) list.append(h('p', { class: 'muted' }, `${items.length - 500} more not shown; narrow the filter.`));
  }

  async function ack(a) {
    const note = await askNote(`${a.severity} ${a.kind.replaceAll('_', ' ')} on ${a.nodeId ? `node ${a.nodeId}` : 'the mesh'}: ${a.message}`);
    if (note === null) return;
    try {
      const r = await api.send('POST', `/alerts/${a.id}/ack`, note ? { note } : {});
      state.alerts.set(r.id, r);
      if (all) all = all.map((x) => (x.id === r.id ? r : x));
      msg.textContent = `Alert ${a.id} acknowledged.`;
    } catch (e) { msg.textContent = `Cannot acknowledge: ${e.message}`; }
    render();
  }

  which.addEventListener('change', () => (which.value === 'all' ? loadAll() : render()));
  sev.addEventListener('change', render);
  text.addEventListener('input', render);
  const unsub = subscribe(render);
  render();
  return unsub;
}

/** The acknowledgement dialog; resolves with the note ('' for none), or null when cancelled. */
function askNote(what) {
  const dlg = document.getElementById('ack-dialog');
  const form = document.getElementById('ack-form');
  const input = document.getElementById('ack-note');
  const cancelBtn = document.getElementById('ack-cancel');
  document.getElementById('ack-what').textContent = what;
  input.value = '';
  return new Promise((resolve) => {
    const done = (v) => {
      form.removeEventListener('submit', submit);
      cancelBtn.removeEventListener('click', cancel);
      dlg.removeEventListener('cancel', cancel);
      if (dlg.open) dlg.close();
      resolve(v);
    };
    const submit = (e) => { e.preventDefault(); done(input.value.trim()); };
    const cancel = (e) => { if (e) e.preventDefault(); done(null); };
    form.addEventListener('submit', submit);
    cancelBtn.addEventListener('click', cancel);
    dlg.addEventListener('cancel', cancel);
    dlg.showModal();
    input.focus();
  });
}
