// The page's copy of the fleet: loaded over REST, kept current from the event stream
// (`/events`), reloaded whole after every reconnect (events missed while away are gone).

import * as api from './api.js';

const listeners = new Set();
let scheduled = false;

export const state = {
  nodes: new Map(),        // nodeId -> NodeStatus
  alerts: new Map(),       // id -> Alert (active ones, plus those changed while the page is open)
  topology: null,          // GET /topology
  gatewayNodeId: null,
  health: null,            // GET /health
  firmware: [],            // GET /firmware
  campaigns: new Map(),    // id -> Campaign (without nodes)
  campaignNodes: new Map(),// id -> Map(node -> {state, progress, reason})
  campaignsAvailable: null,// false when the gateway has no campaign API (404)
  connected: false,
  loadedAt: 0,
  lastEventAt: 0,
  eventAt: {},             // event name -> when the last one arrived (ms since the epoch)
  reconnects: 0,
  error: null,
};
// Test and benchmark hook: the page's copy of the fleet (read-only use).
window.meshfleet = Object.assign(window.meshfleet || {}, { state });

/** Calls `f` after every change (batched per animation frame). Returns an unsubscribe. */
export function subscribe(f) {
  listeners.add(f);
  return () => listeners.delete(f);
}

export function changed() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    for (const f of [...listeners]) {
      try { f(); } catch (e) { console.error(e); }
    }
  });
}

async function loadNodes() {
  const all = new Map();
  let offset = 0;
  for (;;) {
    const page = await api.get(`/status?limit=1000&offset=${offset}`);
    for (const n of page.nodes) all.set(n.nodeId, n);
    offset += page.nodes.length;
    if (page.nodes.length === 0 || offset >= page.totalNodes) break;
  }
  state.nodes = all;
}

async function loadAlerts() {
  const r = await api.get('/alerts?state=active&limit=1000');
  state.alerts = new Map(r.alerts.map((a) => [a.id, a]));
}

export async function loadTopology() {
  try {
    state.topology = await api.get('/topology');
  } catch (e) {
    state.topology = null;
  }
  changed();
}

export async function loadFirmware() {
  const r = await api.get('/firmware');
  state.firmware = r.artefacts;
  changed();
}

// Whether this gateway serves the campaign API: its OpenAPI document says so (asking
// `/campaigns` directly would log a 404 in the console of every older gateway).
let apiPaths = null;
async function checkApi() {
  try {
    const doc = await api.get('/openapi.json');
    apiPaths = new Set(Object.keys(doc.paths || {}));
  } catch { apiPaths = new Set(); }
  state.campaignsAvailable = apiPaths.has('/campaigns');
}

export async function loadCampaigns() {
  if (apiPaths === null) await checkApi();
  if (!state.campaignsAvailable) { changed(); return; }
  const r = await api.get('/campaigns');
  state.campaigns = new Map(r.campaigns.map((c) => [c.id, c]));
  changed();
}

/** Everything, from scratch. */
export async function refresh() {
  apiPaths = null;
  try {
    const [health] = await Promise.all([
      api.get('/health'), loadNodes(), loadAlerts(), loadTopology(), loadFirmware(), loadCampaigns(),
    ]);
    state.health = health;
    state.gatewayNodeId = health.gatewayNodeId;
    state.loadedAt = Date.now();
    state.error = null;
  } catch (e) {
    state.error = e.message;
  }
  changed();
}

// Nodes whose status changed: re-read in one go (one request each, or the whole list when
// many changed at once), at most every 500 ms.
const dirty = new Set();
let dirtyTimer = null;
function markDirty(id) {
  dirty.add(id);
  if (!dirtyTimer) dirtyTimer = setTimeout(flushDirty, 500);
}
async function flushDirty() {
  dirtyTimer = null;
  const ids = [...dirty];
  dirty.clear();
  try {
    if (ids.length > 40) {
      await loadNodes();
    } else {
      await Promise.all(ids.map(async (id) => {
        try { state.nodes.set(id, await api.get(`/status/${id}`)); } catch { /* gone */ }
      }));
    }
  } catch { /* the next event or reconnect catches up */ }
  changed();
}

let topoTimer = null;
function topologyChanged() {
  if (!topoTimer) topoTimer = setTimeout(() => { topoTimer = null; loadTopology(); }, 300);
}

let healthTimer = null;
function healthChanged() {
  if (!healthTimer) {
    healthTimer = setTimeout(async () => {
      healthTimer = null;
      try { state.health = await api.get('/health'); changed(); } catch { /* reconnect handles it */ }
    }, 1000);
  }
}

