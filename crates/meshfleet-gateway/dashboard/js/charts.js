// Minimal SVG line charts: one or a few series over time, min/max labels, reboots as dashed
// lines. Several series differ by colour and by dash pattern (readable without colour).

import { s, h } from './util.js';

const W = 600; const H = 150; const L = 44; const R = 8; const T = 10; const B = 22;

/**
 * @param {string} title
 * @param {{t:number, v:number|null}[]} points
 * @param {{from:number, to:number, unit:string, reboots?:number[], digits?:number}} o
 */
export function lineChart(title, points, o) {
  return multiChart(title, [{ name: title, points }], o);
}

/**
 * Several series on one y axis, with a legend.
 * @param {string} title
 * @param {{name:string, points:{t:number, v:number|null}[]}[]} series
 * @param {{from:number, to:number, unit:string, reboots?:number[], digits?:number, zero?:boolean}} o (zero: the y axis starts at 0)
 */
export function multiChart(title, series, o) {
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img' });
  const valid = series.map((x) => ({ ...x, vals: x.points.filter((p) => p.v !== null && p.v !== undefined && Number.isFinite(p.v)) }));
  const all = valid.flatMap((x) => x.vals);
  const last = (x) => fmt(x.vals[x.vals.length - 1].v, o);
  let label = `${title}: no data in this range`;
  if (all.length && valid.length === 1) label = `${title}: ${all.length} points, last ${last(valid[0])} ${o.unit}`;
  else if (all.length) label = `${title}: ${valid.map((x) => (x.vals.length ? `${x.name} last ${last(x)}` : `${x.name} no data`)).join(', ')} ${o.unit}`;
  svg.setAttribute('aria-label', label);
  const x = (t) => L + ((t - o.from) / Math.max(1, o.to - o.from)) * (W - L - R);
  svg.append(s('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }));
  svg.append(s('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }));
  const tl = s('text', { x: L, y: H - 6 }); tl.textContent = new Date(o.from).toLocaleString(); svg.append(tl);
  const tr = s('text', { x: W - R, y: H - 6, 'text-anchor': 'end' }); tr.textContent = new Date(o.to).toLocaleString(); svg.append(tr);
  if (all.length) {
    let lo = Math.min(...all.map((p) => p.v)); let hi = Math.max(...all.map((p) => p.v));
    if (o.zero) lo = Math.min(0, lo);
    if (hi === lo) { hi += 1; lo = Math.max(0, lo - 1); }
    const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
    valid.forEach((ser, k) => {
      if (!ser.vals.length) return;
      const d = ser.vals.map((p, i) => `${i ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join('');
      svg.append(s('path', { class: `line s${k}`, d }));
      if (ser.vals.length < 80) {
        for (const p of ser.vals) svg.append(s('circle', { class: `dot s${k}`, cx: x(p.t).toFixed(1), cy: y(p.v).toFixed(1), r: 2 }));
      }
    });
    const yh = s('text', { x: L - 4, y: T + 8, 'text-anchor': 'end' }); yh.textContent = fmt(hi, o); svg.append(yh);
    const yl = s('text', { x: L - 4, y: H - B, 'text-anchor': 'end' }); yl.textContent = fmt(lo, o); svg.append(yl);
  } else {
    const t = s('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }); t.textContent = 'no data in this range'; svg.append(t);
  }
  for (const rb of o.reboots || []) {
    svg.append(s('line', { class: 'reboot', x1: x(rb), x2: x(rb), y1: T, y2: H - B }));
  }
  const legend = series.length > 1
    ? h('div', { class: 'chart-legend' }, series.map((ser, k) => h('span', null, h('i', { class: `key s${k}` }), ser.name)))
    : null;
  return h('figure', { class: 'panel' }, h('figcaption', null, h('h3', null, `${title} (${o.unit})`), legend), svg);
}

function fmt(v, o) {
  return Number(v).toFixed(o.digits ?? 0);
}
