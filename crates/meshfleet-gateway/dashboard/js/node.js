// Node detail: its status, charts of its history (1 h to 90 d), firmware and OTA history,
// its alerts.

import * as api from './api.js';
import { state, subscribe } from './store.js';
import { h, clear, ago, time, duration, kb, badge, isStale } from './util.js';
import { lineChart, multiChart } from './charts.js';
import { actionButtons, stateText } from './alerts.js';

const RANGES = [['1 h', 3600e3], ['6 h', 6 * 3600e3], ['24 h', 24 * 3600e3], ['7 d', 7 * 86400e3], ['30 d', 30 * 86400e3], ['90 d', 90 * 86400e3]];
let range = 24 * 3600e3;

export function mount(main, params, id) {
  const nodeId = Number(id);
  const head = h('div');
  const charts = h('div', { class: 'charts', id: 'node-charts' });
  const ota = h('section', { class: 'panel', 'aria-labelledby': 'nd-ota' });
  const alerts = h('section', { class: 'panel', 'aria-labelledby': 'nd-alerts' });
  const ranges = h('div', { class: 'ranges', role: 'group', 'aria-label': 'History range' });
  // Ask the node now (POST /query): a meshfleet node answers a telemetry query, a stock node
  // painlessMesh's delay probe; data younger than the monitor's cache TTL is not asked for.
  const askResult = h('span', { id: 'node-query', role: 'status', 'aria-live': 'polite' });
  const askBtn = h('button', { type: 'button', id: 'node-ask', onclick: () => askNow() }, 'Ask now');
  const ask = h('div', { class: 'toolbar' }, askBtn, askResult);
  main.append(h('p', null, h('a', { href: '#/nodes' }, '← Nodes')), h('h1', null, `Node ${nodeId}`), head, ask,
    h('div', { class: 'toolbar' }, h('span', null, 'Range:'), ranges), charts, h('div', { class: 'grid' }, ota, alerts));
  let alive = true;

  function renderRanges() {
    clear(ranges);
    for (const [label, ms] of RANGES) {
      ranges.append(h('button', { type: 'button', 'aria-pressed': String(ms === range), onclick: () => { range = ms; renderRanges(); loadHistory(); } }, label));
    }
  }

  function renderHead() {
    const n = state.nodes.get(nodeId);
    clear(head);
    if (!n) { head.append(h('p', { class: 'empty' }, 'This node has never been seen by the gateway.')); return; }
    const st = n.status || {};
    head.append(h('section', { class: 'panel' }, h('dl', { class: 'kv', id: 'node-kv' },
      h('dt', null, 'Health'), h('dd', null, badge(n.health), isStale(n) ? [' ', badge('stale')] : null),
      h('dt', null, 'Online'), h('dd', null, n.online ? 'yes' : 'no'),
      h('dt', null, 'Parent'), h('dd', null, n.parent ? h('a', { href: `#/node/${n.parent}` }, String(n.parent)) : '—'),
      h('dt', null, 'Firmware'), h('dd', { id: 'node-firmware' }, n.firmware || '—', st.firmwareMd5 ? h('span', { class: 'muted' }, ` (md5 ${st.firmwareMd5})`) : null),
      h('dt', null, 'Role / hardware'), h('dd', null, `${n.role || '—'} / ${n.hardware || '—'}`),
      h('dt', null, 'Uptime'), h('dd', null, duration(n.uptime)),
      h('dt', null, 'Free memory'), h('dd', null, kb(n.freeMemory)),
      h('dt', null, 'Messages rx / tx / dropped'), h('dd', null, st.messagesReceived !== undefined ? `${st.messagesReceived} / ${st.messagesSent} / ${st.messagesDropped}` : '—'),
      h('dt', null, 'Last seen'), h('dd', null, `${ago(n.lastSeen)} (${time(n.lastSeen)})`),
      h('dt', null, 'First seen'), h('dd', null, time(n.firstSeen)),
      h('dt', null, 'Reports'), h('dd', null, String(n.reports)),
      h('dt', null, 'Last error'), h('dd', null, st.lastError || '—'))));
  }

  async function askNow() {
    askBtn.disabled = true;
    askResult.className = 'muted';
    askResult.textContent = 'Asking…';
    try {
      const r = await api.send('POST', '/query', { nodeId });
      if (!alive) return;
      const n = r.nodes.find((x) => x.nodeId === nodeId);
      if (n) { state.nodes.set(nodeId, n); renderHead(); }
      askResult.className = r.partial ? 'error' : 'muted';
      askResult.textContent = r.answered.includes(nodeId) ? `Answered in ${r.durationMs} ms.`
        : r.cached.includes(nodeId) ? `Not asked: its data is recent (seen ${ago(n ? n.lastSeen : Date.now())}).`
          : `No answer within ${(r.durationMs / 1000).toFixed(1)} s.`;
    } catch (e) {
      if (!alive) return;
      askResult.className = 'error';
      askResult.textContent = `Cannot ask: ${e.message}`;
    } finally { askBtn.disabled = false; }
  }

  async function loadHistory() {
    const to = Date.now(); const from = to - range;
    clear(charts);
    charts.append(h('p', { class: 'muted' }, 'Loading history…'));
    let hist;
    try { hist = await api.get(`/nodes/${nodeId}/history?from=${Math.round(from)}&to=${to}`); } catch (e) {
      clear(charts); charts.append(h('p', { class: 'error' }, `History: ${e.message}`)); return;
    }
    if (!alive) return;
    clear(charts);
    const pts = hist.points;
    const reboots = [];
    for (let i = 1; i < pts.length; i++) if (pts[i].uptime < pts[i - 1].uptime) reboots.push(pts[i].ts);
    const o = { from, to, reboots };
    const series = (f) => pts.map((p) => ({ t: p.ts, v: f(p) }));
    charts.append(
      lineChart('Free memory', series((p) => p.freeMemoryKb), { ...o, unit: 'KiB', digits: 1 }),
      lineChart('WiFi quality', series((p) => p.wifiQuality), { ...o, unit: '%' }),
      lineChart('Latency', series((p) => p.latencyMs), { ...o, unit: 'ms' }),
      lineChart('Packet loss', series((p) => p.packetLoss), { ...o, unit: '%', digits: 1 }),
      multiChart('Messages', [
        { name: 'received', points: series((p) => p.messagesReceivedPerMin) },
        { name: 'sent', points: series((p) => p.messagesSentPerMin) },
        { name: 'dropped', points: series((p) => p.messagesDroppedPerMin) },
      ], { ...o, unit: 'per min', digits: 1, zero: true }),
      lineChart('Uptime', series((p) => p.uptime / 3600), { ...o, unit: 'h', digits: 1 }),
    );
    charts.append(h('p', { class: 'muted' }, `${pts.length} ${hist.resolution === 'hour' ? 'hourly rollups' : 'reports'}${hist.truncated ? ' (truncated)' : ''}; reboots (uptime going back) are dashed red lines: ${reboots.length}.`));
  }

  async function loadAlerts() {
    clear(alerts);
    alerts.append(h('h2', { id: 'nd-alerts' }, 'Alerts'));
    try {
      const r = await api.get(`/alerts?state=all&node=${nodeId}&limit=100`);
      if (!alive) return;
      alerts.append(r.alerts.length ? h('table', { class: 'simple' },
        h('thead', null, h('tr', null, h('th', null, 'Severity'), h('th', null, 'Kind'), h('th', null, 'Raised'), h('th', null, 'State'), h('th', null, ''))),
        h('tbody', null, r.alerts.map((a) => h('tr', { 'data-alert': a.id }, h('td', null, badge(a.severity)), h('td', null, a.kind.replaceAll('_', ' ')),
          h('td', null, ago(a.raisedAt)), h('td', null, stateText(a)),
          h('td', null, actionButtons(a, loadAlerts, (e) => alerts.append(h('p', { class: 'error' }, e))))))))
        : h('p', { class: 'empty' }, 'No alerts.'));
    } catch (e) { alerts.append(h('p', { class: 'error' }, e.message)); }
  }

  async function loadOta() {
    clear(ota);
    ota.append(h('h2', { id: 'nd-ota' }, 'Firmware and OTA history'));
    if (state.campaignsAvailable === false) { ota.append(h('p', { class: 'empty' }, 'This gateway has no campaign API yet; the current firmware is above.')); return; }
    const rows = [];
    for (const c of [...state.campaigns.values()].slice(0, 20)) {
      try {
        const full = await api.get(`/campaigns/${c.id}`);
        const mine = (full.nodes || []).find((x) => x.node === nodeId);
        if (mine) rows.push([full, mine]);
      } catch { /* gone */ }
    }
    if (!alive) return;
    ota.append(rows.length ? h('table', { class: 'simple' },
      h('thead', null, h('tr', null, h('th', null, 'Campaign'), h('th', null, 'From'), h('th', null, 'To'), h('th', null, 'State'))),
      h('tbody', null, rows.map(([c, m]) => h('tr', null, h('td', null, h('a', { href: `#/campaign/${c.id}` }, c.name || c.id)),
        h('td', null, m.from_version || '—'), h('td', null, c.version), h('td', null, badge(m.state), m.reason ? ` ${m.reason}` : '')))))
      : h('p', { class: 'empty' }, 'No campaign has targeted this node.'));
  }

  renderRanges();
  renderHead();
  loadHistory(); loadAlerts(); loadOta();
  api.get(`/status/${nodeId}`).then((n) => { state.nodes.set(nodeId, n); renderHead(); }).catch(() => {});
  const unsub = subscribe(renderHead);
  return () => { alive = false; unsub(); };
}
