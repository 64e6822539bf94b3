// The public REST API, as any client calls it: `Authorization: token <t>`. The token lives in
// sessionStorage only (gone with the tab) and never in a URL. Paths are the API's own
// (`/api/...`); requests go under the prefix the console is served at (`base.js`).

import { url } from './base.js';

const TOKEN_KEY = 'tarmac.token';

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
    session.user = null;
  },
  /** `GET /api/user` of the current token: its name and org. */
  user: null,
};

/** An API error: the server's `{code, message}` or what went wrong on the way. */
export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.body = body;
  }
}

// Called once when a request answers 401: the app signs out and shows the sign-in page.
let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

/**
 * Calls the API and returns the parsed JSON (null for 204). Throws ApiError for any non-2xx.
 * `token` overrides the stored one (the sign-in check); `raw` returns the Response untouched.
 */
export async function api(path, { method = 'GET', body, signal, token, raw = false, headers = {} } = {}) {
  const auth = token ?? session.token;
  const init = { method, signal, headers: { Accept: 'application/json', ...headers } };
  if (auth) init.headers.Authorization = `token ${auth}`;
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(url(path), init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'Could not reach the Tarmac server. Check your connection and retry.');
  }
  if (raw && res.ok) return res;
  if (res.status === 401 && token === undefined) {
    onUnauthorized();
  }
  if (!res.ok) {
    let parsed = null;
    let message = `${res.status} ${res.statusText}`.trim();
    try {
      parsed = await res.json();
      if (parsed && typeof parsed.message === 'string' && parsed.message) message = parsed.message;
    } catch {
      // Not JSON (a proxy's page): keep the status line.
    }
    throw new ApiError(res.status, message, parsed);
  }
  if (res.status === 204) return null;
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

const enc = encodeURIComponent;

/** `S`: the API path of a stack. */
export function stackApi(org, project, stack) {
  return `/api/stacks/${enc(org)}/${enc(project)}/${enc(stack)}`;
}

export function orgApi(org) {
  return `/api/orgs/${enc(org)}`;
}

/** Query string from an object, skipping empty values. */
export function qs(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}
