// Alerts: filter by state, severity, kind, node; acknowledge or clear (with a note). Alerts
// also clear themselves: the gateway's monitor clears each one, with hysteresis, once its
// condition is gone. One cleared by hand does not come back while its condition persists;
// it comes back (as a new alert) after the condition has gone away and returned, or after
// the monitor's re-arm time (docs/monitoring.md).

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
        h('td', null, stateText(a)),
        h('td', null, actionButtons(a, (r, what) => {
          if (all) all = all.map((x) => (x.id === r.id ? r : x));
          msg.textContent = `Alert ${a.id} ${what}.`;
          render();
        }, (e) => { msg.textContent = e; render(); })))))));
    if (items.length > 500) list.append(h('p', { class: 'muted' }, `${items.length - 500} more not shown; narrow the filter.`));
  }

  which.addEventListener('change', () => (which.value === 'all' ? loadAll() : render()));
  sev.addEventListener('change', render);
  text.addEventListener('input', render);
  const unsub = subscribe(render);
  render();
  return unsub;
}

/** An alert's state in words: who acknowledged or cleared it, and their note. */
export function stateText(a) {
  if (a.clearedAt) {
    return a.clearedBy ? `cleared by ${a.clearedBy} ${ago(a.clearedAt)}${a.clearNote ? `: ${a.clearNote}` : ''}` : `cleared ${ago(a.clearedAt)}`;
  }
  return a.ackedAt ? `acknowledged by ${a.ackedBy || '?'}${a.ackNote ? `: ${a.ackNote}` : ''}` : 'active';
}

const ACTIONS = {
  ack: { path: 'ack', title: 'Acknowledge alert', button: 'Acknowledge', done: 'acknowledged', hint: '' },
  clear: {
    path: 'clear', title: 'Clear alert', button: 'Clear', done: 'cleared',
    hint: 'It will not come back while this condition persists; it comes back as a new alert once the condition has gone away and returned, or after the re-arm time (24 h by default).',
  },
};

/** Acknowledge and Clear buttons for an active alert (none for a cleared one). `ok(alert, what)`
 * runs after a change, `fail(message)` on an error. */
export function actionButtons(a, ok, fail) {
  if (a.clearedAt) return null;
  const run = async (kind) => {
    const act = ACTIONS[kind];
    const note = await askNote(act, `${a.severity} ${a.kind.replaceAll('_', ' ')} on ${a.nodeId ? `node ${a.nodeId}` : 'the mesh'}: ${a.message}`);
    if (note === null) return;
    try {
      const r = await api.send('POST', `/alerts/${a.id}/${act.path}`, note ? { note } : {});
      state.alerts.set(r.id, r);
      ok(r, act.done);
    } catch (e) { fail(`Cannot ${act.button.toLowerCase()} alert ${a.id}: ${e.message}`); }
  };
  return h('div', { class: 'row-actions' },
    !a.ackedAt ? h('button', { type: 'button', 'data-key': `ack-${a.id}`, onclick: () => run('ack') }, 'Acknowledge') : null,
    h('button', { type: 'button', 'data-key': `clear-${a.id}`, onclick: () => run('clear') }, 'Clear'));
}

/** The note dialog; resolves with the note ('' for none), or null when cancelled. */
function askNote(act, what) {
  const dlg = document.getElementById('ack-dialog');
  const form = document.getElementById('ack-form');
  const input = document.getElementById('ack-note');
  const cancelBtn = document.getElementById('ack-cancel');
  document.getElementById('ack-title').textContent = act.title;
  document.getElementById('ack-submit').textContent = act.button;
  const hint = document.getElementById('ack-hint');
  hint.textContent = act.hint;
  hint.hidden = !act.hint;
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
