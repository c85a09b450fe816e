// Minimal SVG line charts: one series over time, min/max labels, reboots as dashed lines.

import { s, h } from './util.js';

const W = 600; const H = 150; const L = 44; const R = 8; const T = 10; const B = 22;

/**
 * @param {string} title
 * @param {{t:number, v:number|null}[]} points
 * @param {{from:number, to:number, unit:string, reboots?:number[], digits?:number}} o
 */
export function lineChart(title, points, o) {
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img' });
  const vals = points.filter((p) => p.v !== null && Number.isFinite(p.v));
  const label = vals.length
    ? `${title}: ${vals.length} points, last ${fmt(vals[vals.length - 1].v, o)} ${o.unit}`
    : `${title}: no data in this range`;
  svg.setAttribute('aria-label', label);
  const x = (t) => L + ((t - o.from) / Math.max(1, o.to - o.from)) * (W - L - R);
  svg.append(s('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }));
  svg.append(s('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }));
  const tl = s('text', { x: L, y: H - 6 }); tl.textContent = new Date(o.from).toLocaleString(); svg.append(tl);
  const tr = s('text', { x: W - R, y: H - 6, 'text-anchor': 'end' }); tr.textContent = new Date(o.to).toLocaleString(); svg.append(tr);
  if (vals.length) {
    let lo = Math.min(...vals.map((p) => p.v)); let hi = Math.max(...vals.map((p) => p.v));
    if (hi === lo) { hi += 1; lo = Math.max(0, lo - 1); }
    const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
    const d = vals.map((p, i) => `${i ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join('');
    svg.append(s('path', { class: 'line', d }));
    if (vals.length < 80) {
      for (const p of vals) svg.append(s('circle', { cx: x(p.t).toFixed(1), cy: y(p.v).toFixed(1), r: 2, fill: '#0b4f8a' }));
    }
    const yh = s('text', { x: L - 4, y: T + 8, 'text-anchor': 'end' }); yh.textContent = fmt(hi, o); svg.append(yh);
    const yl = s('text', { x: L - 4, y: H - B, 'text-anchor': 'end' }); yl.textContent = fmt(lo, o); svg.append(yl);
  } else {
    const t = s('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }); t.textContent = 'no data in this range'; svg.append(t);
  }
  for (const rb of o.reboots || []) {
    svg.append(s('line', { class: 'reboot', x1: x(rb), x2: x(rb), y1: T, y2: H - B }));
  }
  return h('figure', { class: 'panel' }, h('figcaption', null, h('h3', null, `${title} (${o.unit})`)), svg);
}

function fmt(v, o) {
  return Number(v).toFixed(o.digits ?? 0);
}
