// The REST client. Reads need no token (unless the gateway sets read-auth, then a 401 asks
// for it); every change carries the bearer token, asked for once and kept in localStorage.

const KEY = 'meshfleet.token';

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? problem.detail : `HTTP ${status}`);
    this.status = status;
    this.code = problem && problem.code;
  }
}

export function storedToken() {
  try { return localStorage.getItem(KEY) || ''; } catch { return ''; }
}

function storeToken(t) {
  try { if (t) localStorage.setItem(KEY, t); else localStorage.removeItem(KEY); } catch { /* private mode */ }
  // The event stream may be waiting for a token (read-auth): tell it at once.
  if (t) window.dispatchEvent(new Event('meshfleet-token'));
}

/** Shows the token dialog; resolves with the token, or null when cancelled. */
export function askToken(message) {
  const dlg = document.getElementById('token-dialog');
  const form = document.getElementById('token-form');
  const input = document.getElementById('token-input');
  const err = document.getElementById('token-error');
  err.hidden = !message;
  err.textContent = message || '';
  input.value = '';
  return new Promise((resolve) => {
    const done = (v) => {
      form.removeEventListener('submit', submit);
      document.getElementById('token-cancel').removeEventListener('click', cancel);
      document.getElementById('token-forget').removeEventListener('click', forget);
      dlg.removeEventListener('cancel', cancel);
      if (dlg.open) dlg.close();
      resolve(v);
    };
    const submit = (ev) => { ev.preventDefault(); const t = input.value.trim(); if (t) { storeToken(t); done(t); } };
    const cancel = (ev) => { if (ev) ev.preventDefault(); done(null); };
    const forget = () => { storeToken(''); done(null); };
    form.addEventListener('submit', submit);
    document.getElementById('token-cancel').addEventListener('click', cancel);
    document.getElementById('token-forget').addEventListener('click', forget);
    dlg.addEventListener('cancel', cancel);
    dlg.showModal();
    input.focus();
  });
}

async function problem(r) {
  try { return await r.json(); } catch { return null; }
}

let asking = null;
/** One token dialog for every read that met a 401 meanwhile (the page's first reads go out
 * together): a second dialog would clear the token typed into the first. */
function askTokenOnce(message) {
  if (!asking) asking = askToken(message).finally(() => { asking = null; });
  return asking;
}

let readAuthKnown;
/** Resolves at the first read's answer: true if the gateway wants the token for reads too
 * (read-auth), so the event stream waits for a token instead of trying without one. */
export const readAuth = new Promise((resolve) => { readAuthKnown = resolve; });

/** GET a JSON document. */
export async function get(path) {
  const headers = { Accept: 'application/json' };
  const t = storedToken();
  if (t) headers.Authorization = `Bearer ${t}`;
  let r;
  try { r = await fetch(path, { headers, cache: 'no-store' }); } catch (e) { readAuthKnown(false); throw e; }
  readAuthKnown(r.status === 401);
  if (r.status === 401) {
    // The token may have been given while this read was out: try it before asking.
    const now = storedToken();
    if (now && now !== t) return get(path);
    const tok = await askTokenOnce('This gateway requires the token for reads too.');
    if (tok) return get(path);
  }
  if (!r.ok) throw new ApiError(r.status, await problem(r));
  return r.json();
}

/** A change: POST/DELETE with the token; asks for it when missing or refused. */
export async function send(method, path, body, contentType) {
  let token = storedToken() || await askToken();
  if (!token) throw new ApiError(401, { detail: 'no token given' });
  for (let attempt = 0; attempt < 3; attempt++) {
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers['Content-Type'] = contentType || 'application/json';
    const payload = body === undefined || contentType ? body : JSON.stringify(body);
    const r = await fetch(path, { method, headers, body: payload });
    if (r.status === 401) {
      storeToken('');
      token = await askToken('The gateway refused that token.');
      if (!token) throw new ApiError(401, await problem(r));
      continue;
    }
    if (!r.ok) throw new ApiError(r.status, await problem(r));
    if (r.status === 204) return null;
    const text = await r.text();
    return text ? JSON.parse(text) : null;
  }
  throw new ApiError(401, { detail: 'token refused' });
}
