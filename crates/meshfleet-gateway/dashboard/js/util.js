// Small DOM and formatting helpers. Everything text goes through textContent, never
// innerHTML, so data from nodes (firmware strings, error texts) cannot inject markup.

/** Creates an element: h('a', {href: '#/x', class: 'c'}, 'text', child). */
export function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
      else if (k === 'class') e.className = v;
      else if (v === true) e.setAttribute(k, '');
      else e.setAttribute(k, String(v));
    }
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/** Creates an SVG element. */
export function s(tag, attrs) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

export function ago(ms, now = Date.now()) {
  if (!ms) return '—';
  const d = Math.max(0, Math.round((now - ms) / 1000));
  if (d < 60) return `${d} s ago`;
  if (d < 3600) return `${Math.floor(d / 60)} min ago`;
  if (d < 86400) return `${Math.floor(d / 3600)} h ago`;
  return `${Math.floor(d / 86400)} d ago`;
}

export function duration(s) {
  if (s === null || s === undefined) return '—';
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

export function time(ms) {
  return ms ? new Date(ms).toLocaleString() : '—';
}

export function kb(bytes) {
  return bytes === null || bytes === undefined ? '—' : `${(bytes / 1024).toFixed(1)} KiB`;
}

export function pct(x) {
  return `${Math.round((x || 0) * 100)} %`;
}

export const HEALTH = ['healthy', 'warning', 'critical', 'offline'];

/** Node colours for health on the canvas (3:1 against the canvas background at least). */
export const HEALTH_COLOUR = {
  healthy: '#1f8a43', warning: '#b57500', critical: '#c62828', offline: '#8a929c',
};

/** A stable colour per firmware version (hue from a string hash). */
export function firmwareColour(fw) {
  if (!fw) return '#8a929c';
  let x = 2166136261;
  for (let i = 0; i < fw.length; i++) x = Math.imul(x ^ fw.charCodeAt(i), 16777619) >>> 0;
  return `hsl(${x % 360} 70% 38%)`;
}

/** A node is stale when nothing was heard from it for this long (two default report periods). */
export const STALE_MS = 10 * 60 * 1000;

export function isStale(n, now = Date.now()) {
  return n.online && now - n.lastSeen > STALE_MS;
}

export function badge(text, cls) {
  return h('span', { class: `badge ${cls || text}` }, text);
}

export function clear(e) {
  while (e.firstChild) e.firstChild.remove();
}

/**
 * Re-renders `root` with `render()` without losing the keyboard focus: live updates rebuild
 * lists, so the focused element (identified by its `data-key`) is focused again afterwards.
 */
export function keepFocus(root, render) {
  const a = document.activeElement;
  const key = a && a !== document.body && root.contains(a) ? a.dataset.key : undefined;
  render();
  if (key) {
    const e = root.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (e) e.focus({ preventScroll: true });
  }
}
