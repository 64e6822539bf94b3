// A History API router. The server answers index.html for any path outside /api/, /oidc/ and
// /console/, so every page has a real URL (the API's `consoleUrl` included) and links are real
// <a href> elements that work with the keyboard, middle-click and "open in new tab".
// Routes and `navigate` take the console's own paths (`/acme/web/dev`); the URLs carry the
// prefix the console is served under, if any (`base.js`).

import { url as fullUrl, consolePath } from './base.js';

const routes = [];
let renderFn = null;
let current = null; // { controller, cleanups }

/**
 * Registers a route. `pattern` is a path with `:name` segments, e.g. "/:org/:project/:stack".
 * `view(ctx)` returns a Node (or a Promise of one).
 */
export function route(pattern, view) {
  const names = [];
  const source = pattern
    .split('/')
    .map((seg) => {
      if (seg.startsWith(':')) {
        names.push(seg.slice(1));
        return '([^/]+)';
      }
      return seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    })
    .join('/');
  routes.push({ re: new RegExp(`^${source}/?$`), names, view });
}

export function match(pathname) {
  for (const r of routes) {
    const m = r.re.exec(pathname);
    if (!m) continue;
    const params = {};
    r.names.forEach((n, i) => {
      try {
        params[n] = decodeURIComponent(m[i + 1]);
      } catch {
        params[n] = m[i + 1];
      }
    });
    return { view: r.view, params };
  }
  return null;
}

/** The console's path of the current page (without the prefix it is served under). */
export function currentPath() {
  return consolePath(location.pathname) ?? location.pathname;
}

/** Goes to a console path (pushState, or replaceState with `replace`). */
export function navigate(path, { replace = false, state = null } = {}) {
  if (replace) history.replaceState(state, '', fullUrl(path));
  else history.pushState(state, '', fullUrl(path));
  return render({ focus: !replace });
}

/** Re-renders the current path (e.g. after a change that the view must reload). */
export function refresh() {
  return render({ focus: false });
}

/** Updates the query string without a new history entry or a re-render (filters, pages). */
export function setQuery(params) {
  const url = new URL(location.href);
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === '' || v === 1) url.searchParams.delete(k);
    else url.searchParams.set(k, String(v));
  }
  history.replaceState(history.state, '', url.pathname + url.search + url.hash);
}

function render(opts) {
  if (current) {
    current.controller.abort();
    for (const fn of current.cleanups) {
      try {
        fn();
      } catch (e) {
        console.warn('cleanup failed', e);
      }
    }
  }
  const controller = new AbortController();
  const cleanups = [];
  current = { controller, cleanups };
  const ctx = {
    path: currentPath(),
    query: new URLSearchParams(location.search),
    hash: location.hash,
    signal: controller.signal,
    /** Runs `fn` when the user leaves this page (stop pollers and streams). */
    onLeave: (fn) => cleanups.push(fn),
    get active() {
      return current && current.controller === controller;
    },
  };
  return renderFn(ctx, opts);
}

/** Starts routing: intercepts same-origin link clicks and back/forward. */
export function start(renderPage) {
  renderFn = renderPage;
  document.addEventListener('click', (e) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    const a = e.target.closest && e.target.closest('a[href]');
    if (!a || a.target || a.hasAttribute('download')) return;
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin) return;
    // Outside the console's prefix: not the console's page.
    const path = consolePath(url.pathname);
    if (path === null) return;
    // API and asset links (none are rendered today) go to the server.
    if (/^\/(api|oidc|console)\//.test(path)) return;
    // Same page, another anchor (log line permalinks, skip link): the browser's own behaviour.
    if (url.pathname === location.pathname && url.search === location.search && url.hash) return;
    e.preventDefault();
    navigate(path + url.search + url.hash);
  });
  window.addEventListener('popstate', () => render({ focus: false }));
  return render({ focus: false });
}

export { render as rerender };