const handlers = {
  node_up(d) { const n = state.nodes.get(d.nodeId); if (n) { n.online = true; n.lastSeen = d.ts; } markDirty(d.nodeId); topologyChanged(); healthChanged(); },
  node_down(d) { const n = state.nodes.get(d.nodeId); if (n) n.online = false; markDirty(d.nodeId); topologyChanged(); healthChanged(); },
  status(d) {
    const n = state.nodes.get(d.nodeId);
    if (n) { n.lastSeen = d.ts; n.lastReport = d.ts; n.health = d.health; }
    markDirty(d.nodeId);
  },
  health(d) { const n = state.nodes.get(d.nodeId); if (n) n.health = d.to; healthChanged(); },
  alert_raised(d) { state.alerts.set(d.alert.id, d.alert); healthChanged(); },
  alert_cleared(d) { const a = state.alerts.get(d.id); if (a) a.clearedAt = d.ts; healthChanged(); },
  alert_acked(d) { state.alerts.set(d.alert.id, d.alert); },
  firmware_added(d) { state.firmware = [d.artefact, ...state.firmware.filter((a) => a.id !== d.artefact.id)]; },
  firmware_deleted(d) { state.firmware = state.firmware.filter((a) => a.id !== d.id); },
  campaign(d) { state.campaigns.set(d.id, { ...(state.campaigns.get(d.id) || {}), ...d }); state.campaignsAvailable = true; },
  campaign_node(d) {
    let m = state.campaignNodes.get(d.campaign);
    if (!m) { m = new Map(); state.campaignNodes.set(d.campaign, m); }
    m.set(d.node, { ...(m.get(d.node) || {}), ...d });
    if (d.state === 'SUCCEEDED') markDirty(d.node);
  },
  lagged() { refresh(); },
};

// The event stream, reconnected by hand (EventSource gives up for good on an HTTP error,
// and its own retry has no back-off): 0.5 s doubling to 10 s, with jitter.
let es = null;
let backoff = 500;
let retryTimer = null;
let everConnected = false;

function setConnected(on) {
  state.connected = on;
  const live = document.getElementById('live');
  const banner = document.getElementById('banner');
  if (live) {
    live.textContent = on ? 'live' : 'offline';
    live.className = `live ${on ? 'on' : 'off'}`;
  }
  if (banner) banner.hidden = on || !everConnected;
  changed();
}

/**
 * The event stream's URL. EventSource cannot send the bearer header, and the token must never
 * go into a URL; so with a stored token the page trades it for a single-use, 30-second ticket
 * (POST /events/ticket) and opens /events?ticket=…, a fresh one for every (re)connection.
 * This is what makes live updates work when the gateway has read-auth on. Without a token
 * (or if the trade fails: no token configured, token refused), plain /events, which works
 * whenever read-auth is off; with read-auth on and no token yet, nothing until one is given.
 */
async function eventsUrl() {
  const token = api.storedToken();
  // read-auth and no token yet: wait for one (the first read asks for it) rather than open
  // a stream that can only be refused.
  if (!token) return (await api.readAuth) ? null : '/events';
  try {
    const r = await fetch('/events/ticket', { method: 'POST', headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' });
    if (r.ok) {
      const t = await r.json();
      if (t && typeof t.ticket === 'string' && /^[0-9a-f]{64}$/.test(t.ticket)) return `/events?ticket=${t.ticket}`;
    }
  } catch { /* the gateway is down: EventSource's error path retries with back-off */ }
  return '/events';
}

// A token just given (read-auth's first prompt): connect now rather than at the next back-off.
window.addEventListener('meshfleet-token', () => {
  if (!state.connected && !connecting) { clearTimeout(retryTimer); backoff = 500; connect(); }
});

let connecting = false;

export async function connect() {
  if (connecting) return; // one (re)connection at a time: each spends a ticket
  connecting = true;
  if (es) es.close();
  es = null;
  let url;
  try { url = await eventsUrl(); } finally { connecting = false; }
  if (!url) { setConnected(false); return; } // 'meshfleet-token' connects once there is one
  es = new EventSource(url);
  es.onopen = () => {
    const again = everConnected;
    everConnected = true;
    backoff = 500;
    setConnected(true);
    if (again) {
      state.reconnects += 1;
      refresh();
    }
  };
  es.onerror = () => {
    es.close();
    es = null;
    if (state.connected || !everConnected) setConnected(false);
    const delay = backoff * (0.8 + Math.random() * 0.4);
    backoff = Math.min(backoff * 2, 10000);
    const detail = document.getElementById('banner-detail');
    if (detail) detail.textContent = ` (next try in ${(delay / 1000).toFixed(1)} s)`;
    clearTimeout(retryTimer);
    retryTimer = setTimeout(connect, delay);
  };
  for (const [name, f] of Object.entries(handlers)) {
    es.addEventListener(name, (ev) => {
      state.lastEventAt = performance.timeOrigin + performance.now();
      state.eventAt[name] = state.lastEventAt;
      let d = null;
      try { d = JSON.parse(ev.data); } catch { return; }
      f(d);
      changed();
    });
  }
}

/** Runs `f` (a change through the API) and turns its failure into a message. */
export async function act(f) {
  try {
    await f();
    return null;
  } catch (e) {
    return e.message || String(e);
  }
}
